"""The commands as values: what the parser builds and the proxy executes.

Each is frozen; ``Command`` is their union. The CLI, the control channel and embedders
(``kproxy.parse_command``, or these classes directly) all hand the runtime one of these.
"""

from __future__ import annotations

import attrs

from kproxy.core import options as opt
from kproxy.core.rollout import RolloutSplit


@attrs.frozen
class Deploy:
    service: str
    options: opt.DeploymentOptions


@attrs.frozen
class Remove:
    service: str


@attrs.frozen
class Pause:
    service: str
    drain_timeout: float = opt.drain_timeout_field()
    max_pause: float = attrs.field(
        default=opt.DEFAULT_PAUSE_TIMEOUT, validator=opt.positive("max-pause")
    )


@attrs.frozen
class Stop:
    service: str
    drain_timeout: float = opt.drain_timeout_field()
    message: str = ""


@attrs.frozen
class Resume:
    service: str


@attrs.frozen
class RolloutDeploy:
    """``rollout deploy``: a rollout group beside the service's targets, with no traffic yet."""

    service: str
    targets: tuple[str, ...]  # as DeploymentOptions normalizes them (the parser does)
    read_targets: tuple[str, ...] = ()
    deploy_timeout: float = opt.deploy_timeout_field()
    drain_timeout: float = opt.drain_timeout_field()


@attrs.frozen
class RolloutSet:
    """``rollout set``: which requests go to the rollout group (core/rollout.py)."""

    service: str
    split: RolloutSplit


@attrs.frozen
class RolloutStop:
    """``rollout stop``: every request to the main group; the rollout group drained."""

    service: str


@attrs.frozen
class List:
    json: bool = False


@attrs.frozen
class Help:
    topic: str = ""
    markdown: bool = False


@attrs.frozen
class Version:
    pass


@attrs.frozen
class Run:
    options: opt.RunOptions


Command = (
    Deploy
    | Remove
    | Pause
    | Stop
    | Resume
    | RolloutDeploy
    | RolloutSet
    | RolloutStop
    | List
    | Help
    | Version
    | Run
)
