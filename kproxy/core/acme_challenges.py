"""The HTTP-01 tokens the CA may ask for (RFC 8555 §8.3): token → key authorization.

The ACME client adds a token before telling the CA the challenge is ready and removes it once
the authorization is settled. The HTTP server consults :meth:`ChallengeTokens.answer` for
every request before routing, redirects and pause/stop, so only pending tokens are answered.
It is a plain dict, so a worker process can hold a copy fed over its channel.
"""

from __future__ import annotations

from typing import Final

import attrs

CHALLENGE_PATH: Final = b"/.well-known/acme-challenge/"
CONTENT_TYPE: Final = b"application/octet-stream"  # §8.3: any type; this is what certbot uses


@attrs.define(eq=False)
class ChallengeTokens:
    """Pending HTTP-01 tokens and what to answer for them."""

    _answers: dict[str, str] = attrs.field(factory=dict)

    def add(self, token: str, key_authorization: str) -> None:
        self._answers[token] = key_authorization

    def remove(self, token: str) -> None:
        self._answers.pop(token, None)

    def __contains__(self, token: str) -> bool:
        return token in self._answers

    def pending(self) -> tuple[str, ...]:
        """The tokens being answered now (for a worker process's copy, say)."""
        return tuple(self._answers)

    def answer(self, target: bytes) -> bytes | None:
        """The body for a request target (path, maybe a query) when it asks for a pending
        token; None for anything else (the request is routed as usual)."""
        if not target.startswith(CHALLENGE_PATH):
            return None
        token = target[len(CHALLENGE_PATH) :].split(b"?", 1)[0]
        try:
            found = self._answers.get(token.decode("ascii"))
        except UnicodeDecodeError:
            return None
        return None if found is None else found.encode("ascii")
