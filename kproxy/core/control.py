"""Sans-IO framing of the control protocol, server side (the normative text is protocol.md).

The shape follows python-hyper/h11: h11/_connection.py. The runtime feeds whatever it read with
:meth:`ControlConnection.receive_data` (``b""`` is the client's half-close), then pulls events with
:meth:`ControlConnection.next_event` until it returns :data:`NEED_DATA` or :data:`END_OF_INPUT`.
A :class:`CommandLine` carries the shell-split words of one command, the same words as the CLI's
argv after the program name. A :class:`BadLine` is a line the framing rejected; it arrives in
order with the commands so that its ``ERR`` answer is written in order too. Answers are built
with :func:`format_line` (any number of ``"  "`` lines) and one :func:`format_ok` or
:func:`format_err` (the final line). This module does no I/O and keeps no clock.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias

import attrs

from kproxy.core.shell_words import split_words

__all__ = [
    "END_OF_INPUT",
    "MAX_CONTROL_LINE",
    "NEED_DATA",
    "BadLine",
    "CommandLine",
    "ControlConnection",
    "ControlEvent",
    "EndOfInput",
    "NeedData",
    "format_err",
    "format_line",
    "format_ok",
]

# A line's bytes without its "\n" or "\r\n" terminator. Like h11's
# DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, it also bounds what an unfinished line may buffer.
MAX_CONTROL_LINE: Final = 64 * 1024  # bytes

NON_FINAL_PREFIX: Final = "  "

# shlex's own whitespace: a line made only of these splits into no words at all.
_BLANK: Final = " \t\r\n"


class NeedData(enum.Enum):
    """Type of :data:`NEED_DATA` (a one-member enum, so ``is`` narrows it under mypy)."""

    NEED_DATA = "NEED_DATA"


class EndOfInput(enum.Enum):
    """Type of :data:`END_OF_INPUT`."""

    END_OF_INPUT = "END_OF_INPUT"


NEED_DATA: Final = NeedData.NEED_DATA
"""No complete line is buffered: read more and call ``receive_data``."""

END_OF_INPUT: Final = EndOfInput.END_OF_INPUT
"""The client half-closed and every line it sent has been returned; returned from then on."""


@attrs.frozen
class CommandLine:
    """One command.

    Attributes:
        words: the line split as ``shlex.split`` would (core/shell_words.py); never empty.
        text: the decoded line without its terminator, for logs.
    """

    words: tuple[str, ...]
    text: str


@attrs.frozen
class BadLine:
    """A line the framing rejected; answer it with ``format_err(message)`` and carry on.

    Attributes:
        message: the text after ``ERR ``, e.g. ``line too long (limit 65536 bytes)``.
    """

    message: str


ControlEvent: TypeAlias = CommandLine | BadLine | NeedData | EndOfInput


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.define(eq=False)
class ControlConnection:
    """The server's side of one control connection: bytes in, events out.

    Between reads, an unfinished line holds at most ``max_line_size + 1`` bytes (the one is a
    ``"\r"`` that may precede ``"\n"``); past that it is reported as too long and the rest of it
    is dropped as it arrives. Complete lines wait in the buffer until ``next_event`` takes them.

    Args:
        max_line_size: the longest accepted line in bytes, without its terminator.
    """

    max_line_size: int = attrs.field(default=MAX_CONTROL_LINE, validator=_positive)
    # Unconsumed bytes are _buffer[_start:]; consumed lines are compacted away on the next
    # receive_data, so a chunk holding many commands is not shifted once per command.
    _buffer: bytearray = attrs.field(init=False, factory=bytearray, repr=False)
    _start: int = attrs.field(init=False, default=0, repr=False)
    # _buffer[_start:_start + _scanned] is known to hold no b"\n": a line fed one byte at a
    # time is scanned once in total, not once per byte.
    _scanned: int = attrs.field(init=False, default=0, repr=False)
    # The start of an overlong line was reported; drop bytes up to and including its b"\n".
    _discarding: bool = attrs.field(init=False, default=False, repr=False)
    _eof: bool = attrs.field(init=False, default=False)

    @property
    def pending_bytes(self) -> int:
        """How many received bytes are held and not yet returned as events."""
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; ``b""`` means it half-closed (or closed).

        Raises:
            RuntimeError: if data arrives after the end of input (as in h11).
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("received end of input, then received more data?")
        if self._discarding:
            # The rest of an overlong line is dropped as it arrives, never held.
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._discarding = False
            data = data[newline + 1 :]
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_event(self) -> ControlEvent:
        """Return the next command, rejected line, :data:`NEED_DATA` or :data:`END_OF_INPUT`.

        Blank lines and ``#`` comment lines produce no event. A last line without ``"\\n"``
        before the end of input is still a line.
        """
        while True:
            line = self._next_line()
            if line is None:
                if self._eof:
                    return END_OF_INPUT
                return NEED_DATA
            if isinstance(line, BadLine):
                return line
            event = _parse_line(line, self.max_line_size)
            if event is not None:
                return event

    def _next_line(self) -> bytes | BadLine | None:
        """Cut the next line (terminator removed) off the buffer, or None if there is none."""
        buffer, start = self._buffer, self._start
        newline = buffer.find(b"\n", start + self._scanned)
        if newline >= 0:
            line = bytes(buffer[start:newline])
            self._start = newline + 1
            self._scanned = 0
            return line
        pending = len(buffer) - start
        if self._eof:
            if not pending:
                return None
            # The client's last line had no "\n": it is still a line (and _parse_line
            # checks its length).
            line = bytes(buffer[start:])
            buffer.clear()
            self._start = self._scanned = 0
            return line
        if pending > self.max_line_size and not (
            # One byte over may still be the "\r" of a "\r\n" line that fits: wait for more.
            pending == self.max_line_size + 1 and buffer.endswith(b"\r")
        ):
            buffer.clear()
            self._start = self._scanned = 0
            self._discarding = True
            return _too_long(self.max_line_size)
        self._scanned = pending
        return None


def _too_long(limit: int) -> BadLine:
    return BadLine(f"line too long (limit {limit} bytes)")


def _parse_line(line: bytes, limit: int) -> CommandLine | BadLine | None:
    """Decode and split one line; None for a blank or comment line."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > limit:
        return _too_long(limit)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return BadLine("command is not valid UTF-8")
    stripped = text.lstrip(_BLANK)
    if not stripped or stripped.startswith("#"):
        return None
    try:
        # comments=False: a "#" later in the line is an ordinary word, as the CLI would see it
        # after the shell has already split it.
        words = split_words(text)
    except ValueError as exc:
        reason = str(exc)
        return BadLine(f"cannot split command: {reason[:1].lower()}{reason[1:]}")
    if not words:
        return None
    return CommandLine(words=tuple(words), text=text)


def _encode(text: str) -> bytes:
    # A str from the runtime may hold lone surrogates (os.fsdecode'd paths): never raise here.
    return text.encode("utf-8", errors="backslashreplace")


def format_line(text: str) -> bytes:
    """Frame ``text`` as non-final reply lines.

    Args:
        text: any text; each of its lines (``str.splitlines``) becomes one ``"  "`` line.

    Returns:
        ``b"  <line>\\n"`` per line of ``text``; ``b"  \\n"`` for an empty ``text``.
    """
    lines = text.splitlines() or [""]
    return b"".join(_encode(NON_FINAL_PREFIX + line) + b"\n" for line in lines)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def format_ok(text: str = "") -> bytes:
    """Frame the final line of a success: ``OK`` or ``OK <text>``.

    Args:
        text: a short result; line breaks inside it become spaces.
    """
    text = _one_line(text)
    return _encode(f"OK {text}" if text else "OK") + b"\n"


def format_err(message: str) -> bytes:
    """Frame the final line of a failure: ``ERR <message>`` (``ERR`` if ``message`` is empty).

    Args:
        message: what went wrong; line breaks inside it become spaces.
    """
    message = _one_line(message)
    return _encode(f"ERR {message}" if message else "ERR") + b"\n"
