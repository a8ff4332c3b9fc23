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
from kproxy.core.durations import format_duration, parse_bool, parse_duration, parse_int
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
    Flag("forward-headers", B, True, "Keep incoming X-Forwarded-* headers (default: true unless --tls)"),
    Flag("log-request-header", L, (), "Extra request header to log (repeatable)"),
    Flag("log-response-header", L, (), "Extra response header to log (repeatable)"),
    Flag("force", B, False, "Cut over at once, without waiting for health checks"),
    Flag("read-target", L, (), "Read-only target host:port(s)", supported=False),
    Flag("writer-affinity-timeout", D, opt.DEFAULT_WRITER_AFFINITY_TIMEOUT, "Time after a write before reads go to read targets", supported=False),
    Flag("read-targets-accept-websockets", B, False, "Route WebSockets to read targets", supported=False),
    Flag("tls", B, False, "Serve this service over TLS (requires --host)", supported=False),
    Flag("tls-staging", B, False, "Use Let's Encrypt's staging environment", supported=False),
    Flag("tls-certificate-path", S, "", "Custom TLS certificate (PEM)", supported=False),
    Flag("tls-private-key-path", S, "", "Custom TLS private key (PEM)", supported=False),
    Flag("tls-redirect", B, True, "Redirect HTTP to HTTPS when TLS is on", supported=False),
    Flag("canonical-host", S, "", "Redirect the other hosts to this one", supported=False),
    Flag("buffer-requests", B, False, "Receive whole request bodies before forwarding", supported=False),
    Flag("buffer-responses", B, False, "Receive whole responses before forwarding", supported=False),
    Flag("buffer-memory", N, opt.DEFAULT_BUFFER_MEMORY, "Memory per buffer before spilling to disk (bytes)", supported=False),
    Flag("max-request-body", N, 0, "Largest request body when buffering (bytes, 0 = unlimited)", supported=False),
    Flag("max-response-body", N, 0, "Largest response body when buffering (bytes, 0 = unlimited)", supported=False),
    Flag("error-pages", S, "", "Directory of custom error pages", supported=False),
    Flag("client-ip-header", S, "", "Header that carries the real client IP", supported=False),
    Flag("scope-cookie-paths", B, False, "Rewrite Set-Cookie paths under the path prefix", supported=False),
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
            Flag("allowlist", L, (), "Account ids always sent to the rollout target"),
        )),
        CommandSpec("rollout stop", "Stop sending traffic to the rollout target", ("service",)),
        CommandSpec("help", "Show help for a command", ("command",)),
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
    drain_timeout: float = opt.DEFAULT_DRAIN_TIMEOUT
    max_pause: float = opt.DEFAULT_PAUSE_TIMEOUT


@attrs.frozen
class Stop:
    service: str
    drain_timeout: float = opt.DEFAULT_DRAIN_TIMEOUT
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

    ``env`` supplies run options (and the default paths); the control channel passes none.
    Raises UsageError with a message that names the problem and the fix.
    """
    if not words:
        raise UsageError("no command given; try 'help'")
    spec, rest = _find_spec(words)
    if "-h" in rest or "--help" in rest:
        return Help(spec.name)
    parsed = _parse_flags(spec, rest, env or {})
    build = _BUILDERS.get(spec.name)
    if build is None:  # rollout *: parsed and validated, but not there yet
        raise UsageError(ROLLOUT_UNSUPPORTED)
    try:
        return build(parsed, env or {})
    except ValueError as exc:
        raise UsageError(f"{spec.name}: {exc}") from None


def _find_spec(words: Sequence[str]) -> tuple[CommandSpec, Sequence[str]]:
    name = ALIASES.get(words[0], words[0])
    if name in ("--help", "-h"):
        return COMMANDS["help"], words[1:]
    if name == "--version":
        return COMMANDS["version"], words[1:]
    if name == "rollout":
        sub = words[1] if len(words) > 1 else ""
        if f"rollout {sub}" not in COMMANDS:
            raise UsageError("rollout needs a subcommand: deploy, set or stop")
        return COMMANDS[f"rollout {sub}"], words[2:]
    if name not in COMMANDS:
        names = ", ".join(n for n in COMMANDS if " " not in n)
        raise UsageError(f"unknown command {words[0]!r}; commands are: {names}")
    return COMMANDS[name], words[1:]


def _parse_flags(spec: CommandSpec, words: Sequence[str], env: Mapping[str, str]) -> Parsed:
    values: dict[str, FlagValue] = {f.name: f.default for f in (*spec.flags, *GLOBAL_FLAGS)}
    given: set[str] = set()
    args: list[str] = []
    for flag in spec.flags:
        if flag.env and (raw := _env_value(flag.name, env)) is not None:
            values[flag.name] = _convert(spec, flag, raw, "")
            given.add(flag.name)
    lists: dict[str, list[str]] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            args.extend(words[i:])
            break
        if not word.startswith("-") or word == "-":
            args.append(word)
            continue
        if not word.startswith("--"):
            raise UsageError(f"{spec.name}: unknown shorthand flag {word!r}; flags are --long-form")
        name, has_value, raw = word[2:].partition("=")
        found = spec.flag(name)
        if found is None:
            raise UsageError(f"{spec.name}: unknown flag --{name} (see 'help {spec.name}')")
        flag = found
        if not has_value:
            if flag.kind is Kind.BOOL:
                raw = "true"
            elif i < len(words):
                raw, i = words[i], i + 1
            else:
                raise UsageError(f"{spec.name}: flag --{name} needs a value")
        if flag.kind is Kind.LIST:
            items = [item.strip() for item in raw.split(",")]
            lists.setdefault(name, []).extend(item for item in items if item)
            values[name] = tuple(lists[name])
        else:
            values[name] = _convert(spec, flag, raw, "--")
        given.add(name)
    if len(args) != len(spec.args):
        want = " ".join(f"<{a}>" for a in spec.args) or "no arguments"
        raise UsageError(f"{spec.name}: expected {want}, got {len(args)} argument(s)")
    for flag in spec.flags:
        if flag.required and flag.name not in given:
            raise UsageError(f"{spec.name}: required flag --{flag.name} is missing")
    return Parsed(spec, tuple(args), values, frozenset(given))


def _env_value(name: str, env: Mapping[str, str]) -> str | None:
    key = name.upper().replace("-", "_")
    for candidate in (f"KPROXY_{key}", f"KAMAL_PROXY_{key}", key):
        if env.get(candidate):
            return env[candidate]
    return None


def _convert(spec: CommandSpec, flag: Flag, raw: str, dashes: str) -> FlagValue:
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
        source = f"--{flag.name}" if dashes else f"environment value for {flag.name}"
        raise UsageError(f"{spec.name}: invalid {source}: {exc}") from None


def _refuse_unsupported(p: Parsed) -> None:
    for flag in p.spec.flags:
        if not flag.supported and flag.name in p.given and p.values[flag.name] != flag.default:
            raise UsageError(
                f"{p.spec.name}: --{flag.name} is not supported by kproxy yet; "
                "run the command without it"
            )


def _build_deploy(p: Parsed, _env: Mapping[str, str]) -> Deploy:
    # Validation rules of kamal-proxy's deploy preRun, in its order.
    if "max-request-body" in p.given and "buffer-requests" not in p.given:
        raise UsageError("deploy: --max-request-body can only be set with --buffer-requests")
    if "max-response-body" in p.given and "buffer-responses" not in p.given:
        raise UsageError("deploy: --max-response-body can only be set with --buffer-responses")
    if ("tls-certificate-path" in p.given) != ("tls-private-key-path" in p.given):
        raise UsageError(
            "deploy: --tls-certificate-path and --tls-private-key-path must be given together"
        )
    tls = p.flag("tls")
    if tls and not p.strings("host"):
        raise UsageError("deploy: --host must be set when using --tls")
    if tls and p.strings("path-prefix") and "/" not in p.strings("path-prefix"):
        raise UsageError("deploy: TLS settings must be given on the root path service")
    _refuse_unsupported(p)
    forward_headers = p.flag("forward-headers") if "forward-headers" in p.given else not tls
    service = opt.validate_service_name(p.args[0])
    options = opt.DeploymentOptions(
        targets=p.strings("target"),
        service=opt.ServiceOptions(
            hosts=p.strings("host"),
            path_prefixes=p.strings("path-prefix"),
            strip_path_prefix=p.flag("strip-path-prefix"),
        ),
        target=opt.TargetOptions(
            health_check_path=p.text("health-check-path"),
            health_check_interval=p.seconds("health-check-interval"),
            health_check_timeout=p.seconds("health-check-timeout"),
            health_check_port=p.integer("health-check-port") or None,
            health_check_host=p.text("health-check-host") or None,
            target_timeout=p.seconds("target-timeout"),
            forward_headers=forward_headers,
            log_request_headers=p.strings("log-request-header"),
            log_response_headers=p.strings("log-response-header"),
        ),
        deploy_timeout=p.seconds("deploy-timeout"),
        drain_timeout=p.seconds("drain-timeout"),
        force=p.flag("force"),
    )
    return Deploy(service, options)


def _build_run(p: Parsed, env: Mapping[str, str]) -> Run:
    _refuse_unsupported(p)
    return Run(
        opt.RunOptions(
            socket_path=p.text("socket") or default_socket_path(env),
            state_dir=p.text("state-dir") or default_state_dir(env),
            bind=p.text("bind"),
            http_port=p.integer("http-port"),
            https_port=p.integer("https-port"),
            debug=p.flag("debug"),
        )
    )


def _build_pause(p: Parsed, _env: Mapping[str, str]) -> Pause:
    return Pause(p.args[0], p.seconds("drain-timeout"), p.seconds("max-pause"))


def _build_stop(p: Parsed, _env: Mapping[str, str]) -> Stop:
    return Stop(p.args[0], p.seconds("drain-timeout"), p.text("message"))


def _build_help(p: Parsed, _env: Mapping[str, str]) -> Help:
    return Help(p.args[0] if p.args else "")


_BUILDERS: Final[dict[str, Callable[[Parsed, Mapping[str, str]], Command]]] = {
    "run": _build_run,
    "deploy": _build_deploy,
    "remove": lambda p, _env: Remove(p.args[0]),
    "pause": _build_pause,
    "stop": _build_stop,
    "resume": lambda p, _env: Resume(p.args[0]),
    "list": lambda p, _env: List(json=p.flag("json")),
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
    home = env.get("HOME") or "/root"
    return f"{home.rstrip('/')}/.config/kproxy"


# --- Help text ------------------------------------------------------------------------------


def _show_default(flag: Flag) -> str:
    if flag.default in ((), "", 0, False):
        return ""
    if flag.kind is Kind.DURATION:
        assert isinstance(flag.default, float)
        return f" (default {format_duration(flag.default)})"
    return f" (default {str(flag.default).lower() if flag.kind is Kind.BOOL else flag.default})"


def usage(name: str = "") -> str:
    """Help text for one command, or the command list when ``name`` is empty."""
    if not name:
        lines = [
            f"kproxy {__version__}: zero-downtime deploy proxy (kamal-proxy {KAMAL_PROXY_COMPAT} compatible)",
            "",
            "Commands:",
        ]
        lines += [f"  {s.name:<16} {s.summary}" for s in COMMANDS.values()]
        lines += ["", "Run 'help <command>' for its flags."]
        return "\n".join(lines)
    spec = COMMANDS.get(ALIASES.get(name, name))
    if spec is None:
        raise UsageError(f"unknown command {name!r}; try 'help'")
    args = " ".join(f"<{a}>" for a in spec.args)
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
