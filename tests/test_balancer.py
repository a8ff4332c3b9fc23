"""core/balancer.py: round robin over healthy members, as a table of (health, choices)."""

from __future__ import annotations

import pytest

from kproxy.core.balancer import RoundRobin


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
