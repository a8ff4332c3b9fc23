"""The command table: one flag list per command, consistent with the kinds and the parser."""

from __future__ import annotations

import pytest

from kproxy.core.command_table import (
    ALIASES,
    COMMANDS,
    GLOBAL_FLAGS,
    CommandSpec,
    Flag,
    Kind,
)

ALL = [(spec, flag) for spec in COMMANDS.values() for flag in spec.flags]
_KIND_TYPES = {
    Kind.STRING: str,
    Kind.LIST: tuple,
    Kind.BOOL: bool,
    Kind.DURATION: float,
    Kind.INT: int,
}


@pytest.mark.parametrize(("spec", "flag"), ALL, ids=lambda x: x.name)
def test_each_default_has_its_kinds_type(spec: CommandSpec, flag: Flag) -> None:
    assert type(flag.default) is _KIND_TYPES[flag.kind], (spec.name, flag.name)


@pytest.mark.parametrize("spec", COMMANDS.values(), ids=lambda s: s.name)
def test_flag_names_are_unique_per_command(spec: CommandSpec) -> None:
    names = [f.name for f in (*spec.flags, *GLOBAL_FLAGS)]
    assert len(names) == len(set(names))


def test_only_run_reads_the_environment() -> None:
    assert {spec.name for spec, flag in ALL if flag.env} == {"run"}


def test_spec_flag_finds_its_own_and_the_global_flags() -> None:
    deploy = COMMANDS["deploy"]
    target = deploy.flag("target")
    assert target is not None
    assert target.required
    assert deploy.flag("socket") is GLOBAL_FLAGS[0]
    assert deploy.flag("nope") is None


def test_table_is_keyed_by_name_and_aliases_point_into_it() -> None:
    assert all(name == spec.name for name, spec in COMMANDS.items())
    assert set(ALIASES.values()) <= set(COMMANDS)
