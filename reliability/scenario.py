"""What every scenario returns, and the command line each one has on its own.

A scenario module states its goal in its docstring and ``GOAL``, and defines
``run(short: bool, seed: int) -> Result``. ``python -m reliability.<name> [--short] [--seed N]``
runs it alone; ``python -m reliability`` runs them all (reliability/__main__.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import attrs


@attrs.define
class Result:
    name: str
    figure: str  # what was measured, in one line
    goal: str  # what it had to be
    passed: bool
    details: list[str] = attrs.field(factory=list)  # evidence for a miss, a few lines
    seconds: float = 0.0
    skipped: bool = False  # could not run here (says why in ``figure``); not a miss

    def line(self) -> str:
        verdict = "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}  {self.name:<14} {self.figure}  [goal: {self.goal}]  ({self.seconds:.0f}s)"
        )


Scenario = Callable[[bool, int], Result]


def timed(run: Scenario, short: bool, seed: int, name: str, goal: str) -> Result:
    """Run one scenario; an exception is a miss with its message, never a crash of the run."""
    started = time.monotonic()
    try:
        result = run(short, seed)
    except Exception as exc:  # a scenario that cannot finish has missed its goal
        result = Result(name, f"did not finish: {type(exc).__name__}: {exc}"[:300], goal, False)
    result.seconds = time.monotonic() - started
    return result


def standalone(name: str, goal: str, run: Scenario) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m reliability.{name}")
    parser.add_argument("--short", action="store_true", help="the CI size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = timed(run, args.short, args.seed, name, goal)
    print(result.line())
    for detail in result.details:
        print(f"      {detail}")
    sys.exit(0 if result.passed else 1)
