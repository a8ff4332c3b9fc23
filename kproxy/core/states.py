"""Service states.

A paused or stopped service still answers its health-check path with 200, so that a load
balancer in front of the proxy keeps the host. ``resume`` is the only way back to running;
the newest of ``pause`` and ``stop`` wins, as in kamal-proxy's PauseController.
"""

from __future__ import annotations

import enum


class ServiceState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class TargetHealth(enum.Enum):
    ADDING = "adding"  # deployed, no check has passed yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"  # replaced: finishing its in-flight requests
