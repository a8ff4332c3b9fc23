"""The state file's content: services ⇄ JSON-ready dicts, with a format version.

One service that cannot be restored is reported and skipped; it never takes the others down.

Options a newer kproxy added are refused by name rather than ignored: the format version only
changes when old files cannot be read, so an additive option arrives under the same version,
and dropping it could serve the service differently from how it was deployed (other hosts,
other targets). Keys beside ``options`` in an entry are not checked: the worker channel
(``worker_protocol.py``) adds its own there.

A service in a rollout has a ``rollout`` entry (its rollout group and split, see
:class:`RolloutRecord`); files written before rollouts existed have none and load as before.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from kproxy.core.options import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_PAUSE_TIMEOUT,
    DeploymentOptions,
    ServiceOptions,
    TargetOptions,
    validate_service_name,
)
from kproxy.core.rollout import RolloutSplit
from kproxy.core.states import ServiceState

FORMAT_VERSION: Final = 1
# Services whose encoded entries are kept (records are immutable, so an entry never goes stale;
# past this many services a save encodes each again, as if nothing were kept).
ENTRY_CACHE: Final = 16384


@attrs.frozen
class RolloutRecord:
    """A service's rollout group (``rollout deploy``) and its split (``rollout set``; None
    until then: the group gets no traffic)."""

    targets: tuple[str, ...]
    read_targets: tuple[str, ...] = ()
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # the rollout deploy's: used by rollout stop
    split: RolloutSplit | None = None

    @classmethod
    def of(cls, options: DeploymentOptions, split: RolloutSplit | None) -> RolloutRecord:
        """The record of a rollout group deployed with ``options``, split by ``split``."""
        return cls(options.targets, options.read_targets, options.drain_timeout, split)

    def deployment_options(self, main: DeploymentOptions) -> DeploymentOptions:
        """The group's options: the service's (``main``), with the rollout's targets and drain
        timeout (kamal-proxy builds the group with the service's own options)."""
        return attrs.evolve(
            main,
            targets=self.targets,
            read_targets=self.read_targets,
            drain_timeout=self.drain_timeout,
            force=False,
        )


@attrs.frozen
class ServiceRecord:
    name: str
    options: DeploymentOptions
    state: ServiceState = ServiceState.RUNNING
    message: str = ""
    max_pause: float = DEFAULT_PAUSE_TIMEOUT
    rollout: RolloutRecord | None = None


def dump(records: Iterable[ServiceRecord]) -> dict[str, Any]:
    """The state's content as JSON-ready dicts (:func:`dump_text` is the file's text)."""
    return {"version": FORMAT_VERSION, "services": [dict(entry(r)) for r in records]}


def dump_text(records: Iterable[ServiceRecord]) -> str:
    """The state file's text: :func:`dump` as JSON, one service per line (keys sorted).

    Each service's line is kept (:func:`_entry_text`) while its record is unchanged, so a save
    of n services re-encodes only the services that changed, not all n."""
    lines = ",\n".join(_entry_text(r) for r in records)
    return f'{{"version": {FORMAT_VERSION}, "services": [\n{lines}\n]}}\n'


@functools.lru_cache(maxsize=ENTRY_CACHE)
def entry(record: ServiceRecord) -> Mapping[str, Any]:
    """A service's entry in the state (read-only: it is shared while the record is cached;
    copy it to add to it, as the worker channel does)."""
    return {
        "name": record.name,
        "state": record.state.value,
        "message": record.message,
        "max_pause": record.max_pause,
        "options": attrs.asdict(record.options),
        "rollout": _dump_rollout(record.rollout),
    }


@functools.lru_cache(maxsize=ENTRY_CACHE)
def _entry_text(record: ServiceRecord) -> str:
    return json.dumps(entry(record), sort_keys=True)


def _dump_rollout(rollout: RolloutRecord | None) -> dict[str, Any] | None:
    if rollout is None:
        return None
    split = rollout.split
    return {
        "targets": list(rollout.targets),
        "read_targets": list(rollout.read_targets),
        "drain_timeout": rollout.drain_timeout,
        "split": None
        if split is None
        else {"percent": split.percent, "allowlist": list(split.allowlist)},
    }


def _load_rollout(entry: object) -> RolloutRecord | None:
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise TypeError(f"rollout: expected an object, got {type(entry).__name__}")
    split = entry.get("split")
    if split is not None:
        allowlist = split["allowlist"]
        if not isinstance(allowlist, list) or not all(isinstance(v, str) for v in allowlist):
            raise TypeError("rollout.split.allowlist: expected a list of strings")
        percent = split["percent"]
        if type(percent) is not int:
            raise TypeError(f"rollout.split.percent: expected an integer, got {percent!r}")
        split = RolloutSplit(percent, tuple(allowlist))
    targets = tuple(str(t) for t in entry["targets"])
    if not targets:
        raise ValueError("rollout: no targets")
    return RolloutRecord(
        targets=targets,
        read_targets=tuple(str(t) for t in entry.get("read_targets", ())),
        drain_timeout=float(entry.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT)),
        split=split,
    )


def load(data: Mapping[str, Any]) -> tuple[list[ServiceRecord], list[str]]:
    """Read a state file's content back.

    Returns:
      The services that could be restored, and one error message per skipped entry.

    Raises:
      ValueError: the file as a whole is unusable (another format version, no service list).
        The caller must not overwrite it: it may belong to another kproxy version.
    """
    version = data.get("version") if isinstance(data, Mapping) else None
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(
            f"unsupported state format version {version!r} (expected {FORMAT_VERSION})"
        )
    services = data.get("services", [])
    if not isinstance(services, list):
        raise ValueError(f"'services' must be a list, got {type(services).__name__}")
    records: list[ServiceRecord] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(services):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        label = f"service {name!r}" if isinstance(name, str) else f"service entry #{index}"
        try:
            record = _load_service(entry)
        except KeyError as exc:
            errors.append(f"{label} skipped: missing field {exc}")
        except (TypeError, ValueError, AttributeError) as exc:
            errors.append(f"{label} skipped: {exc}")
        else:
            if record.name in seen:
                errors.append(f"{label} skipped: the name appears twice")
                continue
            seen.add(record.name)
            records.append(record)
    return records, errors


def _load_service(entry: Mapping[str, Any]) -> ServiceRecord:
    if not isinstance(entry, Mapping):
        raise TypeError(f"expected an object, got {type(entry).__name__}")
    options = entry["options"]
    if unknown := _unknown_options(options):
        names = ", ".join(repr(name) for name in unknown)
        raise ValueError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {names} in the state file "
            "(written by a newer kproxy?); start that kproxy again to keep the service as it was, "
            "or deploy the service again with this version, which drops the entry at its next save"
        )
    record = ServiceRecord(
        name=validate_service_name(entry["name"]),
        options=DeploymentOptions(
            targets=tuple(options["targets"]),
            service=ServiceOptions(**_tuples(options["service"])),
            target=TargetOptions(**_tuples(options["target"])),
            deploy_timeout=float(options["deploy_timeout"]),
            drain_timeout=float(options["drain_timeout"]),
            force=bool(options["force"]),
            read_targets=tuple(options.get("read_targets", ())),
        ),
        state=ServiceState(entry.get("state", "running")),
        message=str(entry.get("message", "")),
        max_pause=float(entry.get("max_pause", DEFAULT_PAUSE_TIMEOUT)),
        rollout=_load_rollout(entry.get("rollout")),
    )
    if record.rollout is not None:
        record.rollout.deployment_options(record.options)  # its targets are checked there
    return record


def _unknown_options(options: object) -> list[str]:
    """The paths of the keys under ``options`` that these option classes do not have."""
    unknown: list[str] = []
    for path, fields, cls in (
        ("options", options, DeploymentOptions),
        ("options.service", _get(options, "service"), ServiceOptions),
        ("options.target", _get(options, "target"), TargetOptions),
    ):
        if isinstance(fields, Mapping):
            known = attrs.fields_dict(cls)
            unknown += [f"{path}.{key}" for key in fields if key not in known]
    return unknown


def _get(options: object, key: str) -> object:
    return options.get(key) if isinstance(options, Mapping) else None


def _tuples(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
