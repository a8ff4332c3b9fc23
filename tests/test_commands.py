"""The command values: frozen, and checked when built, whoever builds them."""

from __future__ import annotations

import attrs
import pytest

from kproxy.core import commands as cmd
from kproxy.core import options as opt


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: cmd.Pause("web", drain_timeout=-1.0), "drain-timeout"),
        (lambda: cmd.Pause("web", max_pause=0.0), "max-pause"),
        (lambda: cmd.Stop("web", drain_timeout=-0.5), "drain-timeout"),
    ],
)
def test_out_of_range_values_are_refused_by_flag_name(build: object, fragment: str) -> None:
    assert callable(build)
    with pytest.raises(ValueError, match=fragment):
        build()


def test_defaults_are_the_flag_defaults() -> None:
    assert cmd.Pause("web") == cmd.Pause(
        "web", opt.DEFAULT_DRAIN_TIMEOUT, opt.DEFAULT_PAUSE_TIMEOUT
    )
    assert cmd.Stop("web") == cmd.Stop("web", opt.DEFAULT_DRAIN_TIMEOUT, "")
    assert cmd.Help() == cmd.Help("", markdown=False)
    assert cmd.List() == cmd.List(json=False)


def test_values_are_frozen() -> None:
    command = cmd.Remove("web")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        command.service = "api"  # type: ignore[misc]
    assert attrs.evolve(command, service="api") == cmd.Remove("api")
