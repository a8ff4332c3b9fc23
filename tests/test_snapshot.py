"""The state file's content: dump → JSON → load gives back the same services."""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
import pytest

from kproxy.core import options as opt
from kproxy.core import snapshot
from kproxy.core.rollout import RolloutSplit
from kproxy.core.snapshot import FORMAT_VERSION, ServiceRecord
from kproxy.core.states import ServiceState

FULL = opt.DeploymentOptions(
    targets=("10.0.0.1:3000", "[::1]:3001", "web_1"),
    service=opt.ServiceOptions(
        hosts=("a.example", "*.b.example"), path_prefixes=("/api", "/"), strip_path_prefix=False
    ),
    target=opt.TargetOptions(
        health_check_path="/health",
        health_check_interval=0.25,
        health_check_timeout=2.0,
        health_check_port=4000,
        health_check_host="internal.example",
        target_timeout=45.5,
        forward_headers=False,
        log_request_headers=("Cache-Control", "User-Agent"),
        log_response_headers=("X-Runtime",),
    ),
    deploy_timeout=90.0,
    drain_timeout=0.0,
    force=True,
)
RECORDS = [
    ServiceRecord("full", FULL),
    ServiceRecord("plain", opt.DeploymentOptions(targets=("127.0.0.1:3000",))),
    ServiceRecord(
        "paused",
        opt.DeploymentOptions(targets=("b:1",), service=opt.ServiceOptions(hosts=("p.example",))),
        ServiceState.PAUSED,
        max_pause=12.5,
    ),
    ServiceRecord(
        "stopped",
        opt.DeploymentOptions(targets=("c:1",), service=opt.ServiceOptions(hosts=("s.example",))),
        ServiceState.STOPPED,
        message="Back at 5pm — ünïcode",
    ),
]


def through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


def test_round_trip_through_json_is_equal() -> None:
    records, errors = snapshot.load(through_json(snapshot.dump(RECORDS)))
    assert errors == []
    assert records == RECORDS


def test_pause_and_stop_state_survive() -> None:
    records, _ = snapshot.load(through_json(snapshot.dump(RECORDS)))
    by_name = {r.name: r for r in records}
    assert (by_name["paused"].state, by_name["paused"].max_pause) == (ServiceState.PAUSED, 12.5)
    assert by_name["stopped"].state is ServiceState.STOPPED
    assert by_name["stopped"].message == "Back at 5pm — ünïcode"
    assert by_name["plain"].state is ServiceState.RUNNING


def test_dump_carries_the_format_version() -> None:
    data = snapshot.dump(RECORDS)
    assert data["version"] == FORMAT_VERSION
    assert [entry["name"] for entry in data["services"]] == ["full", "plain", "paused", "stopped"]


def test_dump_of_nothing_loads_as_nothing() -> None:
    assert snapshot.load(through_json(snapshot.dump([]))) == ([], [])


@pytest.mark.parametrize(
    "data",
    [
        {"version": FORMAT_VERSION + 1, "services": []},
        {"version": 0},
        {"version": "1"},
        {"version": True},
        {"services": []},
        {},
    ],
)
def test_wrong_version_is_refused_and_says_why(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^unsupported state format version") as info:
        snapshot.load(data)
    assert f"(expected {FORMAT_VERSION})" in str(info.value)


@pytest.mark.parametrize("services", [None, {}, "x", 1])
def test_services_that_are_not_a_list(services: object) -> None:
    expected = f"'services' must be a list, got {type(services).__name__}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        snapshot.load({"version": FORMAT_VERSION, "services": services})


def _broken(change: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = through_json(snapshot.dump(RECORDS[1:2]))["services"][0]
    for path, value in change.items():
        *parents, last = path.split(".")
        node = entry
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return entry


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        (
            _broken({"options.targets": ["foo bar"]}),
            "service 'plain' skipped: invalid target 'foo bar'",
        ),
        (
            _broken({"options.targets": []}),
            "service 'plain' skipped: at least one --target is required",
        ),
        (_broken({"options": KeyError}), "service 'plain' skipped: missing field 'options'"),
        (_broken({"options.target": KeyError}), "service 'plain' skipped: missing field 'target'"),
        (_broken({"options.target.health_check_path": "up"}), "invalid --health-check-path 'up'"),
        (
            _broken({"options.target.bogus": 1}),
            "service 'plain' skipped: unknown option 'options.target.bogus' in the state file",
        ),
        (_broken({"options.deploy_timeout": -1}), "--deploy-timeout must be greater than zero"),
        (_broken({"options.deploy_timeout": None}), "service 'plain' skipped: "),
        (_broken({"options.service.hosts": ["a b"]}), 'invalid host "a b"'),
        (
            _broken({"state": "sleeping"}),
            "service 'plain' skipped: 'sleeping' is not a valid ServiceState",
        ),
        (_broken({"max_pause": "long"}), "service 'plain' skipped: "),
        (_broken({"name": "bad name"}), "service 'bad name' skipped: invalid service name"),
        (_broken({"name": 7}), "service entry #1 skipped: "),
        (_broken({"name": KeyError}), "service entry #1 skipped: missing field 'name'"),
        ([1, 2], "service entry #1 skipped: expected an object, got list"),
        (None, "service entry #1 skipped: expected an object, got NoneType"),
    ],
)
def test_one_broken_entry_is_skipped_and_the_others_load(entry: object, fragment: str) -> None:
    good = through_json(snapshot.dump(RECORDS))["services"]
    data = {"version": FORMAT_VERSION, "services": [good[0], entry, *good[1:]]}
    records, errors = snapshot.load(data)
    assert records == RECORDS
    assert len(errors) == 1
    assert fragment in errors[0]


def test_a_name_that_appears_twice_keeps_the_first() -> None:
    data = through_json(snapshot.dump([*RECORDS, ServiceRecord("plain", FULL)]))
    records, errors = snapshot.load(data)
    assert records == RECORDS
    assert errors == ["service 'plain' skipped: the name appears twice"]


def test_optional_state_fields_default() -> None:
    entry = _broken({"state": KeyError, "message": KeyError, "max_pause": KeyError})
    records, errors = snapshot.load({"version": FORMAT_VERSION, "services": [entry]})
    assert errors == []
    assert records == [RECORDS[1]]
    assert (records[0].state, records[0].message, records[0].max_pause) == (
        ServiceState.RUNNING,
        "",
        opt.DEFAULT_PAUSE_TIMEOUT,
    )


NEWER = (
    "in the state file (written by a newer kproxy?); start that kproxy again to keep the "
    "service as it was, or deploy the service again with this version, which drops the entry "
    "at its next save"
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options.target.health_check_method": "HEAD"},
         "unknown option 'options.target.health_check_method'"),
        ({"options.service.h2": True}, "unknown option 'options.service.h2'"),
        ({"options.rollout": {"percent": 10}}, "unknown option 'options.rollout'"),
        ({"options.target_weights": ["r:1"], "options.service.h2": True,
          "options.target.health_check_method": "HEAD"},
         "unknown options 'options.target_weights', 'options.service.h2', "
         "'options.target.health_check_method'"),
        # Named even when a known option is also bad: the unknown one says why.
        ({"options.service.h2": True, "options.targets": ["foo bar"]},
         "unknown option 'options.service.h2'"),
    ],
)  # fmt: skip
def test_an_option_this_version_does_not_know_is_named(
    change: dict[str, Any], message: str
) -> None:
    good = through_json(snapshot.dump(RECORDS))["services"]
    data = {"version": FORMAT_VERSION, "services": [*good, _broken(change)]}
    records, errors = snapshot.load(data)
    assert records == RECORDS
    assert errors == [f"service 'plain' skipped: {message} {NEWER}"]


def test_keys_beside_the_options_are_not_checked() -> None:
    # The worker channel (worker_protocol.py) sends entries with its own "targets" key.
    entry = _broken({"targets": [[1, "127.0.0.1:3000", "healthy"]]})
    records, errors = snapshot.load({"version": FORMAT_VERSION, "services": [entry]})
    assert errors == []
    assert records == [RECORDS[1]]


def test_read_targets_round_trip_and_default_for_older_files() -> None:
    options = opt.DeploymentOptions(
        targets=("127.0.0.1:3000",),
        read_targets=("127.0.0.1:3001", "127.0.0.1:3002"),
        service=opt.ServiceOptions(writer_affinity_timeout=0.5, read_target_websockets=True),
    )
    record = ServiceRecord("split", options, ServiceState.RUNNING, "", 30.0)
    data = through_json(snapshot.dump([record]))
    assert snapshot.load(data) == ([record], [])
    # A file written before read targets existed: none, and kamal-proxy's defaults.
    del data["services"][0]["options"]["read_targets"]
    del data["services"][0]["options"]["service"]["writer_affinity_timeout"]
    del data["services"][0]["options"]["service"]["read_target_websockets"]
    (loaded,), errors = snapshot.load(data)
    assert errors == []
    assert loaded.options.read_targets == ()
    assert loaded.options.service.writer_affinity_timeout == 3.0
    assert loaded.options.service.read_target_websockets is False


ROLLOUT = snapshot.RolloutRecord(
    targets=("127.0.0.1:4000", "127.0.0.1:4001"),
    read_targets=("127.0.0.1:4002",),
    drain_timeout=5.0,
    split=RolloutSplit(25, ("alice", "bob")),
)


@pytest.mark.parametrize(
    "rollout", [ROLLOUT, attrs.evolve(ROLLOUT, split=None), attrs.evolve(ROLLOUT, read_targets=())]
)
def test_a_rollout_round_trips(rollout: snapshot.RolloutRecord) -> None:
    record = ServiceRecord("web", RECORDS[1].options, rollout=rollout)
    assert snapshot.load(through_json(snapshot.dump([record]))) == ([record], [])


def test_a_file_written_before_rollouts_loads_without_one() -> None:
    data = through_json(snapshot.dump(RECORDS))
    for entry in data["services"]:
        del entry["rollout"]
    records, errors = snapshot.load(data)
    assert errors == []
    assert records == RECORDS
    assert all(r.rollout is None for r in records)


@pytest.mark.parametrize(
    ("rollout", "fragment"),
    [
        ({"targets": []}, "rollout: no targets"),
        ({"targets": ["bad target"]}, "invalid target"),
        ({"targets": ["a:1"], "split": {"percent": 101, "allowlist": []}}, "--percent must"),
        ({"targets": ["a:1"], "split": {"percent": "5", "allowlist": []}}, "percent"),
        ({"targets": ["a:1"], "split": {"percent": 5, "allowlist": [1]}}, "allowlist"),
        ("a:1", "rollout: expected an object"),
    ],
)
def test_a_broken_rollout_skips_its_service(rollout: object, fragment: str) -> None:
    data = through_json(snapshot.dump(RECORDS[:2]))
    data["services"][1]["rollout"] = rollout
    records, errors = snapshot.load(data)
    assert records == RECORDS[:1]
    assert len(errors) == 1
    assert fragment in errors[0]


def test_rollout_options_are_the_services_with_the_rollouts_targets() -> None:
    options = ROLLOUT.deployment_options(FULL)
    assert options.targets == ROLLOUT.targets
    assert options.read_targets == ROLLOUT.read_targets
    assert options.drain_timeout == 5.0
    assert (options.service, options.target) == (FULL.service, FULL.target)
    assert options.force is False


def test_excluded_metrics_paths_round_trip_and_default_for_older_files() -> None:
    service = opt.ServiceOptions(exclude_metrics_paths=("/up", "/health"))
    record = ServiceRecord("quiet", opt.DeploymentOptions(targets=("a:1",), service=service))
    data = through_json(snapshot.dump([record]))
    assert snapshot.load(data) == ([record], [])
    del data["services"][0]["options"]["service"]["exclude_metrics_paths"]
    (loaded,), errors = snapshot.load(data)
    assert errors == []
    assert loaded.options.service.exclude_metrics_paths == ()
