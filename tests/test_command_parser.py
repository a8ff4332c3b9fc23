"""The command parser (and the flag syntax under it), against kamal-proxy v0.9's cobra/pflag.

Every case is a command line (split into words) and the Command it must become, or a fragment
of the UsageError it must raise. Kamal's own command lines are at the top: they must parse.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import pytest

from kproxy.core import command_parser as parser
from kproxy.core import command_table as table
from kproxy.core import commands as cmd
from kproxy.core import flag_parser
from kproxy.core import options as opt
from kproxy.core.rollout import RolloutSplit
from kproxy.errors import UsageError
from tests.command_words import T, deploy, error, parse

# --- Kamal's own command lines ----------------------------------------------------------------

KAMAL_DEPLOY = [
    "deploy",
    "app-web",
    "--target=172.1.0.2:80",
    "--deploy-timeout=30s",
    "--drain-timeout=30s",
    "--log-request-header=Cache-Control",
    "--log-request-header=Last-Modified",
    "--log-request-header=User-Agent",
]


def test_kamal_deploy_line_parses() -> None:
    command = parser.parse_command(KAMAL_DEPLOY)
    assert command == cmd.Deploy(
        "app-web",
        opt.DeploymentOptions(
            targets=("172.1.0.2:80",),
            target=opt.TargetOptions(
                log_request_headers=("Cache-Control", "Last-Modified", "User-Agent")
            ),
            deploy_timeout=30.0,
            drain_timeout=30.0,
        ),
    )


@pytest.mark.parametrize(
    ("extra", "target"),
    [
        (
            ["--buffer-requests", "--buffer-responses"],
            opt.TargetOptions(buffer_requests=True, buffer_responses=True),
        ),
        (["--buffer-responses"], opt.TargetOptions(buffer_responses=True)),
        (
            ["--buffer-requests=true", "--max-request-body=1000", "--buffer-memory=4096"],
            opt.TargetOptions(buffer_requests=True, max_request_body=1000, buffer_memory=4096),
        ),
        (
            ["--buffer-responses", "--max-response-body=2000"],
            opt.TargetOptions(buffer_responses=True, max_response_body=2000),
        ),
    ],
)
def test_kamal_deploy_line_with_buffering_parses(
    extra: list[str], target: opt.TargetOptions
) -> None:
    command = parser.parse_command([*KAMAL_DEPLOY, *extra])
    assert isinstance(command, cmd.Deploy)
    log_headers = ("Cache-Control", "Last-Modified", "User-Agent")
    assert command.options.target == attrs.evolve(target, log_request_headers=log_headers)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (
            ["stop", "app-web", "--drain-timeout=30s", "--message=Back at 5pm"],
            cmd.Stop("app-web", 30.0, "Back at 5pm"),
        ),
        (["resume", "app-web"], cmd.Resume("app-web")),
        (["remove", "app-web"], cmd.Remove("app-web")),
        (["list"], cmd.List()),
    ],
)
def test_kamal_other_lines_parse(words: list[str], expected: cmd.Command) -> None:
    assert parser.parse_command(words) == expected


# --- Every command ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["remove", "web"], cmd.Remove("web")),
        (["resume", "web"], cmd.Resume("web")),
        (["pause", "web"], cmd.Pause("web", 30.0, 30.0)),
        (["pause", "web", "--drain-timeout=5s", "--max-pause=1m"], cmd.Pause("web", 5.0, 60.0)),
        (["pause", "web", "--drain-timeout", "0s"], cmd.Pause("web", 0.0, 30.0)),
        (["stop", "web"], cmd.Stop("web", 30.0, "")),
        (
            ["stop", "web", "--message", "down for maintenance"],
            cmd.Stop("web", 30.0, "down for maintenance"),
        ),
        (["list"], cmd.List(json=False)),
        (["list", "--json"], cmd.List(json=True)),
        (["ls"], cmd.List(json=False)),
        (["ls", "--json=false"], cmd.List(json=False)),
        (["version"], cmd.Version()),
        (["--version"], cmd.Version()),
        (["help"], cmd.Help("")),
        (["help", "deploy"], cmd.Help("deploy")),
        (["help", "ls"], cmd.Help("list")),
        (["help", "rollout"], cmd.Help("rollout")),
        (["help", "rollout", "set"], cmd.Help("rollout set")),
        (["--help"], cmd.Help("")),
        (["-h"], cmd.Help("")),
        (["--help", "stop"], cmd.Help("stop")),
    ],
)
def test_commands(words: list[str], expected: cmd.Command) -> None:
    assert parser.parse_command(words) == expected


def test_deploy_defaults_match_kamal_proxy() -> None:
    options = deploy(T)
    assert options == opt.DeploymentOptions(targets=("127.0.0.1:3000",))
    assert (options.deploy_timeout, options.drain_timeout, options.force) == (30.0, 30.0, False)
    assert options.service == opt.ServiceOptions(hosts=(), path_prefixes=("/",))
    assert options.service.strip_path_prefix is True
    target = options.target
    assert (target.health_check_path, target.health_check_interval) == ("/up", 1.0)
    assert (target.health_check_timeout, target.target_timeout) == (5.0, 30.0)
    assert (target.health_check_port, target.health_check_host) == (None, None)
    assert target.forward_headers is True


def test_deploy_every_supported_flag() -> None:
    options = deploy(
        "--target=a:1,b:2",
        "--target",
        "c:3",
        "--host=a.example,b.example",
        "--host",
        "c.example",
        "--path-prefix=/api",
        "--path-prefix=/admin/",
        "--strip-path-prefix=false",
        "--deploy-timeout=1m30s",
        "--drain-timeout=0s",
        "--health-check-path=/health",
        "--health-check-interval=500ms",
        "--health-check-timeout=2s",
        "--health-check-port=4000",
        "--health-check-host=internal.example",
        "--target-timeout=45s",
        "--forward-headers=false",
        "--log-request-header=X-A,X-B",
        "--log-response-header=X-C",
        "--force",
    )
    assert options == opt.DeploymentOptions(
        targets=("a:1", "b:2", "c:3"),
        service=opt.ServiceOptions(
            hosts=("a.example", "b.example", "c.example"),
            path_prefixes=("/api", "/admin"),
            strip_path_prefix=False,
        ),
        target=opt.TargetOptions(
            health_check_path="/health",
            health_check_interval=0.5,
            health_check_timeout=2.0,
            health_check_port=4000,
            health_check_host="internal.example",
            target_timeout=45.0,
            forward_headers=False,
            log_request_headers=("X-A", "X-B"),
            log_response_headers=("X-C",),
        ),
        deploy_timeout=90.0,
        drain_timeout=0.0,
        force=True,
    )


@pytest.mark.parametrize(
    ("words", "command"),
    [
        (
            ["rollout", "deploy", "web", "--target=a:1"],
            cmd.RolloutDeploy("web", ("a:1",)),
        ),
        (
            [
                "rollout", "deploy", "web", "--target=a:1,b:2", "--read-target=c:3",
                "--deploy-timeout=5s", "--drain-timeout=0",
            ],
            cmd.RolloutDeploy("web", ("a:1", "b:2"), ("c:3",), 5.0, 0.0),
        ),
        (["rollout", "set", "web", "--percent=10"], cmd.RolloutSet("web", RolloutSplit(10))),
        (
            ["rollout", "set", "web", "--list=1,2"],
            cmd.RolloutSet("web", RolloutSplit(0, ("1", "2"))),
        ),
        (
            ["rollout", "set", "web", "--percent", "100", "--list=a", "--list=b"],
            cmd.RolloutSet("web", RolloutSplit(100, ("a", "b"))),
        ),
        (["rollout", "stop", "web"], cmd.RolloutStop("web")),
    ],
)  # fmt: skip
def test_rollout_commands_parse(words: list[str], command: cmd.Command) -> None:
    assert parser.parse_command(words) == command


@pytest.mark.parametrize(
    ("words", "fragment"),
    [
        (["rollout"], "rollout needs a subcommand"),
        (["rollout", "go", "web"], "rollout needs a subcommand"),
        (["rollout", "deploy", "web"], "required flag --target is missing"),
        (["rollout", "deploy", "web", "--target=foo bar"], "invalid target 'foo bar'"),
        (["rollout", "deploy", "web", "--target=a:1", "--read-target=x y"], "invalid target"),
        (["rollout", "deploy", "web", "--target=a:1", "--deploy-timeout=0s"], "deploy-timeout"),
        (["rollout", "set", "web"], "one of --percent or --list is required"),
        (["rollout", "set", "web", "--percent=101"], "--percent must be 0-100, got 101"),
        (["rollout", "set", "web", "--allowlist=1"], "unknown flag --allowlist"),
        (["rollout", "stop"], "missing <service>"),
    ],
)
def test_rollout_commands_are_still_validated(words: list[str], fragment: str) -> None:
    assert fragment in error(*words)


# --- Help anywhere ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "topic"),
    [
        (["deploy", "--help"], "deploy"),
        (["deploy", "-h"], "deploy"),
        (["deploy", "app", "--bogus", "-h"], "deploy"),  # before flag errors, as cobra's help
        (["deploy", "--help", "too", "many", "args"], "deploy"),
        (["stop", "web", "--message=x", "--help"], "stop"),
        (["ls", "-h"], "list"),
        (["rollout", "set", "--help"], "rollout set"),
        (["rollout", "--help"], "rollout"),
        (["help", "--help"], "help"),
    ],
)
def test_help_flag_anywhere_shows_the_commands_help(words: list[str], topic: str) -> None:
    assert parser.parse_command(words) == cmd.Help(topic)


def test_help_after_double_dash_is_an_argument() -> None:
    assert "unexpected argument '--help'" in error("list", "--", "--help")


def test_help_for_an_unknown_command_is_refused_at_parse_time() -> None:
    assert "help: unknown command 'bogus'" in error("help", "bogus")


# --- Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "fragment"),
    [
        ([], "no command given; try 'help'"),
        (["deplo", "app"], "unknown command 'deplo'; commands are: run, deploy"),
        (["DEPLOY", "app"], "unknown command 'DEPLOY'"),
        (["deploy", "app", T, "--bogus"], "deploy: unknown flag --bogus (see 'help deploy')"),
        (["deploy", "app", T, "--bogus=1"], "deploy: unknown flag --bogus"),
        (["deploy", "app", T, "--read-targets-accept-websockets"], "unknown flag"),
        (["pause", "web", "--message=x"], "pause: unknown flag --message"),
        (["list", "--host=a"], "list: unknown flag --host"),
        (["deploy", "app", "-t", "a:1"], "deploy: unknown shorthand flag '-t'"),
        (["list", "-j"], "list: unknown shorthand flag '-j'"),
        (["deploy", "app", "--target"], "deploy: flag --target needs a value"),
        (["stop", "web", "--message"], "stop: flag --message needs a value"),
        (["pause", "web", "--max-pause"], "pause: flag --max-pause needs a value"),
        (["deploy"], "deploy: missing <service>; usage: deploy <service>"),
        (["deploy", "--target=a:1"], "deploy: missing <service>"),
        (["deploy", "a", "b", T], "deploy: unexpected argument 'b'"),
        (["remove"], "remove: missing <service>"),
        (["remove", "a", "b"], "remove: unexpected argument 'b'"),
        (["pause"], "pause: missing <service>"),
        (["stop"], "stop: missing <service>"),
        (["resume"], "resume: missing <service>"),
        (["resume", "a", "b"], "resume: unexpected argument 'b'"),
        (["list", "web"], "list: unexpected argument 'web'"),
        (["version", "1"], "version: unexpected argument '1'"),
        (["run", "now"], "run: unexpected argument 'now'"),
        (["deploy", "app"], "deploy: required flag --target is missing"),
        (["deploy", "app", "--target="], "deploy: at least one --target is required"),
        (["deploy", "app", "--target", ","], "deploy: at least one --target is required"),
        (["deploy", "bad name", T], "deploy: invalid service name 'bad name'"),
        (["deploy", "-", T], "deploy: invalid service name '-'"),
        (["pause", "web", "--drain-timeout=-1s"], "pause: --drain-timeout must not be negative"),
        (["pause", "web", "--max-pause=0s"], "pause: --max-pause must be greater than zero"),
        (["stop", "web", "--drain-timeout=-5s"], "stop: --drain-timeout must not be negative"),
        (
            ["stop", "web", "--drain-timeout=5"],
            'stop: invalid --drain-timeout: invalid duration "5"',
        ),
        (["deploy", "app", T, "--health-check-path=up"], "invalid --health-check-path 'up'"),
        (
            ["deploy", "app", T, "--health-check-interval=0s"],
            "--health-check-interval must be greater than zero",
        ),
        (
            ["deploy", "app", T, "--health-check-timeout=-1s"],
            "--health-check-timeout must be greater than zero",
        ),
        (["deploy", "app", T, "--target-timeout=0s"], "--target-timeout must be greater than zero"),
        (
            ["deploy", "app", T, "--drain-timeout=-1ms"],
            "--drain-timeout must not be negative, got -1ms",
        ),
        (["deploy", "app", T, "--host=a.com:80"], 'invalid host "a.com:80"'),
        (["deploy", "app", T, "--path-prefix=/a?b"], 'invalid path prefix "/a?b"'),
        (
            ["deploy", "app", T, "--log-request-header=Bad Header"],
            "invalid header name 'Bad Header'",
        ),
        (["deploy", "app", T, "--health-check-host=a b"], "invalid --health-check-host 'a b'"),
    ],
)
def test_usage_errors(words: list[str], fragment: str) -> None:
    assert fragment in error(*words)


def test_a_bad_value_is_reported_before_a_missing_argument() -> None:
    # pflag parses every flag before cobra counts the positionals
    assert "invalid --deploy-timeout" in error("deploy", "--deploy-timeout=5")


# --- Targets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("127.0.0.1:3000", "127.0.0.1:3000"),
        ("web", "web:80"),
        ("web:3000", "web:3000"),
        ("Web.Internal:3000", "web.internal:3000"),
        ("my_app-web_1:3000", "my_app-web_1:3000"),  # docker container names
        ("[::1]:3000", "[::1]:3000"),
        ("[::1]", "[::1]:80"),
        ("[0:0::1]:3000", "[::1]:3000"),
        ("localhost:65535", "localhost:65535"),
    ],
)
def test_valid_targets(value: str, target: str) -> None:
    assert deploy(f"--target={value}").targets == (target,)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("foo bar", "expected host:port (e.g. 127.0.0.1:3000 or web:80)"),
        ("host:0", "the port must be 1-65535, got '0'"),
        ("host:99999", "the port must be 1-65535, got '99999'"),
        ("host:", "the port must be 1-65535, got ''"),
        ("host:http", "the port must be 1-65535, got 'http'"),
        ("::1:80", "put an IPv6 address in brackets, as in [::1]:3000"),
        ("[::1", "unclosed '['"),
        ("[example.com]:80", "'example.com' is not an IPv6 address"),
        ("[127.0.0.1]:80", "'127.0.0.1' is not an IPv6 address"),
        ("http://web:80", "give host:port, not a URL"),
        (":3000", "the host is missing"),
        ("-web:80", "'-web' is not a valid host name"),
        ("a..b:80", "'a..b' is not a valid host name"),
        ("30", "'30' is neither a host name nor an IPv4 address"),
        ("10.0.0.256:80", "'10.0.0.256' is neither a host name nor an IPv4 address"),
        ("web/x:80", "expected host:port"),
    ],
)
def test_invalid_targets_name_the_value_and_the_reason(value: str, reason: str) -> None:
    message = error("deploy", "app", f"--target={value}")
    assert message.startswith(f"deploy: invalid target {value!r}: ")
    assert reason in message
    assert "expected host:port (e.g. 127.0.0.1:3000 or web:80)" in message


def test_bad_target_message_is_the_one_protocol_md_shows() -> None:
    assert error("deploy", "app", "--target", "foo bar") == (
        "deploy: invalid target 'foo bar': expected host:port (e.g. 127.0.0.1:3000 or web:80)"
    )


def test_a_bad_target_among_good_ones_is_named() -> None:
    assert "invalid target 'foo bar'" in error("deploy", "app", "--target=a:1", "--target=foo bar")


# --- deploy's validation rules, in kamal-proxy's order ------------------------------------------

# Each case breaks the first rule and possibly later ones: the first rule's error wins.
# cobra runs the command's preRun (buffering, TLS host, TLS root path), then the required
# flags, then the flag groups (certificate and key together).
RULES = [
    (
        ["--max-request-body=10"],
        "--max-request-body can only be set with --buffer-requests",
    ),
    (
        ["--max-response-body=10", "--tls"],
        "--max-response-body can only be set with --buffer-responses",
    ),
    (["--tls", "--tls-certificate-path=c.pem"], "--host must be set when using --tls"),
    (
        ["--tls", "--host=a.example", "--path-prefix=/api", "--tls-certificate-path=c.pem"],
        "TLS settings must be given on the root path service",
    ),
    (
        ["--tls-certificate-path=c.pem", "--buffer-requests"],
        "--tls-certificate-path and --tls-private-key-path must be given together"
        " (missing --tls-private-key-path)",
    ),
    (
        ["--tls-private-key-path=k.pem"],
        "(missing --tls-certificate-path)",
    ),
]


@pytest.mark.parametrize(("words", "fragment"), RULES)
def test_deploy_rules(words: list[str], fragment: str) -> None:
    assert fragment in error("deploy", "app", T, *words)


def test_deploy_preRun_rules_come_before_the_required_target() -> None:
    assert "--max-request-body can only be set" in error("deploy", "app", "--max-request-body=1")


def test_required_target_comes_before_the_flag_groups() -> None:
    message = error("deploy", "app", "--tls-certificate-path=c.pem")
    assert "required flag --target is missing" in message


@pytest.mark.parametrize(
    "words",
    [
        ["--buffer-requests=false", "--max-request-body=0"],
        ["--buffer-responses=false", "--max-response-body=0"],
        ["--tls=false"],
        ["--tls-certificate-path=", "--tls-private-key-path="],
        ["--tls=false", "--path-prefix=/api"],
    ],
)
def test_deploy_rules_pass_with_default_values(words: list[str]) -> None:
    assert deploy(T, *words).targets == ("127.0.0.1:3000",)


@pytest.mark.parametrize(
    "prefixes", [[], ["--path-prefix=/"], ["--path-prefix=/api,/"], ["--path-prefix="]]
)
def test_tls_on_the_root_path_passes_the_rules(prefixes: list[str]) -> None:
    assert deploy(T, "--tls", "--host=a.example", *prefixes).service.tls is True


def test_tls_flags_reach_the_options() -> None:
    service = deploy(
        T,
        "--tls",
        "--host=a.example",
        "--tls-certificate-path=/c/cert.pem",
        "--tls-private-key-path=/c/key.pem",
        "--tls-redirect=false",
    ).service
    assert (service.tls, service.tls_redirect) == (True, False)
    assert (service.tls_certificate_path, service.tls_private_key_path) == (
        "/c/cert.pem",
        "/c/key.pem",
    )
    assert deploy(T).service.tls_redirect is True


def test_certificate_files_without_tls_are_refused() -> None:
    message = error("deploy", "app", T, "--tls-certificate-path=c", "--tls-private-key-path=k")
    assert message == ("deploy: --tls-certificate-path and --tls-private-key-path need --tls")


def _unsupported(spec: table.CommandSpec) -> list[table.Flag]:
    return [f for f in spec.flags if not f.supported]


def test_every_flag_is_supported() -> None:
    assert [f.name for spec in table.COMMANDS.values() for f in _unsupported(spec)] == []


def test_a_flag_not_supported_yet_is_refused_by_name() -> None:
    spec = table.CommandSpec("run", "Run", flags=(
        table.Flag("future-port", table.Kind.INT, 0, "Not there yet", supported=False, env=True),
    ))  # fmt: skip
    given = flag_parser.parse_flags(spec, ["--future-port=9"], {})
    with pytest.raises(ValueError, match="--future-port is not supported by kproxy yet; run"):
        parser._refuse_unsupported(given)
    parser._refuse_unsupported(flag_parser.parse_flags(spec, ["--future-port=0"], {}))
    from_env = flag_parser.parse_flags(spec, [], {"KPROXY_FUTURE_PORT": "9"})
    with pytest.raises(ValueError, match=r"it was set by \$KPROXY_FUTURE_PORT, unset it"):
        parser._refuse_unsupported(from_env)


def test_error_pages_reaches_the_options() -> None:
    assert deploy(T, "--error-pages", "/srv/pages").service.error_pages == "/srv/pages"
    assert deploy(T).service.error_pages == ""


def _run_options(*words: str, env: Mapping[str, str] | None = None) -> opt.RunOptions:
    command = parse("run", *words, env=env)
    assert isinstance(command, cmd.Run)
    return command.options


def test_metrics_port_reaches_the_run_options() -> None:
    assert _run_options().metrics_port == 0  # off, as kamal-proxy's default
    assert _run_options("--metrics-port=9090").metrics_port == 9090
    assert _run_options(env={"KAMAL_PROXY_METRICS_PORT": "9191"}).metrics_port == 9191
    assert error("run", "--metrics-port=70000") == "run: --metrics-port must be 0-65535, got 70000"


def test_exclude_metrics_path_is_repeatable() -> None:
    options = deploy(T, "--exclude-metrics-path=/up", "--exclude-metrics-path", "/health,/ping")
    assert options.service.exclude_metrics_paths == ("/up", "/health", "/ping")
    assert deploy(T).service.exclude_metrics_paths == ()


def _parsed(*words: str) -> flag_parser.Parsed:
    return flag_parser.parse_flags(table.COMMANDS["deploy"], ["app", T, *words], {})


@pytest.mark.parametrize(
    ("words", "forward"),
    [
        ([], True),
        (["--tls"], False),
        (["--tls=false"], True),
        (["--tls", "--forward-headers"], True),
        (["--forward-headers=false"], False),
        (["--tls", "--forward-headers=false"], False),
    ],
)
def test_forward_headers_default_is_true_unless_tls(words: list[str], forward: bool) -> None:
    assert parser._forward_headers(_parsed(*words)) is forward


def test_forward_headers_reaches_the_options() -> None:
    assert deploy(T).target.forward_headers is True
    assert deploy(T, "--forward-headers=false").target.forward_headers is False
    assert deploy(T, "--tls=false").target.forward_headers is True


# --- run: flags, environment, default paths ---------------------------------------------------


def run(*words: str, env: Mapping[str, str] | None = None) -> opt.RunOptions:
    command = parse("run", *words, env=env)
    assert isinstance(command, cmd.Run)
    return command.options


def test_run_defaults() -> None:
    assert run(env={"HOME": "/home/k"}) == opt.RunOptions(
        socket_path="/tmp/kproxy.sock",
        state_dir="/home/k/.config/kproxy",
        bind="",
        http_port=80,
        https_port=443,
        debug=False,
        workers=0,  # one per core: the CLI counts them
    )


def test_run_flags() -> None:
    options = run(
        "--bind=127.0.0.1", "--http-port=8080", "--https-port", "8443", "--debug",
        "--state-dir=/var/lib/kproxy", "--socket=/run/kproxy.sock", "--workers=3",
    )  # fmt: skip
    assert options == opt.RunOptions(
        socket_path="/run/kproxy.sock",
        state_dir="/var/lib/kproxy",
        bind="127.0.0.1",
        http_port=8080,
        https_port=8443,
        debug=True,
        workers=3,
    )


@pytest.mark.parametrize(
    "words",
    [
        ("--state-path=/var/lib/kamal-proxy",),
        ("--state-path", "/var/lib/kamal-proxy"),
        ("--state-dir=/elsewhere", "--state-path=/var/lib/kamal-proxy"),  # the last one wins
    ],
)
def test_run_state_path_is_kamal_proxys_name_for_state_dir(words: tuple[str, ...]) -> None:
    env = {"KPROXY_STATE_DIR": "/env"}  # a flag beats it, whichever name it is given by
    assert run(*words, env=env).state_dir == "/var/lib/kamal-proxy"


def test_state_path_is_a_run_flag_only() -> None:
    with pytest.raises(UsageError, match=r"^deploy: unknown flag --state-path"):
        parse("deploy", "web", "--target=a:1", "--state-path=/x")


def test_an_alias_names_itself_in_errors() -> None:
    with pytest.raises(UsageError, match=r"^run: flag --state-path needs a value$"):
        run("--state-path")


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ({"KPROXY_HTTP_PORT": "1", "KAMAL_PROXY_HTTP_PORT": "2", "HTTP_PORT": "3"}, 1),
        ({"KAMAL_PROXY_HTTP_PORT": "2", "HTTP_PORT": "3"}, 2),
        ({"HTTP_PORT": "3"}, 3),
        ({"KPROXY_HTTP_PORT": "", "HTTP_PORT": "3"}, 3),  # empty counts as unset
        ({}, 80),
    ],
)
def test_run_options_from_the_environment_in_order(env: dict[str, str], port: int) -> None:
    assert run(env=env).http_port == port


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"KPROXY_HTTPS_PORT": "8443"}, "https_port", 8443),
        ({"KAMAL_PROXY_BIND": "::1"}, "bind", "::1"),
        ({"DEBUG": "true"}, "debug", True),
        ({"KAMAL_PROXY_DEBUG": "1"}, "debug", True),
        ({"KPROXY_STATE_DIR": "/srv/state"}, "state_dir", "/srv/state"),
    ],
)
def test_every_run_option_reads_the_environment(
    env: dict[str, str], field: str, value: object
) -> None:
    assert getattr(run(env=env), field) == value


def test_a_flag_beats_the_environment() -> None:
    env = {"KPROXY_HTTP_PORT": "1", "KPROXY_DEBUG": "true", "KPROXY_STATE_DIR": "/env"}
    options = run("--http-port=8080", "--debug=false", "--state-dir=/flag", env=env)
    assert (options.http_port, options.debug, options.state_dir) == (8080, False, "/flag")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"KPROXY_HTTP_PORT": "eighty"},
            'run: invalid $KPROXY_HTTP_PORT (for --http-port): invalid integer "eighty"',
        ),
        ({"HTTP_PORT": "80x"}, "run: invalid $HTTP_PORT (for --http-port)"),
        (
            {"KAMAL_PROXY_DEBUG": "yes"},
            'run: invalid $KAMAL_PROXY_DEBUG (for --debug): invalid boolean "yes"',
        ),
        (
            {"KPROXY_HTTP_PORT": "70000"},
            "run: --http-port must be 0-65535, got 70000 (set by $KPROXY_HTTP_PORT)",
        ),
    ],
)
def test_invalid_environment_values_are_clear(env: dict[str, str], fragment: str) -> None:
    assert fragment in error("run", env=env)


def test_a_flag_hides_an_invalid_environment_value() -> None:
    assert run("--http-port=8080", env={"KPROXY_HTTP_PORT": "x"}).http_port == 8080


@pytest.mark.parametrize(
    ("words", "fragment"),
    [
        (["--http-port=-1"], "run: --http-port must be 0-65535, got -1"),
        (["--https-port=65536"], "run: --https-port must be 0-65535, got 65536"),
        (["--http-port=80s"], "run: invalid --http-port"),
    ],
)
def test_run_port_errors(words: list[str], fragment: str) -> None:
    assert fragment in error("run", *words)


def test_run_port_zero_picks_a_free_port() -> None:
    assert run("--http-port=0").http_port == 0


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({}, "/tmp/kproxy.sock"),
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000/kproxy.sock"),
        ({"XDG_RUNTIME_DIR": "/run/user/1000/"}, "/run/user/1000/kproxy.sock"),
        ({"XDG_RUNTIME_DIR": ""}, "/tmp/kproxy.sock"),
        ({"KAMAL_PROXY_SOCKET": "/k.sock", "XDG_RUNTIME_DIR": "/run"}, "/k.sock"),
        ({"KPROXY_SOCKET": "/p.sock", "KAMAL_PROXY_SOCKET": "/k.sock"}, "/p.sock"),
    ],
)
def test_default_socket_path(env: dict[str, str], path: str) -> None:
    assert parser.default_socket_path(env) == path
    assert run(env=env).socket_path == path


def test_socket_flag_beats_the_environment() -> None:
    assert (
        run("--socket=/flag.sock", env={"KPROXY_SOCKET": "/env.sock"}).socket_path == "/flag.sock"
    )


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"HOME": "/home/k"}, "/home/k/.config/kproxy"),
        ({"HOME": "/home/k/"}, "/home/k/.config/kproxy"),
        ({}, "/root/.config/kproxy"),
    ],
)
def test_default_state_dir(env: dict[str, str], path: str) -> None:
    assert parser.default_state_dir(env) == path


# --- --canonical-host, --client-ip-header, --scope-cookie-paths ---------------------------------


def test_redirect_client_ip_and_cookie_flags_parse() -> None:
    options = deploy(
        T,
        "--host=example.com,www.example.com",
        "--canonical-host=Example.COM",
        "--client-ip-header=CF-Connecting-IP",
        "--scope-cookie-paths",
        "--path-prefix=/app",
    )
    assert options.service == opt.ServiceOptions(
        hosts=("example.com", "www.example.com"),
        path_prefixes=("/app",),
        canonical_host="example.com",
        client_ip_header="CF-Connecting-IP",
        scope_cookie_paths=True,
    )


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["--host=a.example", "--canonical-host=b.example"],
            "deploy: --canonical-host b.example must be one of the --host values (a.example)",
        ),
        (
            ["--canonical-host=b.example"],
            "deploy: --canonical-host b.example must be one of the --host values (none given)",
        ),
        (["--client-ip-header=CF Connecting IP"], "deploy: invalid header name 'CF Connecting IP'"),
    ],
)
def test_redirect_and_client_ip_flags_are_validated(words: list[str], message: str) -> None:
    assert error("deploy", "app", T, *words) == message


def test_read_targets_and_writer_affinity() -> None:
    options = deploy(
        T,
        "--read-target=127.0.0.1:4001,127.0.0.1:4002",
        "--read-target",
        "127.0.0.1:4003",
        "--read-target=127.0.0.1:4001",  # repeated: once
        "--writer-affinity-timeout=500ms",
        "--read-target-websockets",
    )
    assert options.read_targets == ("127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003")
    assert options.service.writer_affinity_timeout == 0.5
    assert options.service.read_target_websockets is True
    plain = deploy(T)
    assert plain.read_targets == ()
    assert plain.service.writer_affinity_timeout == 3.0  # kamal-proxy's default
    assert plain.service.read_target_websockets is False
    assert deploy(T, "--writer-affinity-timeout=0").service.writer_affinity_timeout == 0
    assert "writer-affinity-timeout" in error("deploy", "app", T, "--writer-affinity-timeout=-1s")
