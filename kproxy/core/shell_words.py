"""Split a control line into words exactly as ``shlex.split(line, posix=True)`` would.

shlex reads one character at a time in Python: a 64 KiB line took about 200 ms of the
process that also serves HTTP with ``--workers 1``. This splitter reads runs of characters
with one regular expression, so a line costs a few microseconds per word, and it gives the
same words and the same two errors (tests/test_shell_words.py compares the two on generated
lines).

The rules (POSIX shell quoting, as shlex applies them): words are separated by space, tab,
CR or LF; a backslash outside quotes takes the next character literally; single quotes take
everything up to the next single quote literally; inside double quotes a backslash escapes
only ``"`` and ``\\`` and is kept before anything else; quotes may join pieces into one word,
and ``''`` is an empty word.
"""

from __future__ import annotations

import re
from typing import Final

_SPECIAL: Final = frozenset("'\"\\")

# One piece of a line: a run of plain characters, a quoted string, an escaped character, or
# a run of separators.
_PIECE: Final = re.compile(
    r"""(?P<plain>[^ \t\r\n'"\\]+)"""
    r"""|'(?P<single>[^']*)'"""
    r'''|"(?P<double>[^"\\]*(?:\\.[^"\\]*)*)"'''
    r"""|\\(?P<escaped>.)"""
    r"""|(?P<gap>[ \t\r\n]+)""",
    re.DOTALL,
)
_PLAIN_WORD: Final = re.compile(r"[^ \t\r\n]+")
_IN_DOUBLE_QUOTES: Final = re.compile(r"\\(.)", re.DOTALL)
_UNCLOSED_DOUBLE: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?P<backslash>\\)?\Z', re.DOTALL)


def split_words(line: str) -> list[str]:
    """The words of ``line``; ValueError (shlex's message) for an unclosed quote or escape."""
    if _SPECIAL.isdisjoint(line):
        return _PLAIN_WORD.findall(line)
    words: list[str] = []
    word: list[str] | None = None  # None between words; [] is a word begun by ''
    position = 0
    end = len(line)
    while position < end:
        piece = _PIECE.match(line, position)
        if piece is None:
            raise ValueError(_unclosed(line, position))
        position = piece.end()
        kind = piece.lastgroup
        if kind == "gap":
            if word is not None:
                words.append("".join(word))
                word = None
            continue
        if word is None:
            word = []
        text = piece.group(kind or "plain")
        if kind == "double":
            text = _IN_DOUBLE_QUOTES.sub(_unescape_in_double_quotes, text)
        word.append(text)
    if word is not None:
        words.append("".join(word))
    return words


def _unescape_in_double_quotes(escape: re.Match[str]) -> str:
    character = escape.group(1)
    return character if character in '"\\' else "\\" + character


def _unclosed(line: str, position: int) -> str:
    # No piece matches only at an opening quote without its closing one, or a final backslash.
    if line[position] == "\\":
        return "No escaped character"
    if line[position] == '"':
        unclosed = _UNCLOSED_DOUBLE.match(line, position)
        if unclosed is not None and unclosed.group("backslash"):
            return "No escaped character"
    return "No closing quotation"
