"""Control-protocol framing: tables of (bytes in, events out), fed whole, byte by byte and split."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterator

import pytest

from kproxy.core import control
from kproxy.core.control import (
    END_OF_INPUT,
    MAX_CONTROL_LINE,
    NEED_DATA,
    BadLine,
    CommandLine,
    ControlConnection,
    ControlEvent,
    format_err,
    format_line,
    format_ok,
)

Chunker = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    if data:
        yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def threes(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 3):
        yield data[i : i + 3]


CHUNKERS: list[Chunker] = [whole, bytewise, threes]


def cmd(*words: str, text: str | None = None) -> CommandLine:
    return CommandLine(words=words, text=" ".join(words) if text is None else text)


def drain(conn: ControlConnection) -> list[ControlEvent]:
    """Every event up to and including the NEED_DATA or END_OF_INPUT that ends them."""
    events: list[ControlEvent] = []
    while True:
        event = conn.next_event()
        events.append(event)
        if event is NEED_DATA or event is END_OF_INPUT:
            return events


def run(
    chunks: Iterator[bytes], *, eof: bool, max_line_size: int = MAX_CONTROL_LINE
) -> list[ControlEvent]:
    """Feed ``chunks``, pulling events after each, and return the events without NEED_DATA."""
    conn = ControlConnection(max_line_size=max_line_size)
    events: list[ControlEvent] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        events += drain(conn)
    if eof:
        conn.receive_data(b"")
        events += drain(conn)
        assert events[-1] is END_OF_INPUT
        assert conn.next_event() is END_OF_INPUT  # and it stays there
        assert conn.pending_bytes == 0
    return [event for event in events if event is not NEED_DATA]


TOO_LONG_8 = BadLine("line too long (limit 8 bytes)")
NOT_UTF8 = BadLine("command is not valid UTF-8")
NO_CLOSING_QUOTE = BadLine("cannot split command: no closing quotation")
NO_ESCAPED_CHAR = BadLine("cannot split command: no escaped character")

# (bytes in, events out before EOF)
CASES: list[tuple[bytes, list[ControlEvent]]] = [
    (b"", []),
    (b"list\n", [cmd("list")]),
    (b"list\nversion\nhelp deploy\n", [cmd("list"), cmd("version"), cmd("help", "deploy")]),
    (b"list\r\nversion\r\n", [cmd("list"), cmd("version")]),
    (b"  list  \n", [cmd("list", text="  list  ")]),
    (b"\tstop\t web \n", [cmd("stop", "web", text="\tstop\t web ")]),
    # Blank and comment lines produce nothing.
    (b"\n\n \n\t\n\r\n", []),
    (b"# a comment\n   # indented\n\t#tab\nlist\n#\n", [cmd("list")]),
    # A "#" after the first word is an ordinary word, as in the CLI's argv.
    (b"stop web # why\n", [cmd("stop", "web", "#", "why")]),
    (b"stop web#1\n", [cmd("stop", "web#1")]),
    (
        b'deploy web --target=127.0.0.1:3000 --host "a.example.com"\n',
        [
            cmd(
                "deploy",
                "web",
                "--target=127.0.0.1:3000",
                "--host",
                "a.example.com",
                text='deploy web --target=127.0.0.1:3000 --host "a.example.com"',
            )
        ],
    ),
    # Quotes and escapes, POSIX shell rules.
    (
        b"stop web --message 'down for \"maintenance\"'\n",
        [
            cmd(
                "stop",
                "web",
                "--message",
                'down for "maintenance"',
                text="stop web --message 'down for \"maintenance\"'",
            )
        ],
    ),
    (
        b'stop web --message "it\'s \\"late\\""\n',
        [
            cmd(
                "stop",
                "web",
                "--message",
                'it\'s "late"',
                text='stop web --message "it\'s \\"late\\""',
            )
        ],
    ),
    (b"a\\ b c\n", [cmd("a b", "c", text="a\\ b c")]),
    (b"'a'\"b\"c\n", [cmd("abc", text="'a'\"b\"c")]),
    (b"deploy web --host ''\n", [cmd("deploy", "web", "--host", "", text="deploy web --host ''")]),
    (b"'single \\ backslash'\n", [cmd("single \\ backslash", text="'single \\ backslash'")]),
    (
        "stop caf\u00e9 --message \u00e7a\n".encode(),
        [cmd("stop", "caf\u00e9", "--message", "\u00e7a")],
    ),
    # Unbalanced quotes and a dangling escape: one ERR each, then carry on.
    (b'deploy "web\nlist\n', [NO_CLOSING_QUOTE, cmd("list")]),
    (b"stop it's\nlist\n", [NO_CLOSING_QUOTE, cmd("list")]),
    (b'x "multi\nline"\nlist\n', [NO_CLOSING_QUOTE, NO_CLOSING_QUOTE, cmd("list")]),
    (b"list \\\nversion\n", [NO_ESCAPED_CHAR, cmd("version")]),
    # Invalid UTF-8, then a good line.
    (b"\xff\xfe\nlist\n", [NOT_UTF8, cmd("list")]),
    (b"stop caf\xc3\nlist\n", [NOT_UTF8, cmd("list")]),
    (b"stop \xed\xa0\x80\r\nlist\r\n", [NOT_UTF8, cmd("list")]),  # an encoded surrogate
    (b"# comment \xff\nlist\n", [NOT_UTF8, cmd("list")]),  # undecodable, so not known as one
]

# (bytes in, events out before EOF) with max_line_size=8
SHORT_LIMIT_CASES: list[tuple[bytes, list[ControlEvent]]] = [
    (b"12345678\n", [cmd("12345678")]),
    (b"12345678\r\n", [cmd("12345678")]),  # the terminator does not count
    (b"123456789\nlist\n", [TOO_LONG_8, cmd("list")]),
    (b"12345678\r\r\nlist\n", [TOO_LONG_8, cmd("list")]),
    (b"123456789\r\nlist\r\n", [TOO_LONG_8, cmd("list")]),
    (b"x" * 100 + b"\nlist\n", [TOO_LONG_8, cmd("list")]),
    (b"x" * 100 + b"\n" + b"y" * 9 + b"\nlist\n", [TOO_LONG_8, TOO_LONG_8, cmd("list")]),
    (b"list\n" + b"x" * 50 + b"\n\nversion\n", [cmd("list"), TOO_LONG_8, cmd("version")]),
    (b"x" * 50 + b"\xff\n", [TOO_LONG_8]),  # too long wins: its bytes are never decoded
    (b"# " + b"x" * 50 + b"\nlist\n", [TOO_LONG_8, cmd("list")]),  # even for a comment
]


@pytest.mark.parametrize("chunker", CHUNKERS)
@pytest.mark.parametrize(("data", "expected"), CASES)
def test_lines(data: bytes, expected: list[ControlEvent], chunker: Chunker) -> None:
    assert run(chunker(data), eof=False) == expected
    assert run(chunker(data), eof=True) == [*expected, END_OF_INPUT]


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_lines_split_anywhere(data: bytes, expected: list[ControlEvent]) -> None:
    for cut in range(len(data) + 1):
        chunks = [chunk for chunk in (data[:cut], data[cut:]) if chunk]  # b"" would be EOF
        assert run(iter(chunks), eof=True) == [*expected, END_OF_INPUT]


@pytest.mark.parametrize("chunker", CHUNKERS)
@pytest.mark.parametrize(("data", "expected"), SHORT_LIMIT_CASES)
def test_short_limit(data: bytes, expected: list[ControlEvent], chunker: Chunker) -> None:
    assert run(chunker(data), eof=True, max_line_size=8) == [*expected, END_OF_INPUT]


@pytest.mark.parametrize("chunker", CHUNKERS)
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # A last line without "\n" is still a command.
        (b"list", [cmd("list")]),
        (b"list\nversion", [cmd("list"), cmd("version")]),
        (b"list\r", [cmd("list")]),
        (b"list\n", [cmd("list")]),
        (b"list\n\n", [cmd("list")]),
        (b"  ", []),
        (b"# bye", []),
        (b'stop "w', [NO_CLOSING_QUOTE]),
        (b"\xff", [NOT_UTF8]),
        (b"12345678", [cmd("12345678")]),
        (b"12345678\r", [cmd("12345678")]),
        (b"123456789", [TOO_LONG_8]),
        (b"x" * 50, [TOO_LONG_8]),
        (b"x" * 50 + b"\nlist", [TOO_LONG_8, cmd("list")]),
    ],
)
def test_end_of_input(data: bytes, expected: list[ControlEvent], chunker: Chunker) -> None:
    assert run(chunker(data), eof=True, max_line_size=8) == [*expected, END_OF_INPUT]


def test_need_data_until_a_line_is_complete() -> None:
    conn = ControlConnection()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"li")
    assert conn.next_event() is NEED_DATA
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"st\nver")
    assert conn.next_event() == cmd("list")
    assert conn.next_event() is NEED_DATA
    assert conn.pending_bytes == 3
    conn.receive_data(b"sion\n")
    assert conn.next_event() == cmd("version")
    assert conn.next_event() is NEED_DATA
    assert conn.pending_bytes == 0


def test_events_are_pulled_one_at_a_time() -> None:
    # Lines wait in the buffer until asked for, so answers stay in order.
    conn = ControlConnection(max_line_size=8)
    conn.receive_data(b"list\n" + b"x" * 9 + b"\n\xff\nversion\n")
    assert conn.next_event() == cmd("list")
    assert conn.next_event() == TOO_LONG_8
    assert conn.next_event() == NOT_UTF8
    assert conn.next_event() == cmd("version")
    assert conn.next_event() is NEED_DATA


def test_data_after_end_of_input_is_an_error() -> None:
    conn = ControlConnection()
    conn.receive_data(b"list")
    conn.receive_data(b"")
    conn.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(RuntimeError):
        conn.receive_data(b"version\n")
    assert drain(conn) == [cmd("list"), END_OF_INPUT]


@pytest.mark.parametrize("size", [0, -1])
def test_max_line_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="max_line_size"):
        ControlConnection(max_line_size=size)


def test_limit_is_64_kib() -> None:
    assert MAX_CONTROL_LINE == 65536
    conn = ControlConnection()
    word = "a" * MAX_CONTROL_LINE
    conn.receive_data(word.encode() + b"\r\n" + b"b" * (MAX_CONTROL_LINE + 1) + b"\nlist\n")
    assert conn.next_event() == cmd(word)
    assert conn.next_event() == BadLine("line too long (limit 65536 bytes)")
    assert conn.next_event() == cmd("list")
    assert conn.next_event() is NEED_DATA


def test_full_size_line_fed_byte_by_byte() -> None:
    data = b"deploy " + b"w" * (MAX_CONTROL_LINE - 7) + b"\r\n"
    events = run(bytewise(data), eof=True)
    assert events == [cmd("deploy", "w" * (MAX_CONTROL_LINE - 7)), END_OF_INPUT]


@pytest.mark.parametrize("read_size", [1, 1000, 4096, 65536, 1 << 20])
def test_overlong_line_is_bounded(read_size: int) -> None:
    # Never more than the limit (plus a possible "\r") and one read of an overlong line is held.
    conn = ControlConnection()
    overlong = b"x" * (4 * MAX_CONTROL_LINE + 12345)
    events: list[ControlEvent] = []
    most = 0
    for start in range(0, len(overlong), read_size):
        conn.receive_data(overlong[start : start + read_size])
        most = max(most, conn.pending_bytes)
        events += drain(conn)
        assert conn.pending_bytes <= MAX_CONTROL_LINE + 1
    assert most <= MAX_CONTROL_LINE + 1 + read_size
    conn.receive_data(b"\nlist\n")
    events += drain(conn)
    assert [e for e in events if e is not NEED_DATA] == [
        BadLine("line too long (limit 65536 bytes)"),
        cmd("list"),
    ]


# ---- reply framing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", b"  hello\n"),
        ("", b"  \n"),
        ("\n", b"  \n"),
        ("  indented", b"    indented\n"),
        ("a\nb", b"  a\n  b\n"),
        ("a\nb\n", b"  a\n  b\n"),
        ("a\r\nb\rc", b"  a\n  b\n  c\n"),
        ("a\n\nb", b"  a\n  \n  b\n"),
        ("a\u2028b", b"  a\n  b\n"),
        ("OK", b"  OK\n"),
        ("ERR nope", b"  ERR nope\n"),
        ("x\nOK\nERR y", b"  x\n  OK\n  ERR y\n"),
        ("caf\u00e9", "  caf\u00e9\n".encode()),
        ("\udcff", b"  \\udcff\n"),  # a lone surrogate never raises
    ],
)
def test_format_line(text: str, expected: bytes) -> None:
    assert format_line(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", b"OK\n"),
        ("deployed", b"OK deployed\n"),
        ("a\nb", b"OK a b\n"),
        ("a\r\nb\n", b"OK a b\n"),
        ("OK", b"OK OK\n"),
        ("\u00e9", "OK \u00e9\n".encode()),
    ],
)
def test_format_ok(text: str, expected: bytes) -> None:
    assert format_ok(text) == expected


def test_format_ok_default() -> None:
    assert format_ok() == b"OK\n"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("service not found: web", b"ERR service not found: web\n"),
        ("", b"ERR\n"),
        ("line one\nline two", b"ERR line one line two\n"),
        ("a\r\nb", b"ERR a b\n"),
        ("\nOK", b"ERR  OK\n"),
        ("\udcff", b"ERR \\udcff\n"),
    ],
)
def test_format_err(message: str, expected: bytes) -> None:
    assert format_err(message) == expected


NASTY_TEXTS = [
    "",
    "OK",
    "ERR",
    "OK done",
    "ERR bad",
    "\nOK",
    "x\nOK\n",
    "x\r\nERR y\r\n",
    "x\rOK",
    "\u2028OK\u2029ERR\x85OK",
    "\x0bOK\x0cERR\x1cOK",
    "\n\n\n",
    "\r",
    "tab\tOK",
]


@pytest.mark.parametrize("text", NASTY_TEXTS)
@pytest.mark.parametrize("final", [format_ok, format_err])
def test_only_the_final_line_is_final(text: str, final: Callable[[str], bytes]) -> None:
    reply = format_line(text) + format_line("ok") + format_line(text) + final(text)
    assert reply.endswith(b"\n")
    assert b"\r" not in reply
    *body, last = reply[:-1].split(b"\n")
    for line in body:
        assert line.startswith(b"  ")
    assert last == b"OK" or last.startswith((b"OK ", b"ERR"))
    assert last.startswith(b"OK" if final is format_ok else b"ERR")
    # What a client reads back: every line of the text, in order.
    text_lines = text.splitlines() or [""]
    assert [line[2:].decode() for line in body] == [*text_lines, "ok", *text_lines]


def test_core_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(control))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "time", "os", "io", "pathlib", "asyncio"}
