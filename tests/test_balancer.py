"""core/balancer.py: round robin over healthy members, as a table of (health, choices)."""

from __future__ import annotations

import pytest

from kproxy.core.balancer import ReadWriteBalancer, RoundRobin, is_read_request


def _choices(balancer: RoundRobin[str], count: int) -> list[str | None]:
    return [balancer.choose() for _ in range(count)]


@pytest.mark.parametrize(
    ("healthy", "expected"),
    [
        ((True, True, True), ["a", "b", "c", "a", "b", "c"]),
        ((True, False, True), ["a", "c", "a", "c", "a", "c"]),
        ((False, False, True), ["c"] * 6),
        ((False, False, False), [None] * 6),
    ],
)
def test_rotation_skips_unhealthy_members(
    healthy: tuple[bool, ...], expected: list[str | None]
) -> None:
    assert _choices(RoundRobin("abc", healthy), 6) == expected


def test_members_start_out_unhealthy() -> None:
    balancer = RoundRobin(["a", "b"])
    assert balancer.choose() is None
    balancer.set_healthy("b", True)
    assert _choices(balancer, 3) == ["b", "b", "b"]


def test_a_recovered_member_rejoins_at_its_place() -> None:
    balancer = RoundRobin("abc", (True, False, True))
    assert _choices(balancer, 2) == ["a", "c"]
    balancer.set_healthy("b", True)
    assert _choices(balancer, 4) == ["a", "b", "c", "a"]
    balancer.set_healthy("a", False)
    assert balancer.is_healthy("b")
    assert not balancer.is_healthy("a")
    assert _choices(balancer, 3) == ["b", "c", "b"]


def test_health_flags_must_match_the_members() -> None:
    with pytest.raises(ValueError, match="one health flag per member"):
        RoundRobin("ab", (True,))
    with pytest.raises(ValueError, match="not in tuple"):
        RoundRobin("ab").set_healthy("z", True)


def _split(
    writers_healthy: tuple[bool, ...] = (True, True),
    readers_healthy: tuple[bool, ...] = (True, True),
    read_websockets: bool = False,
) -> ReadWriteBalancer[str]:
    writers = RoundRobin(["w1", "w2"][: len(writers_healthy)], writers_healthy)
    readers = RoundRobin(["r1", "r2"][: len(readers_healthy)], readers_healthy)
    return ReadWriteBalancer(writers, readers, read_websockets)


@pytest.mark.parametrize(
    ("method", "websocket", "cookie", "read_websockets", "expected"),
    [
        (b"GET", False, False, False, ["r1", "r2", "r1"]),
        (b"HEAD", False, False, False, ["r1", "r2", "r1"]),
        (b"POST", False, False, False, ["w1", "w2", "w1"]),
        (b"PUT", False, False, False, ["w1", "w2", "w1"]),
        (b"DELETE", False, False, False, ["w1", "w2", "w1"]),
        (b"OPTIONS", False, False, False, ["w1", "w2", "w1"]),
        (b"get", False, False, False, ["w1", "w2", "w1"]),  # methods are case-sensitive
        (b"GET", False, True, False, ["w1", "w2", "w1"]),  # affinity cookie: writers
        (b"GET", True, False, False, ["w1", "w2", "w1"]),  # WebSocket: writers by default
        (b"GET", True, False, True, ["r1", "r2", "r1"]),  # ...unless --read-target-websockets
        (b"GET", True, True, True, ["w1", "w2", "w1"]),
    ],
)
def test_reads_go_to_readers_and_the_rest_to_writers(
    method: bytes, websocket: bool, cookie: bool, read_websockets: bool, expected: list[str]
) -> None:
    balancer = _split(read_websockets=read_websockets)
    assert [balancer.choose(method, websocket, cookie) for _ in range(3)] == expected


def test_the_two_rotations_are_independent() -> None:
    balancer = _split()
    got = [balancer.choose(m, False, False) for m in (b"GET", b"POST", b"GET", b"POST", b"GET")]
    assert got == ["r1", "w1", "r2", "w2", "r1"]


def test_reads_fall_back_to_writers_when_no_reader_is_healthy() -> None:
    balancer = _split(readers_healthy=(False, False))
    assert [balancer.choose(b"GET", False, False) for _ in range(3)] == ["w1", "w2", "w1"]
    balancer.readers.set_healthy("r2", True)
    assert [balancer.choose(b"GET", False, False) for _ in range(2)] == ["r2", "r2"]


def test_no_healthy_writer_fails_writes_but_not_reads() -> None:
    balancer = _split(writers_healthy=(False, False))
    assert balancer.choose(b"POST", False, False) is None
    assert balancer.choose(b"GET", False, True) is None
    assert balancer.choose(b"GET", False, False) == "r1"


def test_without_readers_everything_goes_to_writers() -> None:
    balancer = ReadWriteBalancer(RoundRobin(["w1", "w2"], (True, True)), RoundRobin([]))
    assert [balancer.choose(b"GET", False, False) for _ in range(3)] == ["w1", "w2", "w1"]


@pytest.mark.parametrize(
    ("method", "websocket", "read_websockets", "expected"),
    [
        (b"GET", False, False, True),
        (b"HEAD", False, False, True),
        (b"POST", False, False, False),
        (b"PATCH", False, False, False),
        (b"GET", True, False, False),
        (b"GET", True, True, True),
    ],
)
def test_is_read_request(
    method: bytes, websocket: bool, read_websockets: bool, expected: bool
) -> None:
    assert is_read_request(method, websocket, read_websockets) is expected
