"""Buffering decisions (kproxy.core.buffering) as tables, and the spool that carries them out.

The policy cases mirror basecamp/kamal-proxy: internal/server/buffer_test.go (in memory below
the limit, to disk above it, refused past the maximum) as sequences of ``feed(n)`` calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kproxy.core.buffering import (
    BufferAction,
    BufferPolicy,
    buffered_request_headers,
    buffered_response_headers,
    declared_length,
    has_request_body,
    response_streams,
)
from kproxy.core.headers import HeaderList
from kproxy.errors import BodyTooLarge, ResponseTooLarge
from kproxy.runtime.buffer import SpooledBody

C, S, R = BufferAction.CONTINUE, BufferAction.SPILL, BufferAction.REJECT


@pytest.mark.parametrize(
    ("memory_limit", "max_body", "feeds", "actions"),
    [
        # Within memory: never spills.
        (10, 0, [3, 3, 4], [C, C, C]),
        (10, 0, [10], [C]),
        # Past memory: spills once, on the feed that crosses, then keeps writing to the file.
        (10, 0, [6, 5, 100], [C, S, C]),
        (10, 0, [11], [S]),
        (1, 0, [0, 1, 1], [C, C, S]),
        # Unlimited body (0): any size is accepted.
        (4, 0, [1 << 30, 1 << 30], [S, C]),
        # Past the maximum: refused, whether in memory or already spilled.
        (10, 8, [5, 4], [C, R]),
        (10, 20, [15, 5], [S, C]),
        (10, 20, [15, 6], [S, R]),
        (10, 20, [21], [R]),
        # Exactly the maximum is still accepted.
        (100, 8, [8], [C]),
    ],
)
def test_feed(memory_limit: int, max_body: int, feeds: list[int], actions: list[object]) -> None:
    policy = BufferPolicy(memory_limit, max_body)
    assert [policy.feed(n) for n in feeds] == actions
    assert policy.size == sum(feeds)
    assert policy.spilled == (S in actions)
    assert policy.rejected == (R in actions)


@pytest.mark.parametrize(
    ("max_body", "declared", "action"),
    [
        (0, None, C),
        (0, 1 << 62, C),
        (100, None, C),  # chunked: judged as it arrives
        (100, 100, C),
        (100, 101, R),
        (100, 0, C),
    ],
)
def test_declare(max_body: int, declared: int | None, action: object) -> None:
    policy = BufferPolicy(1024, max_body)
    assert policy.declare(declared) is action
    assert policy.rejected == (action is R)


def test_feed_after_reject_is_a_bug() -> None:
    policy = BufferPolicy(10, 5)
    assert policy.feed(6) is R
    with pytest.raises(RuntimeError, match="after REJECT"):
        policy.feed(1)
    declared = BufferPolicy(10, 5)
    assert declared.declare(6) is R
    with pytest.raises(RuntimeError):
        declared.feed(1)


@pytest.mark.parametrize(
    ("memory_limit", "max_body"), [(0, 0), (-1, 0), (1, -1)], ids=["zero", "negative", "max"]
)
def test_policy_limits_are_validated(memory_limit: int, max_body: int) -> None:
    with pytest.raises(ValueError, match="must"):
        BufferPolicy(memory_limit, max_body)


def test_negative_feed_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        BufferPolicy(10).feed(-1)


def test_errors_carry_kamal_proxy_statuses() -> None:
    assert BodyTooLarge("x").status_hint == 413
    assert ResponseTooLarge("x").status_hint == 500


# --- header rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "length", "has_body"),
    [
        ([], None, False),
        ([(b"content-length", b"0")], 0, False),
        ([(b"content-length", b"12")], 12, True),
        ([(b"transfer-encoding", b"chunked")], None, True),
        ([(b"host", b"a"), (b"content-length", b"5")], 5, True),
    ],
)
def test_request_framing(headers: HeaderList, length: int | None, has_body: bool) -> None:
    assert declared_length(headers) == length
    assert has_request_body(headers) is has_body


@pytest.mark.parametrize(
    ("headers", "streams"),
    [
        ([(b"content-type", b"text/event-stream")], True),
        ([(b"content-type", b"Text/Event-Stream; charset=utf-8")], True),
        ([(b"content-type", b"text/event-stream"), (b"content-length", b"10")], True),
        ([(b"transfer-encoding", b"chunked")], True),
        ([(b"transfer-encoding", b"chunked"), (b"content-type", b"text/html")], True),
        ([(b"content-length", b"10"), (b"content-type", b"text/html")], False),
        ([(b"content-type", b"text/event-streams")], False),
        ([(b"content-type", b"application/json")], False),
        ([], False),  # delimited by the connection closing: it has an end, so it is buffered
    ],
)
def test_response_streams(headers: HeaderList, streams: bool) -> None:
    assert response_streams(headers) is streams


@pytest.mark.parametrize(
    ("headers", "size", "expected"),
    [
        (
            [(b"host", b"a"), (b"transfer-encoding", b"chunked"), (b"x-a", b"1")],
            10,
            [(b"host", b"a"), (b"x-a", b"1"), (b"content-length", b"10")],
        ),
        (
            [(b"content-length", b"3"), (b"expect", b"100-continue"), (b"x-a", b"1")],
            3,
            [(b"x-a", b"1"), (b"content-length", b"3")],
        ),
        ([], 0, [(b"content-length", b"0")]),
    ],
)
def test_buffered_request_headers(headers: HeaderList, size: int, expected: HeaderList) -> None:
    assert buffered_request_headers(headers, size) == expected


@pytest.mark.parametrize(
    ("headers", "status", "head", "expected"),
    [
        # The target's length stays (h11 checked it; for HEAD it describes the GET body).
        ([(b"content-length", b"5")], 200, False, [(b"content-length", b"5")]),
        ([(b"content-length", b"99")], 200, True, [(b"content-length", b"99")]),
        # Delimited by close: gets its length.
        ([(b"x-a", b"1")], 200, False, [(b"x-a", b"1"), (b"content-length", b"5")]),
        ([], 404, False, [(b"content-length", b"5")]),
        # Never a body: no length invented.
        ([], 204, False, []),
        ([], 304, False, []),
        ([], 200, True, []),
    ],
)
def test_buffered_response_headers(
    headers: HeaderList, status: int, head: bool, expected: HeaderList
) -> None:
    assert buffered_response_headers(headers, 5, status=status, head_request=head) == expected


# --- the spool (kproxy.runtime.buffer) ------------------------------------------------------


def _open_files_in(directory: Path) -> list[str]:
    """Links of this process's open descriptors that point into ``directory``."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith(str(directory) + "/"):
            links.append(link)
    return links


def test_spool_keeps_small_bodies_in_memory(tmp_path: Path) -> None:
    with SpooledBody(BufferPolicy(10), str(tmp_path)) as body:
        assert [body.write(b"abc"), body.write(b"defg")] == [C, C]
        assert not body.spilled
        assert (body.size, b"".join(body.chunks())) == (7, b"abcdefg")
        assert _open_files_in(tmp_path) == []


def test_spool_spills_to_an_anonymous_file_and_closes_it(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    with SpooledBody(BufferPolicy(100_000), str(tmp_path)) as body:
        for start in range(0, len(data), 65536):
            body.write(data[start : start + 65536])
        assert body.spilled
        assert len(_open_files_in(tmp_path)) == 1
        assert os.listdir(tmp_path) == []  # no name on disk, even now
        assert b"".join(body.chunks()) == data
        assert b"".join(body.chunks()) == data  # again, as a retried request replays it
    assert _open_files_in(tmp_path) == []


def test_spool_closes_its_file_when_an_error_ends_it(tmp_path: Path) -> None:
    body = SpooledBody(BufferPolicy(1), str(tmp_path))

    def fail_while_holding() -> None:
        with body:
            body.write(b"spilled")
            assert len(_open_files_in(tmp_path)) == 1
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail_while_holding()
    assert body.closed
    assert _open_files_in(tmp_path) == []
    body.close()  # idempotent


def test_spool_keeps_nothing_past_the_maximum() -> None:
    with SpooledBody(BufferPolicy(100, max_body=5)) as body:
        assert body.write(b"12345") is C
        assert body.write(b"6") is R
        assert body.size == 5


def test_closed_spool_refuses_use() -> None:
    body = SpooledBody(BufferPolicy(100))
    body.close()
    with pytest.raises(RuntimeError):
        body.write(b"x")
    with pytest.raises(RuntimeError):
        list(body.chunks())
