"""ResponseWriter: the framing h11 chose before, checked byte for byte and read back by h11."""

from __future__ import annotations

import h11
import pytest

from kproxy.core.headers import connection_tokens
from kproxy.core.response_head import Framing
from kproxy.core.responses import ResponseWriter, keeps_alive, reason_phrase

Headers = list[tuple[bytes, bytes]]
TEXT: Headers = [(b"content-type", b"text/plain")]


def writer(
    method: bytes = b"GET", version: bytes = b"1.1", headers: Headers | None = None
) -> ResponseWriter:
    fields = headers or [(b"host", b"a")]
    answer = ResponseWriter()  # as the connection's writer is readied for each request
    answer.restart(method, version, keeps_alive(version, connection_tokens(fields)))
    return answer


def read_back(method: bytes, version: bytes, data: bytes) -> tuple[h11.Response, bytes]:
    """What an h11 client makes of ``data`` as the answer to ``method`` (then EOF)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    head = client.next_event()
    assert isinstance(head, h11.Response)
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    return head, body


@pytest.mark.parametrize(
    ("method", "version", "status", "headers", "framing", "keep_alive", "expected_head"),
    [
        pytest.param(
            b"GET",
            b"1.1",
            200,
            [(b"content-length", b"5")],
            Framing.LENGTH,
            True,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            id="length",
        ),
        pytest.param(
            b"GET",
            b"1.1",
            200,
            TEXT,
            Framing.CHUNKED,
            True,
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
            id="no-length-chunked",
        ),
        pytest.param(
            b"GET",
            b"1.0",
            200,
            TEXT,
            Framing.CLOSE,
            False,
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n",
            id="http-1.0-until-close",
        ),
        pytest.param(
            b"GET",
            b"1.0",
            200,
            [(b"content-length", b"5")],
            Framing.LENGTH,
            False,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            id="http-1.0-length-still-closes",
        ),
        pytest.param(
            b"HEAD",
            b"1.1",
            200,
            [(b"content-length", b"5")],
            Framing.NONE,
            True,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            id="head-keeps-length",
        ),
        pytest.param(
            b"GET",
            b"1.1",
            204,
            [],
            Framing.NONE,
            True,
            b"HTTP/1.1 204 No Content\r\n\r\n",
            id="204-adds-no-framing",
        ),
        pytest.param(
            b"GET",
            b"1.1",
            304,
            [(b"etag", b'"x"')],
            Framing.NONE,
            True,
            b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\n\r\n',
            id="304",
        ),
        pytest.param(
            b"GET",
            b"1.1",
            599,
            [(b"content-length", b"0")],
            Framing.LENGTH,
            True,
            b"HTTP/1.1 599 \r\ncontent-length: 0\r\n\r\n",
            id="unknown-status-no-reason",
        ),
    ],
)
def test_head_framing(
    method: bytes,
    version: bytes,
    status: int,
    headers: Headers,
    framing: Framing,
    keep_alive: bool,
    expected_head: bytes,
) -> None:
    response = writer(method, version)
    assert response.head(status, headers) == expected_head
    assert (response.framing, response.keep_alive, response.started) == (framing, keep_alive, True)


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize(
    "headers", [[(b"content-length", b"11")], TEXT], ids=["length", "no-length"]
)
def test_h11_reads_back_what_was_written(version: bytes, headers: Headers) -> None:
    response = writer(b"GET", version)
    data = response.head(200, headers) + response.data(b"hello") + response.data(b" world")
    data += response.end()
    head, body = read_back(b"GET", version, data)
    assert (head.status_code, body) == (200, b"hello world")
    assert response.done


def test_target_reason_is_kept_and_missing_one_is_standard() -> None:
    assert writer().head(200, [], reason=b"Fine").startswith(b"HTTP/1.1 200 Fine\r\n")
    assert writer().head(404, []).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert reason_phrase(599) == b""


@pytest.mark.parametrize(
    ("request_headers", "close", "keep_alive"),
    [
        ([(b"host", b"a")], False, True),
        ([(b"host", b"a"), (b"connection", b"Close")], False, False),
        ([(b"host", b"a"), (b"connection", b"keep-alive, close")], False, False),
        ([(b"host", b"a")], True, False),
    ],
    ids=["keep", "client-close", "client-close-in-list", "server-close"],
)
def test_connection_close(request_headers: Headers, close: bool, keep_alive: bool) -> None:
    response = writer(headers=request_headers)
    head = response.head(200, [(b"content-length", b"0")], close=close)
    assert response.keep_alive is keep_alive
    assert (b"connection: close\r\n" in head) is not keep_alive


def test_head_request_sends_no_body() -> None:
    response = writer(b"HEAD")
    assert response.whole(200, [(b"content-length", b"3")], b"abc").endswith(b"\r\n\r\n")
    assert response.keep_alive


def test_body_past_its_length_is_cut_and_the_connection_closes() -> None:
    response = writer()
    response.head(200, [(b"content-length", b"3")])
    assert response.data(b"abcdef") == b"abc"
    assert response.end() == b""
    assert not response.keep_alive


def test_body_short_of_its_length_closes_the_connection() -> None:
    response = writer()
    response.head(200, [(b"content-length", b"3")])
    response.data(b"ab")
    response.end()
    assert not response.keep_alive


def test_100_continue_answers_but_does_not_start_the_response() -> None:
    response = writer()
    assert response.informational(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (response.answered, response.continued, response.started) == (True, True, False)


def test_101_hands_the_connection_over() -> None:
    response = writer()
    head = response.informational(101, [(b"upgrade", b"websocket")])
    assert head == b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
    assert (response.done, response.keep_alive) == (True, False)


def test_connection_close_in_the_fields_ends_the_connection() -> None:
    response = writer()
    head = response.head(200, [(b"content-length", b"0"), (b"connection", b"close")])
    assert head.lower().count(b"connection: close") == 1
    assert not response.keep_alive


@pytest.mark.parametrize(
    ("headers", "expected_head", "framing", "body"),
    [
        pytest.param(
            [(b"set-cookie", b"a"), (b"set-cookie", b"b"), (b"content-length", b"5")],
            b"set-cookie: a\r\nset-cookie: b\r\ncontent-length: 5\r\n",
            Framing.LENGTH,
            b"abcde",
            id="other-names-repeat",
        ),
        pytest.param(
            [(b"content-length", b"5"), (b"content-length", b"7")],
            b"content-length: 5\r\ncontent-length: 7\r\n",
            Framing.LENGTH,
            b"abcdefg",
            id="last-length-wins",
        ),
        pytest.param(
            [(b"content-length", b"7"), (b"content-length", b"x")],
            b"content-length: 7\r\ncontent-length: x\r\n",
            Framing.LENGTH,
            b"abcdefg",
            id="last-usable-length-wins",
        ),
        pytest.param(
            [(b"content-length", b"x")],
            b"transfer-encoding: chunked\r\n",
            Framing.CHUNKED,
            b"9\r\nabcdefghi\r\n",
            id="unusable-length-chunked",
        ),
        pytest.param(
            [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
            b"transfer-encoding: chunked\r\n",
            Framing.CHUNKED,
            b"9\r\nabcdefghi\r\n",
            id="chunked-beats-length",
        ),
    ],
)
def test_framing_fields_as_given(
    headers: Headers, expected_head: bytes, framing: Framing, body: bytes
) -> None:
    """Framing fields as kproxy's callers never give them: repeated, unusable, both."""
    response = writer()
    assert response.head(200, headers) == b"HTTP/1.1 200 OK\r\n" + expected_head + b"\r\n"
    assert response.framing is framing
    assert response.data(b"abcdefghi") == body  # a length cuts the body short


def test_a_restarted_writer_answers_the_next_request_afresh() -> None:
    """One writer per connection: after a HEAD answer that closes nothing, restart readies it
    for a GET as a new writer would be, body and all."""
    answer = writer(b"HEAD")
    answer.head(200, [(b"content-length", b"3")])
    answer.end()
    assert answer.done
    answer.restart(b"GET", b"1.1", keep_alive=False)
    assert (answer.answered, answer.started, answer.done) == (False, False, False)
    head = answer.head(200, [(b"content-length", b"3")])
    data = bytes(answer.data(b"abc")) + answer.end()
    response, body = read_back(b"GET", b"1.1", head + data)
    assert response.status_code == 200
    assert body == b"abc"
    assert answer.done
    assert not answer.keep_alive
