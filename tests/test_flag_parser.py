"""Flag syntax as pflag has it (``flag_parser.py``), through whole command lines.

Each case is a command line (split into words) and the Command it must become, or a fragment
of the UsageError it must raise.
"""

from __future__ import annotations

import pytest

from kproxy.core import commands as cmd
from kproxy.core import flag_parser
from kproxy.core import options as opt
from kproxy.core.command_table import COMMANDS
from tests.command_words import T, deploy, error, parse


def test_values_given_and_arguments_apart() -> None:
    parsed = flag_parser.parse_flags(
        COMMANDS["deploy"], ["web", "--target=a:1,b:2", "--force", "--target", "c:3"], {}
    )
    assert parsed.args == ("web",)
    assert parsed.strings("target") == ("a:1", "b:2", "c:3")
    assert parsed.flag("force") is True
    assert parsed.given == {"target", "force"}
    assert parsed.seconds("deploy-timeout") == opt.DEFAULT_DEPLOY_TIMEOUT  # the default
    assert parsed.sources == {}


def test_a_run_option_from_the_environment_names_its_source() -> None:
    parsed = flag_parser.parse_flags(COMMANDS["run"], [], {"KAMAL_PROXY_HTTP_PORT": "8080"})
    assert parsed.integer("http-port") == 8080
    assert parsed.given == {"http-port"}
    assert parsed.sources == {"http-port": "KAMAL_PROXY_HTTP_PORT"}


# --- Flag syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    [
        ["--drain-timeout=5s"],
        ["--drain-timeout", "5s"],
        ["--drain-timeout=1s", "--drain-timeout=5s"],  # the last one wins, as in pflag
    ],
)
def test_equals_and_space_forms_are_the_same(words: list[str]) -> None:
    assert parse("pause", "web", *words) == cmd.Pause("web", drain_timeout=5.0)


def test_flags_and_positionals_mix_in_any_order() -> None:
    assert parse("stop", "--message=m", "web", "--drain-timeout=1s") == cmd.Stop("web", 1.0, "m")


@pytest.mark.parametrize(
    ("words", "targets"),
    [
        (["--target", "a:1,b:2", "--target", "c:3"], ("a:1", "b:2", "c:3")),
        (["--target=a:1", "--target=b:2"], ("a:1", "b:2")),
        (["--target=a:1, b:2"], ("a:1", "b:2")),
        (["--target=a:1,,b:2,"], ("a:1", "b:2")),
        (["--target=a:1,a:1", "--target=a:1"], ("a:1",)),  # duplicates collapse
    ],
)
def test_list_flags_repeat_and_split_on_commas(words: list[str], targets: tuple[str, ...]) -> None:
    assert deploy(*words).targets == targets


@pytest.mark.parametrize(
    ("flag", "force"),
    [
        ("--force", True),
        ("--force=true", True),
        ("--force=1", True),
        ("--force=T", True),
        ("--force=false", False),
        ("--force=0", False),
        ("--force=F", False),
    ],
)
def test_booleans_take_their_value_after_equals(flag: str, force: bool) -> None:
    assert deploy(T, flag).force is force


@pytest.mark.parametrize("value", ["false", "true"])
def test_boolean_value_after_a_space_is_a_positional(value: str) -> None:
    message = error("deploy", "app", T, "--force", value)
    assert f"unexpected argument {value!r}" in message
    assert f"--force={value}" in message


def test_invalid_boolean_value() -> None:
    assert 'invalid --force: invalid boolean "yes"' in error("deploy", "app", T, "--force=yes")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0), ("1.5s", 1.5), ("10s", 10.0)],
)
def test_durations_in_go_syntax(value: str, seconds: float) -> None:
    assert deploy(T, f"--deploy-timeout={value}").deploy_timeout == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("30", 'invalid --deploy-timeout: invalid duration "30": missing unit'),
        ("1.5", 'invalid --deploy-timeout: invalid duration "1.5": missing unit'),
        ("abc", 'invalid --deploy-timeout: invalid duration "abc"'),
        ("5x", 'invalid --deploy-timeout: invalid duration "5x"'),
        ("", 'invalid --deploy-timeout: invalid duration ""'),
        ("0", "--deploy-timeout must be greater than zero, got 0s"),  # "0" is Go's one bare number
        ("-1s", "--deploy-timeout must be greater than zero, got -1s"),
    ],
)
def test_bad_durations(value: str, fragment: str) -> None:
    assert fragment in error("deploy", "app", T, f"--deploy-timeout={value}")


@pytest.mark.parametrize(
    ("value", "port"), [("4000", 4000), ("0x1f90", 8080), ("0", None), ("1_000", 1000)]
)
def test_integers_in_go_syntax(value: str, port: int | None) -> None:
    assert deploy(T, f"--health-check-port={value}").target.health_check_port == port


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("80s", 'invalid --health-check-port: invalid integer "80s"'),
        ("", 'invalid --health-check-port: invalid integer ""'),
        ("-1", "invalid --health-check-port -1: the port must be 1-65535"),
        ("70000", "invalid --health-check-port 70000: the port must be 1-65535"),
    ],
)
def test_bad_integers(value: str, fragment: str) -> None:
    assert fragment in error("deploy", "app", T, f"--health-check-port={value}")


def test_double_dash_ends_the_flags() -> None:
    assert parse("stop", "--message=m", "--", "-web") == cmd.Stop("-web", 30.0, "m")
    assert parse("remove", "--", "web") == cmd.Remove("web")


def test_a_value_may_start_with_dashes() -> None:
    # pflag takes the next word as the value, whatever it looks like
    assert parse("stop", "web", "--message", "--back soon--") == cmd.Stop(
        "web", 30.0, "--back soon--"
    )


def test_the_socket_flag_is_global() -> None:
    assert parse("remove", "web", "--socket=/run/k.sock") == cmd.Remove("web")
    run = parse("run", "--socket", "/run/k.sock")
    assert isinstance(run, cmd.Run)
    assert run.options.socket_path == "/run/k.sock"
