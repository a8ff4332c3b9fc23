"""kproxy's own metrics (``kproxy_*``), beside kamal-proxy's request metrics: what a deploy and
its targets look like, which kamal-proxy does not expose.

They are the deciding process's: one process, or the supervisor of ``--workers N`` (its
router owns the health checks and runs the commands), never a worker. Target health is read
from the router when scraped, so it costs nothing between scrapes; commands are counted as
they finish.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kproxy.core import commands as cmd
from kproxy.runtime.router import Router

# Seconds: a command may wait for health checks and a drain (30 s each by default).
COMMAND_BUCKETS: Final = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@attrs.define(eq=False)
class TargetHealthCollector(Collector):
    """``kproxy_target_healthy`` and ``kproxy_target_health_changed_timestamp_seconds`` for
    every target of every service (``group``: ``main``, or ``rollout`` for a rollout group's),
    as the router knows them now."""

    router: Router

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "kproxy_target_healthy",
            "Whether a target passes its health checks (1) or not (0).",
            labels=("service", "target", "role", "group"),
        )
        since = GaugeMetricFamily(
            "kproxy_target_health_changed_timestamp_seconds",
            "When a target's health state last changed (Unix time).",
            labels=("service", "target", "role", "group"),
        )
        for service in list(self.router.services.values()):
            rollout = service.rollout.targets if service.rollout is not None else []
            for group, targets in (("main", service.targets), ("rollout", rollout)):
                for target in targets:
                    role = "reader" if target.read_only else "writer"
                    labels = (service.name, target.name, role, group)
                    healthy.add_metric(labels, 1.0 if target.healthy else 0.0)
                    since.add_metric(labels, target.health_since)
        yield healthy
        yield since


@attrs.define(eq=False)
class CommandMetrics:
    """``kproxy_commands_total`` and ``kproxy_command_duration_seconds``: the control
    socket's commands by command, service and outcome (``ok``: answered OK; ``error``: ERR)."""

    registry: CollectorRegistry
    finished: Counter = attrs.field(init=False)
    durations: Histogram = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        labels = ("command", "service", "outcome")
        self.finished = Counter(
            "kproxy_commands",
            "Control commands finished, by command, service and outcome.",
            labels,
            registry=self.registry,
        )
        self.durations = Histogram(
            "kproxy_command_duration_seconds",
            "How long control commands took (a deploy: health wait, cutover and drain).",
            labels,
            registry=self.registry,
            buckets=COMMAND_BUCKETS,
        )

    def record(self, command: cmd.Command, ok: bool, seconds: float) -> None:
        labels = (command_name(command), getattr(command, "service", ""), "ok" if ok else "error")
        self.finished.labels(*labels).inc()
        self.durations.labels(*labels).observe(seconds)


def command_name(command: cmd.Command) -> str:
    """``Deploy`` → ``deploy``, ``RolloutSet`` → ``rollout set``: the command's own words."""
    name = type(command).__name__
    return "".join(f" {c.lower()}" if c.isupper() else c for c in name).strip()
