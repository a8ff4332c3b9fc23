"""split_words against shlex.split: the same words and the same errors on any line."""

from __future__ import annotations

import random
import shlex

import pytest

from kproxy.core.shell_words import split_words

# Every character that means something to shlex, some that do not (vertical tab and NBSP are
# not separators to it), and plain letters.
ALPHABET = " \t\r\n'\"\\#\x0b\xa0\x00é-=ab"


def shlex_outcome(line: str) -> list[str] | str:
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError as exc:
        return str(exc)


def our_outcome(line: str) -> list[str] | str:
    try:
        return split_words(line)
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "deploy web --target 127.0.0.1:3000",
        "a '' b",
        "a'b c'd",
        'say "a \\" b \\\\ c \\x"',
        "a\\ b",
        "'unclosed",
        '"unclosed \\',
        '"unclosed \\\\',
        "trailing \\",
        "x\x0by\xa0z",
        "--host='' --path-prefix=\"/a b\"",
    ],
)
def test_known_lines_split_as_shlex_does(line: str) -> None:
    assert our_outcome(line) == shlex_outcome(line)


def test_generated_lines_split_as_shlex_does() -> None:
    rng = random.Random(14)
    mismatches = []
    for _ in range(20_000):
        line = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 24)))
        if our_outcome(line) != shlex_outcome(line):
            mismatches.append(line)
    assert mismatches == []


def test_a_64_kib_word_splits_as_shlex_does() -> None:
    words = ["deploy", "web", "--target", "a" * 65_000, "--host='x y'"]
    line = " ".join(words)
    assert split_words(line) == shlex.split(line)
