"""`python -m benchmarks.plot [--results F] [--server F] [--postgres F] [--out DIR]`: the charts
of benchmarks/RESULTS.md, drawn from the JSON documents the benchmarks write (`python -m
benchmarks --json`, `python -m benchmarks.server --json`, `python -m benchmarks.postgres
--json`); `python -m benchmarks --plot DIR` draws them for the run it just made.

Charts (PNG, one per file; a document that is missing or lacks the rows is skipped):
- `ratios.png`: ours over LangGraph, steps per second, for every throughput pair of the run
  (SQLite, memory, none; with the PostgreSQL document, its pairs too), on a log scale with 1x
  marked: a bar right of it is a workload where we are faster;
- `growth.png`: database bytes against length, log-log, for the loop (iterations) and the
  chat (turns), both engines: the slope is the growth exponent;
- `server_latency.png`: the server workload's turn latencies, one cumulative distribution per
  engine and database, with p99 marked.

matplotlib is in the `bench` and `dev` extras; it is imported only when charts are drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULTS = {"results": HERE / "results.json", "server": HERE / "server.json",
            "postgres": HERE / "postgres.json"}


def draw(out: Path, results: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
         postgres: dict[str, Any] | None = None) -> list[Path]:
    """The charts the documents given allow, written under `out`: the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    out.mkdir(parents=True, exist_ok=True)
    written = []
    bars = _ratio_bars(results, postgres)
    if bars:
        written.append(_save(_ratios_figure(bars), out / "ratios.png"))
    series = _growth_series(results)
    if series:
        written.append(_save(_growth_figure(series), out / "growth.png"))
    latencies = _latencies(server)
    if latencies:
        written.append(_save(_latency_figure(latencies), out / "server_latency.png"))
    return written


# -- what is drawn, taken from the documents ---------------------------------------------------

def _ratio_bars(results: dict[str, Any] | None,
                postgres: dict[str, Any] | None) -> list[tuple[str, float]]:
    """(label, ours/theirs steps per second) for every throughput comparison."""
    bars = []
    for c in (results or {}).get("comparisons", []):
        if c.get("speed_ratio") and c["workload"] in ("loop", "chain", "fanout"):
            bars.append((f"{c['workload']}: {c['ours_mode']} vs {c['theirs_mode']}",
                         float(c["speed_ratio"])))
    for c in (postgres or {}).get("comparisons", []):
        if c.get("speed_ratio"):
            bars.append((f"PostgreSQL {c['workload']}: {c.get('ours_mode', '')} vs "
                         f"{c.get('theirs_mode', '')}", float(c["speed_ratio"])))
    return bars


def _growth_series(results: dict[str, Any] | None
                   ) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """workload -> engine -> [(length, bytes)], for the loop's growth and the chat."""
    found: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for row in (results or {}).get("rows", []):
        if row["workload"] not in ("growth", "chat") or not row.get("db_bytes"):
            continue
        extra = row.get("extra") or {}
        length = extra.get("iterations") if row["workload"] == "growth" else extra.get("turns")
        if length is None:
            continue
        name = "loop" if row["workload"] == "growth" else "chat"
        found.setdefault(name, {}).setdefault(row["engine"], []).append(
            (int(length), int(row["db_bytes"])))
    return {name: {engine: sorted(points) for engine, points in engines.items()}
            for name, engines in found.items()}


def _latencies(server: dict[str, Any] | None) -> list[tuple[str, list[float]]]:
    """(engine on database, turn latencies in ms) per row of the server workload."""
    found = []
    for row in (server or {}).get("rows", []):
        values = row.get("latencies_ms")
        if values:
            found.append((f"{row['engine']} on {row['database']}", sorted(map(float, values))))
    return found


# -- the figures -------------------------------------------------------------------------------

def _ratios_figure(bars: Sequence[tuple[str, float]]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.32 * len(bars) + 1.4))
    labels = [label for label, _ in bars]
    values = [value for _, value in bars]
    ax.barh(range(len(bars)), values, color=["#2b7bba" if v >= 1 else "#c0392b" for v in values])
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=0.8)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.1f}x", va="center", fontsize=7)
    ax.set_xlabel("ours / LangGraph, steps per second (log scale; right of 1x: we are faster)")
    ax.set_title("Throughput against LangGraph, same machine, same run")
    fig.tight_layout()
    return fig


def _growth_figure(series: dict[str, dict[str, list[tuple[int, int]]]]) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 4), squeeze=False)
    for ax, (name, engines) in zip(axes[0], sorted(series.items()), strict=True):
        for engine, points in sorted(engines.items()):
            ax.plot([n for n, _ in points], [b for _, b in points], marker="o", label=engine)
        ax.set_xscale("log")
        ax.set_yscale("log")
        lengths = sorted({n for points in engines.values() for n, _ in points})
        ax.set_xticks(lengths, [f"{n:,}" for n in lengths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("iterations" if name == "loop" else "turns")
        ax.set_ylabel("database bytes after close")
        ax.set_title(f"Storage growth: {name}")
        ax.legend()
        ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    return fig


def _latency_figure(latencies: Sequence[tuple[str, list[float]]]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in latencies:
        n = len(values)
        line = ax.plot(values, [(i + 1) / n for i in range(n)], label=label)[0]
        p99 = values[min(n - 1, int(0.99 * n))]
        ax.axvline(p99, color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("turn latency, ms (log scale; dotted: p99)")
    ax.set_ylabel("share of turns at or below")
    ax.set_title("Server workload: every turn's latency")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    return dict(json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name}", type=Path, default=default,
                            help=f"the {name} document (default: "
                            f"{default.relative_to(HERE.parent)})")
    parser.add_argument("--out", type=Path, default=HERE / "charts", help="where the PNGs go")
    args = parser.parse_args(argv)
    try:
        written = draw(args.out, load(args.results), load(args.server), load(args.postgres))
    except ImportError as exc:
        print(f"charts need matplotlib ({exc}): pip install -e '.[bench]'", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if not written:
        print("no chart drawn: none of the documents given has the rows they need",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["DEFAULTS", "draw", "load", "main"]
