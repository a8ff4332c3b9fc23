"""Command lines parsed as the CLI and the control channel parse them, for the parser tests."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from kproxy.core import command_parser as parser
from kproxy.core import commands as cmd
from kproxy.core import options as opt
from kproxy.errors import UsageError

T = "--target=127.0.0.1:3000"  # the required flag, for cases about something else


def parse(*words: str, env: Mapping[str, str] | None = None) -> cmd.Command:
    return parser.parse_command(list(words), env)


def deploy(*words: str) -> opt.DeploymentOptions:
    command = parse("deploy", "app", *words)
    assert isinstance(command, cmd.Deploy)
    return command.options


def error(*words: str, env: Mapping[str, str] | None = None) -> str:
    with pytest.raises(UsageError) as info:
        parser.parse_command(list(words), env)
    return str(info.value)
