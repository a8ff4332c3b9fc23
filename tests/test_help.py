"""Help text: ``usage()`` as pflag shows it, and README's reference, which is the command table
rendered (it cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kproxy.core import command_parser as parser
from kproxy.core import command_table as table
from kproxy.core import commands as cmd
from kproxy.core.help import END_MARKER, START_MARKER, markdown_reference, usage
from kproxy.errors import UsageError

README = Path(__file__).parents[1] / "README.md"


def test_readme_carries_the_generated_reference() -> None:
    text = README.read_text()
    start = text.index(START_MARKER)
    end = text.index(END_MARKER) + len(END_MARKER)
    assert text[start:end] == markdown_reference(), (
        "README.md's reference is stale: replace the block with `kproxy help --markdown`"
    )


def test_reference_names_every_command_and_flag() -> None:
    reference = markdown_reference()
    for spec in table.COMMANDS.values():
        assert f"#### `{spec.name}" in reference
        for flag in spec.flags:
            assert f"`--{flag.name}" in reference
    assert "not supported yet" not in reference  # every flag is (a new one may not be)


# --- usage() ----------------------------------------------------------------------------------


def _flag_line(text: str, name: str) -> str:
    lines = [line for line in text.splitlines() if re.match(rf"\s+--{name}\b(?!-)", line)]
    assert len(lines) == 1, (name, lines)
    return lines[0]


def test_usage_lists_every_command() -> None:
    text = usage()
    for name, spec in table.COMMANDS.items():
        assert f"  {name:<16} {spec.summary}" in text


@pytest.mark.parametrize("name", list(table.COMMANDS))
def test_usage_of_each_command_lists_its_flags(name: str) -> None:
    text = usage(name)
    assert text.startswith(f"Usage: {name}")
    for flag in (*table.COMMANDS[name].flags, *table.GLOBAL_FLAGS):
        line = _flag_line(text, flag.name)
        assert flag.help in line
        assert line.endswith(" (required)") is flag.required
        assert line.endswith(" (not supported yet)") is not flag.supported


@pytest.mark.parametrize(
    ("name", "flag", "shown"),
    [
        ("deploy", "target", "--target strings"),
        ("deploy", "deploy-timeout", "--deploy-timeout duration"),
        ("deploy", "deploy-timeout", "(default 30s)"),
        ("deploy", "drain-timeout", "(default 30s)"),
        ("deploy", "health-check-interval", "(default 1s)"),
        ("deploy", "health-check-timeout", "(default 5s)"),
        ("deploy", "target-timeout", "(default 30s)"),
        ("deploy", "writer-affinity-timeout", "(default 3s)"),
        ("deploy", "health-check-path", '(default "/up")'),
        ("deploy", "strip-path-prefix", "(default true)"),
        ("deploy", "tls-redirect", "(default true)"),
        ("deploy", "buffer-memory", "(default 1048576)"),
        ("deploy", "health-check-port", "--health-check-port int"),
        ("pause", "max-pause", "(default 30s)"),
        ("run", "http-port", "(default 80)"),
        ("run", "https-port", "(default 443)"),
    ],
)
def test_usage_shows_defaults_in_go_style(name: str, flag: str, shown: str) -> None:
    assert shown in _flag_line(usage(name), flag)


@pytest.mark.parametrize(
    ("name", "flag"),
    [("deploy", "force"), ("deploy", "host"), ("deploy", "health-check-port"), ("list", "json")],
)
def test_usage_hides_zero_defaults(name: str, flag: str) -> None:
    assert "(default " not in _flag_line(usage(name), flag)


def test_usage_shows_one_default_for_forward_headers() -> None:
    line = _flag_line(usage("deploy"), "forward-headers")
    assert line.count("(default") == 1
    assert "(default true unless --tls)" in line


def test_usage_markers() -> None:
    text = usage("deploy")
    assert _flag_line(text, "target").endswith("(required)")
    assert "(not supported yet)" not in _flag_line(usage("run"), "metrics-port")
    assert "(not supported yet)" not in _flag_line(text, "read-target")
    assert "(not supported yet)" not in _flag_line(text, "force")


@pytest.mark.parametrize(("alias", "name"), [("ls", "list")])
def test_usage_follows_aliases(alias: str, name: str) -> None:
    assert usage(alias) == usage(name)


def test_usage_of_help_shows_its_argument_is_optional() -> None:
    assert usage("help").startswith("Usage: help [command] [flags]")


def test_usage_of_rollout_lists_the_subcommands() -> None:
    text = usage("rollout")
    assert all(f"rollout {sub}" in text for sub in ("deploy", "set", "stop"))


def test_usage_of_an_unknown_command() -> None:
    with pytest.raises(UsageError, match="unknown command 'bogus'"):
        usage("bogus")


@pytest.mark.parametrize("words", [["help"], ["help", "deploy"], ["help", "rollout", "set"]])
def test_every_help_topic_the_parser_accepts_has_a_usage(words: list[str]) -> None:
    command = parser.parse_command(words)
    assert isinstance(command, cmd.Help)
    assert usage(command.topic)
