"""What a benchmark run says about where it ran: the machine, the engine's git commit, the
load average (other work skews timings) and the package versions, printed at the head of each
benchmark's output and kept in its JSON."""

from __future__ import annotations

import importlib
import os
import platform
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import versions


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    return {"cores": os.cpu_count(), "cpu": model, "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "source": source(), "load_average_at_start": load_average()}


def source() -> dict[str, Any]:
    """The engine's git commit, and whether statemachine/ or checkpoints/ had local changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    dirty = git("status", "--porcelain", "--", "statemachine", "checkpoints")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "engine_changes_uncommitted": None if dirty is None else bool(dirty)}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None



def describe(info: dict[str, Any], packages: dict[str, str]) -> list[str]:
    return [f"machine: {info['cores']} cores, {info['cpu']}, {info['machine']}, {info['system']}",
            f"Python {info['python']}, SQLite {info['sqlite']}; "
            + ", ".join(f"{k} {v}" for k, v in packages.items()),
            f"engine source: git {info['source']['commit']}"
            + (" (statemachine/ or checkpoints/ with uncommitted changes)"
               if info["source"]["engine_changes_uncommitted"] else "")
            + f"; load average at start: {info['load_average_at_start']}"]


def head(packages: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The machine and the versions of `packages`, printed as a benchmark's first lines."""
    info, found = machine(), versions(packages)
    for line in describe(info, found):
        print(line)
    sys.stdout.flush()
    return info, found


def lacks(modules: Sequence[str], message: str) -> bool:
    """Whether one of `modules` (what --compare langgraph needs) cannot be imported; then
    `message`, with the import's error in it, went to stderr."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as exc:
        print(message.format(error=exc), file=sys.stderr)
        return True
    return False


def print_head(head: str) -> None:
    """A table's column headings, ruled underneath."""
    print(head)
    print("-" * len(head))


def progress(message: str) -> None:
    """A benchmark's progress, on stderr (its results go to stdout)."""
    print(f"  ... {message}", file=sys.stderr, flush=True)


__all__ = ["describe", "head", "lacks", "load_average", "machine", "print_head", "progress",
           "source"]
