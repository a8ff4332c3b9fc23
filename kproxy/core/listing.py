"""The ``list`` answer: rows of services, as a text table or one JSON line.

A service in a rollout (runtime/rollouts.py) also shows its rollout group and split: in a
ROLLOUT column, present only when some service has one, and as ``rollout`` in the JSON
(absent otherwise, as kamal-proxy omits its empty ``rollout_targets``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from kproxy.core.snapshot import RolloutRecord


@attrs.frozen
class ServiceInfo:
    name: str
    hosts: tuple[str, ...]
    path_prefixes: tuple[str, ...]
    targets: tuple[str, ...]
    state: str
    tls: bool = False
    rollout: RolloutRecord | None = None


HEADINGS = ("SERVICE", "HOST", "PATH", "TARGET", "STATE", "TLS")
ROLLOUT_HEADING = "ROLLOUT"


def table_lines(services: Sequence[ServiceInfo]) -> list[str]:
    """Aligned columns; ``*`` stands for "any host", as in the README's examples."""
    headings: tuple[str, ...] = HEADINGS
    if any(s.rollout is not None for s in services):
        headings += (ROLLOUT_HEADING,)
    rows: list[tuple[str, ...]] = [headings] + [
        (
            s.name,
            ",".join(s.hosts) or "*",
            ",".join(s.path_prefixes),
            ",".join(s.targets),
            s.state,
            "yes" if s.tls else "no",
            rollout_cell(s.rollout),
        )[: len(headings)]
        for s in services
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headings))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def rollout_cell(rollout: RolloutRecord | None) -> str:
    """``c:3 10%, list 1,2``; ``c:3 no traffic`` before ``rollout set``; empty: no rollout."""
    if rollout is None:
        return ""
    targets = ",".join(rollout.targets + rollout.read_targets)
    split = rollout.split
    if split is None:
        return f"{targets} no traffic"
    listed = f", list {','.join(split.allowlist)}" if split.allowlist else ""
    return f"{targets} {split.percent}%{listed}"


def json_line(services: Sequence[ServiceInfo]) -> str:
    return json.dumps({"services": [_json_service(s) for s in services]}, separators=(",", ":"))


def _json_service(service: ServiceInfo) -> dict[str, Any]:
    fields = attrs.asdict(service, filter=lambda a, _v: a.name != "rollout")
    rollout = service.rollout
    if rollout is not None:
        split = rollout.split
        fields["rollout"] = {
            "targets": list(rollout.targets),
            "read_targets": list(rollout.read_targets),
            "percent": split.percent if split is not None else None,
            "list": list(split.allowlist) if split is not None else [],
        }
    return fields
