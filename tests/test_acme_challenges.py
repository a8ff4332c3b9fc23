"""The HTTP-01 token registry the HTTP port answers from (RFC 8555 §8.3)."""

from __future__ import annotations

import pytest

from kproxy.core.acme_challenges import ChallengeTokens


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/.well-known/acme-challenge/tok1", b"tok1.thumb"),
        (b"/.well-known/acme-challenge/tok1?x=1", b"tok1.thumb"),
        (b"/.well-known/acme-challenge/other", None),  # not pending
        (b"/.well-known/acme-challenge/", None),
        (b"/tok1", None),
        (b"/.well-known/acme-challenge/\xff", None),
    ],
)
def test_answer(target: bytes, expected: bytes | None) -> None:
    tokens = ChallengeTokens()
    tokens.add("tok1", "tok1.thumb")
    assert tokens.answer(target) == expected


def test_removed_tokens_are_not_answered() -> None:
    tokens = ChallengeTokens()
    tokens.add("tok1", "tok1.thumb")
    assert "tok1" in tokens
    assert tokens.pending() == ("tok1",)
    tokens.remove("tok1")
    tokens.remove("tok1")  # twice is harmless
    assert tokens.answer(b"/.well-known/acme-challenge/tok1") is None
    assert tokens.pending() == ()
