"""The rollout split (core/rollout.py) against FNV-1a reference values and kamal-proxy's tests
(internal/server/rollout_controller_test.go)."""

from __future__ import annotations

import pytest

from kproxy.core.rollout import MAX_HASH, RolloutSplit, cookie_value, fnv1a_32, split_point


def _fnv1a_by_shifts(data: bytes) -> int:
    """FNV-1a 32 written the other classic way: the multiply by the prime 0x01000193 as
    shifts and adds (2**24 + 2**8 + 0x93), an independent check of ``fnv1a_32``."""
    value = 2166136261
    for byte in data:
        value ^= byte
        value += (value << 1) + (value << 4) + (value << 7) + (value << 8) + (value << 24)
        value &= 0xFFFFFFFF
    return value


def cookie(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", b"kamal-rollout=" + value)]


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"foobar", 0xBF9CF968)],  # published vectors
)
def test_fnv1a_matches_the_published_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_32(data) == expected


@pytest.mark.parametrize("data", [b"00001", b"account-42", b"x" * 100, bytes(range(256))])
def test_fnv1a_matches_the_shift_formulation(data: bytes) -> None:
    assert fnv1a_32(data) == _fnv1a_by_shifts(data)


def test_split_point_is_kamal_proxys_float_arithmetic() -> None:
    assert split_point(0) == 0.0
    assert split_point(50) == 2147483647.5  # not rounded: hash 2147483647 is in, ...648 out
    assert split_point(100) == float(MAX_HASH)


@pytest.mark.parametrize(
    ("value", "percent_in", "percent_out"),
    [
        # 0xbf9cf968 = 3214735720 = 74.85% of 0xFFFFFFFF; 0xe40c292c = 3826002220 = 89.08%
        (b"foobar", 75, 74),
        (b"a", 90, 89),
    ],
)
def test_the_split_point_decides_at_the_hash(
    value: bytes, percent_in: int, percent_out: int
) -> None:
    assert RolloutSplit(percent_in).chooses_rollout(cookie(value))
    assert not RolloutSplit(percent_out).chooses_rollout(cookie(value))


def test_zero_percent_sends_nothing_by_hash() -> None:
    split = RolloutSplit(0)
    assert not any(split.chooses_rollout(cookie(b"%05d" % i)) for i in range(1000))


def test_hundred_percent_sends_every_cookie_but_no_request_without_one() -> None:
    split = RolloutSplit(100)
    assert all(split.chooses_rollout(cookie(b"%05d" % i)) for i in range(1000))
    assert split.chooses_rollout(cookie(b"foobar"))
    assert not split.chooses_rollout([])
    assert not split.chooses_rollout(cookie(b""))
    assert not split.chooses_rollout([(b"cookie", b"other=1")])


def test_percentage_split_of_1000_values() -> None:  # kamal-proxy's PercentageSplit
    split = RolloutSplit(60)
    chosen = sum(split.chooses_rollout(cookie(b"%05d" % i)) for i in range(1000))
    assert 580 <= chosen <= 620


def test_allowlist_and_percentage_together() -> None:  # kamal-proxy's AllowListAndPercentage
    split = RolloutSplit(10, ("00001", "00002"))
    chosen = sum(split.chooses_rollout(cookie(b"%05d" % i)) for i in range(1000))
    assert 80 <= chosen <= 120
    assert split.chooses_rollout(cookie(b"00001"))
    assert split.chooses_rollout(cookie(b"00002"))
    assert not split.chooses_rollout([])


def test_a_listed_value_that_no_cookie_can_hold_matches_nothing() -> None:
    split = RolloutSplit(0, ("ü", "a"))
    assert not split.chooses_rollout([(b"cookie", "kamal-rollout=ü".encode())])
    assert split.chooses_rollout(cookie(b"a"))


def test_the_allowlist_matches_with_zero_percent() -> None:
    split = RolloutSplit(0, ("1", "2"))
    assert split.chooses_rollout(cookie(b"1"))
    assert split.chooses_rollout(cookie(b"2"))
    assert not split.chooses_rollout(cookie(b"3"))
    assert not split.chooses_rollout(cookie(b"12"))


@pytest.mark.parametrize("percent", [-1, 101])
def test_percent_is_checked(percent: int) -> None:
    with pytest.raises(ValueError, match="--percent must be 0-100"):
        RolloutSplit(percent)


@pytest.mark.parametrize(
    ("headers", "value"),
    [
        ([(b"cookie", b"kamal-rollout=abc")], b"abc"),
        ([(b"cookie", b"a=1; kamal-rollout=abc; b=2")], b"abc"),
        ([(b"cookie", b"a=1"), (b"cookie", b"kamal-rollout=abc")], b"abc"),
        ([(b"cookie", b'kamal-rollout="abc"')], b"abc"),  # quotes go, as in Go
        ([(b"cookie", b"kamal-rollout=abc;kamal-rollout=def")], b"abc"),  # the first wins
        ([(b"cookie", b"kamal-rollout=a\\b; kamal-rollout=def")], b"def"),  # invalid: skipped
        ([(b"cookie", b"kamal-rollout=")], b""),
        ([(b"cookie", b"kamal-rollout=a,b c")], b"a,b c"),  # valid cookie-value bytes
        ([(b"cookie", b"kamal-rollout=a\x7f; kamal-rollout=b")], b"b"),
        ([(b"cookie", "kamal-rollout=ü".encode())], None),
        ([(b"cookie", b'kamal-rollout=a"b')], None),
        ([(b"cookie", b" kamal-rollout=x ")], b"x"),  # the part is trimmed, as in Go
        ([(b"cookie", b"kamal-rollout = x")], None),  # "kamal-rollout " is another name
        ([(b"cookie", b"kamal-rollouts=abc")], None),
        ([(b"cookie", b"xkamal-rollout=abc")], None),
        ([(b"x-kamal-rollout", b"abc")], None),
        ([], None),
    ],
)
def test_cookie_value_reads_as_go_does(
    headers: list[tuple[bytes, bytes]], value: bytes | None
) -> None:
    assert cookie_value(headers) == value
