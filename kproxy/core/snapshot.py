"""The state file's content: services ⇄ JSON-ready dicts, with a format version.

One service that cannot be restored is reported and skipped; it never takes the others down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from kproxy.core.options import DeploymentOptions, ServiceOptions, TargetOptions
from kproxy.core.states import ServiceState

FORMAT_VERSION: Final = 1


@attrs.frozen
class ServiceRecord:
    name: str
    options: DeploymentOptions
    state: ServiceState = ServiceState.RUNNING
    message: str = ""
    max_pause: float = 30.0


def dump(records: Iterable[ServiceRecord]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "services": [
            {
                "name": r.name,
                "state": r.state.value,
                "message": r.message,
                "max_pause": r.max_pause,
                "options": attrs.asdict(r.options),
            }
            for r in records
        ],
    }


def load(data: Mapping[str, Any]) -> tuple[list[ServiceRecord], list[str]]:
    """Returns the services that could be restored, and one error message per skipped one."""
    if not isinstance(data, Mapping) or data.get("version") != FORMAT_VERSION:
        version = data.get("version") if isinstance(data, Mapping) else None
        return [], [f"unsupported state format version {version!r} (expected {FORMAT_VERSION})"]
    records: list[ServiceRecord] = []
    errors: list[str] = []
    for entry in data.get("services", []):
        try:
            records.append(_load_service(entry))
        except (KeyError, TypeError, ValueError) as exc:
            name = entry.get("name", "?") if isinstance(entry, Mapping) else "?"
            errors.append(f"service {name!r} skipped: {exc!r}")
    return records, errors


def _load_service(entry: Mapping[str, Any]) -> ServiceRecord:
    options = entry["options"]
    return ServiceRecord(
        name=str(entry["name"]),
        options=DeploymentOptions(
            targets=tuple(options["targets"]),
            service=ServiceOptions(**_tuples(options["service"])),
            target=TargetOptions(**_tuples(options["target"])),
            deploy_timeout=float(options["deploy_timeout"]),
            drain_timeout=float(options["drain_timeout"]),
            force=bool(options["force"]),
        ),
        state=ServiceState(entry.get("state", "running")),
        message=str(entry.get("message", "")),
        max_pause=float(entry.get("max_pause", 30.0)),
    )


def _tuples(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
