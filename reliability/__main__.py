"""``python -m reliability [--short] [--seed N] [SCENARIO …]``: run the campaign.

One line per scenario (PASS/FAIL, its figure, its goal, its time), the evidence for a miss
indented below it; the exit status is 1 when any goal was missed. See reliability/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Final

from reliability.scenario import timed

# In the priority order of what they guard; the names are module names.
SCENARIOS: Final = (
    "deploys_under_load",  # 1
    "kill9",  # 2
    "http_fuzz",  # 3
    "control_fuzz",  # 4
    "slow_clients",  # 5
    "leaks",  # 6
    "disk_trouble",  # 7
    "target_faults",  # 8
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--short", action="store_true", help="CI sizes (a few minutes in all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    started = time.monotonic()
    missed = []
    size = "short" if args.short else "full"
    print(f"kproxy reliability campaign: {size} size, seed {args.seed}", flush=True)
    for name in args.scenarios or SCENARIOS:
        module = importlib.import_module(f"reliability.{name}")
        result = timed(module.run, args.short, args.seed, module.NAME, module.GOAL)
        print(result.line(), flush=True)
        for detail in result.details:
            print(f"      {detail}", flush=True)
        if not result.passed:
            missed.append(name)
    minutes = (time.monotonic() - started) / 60
    verdict = f"{len(missed)} goal(s) missed: {', '.join(missed)}" if missed else "every goal held"
    print(f"{verdict} ({minutes:.1f} min)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
