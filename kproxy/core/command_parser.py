"""The command table and its parser: one definition for the CLI, the control channel and help.

A command line (already split into words) becomes one frozen Command value. The flags, their
defaults and their validation rules follow kamal-proxy v0.9's cobra/pflag definitions
(internal/cmd/*.go): ``--flag=value`` and ``--flag value``, repeatable comma lists, booleans
only as ``--flag`` or ``--flag=false``, Go durations. Flags whose feature kproxy does not have
yet are parsed and validated, then refused by name: never accepted and silently ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs

from kproxy._version import KAMAL_PROXY_COMPAT, __version__
from kproxy.core import options as opt
from kproxy.core.flag_values import format_duration, parse_bool, parse_duration, parse_int
from kproxy.core.service_map import normalize_path_prefix
from kproxy.errors import UsageError

FlagValue = str | bool | float | int | tuple[str, ...]


class Kind(enum.Enum):
    STRING = "string"
    LIST = "strings"  # repeatable, and each value may be a comma-separated list
    BOOL = "bool"
    DURATION = "duration"
    INT = "int"


@attrs.frozen
class Flag:
    name: str
    kind: Kind
    default: FlagValue
    help: str
    supported: bool = True  # False: parsed and validated, refused while its feature is missing
    required: bool = False
    env: bool = False  # a run option: also read from KPROXY_X, KAMAL_PROXY_X, then X


@attrs.frozen
class CommandSpec:
    name: str
    summary: str
    args: tuple[str, ...] = ()
    flags: tuple[Flag, ...] = ()
    optional_args: bool = False  # the positionals may be left out (``help`` with no topic)

    def flag(self, name: str) -> Flag | None:
        return next((f for f in (*self.flags, *GLOBAL_FLAGS) if f.name == name), None)


S, L, B, D, N = Kind.STRING, Kind.LIST, Kind.BOOL, Kind.DURATION, Kind.INT

GLOBAL_FLAGS: Final = (
    Flag("socket", S, "", "Control socket path (env KPROXY_SOCKET, KAMAL_PROXY_SOCKET)"),
)

_DEPLOY_FLAGS: Final = (
    Flag("target", L, (), "Target host:port(s) to deploy", required=True),
    Flag("host", L, (), "Host(s) to serve this service on (empty for any host)"),
    Flag("path-prefix", L, (), "Serve the service below these path prefix(es)"),
    Flag("strip-path-prefix", B, True, "With --path-prefix, strip the prefix before forwarding"),
    Flag("deploy-timeout", D, opt.DEFAULT_DEPLOY_TIMEOUT, "How long new targets may take to become healthy"),
    Flag("drain-timeout", D, opt.DEFAULT_DRAIN_TIMEOUT, "How long in-flight requests to old targets may take"),
    Flag("health-check-path", S, opt.DEFAULT_HEALTH_CHECK_PATH, "Path to check for health"),
    Flag("health-check-interval", D, opt.DEFAULT_HEALTH_CHECK_INTERVAL, "Interval between health checks"),
    Flag("health-check-timeout", D, opt.DEFAULT_HEALTH_CHECK_TIMEOUT, "Time each health check must complete in"),
    Flag("health-check-port", N, 0, "Port to check for health (default: the target's port)"),
    Flag("health-check-host", S, "", "Host header for health checks (default: the target's address)"),
    Flag("target-timeout", D, opt.DEFAULT_TARGET_TIMEOUT, "How long to wait for a target's response head"),
    Flag("forward-headers", B, True, "Keep incoming X-Forwarded-* headers (default true unless --tls)"),
    Flag("log-request-header", L, (), "Extra request header to log (repeatable)"),
    Flag("log-response-header", L, (), "Extra response header to log (repeatable)"),
    Flag("force", B, False, "Cut over at once, without waiting for health checks"),
    Flag("read-target", L, (), "Read-only target host:port(s)", supported=False),
    Flag("writer-affinity-timeout", D, opt.DEFAULT_WRITER_AFFINITY_TIMEOUT, "Time after a write before reads go to read targets", supported=False),
    Flag("read-target-websockets", B, False, "Route WebSockets to read targets", supported=False),
    Flag("tls", B, False, "Serve this service over TLS (requires --host)", supported=False),
    Flag("tls-staging", B, False, "Use Let's Encrypt's staging environment", supported=False),
    Flag("tls-certificate-path", S, "", "Custom TLS certificate (PEM)", supported=False),
    Flag("tls-private-key-path", S, "", "Custom TLS private key (PEM)", supported=False),
    Flag("tls-redirect", B, True, "Redirect HTTP to HTTPS when TLS is on", supported=False),
    Flag("canonical-host", S, "", "Redirect the other hosts to this one"),
    Flag("buffer-requests", B, False, "Receive whole request bodies before forwarding"),
    Flag("buffer-responses", B, False, "Receive whole responses before forwarding"),
    Flag("buffer-memory", N, opt.DEFAULT_BUFFER_MEMORY, "Memory per buffer before spilling to disk (bytes)"),
    Flag("max-request-body", N, 0, "Largest request body when buffering (bytes, 0 = unlimited)"),
    Flag("max-response-body", N, 0, "Largest response body when buffering (bytes, 0 = unlimited)"),
    Flag("error-pages", S, "", "Directory of custom error pages"),
    Flag("client-ip-header", S, "", "Header that carries the real client IP"),
    Flag("scope-cookie-paths", B, False, "Rewrite Set-Cookie paths under the path prefix"),
)  # fmt: skip

COMMANDS: Final = {
    spec.name: spec
    for spec in (
        CommandSpec("run", "Run the proxy", flags=(
            Flag("bind", S, "", "Address to listen on (default: all addresses)", env=True),
            Flag("http-port", N, opt.DEFAULT_HTTP_PORT, "Port to serve HTTP on", env=True),
            Flag("https-port", N, opt.DEFAULT_HTTPS_PORT, "Port to serve HTTPS on (used once a service has TLS)", env=True),
            Flag("metrics-port", N, 0, "Port for Prometheus metrics (0 = off)", supported=False, env=True),
            Flag("debug", B, False, "Include debugging logs", env=True),
            Flag("max-connections", N, 0, "Most simultaneous client connections; more wait (0 = 10000, fewer if ulimit -n is low)", env=True),
            Flag("workers", N, 0, "Processes serving HTTP on the shared ports (0 = one per core; 1 = this process alone)", env=True),
            Flag("state-dir", S, "", "Directory for the state file (env KPROXY_STATE_DIR; default ~/.config/kproxy)", env=True),
        )),
        CommandSpec("deploy", "Deploy targets for a service; returns when traffic is cut over and the old targets drained", ("service",), _DEPLOY_FLAGS),
        CommandSpec("remove", "Remove a service", ("service",)),
        CommandSpec("pause", "Hold new requests for a service until resumed", ("service",), (
            Flag("drain-timeout", D, opt.DEFAULT_DRAIN_TIMEOUT, "How long in-flight requests may take to complete"),
            Flag("max-pause", D, opt.DEFAULT_PAUSE_TIMEOUT, "How long a request may be held before it gets 504"),
        )),
        CommandSpec("stop", "Stop a service: requests get 503 (maintenance mode)", ("service",), (
            Flag("drain-timeout", D, opt.DEFAULT_DRAIN_TIMEOUT, "How long in-flight requests may take to complete"),
            Flag("message", S, "", "Message shown on the 503 page"),
        )),
        CommandSpec("resume", "Resume a paused or stopped service", ("service",)),
        CommandSpec("list", "List the services", flags=(Flag("json", B, False, "Print one JSON line"),)),
        CommandSpec("rollout deploy", "Deploy a rollout target", ("service",), (
            Flag("target", L, (), "Target host:port(s) to deploy", required=True),
            Flag("read-target", L, (), "Read-only target host:port(s)"),
            Flag("deploy-timeout", D, opt.DEFAULT_DEPLOY_TIMEOUT, "How long new targets may take to become healthy"),
            Flag("drain-timeout", D, opt.DEFAULT_DRAIN_TIMEOUT, "How long in-flight requests may take"),
        )),
        CommandSpec("rollout set", "Send a share of traffic to the rollout target", ("service",), (
            Flag("percent", N, 0, "Percentage of requests for the rollout target"),
            Flag("list", L, (), "Values (e.g. account ids) always sent to the rollout target"),
        )),
        CommandSpec("rollout stop", "Stop sending traffic to the rollout target", ("service",)),
        CommandSpec("help", "Show help for a command", ("command",), (
            Flag("markdown", B, False, "Print every command's reference as Markdown"),
        ), optional_args=True),
        CommandSpec("version", "Show the version"),
    )
}  # fmt: skip

ALIASES: Final = {"ls": "list"}
ROLLOUT_UNSUPPORTED: Final = "rollout is not supported by kproxy yet"


# --- Command values -------------------------------------------------------------------------


@attrs.frozen
class Deploy:
    service: str
    options: opt.DeploymentOptions


@attrs.frozen
class Remove:
    service: str


@attrs.frozen
class Pause:
    service: str
    drain_timeout: float = attrs.field(
        default=opt.DEFAULT_DRAIN_TIMEOUT, validator=opt.not_negative("drain-timeout")
    )
    max_pause: float = attrs.field(
        default=opt.DEFAULT_PAUSE_TIMEOUT, validator=opt.positive("max-pause")
    )


@attrs.frozen
class Stop:
    service: str
    drain_timeout: float = attrs.field(
        default=opt.DEFAULT_DRAIN_TIMEOUT, validator=opt.not_negative("drain-timeout")
    )
    message: str = ""


@attrs.frozen
class Resume:
    service: str


@attrs.frozen
class List:
    json: bool = False


@attrs.frozen
class Help:
    topic: str = ""
    markdown: bool = False


@attrs.frozen
class Version:
    pass


@attrs.frozen
class Run:
    options: opt.RunOptions


Command = Deploy | Remove | Pause | Stop | Resume | List | Help | Version | Run


# --- Parsing ----------------------------------------------------------------------------------


@attrs.frozen
class Parsed:
    spec: CommandSpec
    args: tuple[str, ...]
    values: Mapping[str, FlagValue]
    given: frozenset[str]  # flags set on the command line (or, for run, by the environment)
    sources: Mapping[str, str] = attrs.field(factory=dict)  # flag → environment variable

    def text(self, name: str) -> str:
        value = self.values[name]
        assert isinstance(value, str)
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.values[name]
        assert isinstance(value, tuple)
        return value

    def seconds(self, name: str) -> float:
        value = self.values[name]
        assert isinstance(value, float | int)
        return float(value)

    def integer(self, name: str) -> int:
        value = self.values[name]
        assert isinstance(value, int)
        return value

    def flag(self, name: str) -> bool:
        value = self.values[name]
        assert isinstance(value, bool)
        return value


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
    parsed = _parse_flags(spec, rest, env)
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


def _parse_flags(spec: CommandSpec, words: Sequence[str], env: Mapping[str, str]) -> Parsed:
    values: dict[str, FlagValue] = {f.name: f.default for f in (*spec.flags, *GLOBAL_FLAGS)}
    given: set[str] = set()
    lists: dict[str, list[str]] = {}
    args: list[str] = []
    after_bool: dict[int, str] = {}  # positional index → the bare boolean flag just before it
    bare_bool = ""
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            args.extend(words[i:])
            break
        if not word.startswith("-") or word == "-":
            if bare_bool:
                after_bool[len(args)] = bare_bool
            args.append(word)
            bare_bool = ""
            continue
        bare_bool = ""
        if not word.startswith("--"):
            raise UsageError(
                f"{spec.name}: unknown shorthand flag {word!r}; kproxy flags are long, like --target"
            )
        name, has_value, raw = word[2:].partition("=")
        found = spec.flag(name)
        if found is None:
            raise UsageError(f"{spec.name}: unknown flag --{name} (see 'help {spec.name}')")
        flag = found
        if not has_value:
            if flag.kind is Kind.BOOL:
                raw, bare_bool = "true", name
            elif i < len(words):
                raw, i = words[i], i + 1
            else:
                raise UsageError(f"{spec.name}: flag --{name} needs a value")
        if flag.kind is Kind.LIST:
            items = [item.strip() for item in raw.split(",")]
            lists.setdefault(name, []).extend(item for item in items if item)
            values[name] = tuple(lists[name])
        else:
            values[name] = _convert(spec, flag, raw, "")
        given.add(name)
    # Run options the command line left out come from the environment (a flag beats it, and
    # an unusable variable behind a flag does no harm).
    sources: dict[str, str] = {}
    for flag in spec.flags:
        if flag.env and flag.name not in given and (from_env := _env_value(flag.name, env)):
            key, raw = from_env
            values[flag.name] = _convert(spec, flag, raw, key)
            given.add(flag.name)
            sources[flag.name] = key
    _check_arg_count(spec, args, after_bool)
    return Parsed(spec, tuple(args), values, frozenset(given), sources)


def _check_arg_count(spec: CommandSpec, args: Sequence[str], after_bool: Mapping[int, str]) -> None:
    want = " ".join(f"<{a}>" for a in spec.args)
    usage_hint = f"usage: {spec.name} {want}".rstrip()
    if len(args) > len(spec.args) and not spec.optional_args:
        extra = len(spec.args)
        message = f"{spec.name}: unexpected argument {args[extra]!r}"
        if bare := after_bool.get(extra):
            message += (
                f" (a boolean flag takes its value after '=': --{bare}={args[extra]},"
                f" not --{bare} {args[extra]})"
            )
        raise UsageError(f"{message}; {usage_hint}")
    if len(args) < len(spec.args) and not spec.optional_args:
        missing = " ".join(f"<{a}>" for a in spec.args[len(args) :])
        raise UsageError(f"{spec.name}: missing {missing}; {usage_hint}")


def _env_value(name: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The first of KPROXY_X, KAMAL_PROXY_X and X that is set and not empty, as (key, value)."""
    key = name.upper().replace("-", "_")
    for candidate in (f"KPROXY_{key}", f"KAMAL_PROXY_{key}", key):
        if env.get(candidate):
            return candidate, env[candidate]
    return None


def _env_note(parsed: Parsed, message: str) -> str:
    """Point at the environment when the flag an error names was set there."""
    keys = [key for name, key in parsed.sources.items() if f"--{name} " in f"{message} "]
    return f" (set by ${keys[0]})" if keys else ""


def _convert(spec: CommandSpec, flag: Flag, raw: str, env_key: str) -> FlagValue:
    try:
        match flag.kind:
            case Kind.BOOL:
                return parse_bool(raw)
            case Kind.DURATION:
                return parse_duration(raw)
            case Kind.INT:
                return parse_int(raw)
            case Kind.LIST:
                return tuple(item.strip() for item in raw.split(",") if item.strip())
            case Kind.STRING:
                return raw
    except ValueError as exc:
        source = f"${env_key} (for --{flag.name})" if env_key else f"--{flag.name}"
        raise UsageError(f"{spec.name}: invalid {source}: {exc}") from None


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
            debug=p.flag("debug"),
            max_connections=p.integer("max-connections"),
            workers=p.integer("workers"),
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


def _build_rollout(p: Parsed, _env: Mapping[str, str]) -> Command:
    # Parsed and validated like any command, then refused by name until rollouts exist.
    for target in p.strings("target") if p.spec.flag("target") else ():
        opt.parse_target(target)
    raise UsageError(ROLLOUT_UNSUPPORTED)


_BUILDERS: Final[dict[str, Callable[[Parsed, Mapping[str, str]], Command]]] = {
    "run": _build_run,
    "deploy": _build_deploy,
    "remove": lambda p, _env: Remove(p.args[0]),
    "pause": _build_pause,
    "stop": _build_stop,
    "resume": lambda p, _env: Resume(p.args[0]),
    "list": lambda p, _env: List(json=p.flag("json")),
    "rollout deploy": _build_rollout,
    "rollout set": _build_rollout,
    "rollout stop": _build_rollout,
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


# --- Help text ------------------------------------------------------------------------------


def default_text(flag: Flag) -> str:
    """A flag's default as pflag shows it ("30s", "true", quoted strings), or "" for zero values
    and flags whose help explains their default."""
    if flag.default in ((), "", 0, False) or "(default" in flag.help:
        return ""
    match flag.kind:
        case Kind.DURATION:
            assert isinstance(flag.default, float)
            return format_duration(flag.default)
        case Kind.BOOL:
            return str(flag.default).lower()
        case Kind.STRING:
            return f'"{flag.default}"'
        case _:
            return str(flag.default)


def _show_default(flag: Flag) -> str:
    """pflag's ``(default …)`` suffix."""
    shown = default_text(flag)
    return f" (default {shown})" if shown else ""


def usage(name: str = "") -> str:
    """Help text for one command, or the command list when ``name`` is empty.

    Raises:
      UsageError: for an unknown command name.
    """
    if not name:
        lines = [
            f"kproxy {__version__}: zero-downtime deploy proxy (kamal-proxy {KAMAL_PROXY_COMPAT} compatible)",
            "",
            "Commands:",
        ]
        lines += [f"  {s.name:<16} {s.summary}" for s in COMMANDS.values()]
        lines += ["", "Run 'help <command>' for its flags."]
        return "\n".join(lines)
    if name == "rollout":
        lines = ["Usage: rollout <deploy|set|stop> <service> [flags]", "", "Subcommands:"]
        lines += [f"  {n:<16} {s.summary}" for n, s in COMMANDS.items() if n.startswith("rollout ")]
        return "\n".join([*lines, "", ROLLOUT_UNSUPPORTED])
    spec = COMMANDS.get(ALIASES.get(name, name))
    if spec is None:
        raise UsageError(f"unknown command {name!r}; try 'help'")
    args = " ".join(f"[{a}]" if spec.optional_args else f"<{a}>" for a in spec.args)
    lines = [
        f"Usage: {spec.name} {args} [flags]".replace("  ", " "),
        "",
        spec.summary,
        "",
        "Flags:",
    ]
    for flag in (*spec.flags, *GLOBAL_FLAGS):
        kind = "" if flag.kind is Kind.BOOL else f" {flag.kind.value}"
        note = " (required)" if flag.required else ""
        note += "" if flag.supported else " (not supported yet)"
        lines.append(f"  --{flag.name}{kind}".ljust(40) + f"{flag.help}{_show_default(flag)}{note}")
    return "\n".join(lines)
