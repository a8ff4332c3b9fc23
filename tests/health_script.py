"""A scripted health checker for deploy, drain and pause tests on trio's MockClock.

``TargetSet`` and ``Router`` take the health check as a callable (``health.check_once`` by
default); these tests pass a ``HealthScript`` instead: no sockets, so ``autojump_clock`` can
run a 30 s deploy timeout in milliseconds and the assertions can name exact virtual times.
"""

from __future__ import annotations

from typing import Any, TextIO, cast

import attrs
import trio

from kproxy.core.addresses import Address
from kproxy.core.options import DeploymentOptions, TargetOptions
from kproxy.runtime.health import CheckResult
from kproxy.runtime.log import Logger
from kproxy.runtime.target import Target
from tests.helpers import LogCapture

CHECK_TIME = 0.01  # seconds each scripted check takes (a real one is never instant)


@attrs.define
class HealthScript:
    """Answers healthy for the target names in ``healthy``; records each check's time."""

    healthy: set[str] = attrs.field(factory=set)
    checks: list[tuple[float, str]] = attrs.field(factory=list)

    async def __call__(self, target: Target) -> CheckResult:
        self.checks.append((trio.current_time(), target.name))
        await trio.sleep(CHECK_TIME)
        if target.name in self.healthy:
            return CheckResult(True, "200 from /up")
        return CheckResult(False, "503 from /up")

    def count(self, name: str) -> int:
        return sum(1 for _, checked in self.checks if checked == name)


def options(*targets: str, **kwargs: Any) -> DeploymentOptions:
    """Default deadlines (30 s deploy, 30 s drain, 1 s interval) unless given."""
    return DeploymentOptions(targets=targets, **kwargs)


def target(name: str) -> Target:
    host, _, port = name.partition(":")
    return Target(Address(host, int(port)), TargetOptions())


def logger(logs: LogCapture | None = None) -> Logger:
    """A Logger writing to ``logs`` (a fresh capture if none)."""
    return Logger(out=cast(TextIO, logs if logs is not None else LogCapture()))
