"""The ``list`` answer: an aligned table, or one JSON line."""

from __future__ import annotations

import json

import pytest

from kproxy.core.listing import (
    HEADINGS,
    ROLLOUT_HEADING,
    ServiceInfo,
    json_line,
    rollout_cell,
    table_lines,
)
from kproxy.core.rollout import RolloutSplit
from kproxy.core.snapshot import RolloutRecord

SERVICES = [
    ServiceInfo("web", (), ("/",), ("127.0.0.1:3001",), "running"),
    ServiceInfo(
        "api-longer-name",
        ("api.example", "*.api.example"),
        ("/v1", "/v2"),
        ("10.0.0.1:80", "[::1]:3000"),
        "paused",
        tls=True,
    ),
]


def _columns(line: str, starts: list[int]) -> list[str]:
    ends = [*starts[1:], None]
    return [line[s:e].strip() for s, e in zip(starts, ends, strict=True)]


def test_table_columns_are_aligned() -> None:
    lines = table_lines(SERVICES)
    header = lines[0]
    starts = [header.index(heading) for heading in HEADINGS]
    assert starts == sorted(starts)
    assert _columns(header, starts) == list(HEADINGS)
    assert _columns(lines[1], starts) == ["web", "*", "/", "127.0.0.1:3001", "running", "no"]
    assert _columns(lines[2], starts) == [
        "api-longer-name",
        "api.example,*.api.example",
        "/v1,/v2",
        "10.0.0.1:80,[::1]:3000",
        "paused",
        "yes",
    ]
    for line in lines[1:]:  # every cell starts at its heading, after two spaces
        for start in starts[1:]:
            assert line[start - 2 : start] == "  "
            assert line[start] != " "


def test_table_lines_have_no_trailing_spaces() -> None:
    assert all(line == line.rstrip() for line in table_lines(SERVICES))


def test_star_stands_for_any_host() -> None:
    assert table_lines(SERVICES[:1])[1].split() == [
        "web",
        "*",
        "/",
        "127.0.0.1:3001",
        "running",
        "no",
    ]


def test_empty_table_is_the_heading_only() -> None:
    assert table_lines([]) == ["  ".join(HEADINGS)]


def test_json_line_parses() -> None:
    line = json_line(SERVICES)
    assert "\n" not in line
    assert json.loads(line) == {
        "services": [
            {
                "name": "web",
                "hosts": [],
                "path_prefixes": ["/"],
                "targets": ["127.0.0.1:3001"],
                "state": "running",
                "tls": False,
            },
            {
                "name": "api-longer-name",
                "hosts": ["api.example", "*.api.example"],
                "path_prefixes": ["/v1", "/v2"],
                "targets": ["10.0.0.1:80", "[::1]:3000"],
                "state": "paused",
                "tls": True,
            },
        ]
    }


def test_json_line_of_nothing() -> None:
    assert json.loads(json_line([])) == {"services": []}


def test_json_line_is_ascii_so_it_cannot_break_the_line_protocol() -> None:
    line = json_line(
        [ServiceInfo("w", ("xn--bcher-kva.example",), ("/\u2028",), ("a:1",), "running")]
    )
    assert line.isascii()
    assert json.loads(line)["services"][0]["path_prefixes"] == ["/\u2028"]


IN_ROLLOUT = ServiceInfo(
    "app",
    ("app.example",),
    ("/",),
    ("127.0.0.1:3001",),
    "running",
    rollout=RolloutRecord(("127.0.0.1:4001",), split=RolloutSplit(10, ("1", "2"))),
)


def test_a_rollout_adds_a_column_with_its_group_and_split() -> None:
    lines = table_lines([*SERVICES, IN_ROLLOUT])
    assert lines[0].split() == [*HEADINGS, ROLLOUT_HEADING]
    assert lines[-1].endswith("127.0.0.1:4001 10%, list 1,2")
    assert lines[1].split()[-1] == "no"  # a service without one: an empty cell
    assert all(line == line.rstrip() for line in lines)


def test_no_rollout_no_column() -> None:
    assert ROLLOUT_HEADING not in table_lines(SERVICES)[0]


@pytest.mark.parametrize(
    ("rollout", "cell"),
    [
        (None, ""),
        (RolloutRecord(("a:1", "b:2")), "a:1,b:2 no traffic"),
        (RolloutRecord(("a:1",), ("r:1",), split=RolloutSplit(0)), "a:1,r:1 0%"),
        (RolloutRecord(("a:1",), split=RolloutSplit(100, ("x",))), "a:1 100%, list x"),
    ],
)
def test_rollout_cell(rollout: RolloutRecord | None, cell: str) -> None:
    assert rollout_cell(rollout) == cell


def test_json_line_shows_a_rollout_and_omits_none() -> None:
    services = json.loads(json_line([SERVICES[0], IN_ROLLOUT]))["services"]
    assert "rollout" not in services[0]
    assert services[1]["rollout"] == {
        "targets": ["127.0.0.1:4001"],
        "read_targets": [],
        "percent": 10,
        "list": ["1", "2"],
    }
