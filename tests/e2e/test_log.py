"""runtime/log.py and runtime/access_log.py: the access line, as json would write it.

The usual access line is formatted from a template (RequestLog.members, joined to the
logger's context by Logger.access_members): the text must stay json.dumps(default=str) of
the record, whatever the fields and the context hold.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest

from kproxy.runtime import access_log
from kproxy.runtime.access_log import RequestLog
from kproxy.runtime.exchange import RequestHead
from kproxy.runtime.log import ACCESS_FIELDS, Logger
from tests.helpers import LogCapture


class Scheme(str, enum.Enum):  # noqa: UP042 (its str() is not its value)
    HTTP = "http"


def usual_access_fields() -> dict[str, Any]:
    request = RequestHead(
        b"GET",
        b"/p?q=1",
        [(b"host", b"App.example:80"), (b"user-agent", b"caf\xe9")],
        b"1.1",
        frozenset(),
    )
    log = RequestLog(
        request, port=80, scheme="http", client_ip="127.0.0.1", client_port=5000, now=1.0
    )
    log.status = 200
    fields = log.line(2.5)
    assert tuple(fields) == ACCESS_FIELDS  # the usual line: the template's fields
    return fields


def assert_written_as_json(
    logs: LogCapture, context: dict[str, Any], fields: dict[str, Any]
) -> None:
    line = logs.lines.pop()
    record = {"time": json.loads(line)["time"], "level": "INFO", "msg": "Request"}
    assert line == json.dumps({**record, **context, **fields}, default=str)


@pytest.mark.parametrize(
    ("context", "change"),
    [
        ({}, {}),
        ({"worker": 3}, {}),
        ({"worker": 3}, {"query": 'caf\u00e9 "q" \\ \x00 \u2028 \ud800 \U0001f600'}),
        ({"worker": True, "level": "L"}, {}),
        ({"worker": 1.5, "time": "t", "host": "h"}, {}),
        ({}, {"status": True}),
        ({}, {"duration": 1.5}),
        ({}, {"service": None}),
        ({}, {"req_x_custom": "v"}),
        # plain ASCII everywhere (the usual line), then one value that needs escaping each
        ({}, {"user_agent": "curl/8.5.0"}),
        ({"worker": 3}, {"user_agent": "curl/8.5.0", "query": "a=1&b=%22"}),
        ({}, {"user_agent": "x", "path": '/a"b'}),
        ({}, {"user_agent": "x", "query": "a\\b"}),
        ({}, {"user_agent": "x", "method": "G\x7fT"}),
        ({}, {"user_agent": "x", "host": "\t"}),
        ({}, {"user_agent": "x", "scheme": Scheme.HTTP}),  # a str subclass json spells its way
        ({}, {"user_agent": "x", "port": 443}),
    ],
)
def test_access_line_is_what_json_writes(context: dict[str, Any], change: dict[str, Any]) -> None:
    """Logger.access writes an access line as json.dumps(default=str) of the record, whatever
    the fields and the context hold."""
    logs = LogCapture()
    fields = usual_access_fields() | change
    Logger(out=logs, context=context).access(fields)  # type: ignore[arg-type]
    assert_written_as_json(logs, context, fields)


def test_context_is_fixed_when_the_logger_is_made() -> None:
    """The logger copies its context when it is made: the context cannot change."""
    logs = LogCapture()
    context = {"worker": 1}
    logger = Logger(out=logs, context=context)  # type: ignore[arg-type]
    context["worker"] = 2  # the caller's dict was copied
    with pytest.raises(TypeError):
        logger.context["worker"] = 3  # type: ignore[index]
    fields = usual_access_fields()
    logger.access(fields)
    assert_written_as_json(logs, {"worker": 1}, fields)


@pytest.mark.parametrize("context", [{}, {"worker": 3}, {"worker": 1.5}])
@pytest.mark.parametrize(
    "change",
    [
        {},
        {"user_agent": "caf\u00e9"},
        {"path": '/a"b'},
        {"query": "a\\b"},
        {"host": "\t"},
        {"request_id": "id\x7f"},
        {"remote_addr": "\u2028"},
    ],
)
def test_a_request_log_is_written_as_json_writes_its_line(
    context: dict[str, Any], change: dict[str, str]
) -> None:
    """The pipeline's way: RequestLog.members to Logger.access_members, else Logger.access of
    its line. Either way the text is json.dumps of the line; values json escapes take the
    first too (escaped as json does), a context the template cannot spell the second."""
    request = RequestHead(b"GET", b"/p?q=1", [(b"host", b"app.example")], b"1.1", frozenset())
    log = RequestLog(
        request, port=80, scheme="http", client_ip="127.0.0.1", client_port=5000, now=1.0
    )
    log.status, log.body_bytes, log.headers = 404, 9, [(b"content-type", b"text/html")]
    for name, value in change.items():
        setattr(log, name, value)
    logs = LogCapture()
    logger = Logger(out=logs, context=context)  # type: ignore[arg-type]
    members = log.members(2.5)
    fast = members is not None and logger.access_members(members)
    if not fast:
        logger.access(log.line(2.5))
    assert_written_as_json(logs, context, log.line(2.5))
    assert fast == (context != {"worker": 1.5})


def test_hosts_are_remembered_within_a_bound() -> None:
    """RequestLog keeps request_host() of the Host values it saw, and no more than
    MAX_HOSTS_KEPT of them: made-up hosts cannot grow it."""
    for k in range(access_log.MAX_HOSTS_KEPT + 10):
        host = b"H%d.Example:8080" % k
        request = RequestHead(b"GET", b"/", [(b"host", host)], b"1.1", frozenset())
        assert RequestLog(request, 80, "http", "", 0, 0.0).host == f"h{k}.example"
        assert 0 < len(access_log._HOSTS) <= access_log.MAX_HOSTS_KEPT
