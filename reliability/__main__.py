"""``python -m reliability [--short] [--seed N] [--list] [SCENARIO … | all]``: run the campaign.

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

# In the priority order of what they guard; the names are module names. Each with
# its expected minutes at the short and the full size (``--list``): measured on 2 cores shared
# with other work on 2026-12-05, the full size by that day's whole full-size run
# (reliability/README.md, "How long it takes"); they move with the load and kproxy's speed.
SCENARIOS: Final = {
    "deploys_under_load": (1.7, 24),  # 1
    "kill9": (0.6, 30),  # 2
    "http_fuzz": (0.6, 6.5),  # 3
    "control_fuzz": (0.6, 1),  # 4
    "slow_clients": (1.4, 1.5),  # 5
    "leaks": (0.9, 17),  # 6
    "disk_trouble": (0.3, 0.2),  # 7
    "target_faults": (0.9, 3),  # 8
}


def listing() -> str:
    rows = [f"{'scenario':<20} {'short':>7} {'full':>7}"]
    rows += [f"{name:<20} {s:>5g} m {f:>5g} m" for name, (s, f) in SCENARIOS.items()]
    short, full = (sum(size) for size in zip(*SCENARIOS.values(), strict=True))
    rows.append(f"{'all':<20} {short:>5.0f} m {full:>5.0f} m   (expected, on 2 busy cores)")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"{', '.join(SCENARIOS)}, or all"
    )
    parser.add_argument("--short", action="store_true", help="CI sizes (a few minutes in all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--list", action="store_true", help="the scenarios and their durations")
    args = parser.parse_args()
    if args.list:
        print(listing())
        return 0
    if args.scenarios == ["all"]:
        args.scenarios = []
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
