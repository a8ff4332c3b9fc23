"""The ``list`` answer: rows of services, as a text table or one JSON line."""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs


@attrs.frozen
class ServiceInfo:
    name: str
    hosts: tuple[str, ...]
    path_prefixes: tuple[str, ...]
    targets: tuple[str, ...]
    state: str
    tls: bool = False


HEADINGS = ("SERVICE", "HOST", "PATH", "TARGET", "STATE", "TLS")


def table_lines(services: Sequence[ServiceInfo]) -> list[str]:
    """Aligned columns; ``*`` stands for "any host", as in the README's examples."""
    rows = [HEADINGS] + [
        (
            s.name,
            ",".join(s.hosts) or "*",
            ",".join(s.path_prefixes),
            ",".join(s.targets),
            s.state,
            "yes" if s.tls else "no",
        )
        for s in services
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADINGS))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def json_line(services: Sequence[ServiceInfo]) -> str:
    return json.dumps({"services": [attrs.asdict(s) for s in services]}, separators=(",", ":"))
