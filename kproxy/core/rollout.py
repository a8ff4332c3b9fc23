"""The rollout split: which requests go to a service's rollout group.

kamal-proxy's rules (internal/server/rollout_controller.go), kept:

- The split value is the request's ``kamal-rollout`` cookie (the first valid one, as Go's
  ``Request.Cookie``). A request without one, or with an empty one, never goes to the rollout.
- A value in the allowlist (``rollout set --list``) always goes to the rollout.
- Otherwise its FNV-1a 32-bit hash decides: it goes to the rollout when
  ``float(hash) <= 0xFFFFFFFF * (percent / 100.0)``, computed in float64 as Go does.
  ``--percent 0`` sends no value by hash (later kamal-proxy versions guard it: without the
  guard a value hashing to exactly 0 would still match a split point of 0).

The same cookie gets the same answer in every process, so ``--workers N`` agree.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Final

import attrs

COOKIE_NAME: Final = "kamal-rollout"
MAX_HASH: Final = 0xFFFFFFFF
FNV_OFFSET_BASIS: Final = 0x811C9DC5  # FNV-1a 32-bit (RFC draft-eastlake-fnv, Go's hash/fnv)
FNV_PRIME: Final = 0x01000193

_COOKIE_NAME: Final = COOKIE_NAME.encode()
# Go's validCookieValueByte: 0x20-0x7E except '"', ';' and '\\'.
_COOKIE_VALUE: Final = re.compile(rb"[\x20\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]*")
Header = tuple[bytes, bytes]


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data`` (Go's ``fnv.New32a``)."""
    value = FNV_OFFSET_BASIS
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & MAX_HASH
    return value


# The same users come back: their values' hashes are kept (a pure function, bounded memory).
_cached_fnv1a_32: Final = functools.lru_cache(maxsize=4096)(fnv1a_32)


def split_point(percent: int) -> float:
    """The highest hash that goes to the rollout, as kamal-proxy computes it (float64)."""
    return float(MAX_HASH) * (percent / 100.0)


def _valid_percent(_instance: object, _attribute: object, value: int) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"--percent must be 0-100, got {value}")


@attrs.frozen
class RolloutSplit:
    """``rollout set``'s choice: a share by hash, and values always sent to the rollout."""

    percent: int = attrs.field(validator=_valid_percent)
    allowlist: tuple[str, ...] = ()
    _point: float = attrs.field(init=False, eq=False, repr=False)
    _listed: frozenset[bytes] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_point", split_point(self.percent))
        object.__setattr__(self, "_listed", frozenset(v.encode() for v in self.allowlist))

    def uses_rollout(self, value: bytes | None) -> bool:
        """Whether a request whose ``kamal-rollout`` cookie is ``value`` goes to the rollout."""
        if not value:
            return False
        if value in self._listed:
            return True
        return self.percent > 0 and _cached_fnv1a_32(value) <= self._point

    def chooses_rollout(self, headers: Sequence[Header]) -> bool:
        """The decision for a request with these headers (names in lower case)."""
        return self.uses_rollout(cookie_value(headers))


def cookie_value(headers: Sequence[Header]) -> bytes | None:
    """The first valid ``kamal-rollout`` cookie's value, as Go's ``Request.Cookie`` reads it:
    parts split on ``;`` and trimmed, the name being what precedes the first ``=``; a value in
    double quotes loses them; a value with a byte a cookie value may not hold (outside
    0x20-0x7E, or ``"``, ``;``, ``\\``) is skipped."""
    for name, line in headers:
        if name != b"cookie" or _COOKIE_NAME not in line:
            continue
        for part in line.split(b";"):
            cookie, _, value = part.strip(b" \t\r\n").partition(b"=")
            if cookie != _COOKIE_NAME:
                continue
            if len(value) > 1 and value[:1] == value[-1:] == b'"':
                value = value[1:-1]
            if _COOKIE_VALUE.fullmatch(value):
                return value
    return None
