"""The proxy's decisions about one exchange, as tables (kproxy.core.relay_rules)."""

from __future__ import annotations

import pytest

from kproxy.core import relay_rules
from kproxy.core.relay_rules import Interim
from kproxy.core.response_head import Framing
from kproxy.errors import (
    BadRequestBody,
    BodyTimeout,
    ClientGone,
    NoHealthyTargets,
    ResponseAborted,
    ResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)


@pytest.mark.parametrize(
    ("exc", "head_sent", "expected"),
    [
        (ClientGone(), False, 499),
        (ClientGone(), True, 499),  # a client that left is the news, whatever was sent
        (BadRequestBody("bad chunk"), False, 400),
        (BadRequestBody("bad chunk"), True, 200),  # past the head: the status sent stays
        (BodyTimeout("too slow"), False, 408),
        (UpstreamUnreachable("refused"), False, 502),
        (UpstreamTimeout("slow"), False, 504),
        (NoHealthyTargets("none"), False, 503),
        (ResponseTooLarge("big"), False, 500),
        (ResponseAborted("broke off"), True, 200),
        (ValueError("a bug"), False, 502),
    ],
)
def test_status_for(exc: Exception, head_sent: bool, expected: int) -> None:
    assert relay_rules.status_for(exc, head_sent=head_sent, sent_status=200) == expected


def test_redirect_answer_for_get_links_the_location_escaped() -> None:
    headers, body = relay_rules.redirect_answer(b"GET", b"http://example.com/a?b=1&c=<2>")
    assert headers == [
        (b"location", b"http://example.com/a?b=1&c=<2>"),
        (b"connection", b"close"),
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
    ]
    assert body == b'<a href="http://example.com/a?b=1&amp;c=&lt;2&gt;">Moved Permanently</a>.\n\n'


@pytest.mark.parametrize(
    ("method", "content_type"), [(b"HEAD", True), (b"POST", False), (b"DELETE", False)]
)
def test_redirect_answer_has_a_body_for_get_only(method: bytes, content_type: bool) -> None:
    """As Go's http.Redirect: the link for GET only, a content type for GET and HEAD."""
    headers, body = relay_rules.redirect_answer(method, b"http://example.com/")
    assert body == b""
    assert ((b"content-type", b"text/html; charset=utf-8") in headers) is content_type
    assert headers[-1] == (b"content-length", b"0")


@pytest.mark.parametrize(
    ("headers", "framing", "buffered_size", "expected"),
    [
        # no body framing declared: the fields stand as they are
        ([(b"host", b"a"), (b"x", b"1")], None, None, [(b"host", b"a"), (b"x", b"1")]),
        # the client's framing, spelled one way
        (
            [(b"host", b"a"), (b"content-length", b"007")],
            [(b"content-length", b"7")],
            None,
            [(b"host", b"a"), (b"content-length", b"7")],
        ),
        (  # Transfer-Encoding is hop-by-hop: the rewritten fields no longer have it
            [(b"host", b"a")],
            [(b"transfer-encoding", b"chunked")],
            None,
            [(b"host", b"a"), (b"transfer-encoding", b"chunked")],
        ),
        # a buffered body goes by its length, whatever the client used
        (
            [(b"host", b"a"), (b"transfer-encoding", b"chunked"), (b"expect", b"100-continue")],
            None,
            5,
            [(b"host", b"a"), (b"content-length", b"5")],
        ),
        # no Host from the client: the target's address
        ([(b"x", b"1")], None, None, [(b"host", b"10.0.0.1:3000"), (b"x", b"1")]),
    ],
)
def test_upstream_request_spells_the_framing_once(
    headers: list[tuple[bytes, bytes]],
    framing: list[tuple[bytes, bytes]] | None,
    buffered_size: int | None,
    expected: list[tuple[bytes, bytes]],
) -> None:
    request = relay_rules.upstream_request(
        b"POST",
        b"/up?x=1",
        list(headers),
        target_name="10.0.0.1:3000",
        framing=framing,
        upgrade=False,
        buffered_size=buffered_size,
    )
    assert (request.method, request.target) == (b"POST", b"/up?x=1")
    assert request.headers == expected
    # As the fields say: the maker's word equals what a scan of them finds.
    assert request.chunked is any(name == b"transfer-encoding" for name, _ in expected)
    assert not request.upgrade


@pytest.mark.parametrize(
    ("status", "upgrade", "waiting", "expected"),
    [
        (101, True, False, Interim.SWITCH),
        (101, False, False, Interim.REFUSE),  # nobody asked to switch
        (100, False, True, Interim.FORWARD),
        (100, False, False, Interim.DROP),  # already sent, or the body comes anyway
        (103, False, False, Interim.FORWARD),
        (102, True, True, Interim.FORWARD),
    ],
)
def test_interim_action(status: int, upgrade: bool, waiting: bool, expected: Interim) -> None:
    action = relay_rules.interim_action(status, upgrade=upgrade, client_waiting_for_100=waiting)
    assert action is expected


@pytest.mark.parametrize(
    ("framing", "expected"),
    [
        (Framing.LENGTH, [(b"content-length", b"3"), (b"x-app", b"1")]),
        (Framing.CHUNKED, [(b"x-app", b"1")]),  # chunked wins: the length must not go on
    ],
)
def test_client_response_headers(framing: Framing, expected: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-length", b"3"),
        (b"connection", b"keep-alive, x-app-hop"),
        (b"x-app-hop", b"gone"),
        (b"keep-alive", b"timeout=5"),
        (b"x-app", b"1"),
    ]
    assert relay_rules.client_response_headers(headers, framing) == expected


_FRESH = {
    "reused": True,
    "response_began": False,
    "body_sent": False,
    "body_buffered": False,
    "request_sent": True,
}


@pytest.mark.parametrize(
    ("method", "changes", "expected"),
    [
        (b"GET", {}, True),
        (b"POST", {}, False),  # the target may have acted on it
        (b"POST", {"request_sent": False}, True),  # it never left
        (b"GET", {"reused": False}, False),  # a new connection that fails is the target's fault
        (b"GET", {"response_began": True}, False),
        (b"PUT", {"request_sent": False, "body_sent": True}, False),  # the body is gone
        (b"PUT", {"request_sent": False, "body_sent": True, "body_buffered": True}, True),
        # the target reset the connection without acknowledging a byte (core/tcp_info.py)
        (b"POST", {"never_received": True}, True),
        (b"POST", {"never_received": True, "body_sent": True}, False),  # body gone
        (b"POST", {"never_received": True, "response_began": True}, False),
    ],
)
def test_may_resend(method: bytes, changes: dict[str, bool], expected: bool) -> None:
    assert relay_rules.may_resend(method, **{**_FRESH, **changes}) is expected
