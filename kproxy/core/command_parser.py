"""The command parser: a command line, split into words, becomes one Command value.

The command is looked up in the command table (``command_table.py``), its flags are read
with pflag's syntax (``flag_parser.py``), then kamal-proxy v0.9's rules run in cobra's order,
so a line with several mistakes gets kamal-proxy's error; flags whose feature kproxy does not
have yet are refused by name. The builders turn the flag values into the option objects
(``options.py``) inside a command value (``commands.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from kproxy.core import options as opt
from kproxy.core.command_table import ALIASES, COMMANDS, CommandSpec
from kproxy.core.commands import (
    Command,
    Deploy,
    Help,
    List,
    Pause,
    Remove,
    Resume,
    RolloutDeploy,
    RolloutSet,
    RolloutStop,
    Run,
    Stop,
    Version,
)
from kproxy.core.flag_parser import Parsed, parse_flags
from kproxy.core.rollout import RolloutSplit
from kproxy.core.service_map import normalize_path_prefix
from kproxy.errors import UsageError


def parse_command(words: Sequence[str], env: Mapping[str, str] | None = None) -> Command:
    """Turn a command line, split into words, into a Command.

    The checks run in cobra's order (spf13/cobra command.go ``execute``), so a line with
    several mistakes gets the error kamal-proxy would give: flag syntax and values, then
    the positional arguments, then the command's own rules (deploy's ``preRun``), then
    required flags, then flag groups; last, the flags kproxy does not support yet.

    Args:
      words: the command line after the program name, split like a POSIX shell.
      env: supplies run options and the default paths; the control channel passes none.

    Returns:
      The command value.

    Raises:
      UsageError: with a message that names the problem and the fix.
    """
    if not words:
        raise UsageError("no command given; try 'help'")
    env = env or {}
    spec, rest = _find_spec(words)
    if _asks_for_help(rest):
        return Help(spec.name)
    parsed = parse_flags(spec, rest, env)
    try:
        _PRE_RUN.get(spec.name, _no_rules)(parsed)
        _check_required(parsed)
        _check_groups(parsed)
        _refuse_unsupported(parsed)
        return _BUILDERS[spec.name](parsed, env)
    except ValueError as exc:
        raise UsageError(f"{spec.name}: {exc}{_env_note(parsed, str(exc))}") from None


def _find_spec(words: Sequence[str]) -> tuple[CommandSpec, Sequence[str]]:
    name = ALIASES.get(words[0], words[0])
    if name in ("--help", "-h"):
        return COMMANDS["help"], words[1:]
    if name == "--version":
        return COMMANDS["version"], words[1:]
    if name == "rollout":
        sub = words[1] if len(words) > 1 else ""
        if sub in ("--help", "-h"):
            return COMMANDS["help"], ["rollout"]
        if f"rollout {sub}" not in COMMANDS:
            raise UsageError("rollout needs a subcommand: deploy, set or stop")
        return COMMANDS[f"rollout {sub}"], words[2:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command {words[0]!r}; commands are: {_command_names()}")
    return COMMANDS[name], words[1:]


def _command_names() -> str:
    return ", ".join(n for n in COMMANDS if " " not in n)


def _asks_for_help(words: Sequence[str]) -> bool:
    """``-h``/``--help`` anywhere before ``--`` shows the command's help, as cobra does."""
    end = words.index("--") if "--" in words else len(words)
    return any(word in ("-h", "--help") for word in words[:end])


def _env_note(parsed: Parsed, message: str) -> str:
    """Point at the environment when the flag an error names was set there."""
    keys = [key for name, key in parsed.sources.items() if f"--{name} " in f"{message} "]
    return f" (set by ${keys[0]})" if keys else ""


# --- Validation rules, in cobra's order -------------------------------------------------------


def _no_rules(_p: Parsed) -> None:
    pass


def _pre_run_deploy(p: Parsed) -> None:
    """kamal-proxy's deploy ``preRun`` (internal/cmd/deploy.go), rule for rule, in its order."""
    if "max-request-body" in p.given and "buffer-requests" not in p.given:
        raise ValueError("--max-request-body can only be set with --buffer-requests")
    if "max-response-body" in p.given and "buffer-responses" not in p.given:
        raise ValueError("--max-response-body can only be set with --buffer-responses")
    if p.flag("tls"):
        if not p.strings("host"):
            raise ValueError("--host must be set when using --tls")
        prefixes = [normalize_path_prefix(v) for v in p.strings("path-prefix")] or ["/"]
        if "/" not in prefixes:
            raise ValueError(
                "TLS settings must be given on the root path service (--path-prefix /)"
            )


def _pre_run_rollout_set(p: Parsed) -> None:
    percent = p.integer("percent")
    if not 0 <= percent <= 100:
        raise ValueError(f"--percent must be 0-100, got {percent}")


_PRE_RUN: Final[dict[str, Callable[[Parsed], None]]] = {
    "deploy": _pre_run_deploy,
    "rollout set": _pre_run_rollout_set,
}


def _check_required(p: Parsed) -> None:
    for flag in p.spec.flags:
        if flag.required and flag.name not in p.given:
            raise ValueError(f"required flag --{flag.name} is missing")


# cobra's MarkFlagsRequiredTogether / MarkFlagsOneRequired, checked after required flags.
_TOGETHER: Final = {"deploy": (("tls-certificate-path", "tls-private-key-path"),)}
_ONE_OF: Final = {"rollout set": (("percent", "list"),)}


def _check_groups(p: Parsed) -> None:
    for group in _TOGETHER.get(p.spec.name, ()):
        missing = [name for name in group if name not in p.given]
        if missing and len(missing) < len(group):
            names = " and ".join(f"--{name}" for name in group)
            raise ValueError(
                f"{names} must be given together (missing {', '.join('--' + m for m in missing)})"
            )
    for group in _ONE_OF.get(p.spec.name, ()):
        if not any(name in p.given for name in group):
            raise ValueError(f"one of {' or '.join('--' + n for n in group)} is required")


def _refuse_unsupported(p: Parsed) -> None:
    for flag in p.spec.flags:
        if not flag.supported and flag.name in p.given and p.values[flag.name] != flag.default:
            if key := p.sources.get(flag.name):
                raise ValueError(
                    f"--{flag.name} is not supported by kproxy yet; it was set by ${key}, unset it"
                )
            raise ValueError(
                f"--{flag.name} is not supported by kproxy yet; run the command without it"
            )


# --- Builders ---------------------------------------------------------------------------------


def _forward_headers(p: Parsed) -> bool:
    """``--forward-headers`` defaults to true, unless ``--tls`` (kamal-proxy's preRun)."""
    if "forward-headers" in p.given:
        return p.flag("forward-headers")
    return not p.flag("tls")


def _build_deploy(p: Parsed, _env: Mapping[str, str]) -> Deploy:
    service = opt.validate_service_name(p.args[0])
    options = opt.DeploymentOptions(
        targets=p.strings("target"),
        service=opt.ServiceOptions(
            hosts=p.strings("host"),
            path_prefixes=p.strings("path-prefix"),
            strip_path_prefix=p.flag("strip-path-prefix"),
            canonical_host=p.text("canonical-host"),
            error_pages=p.text("error-pages"),
            client_ip_header=p.text("client-ip-header"),
            scope_cookie_paths=p.flag("scope-cookie-paths"),
            tls=p.flag("tls"),
            tls_certificate_path=p.text("tls-certificate-path"),
            tls_private_key_path=p.text("tls-private-key-path"),
            tls_redirect=p.flag("tls-redirect"),
            tls_staging=p.flag("tls-staging"),
            tls_on_demand_url=p.text("tls-on-demand-url"),
            tls_acme_cache_path=p.text("tls-acme-cache-path"),
            tls_acme_directory=p.text("tls-acme-directory"),
            writer_affinity_timeout=p.seconds("writer-affinity-timeout"),
            read_target_websockets=p.flag("read-target-websockets"),
            exclude_metrics_paths=p.strings("exclude-metrics-path"),
        ),
        target=opt.TargetOptions(
            health_check_path=p.text("health-check-path"),
            health_check_interval=p.seconds("health-check-interval"),
            health_check_timeout=p.seconds("health-check-timeout"),
            health_check_port=p.integer("health-check-port") or None,
            health_check_host=p.text("health-check-host") or None,
            target_timeout=p.seconds("target-timeout"),
            forward_headers=_forward_headers(p),
            log_request_headers=p.strings("log-request-header"),
            log_response_headers=p.strings("log-response-header"),
            buffer_requests=p.flag("buffer-requests"),
            buffer_responses=p.flag("buffer-responses"),
            buffer_memory=p.integer("buffer-memory"),
            max_request_body=p.integer("max-request-body"),
            max_response_body=p.integer("max-response-body"),
        ),
        deploy_timeout=p.seconds("deploy-timeout"),
        drain_timeout=p.seconds("drain-timeout"),
        force=p.flag("force"),
        read_targets=p.strings("read-target"),
    )
    return Deploy(service, options)


def _build_run(p: Parsed, env: Mapping[str, str]) -> Run:
    return Run(
        opt.RunOptions(
            socket_path=p.text("socket") or default_socket_path(env),
            state_dir=p.text("state-dir") or default_state_dir(env),
            bind=p.text("bind"),
            http_port=p.integer("http-port"),
            https_port=p.integer("https-port"),
            metrics_port=p.integer("metrics-port"),
            debug=p.flag("debug"),
            max_connections=p.integer("max-connections"),
            workers=p.integer("workers"),
            acme_directory=env.get("KPROXY_ACME_DIRECTORY", ""),
        )
    )


def _build_pause(p: Parsed, _env: Mapping[str, str]) -> Pause:
    return Pause(p.args[0], p.seconds("drain-timeout"), p.seconds("max-pause"))


def _build_stop(p: Parsed, _env: Mapping[str, str]) -> Stop:
    return Stop(p.args[0], p.seconds("drain-timeout"), p.text("message"))


def _build_help(p: Parsed, _env: Mapping[str, str]) -> Help:
    topic = " ".join(p.args)
    topic = ALIASES.get(topic, topic)
    if topic and topic not in COMMANDS and topic != "rollout":
        raise ValueError(f"unknown command {topic!r}; commands are: {_command_names()}")
    return Help(topic, markdown=p.flag("markdown"))


def _build_rollout_deploy(p: Parsed, _env: Mapping[str, str]) -> RolloutDeploy:
    # The targets are checked and normalized as a deploy's are.
    checked = opt.DeploymentOptions(
        targets=p.strings("target"), read_targets=p.strings("read-target")
    )
    return RolloutDeploy(
        p.args[0],
        checked.targets,
        checked.read_targets,
        deploy_timeout=p.seconds("deploy-timeout"),
        drain_timeout=p.seconds("drain-timeout"),
    )


def _build_rollout_set(p: Parsed, _env: Mapping[str, str]) -> RolloutSet:
    return RolloutSet(p.args[0], RolloutSplit(p.integer("percent"), p.strings("list")))


_BUILDERS: Final[dict[str, Callable[[Parsed, Mapping[str, str]], Command]]] = {
    "run": _build_run,
    "deploy": _build_deploy,
    "remove": lambda p, _env: Remove(p.args[0]),
    "pause": _build_pause,
    "stop": _build_stop,
    "resume": lambda p, _env: Resume(p.args[0]),
    "list": lambda p, _env: List(json=p.flag("json")),
    "rollout deploy": _build_rollout_deploy,
    "rollout set": _build_rollout_set,
    "rollout stop": lambda p, _env: RolloutStop(p.args[0]),
    "help": _build_help,
    "version": lambda _p, _env: Version(),
}


def default_socket_path(env: Mapping[str, str]) -> str:
    """``--socket``, else KPROXY_SOCKET, KAMAL_PROXY_SOCKET, $XDG_RUNTIME_DIR, /tmp."""
    for key in ("KPROXY_SOCKET", "KAMAL_PROXY_SOCKET"):
        if env.get(key):
            return env[key]
    runtime_dir = env.get("XDG_RUNTIME_DIR") or "/tmp"
    return f"{runtime_dir.rstrip('/')}/kproxy.sock"


def default_state_dir(env: Mapping[str, str]) -> str:
    """``~/.config/kproxy``; ``--state-dir`` and KPROXY_STATE_DIR are read as run options."""
    home = env.get("HOME") or "/root"
    return f"{home.rstrip('/')}/.config/kproxy"
