"""`python -m benchmarks [--quick] [--json results.json]`: print a table of the workloads.

Speed is measured here, never asserted in tests; the test suite runs `--quick` so this
cannot rot.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict
from importlib.metadata import version

from .workloads import run_all

FULL = dict(iterations=1000, chain_length=100, fan_width=50, invocations=20,
            growth_sizes=(250, 500, 1000, 2000, 4000), reads=50)
QUICK = dict(iterations=20, chain_length=5, fan_width=4, invocations=2,
             growth_sizes=(10, 20), reads=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = run_all(**(QUICK if args.quick else FULL))
    print(f"statemachine {version('statemachine')}, Python {platform.python_version()}, "
          f"{platform.machine()}, {platform.system()}")
    print(f"{'workload':<12} {'mode':<7} {'steps':>7} {'steps/s':>10} {'db bytes':>10} "
          f"{'peak KiB':>9}  notes")
    for r in results:
        notes = ", ".join(f"{k}={v}" for k, v in (r.extra or {}).items())
        print(f"{r.workload:<12} {r.mode:<7} {r.steps:>7} {r.steps_per_second:>10,.0f} "
              f"{'' if r.db_bytes is None else f'{r.db_bytes:,}':>10} "
              f"{'' if r.peak_kib is None else f'{r.peak_kib:,.0f}':>9}  {notes}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) | {"steps_per_second": r.steps_per_second} for r in results],
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
