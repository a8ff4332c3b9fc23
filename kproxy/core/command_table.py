"""The command table: every command, its arguments and its flags, with defaults and help.

One definition serves the CLI, the control channel and the help text: the parser
(``command_parser.py``) reads flags by it, and ``help.py`` renders it, into README.md too.
The flags, their defaults and their kinds follow kamal-proxy v0.9's cobra/pflag definitions
(internal/cmd/*.go). A flag whose feature kproxy does not have yet is ``supported=False``: it
is parsed and validated, then refused by name, never accepted and silently ignored.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from kproxy.core import options as opt

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
    aliases: tuple[str, ...] = ()  # other names for it on the command line (kamal-proxy's)


@attrs.frozen
class CommandSpec:
    name: str
    summary: str
    args: tuple[str, ...] = ()
    flags: tuple[Flag, ...] = ()
    optional_args: bool = False  # the positionals may be left out (``help`` with no topic)

    def flag(self, name: str) -> Flag | None:
        flags = (*self.flags, *GLOBAL_FLAGS)
        return next((f for f in flags if name == f.name or name in f.aliases), None)


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
    Flag(
        "target-timeout",
        D,
        opt.DEFAULT_TARGET_TIMEOUT,
        "How long to wait for a target's response head, then for more of its body",
    ),
    Flag("forward-headers", B, True, "Keep incoming X-Forwarded-* headers (default true unless --tls)"),
    Flag("log-request-header", L, (), "Extra request header to log (repeatable)"),
    Flag("log-response-header", L, (), "Extra response header to log (repeatable)"),
    Flag("force", B, False, "Cut over at once, without waiting for health checks"),
    Flag("read-target", L, (), "Read-only target host:port(s)"),
    Flag("writer-affinity-timeout", D, opt.DEFAULT_WRITER_AFFINITY_TIMEOUT, "Time after a write before reads go to read targets"),
    Flag("read-target-websockets", B, False, "Route WebSockets to read targets"),
    Flag("tls", B, False, "Serve this service over HTTPS (requires --host or --tls-on-demand-url; without certificate files: ACME)"),
    Flag("tls-on-demand-url", S, "", "Also order certificates for names this URL allows (GET ?host=<name> answers 200)"),
    Flag("tls-staging", B, False, "Use Let's Encrypt's staging environment"),
    Flag("tls-acme-cache-path", S, "", "Directory for ACME certificates (default: <state-dir>/certs)"),
    Flag("tls-acme-directory", S, "", "ACME directory URL (default: $KPROXY_ACME_DIRECTORY, else Let's Encrypt)"),
    Flag("tls-certificate-path", S, "", "TLS certificate file (PEM, intermediates after it)"),
    Flag("tls-private-key-path", S, "", "TLS private key file (PEM, unencrypted)"),
    Flag("tls-redirect", B, True, "Redirect HTTP requests to HTTPS when TLS is on"),
    Flag("canonical-host", S, "", "Redirect the other hosts to this one"),
    Flag("buffer-requests", B, False, "Receive whole request bodies before forwarding"),
    Flag("buffer-responses", B, False, "Receive whole responses before forwarding"),
    Flag("buffer-memory", N, opt.DEFAULT_BUFFER_MEMORY, "Memory per buffer before spilling to disk (bytes)"),
    Flag("max-request-body", N, 0, "Largest request body when buffering (bytes, 0 = unlimited)"),
    Flag("max-response-body", N, 0, "Largest response body when buffering (bytes, 0 = unlimited)"),
    Flag("error-pages", S, "", "Directory of custom error pages"),
    Flag("client-ip-header", S, "", "Header that carries the real client IP"),
    Flag("scope-cookie-paths", B, False, "Rewrite Set-Cookie paths under the path prefix"),
    Flag("exclude-metrics-path", L, (), "Path (after prefix stripping) left out of the request metrics (repeatable)"),
)  # fmt: skip

COMMANDS: Final = {
    spec.name: spec
    for spec in (
        CommandSpec("run", "Run the proxy", flags=(
            Flag("bind", S, "", "Address to listen on (default: all addresses)", env=True),
            Flag("http-port", N, opt.DEFAULT_HTTP_PORT, "Port to serve HTTP on", env=True),
            Flag("https-port", N, opt.DEFAULT_HTTPS_PORT, "Port to serve HTTPS on", env=True),
            Flag("metrics-port", N, 0, "Port to serve Prometheus metrics (/metrics) and /up on (0 = off)", env=True),
            Flag("debug", B, False, "Include debugging logs", env=True),
            Flag("max-connections", N, 0, "Most simultaneous client connections; more wait (0 = 10000, fewer if ulimit -n is low)", env=True),
            Flag("workers", N, 0, "Processes serving HTTP on the shared ports (0 = one per core; 1 = this process alone)", env=True),
            Flag("state-dir", S, "", "Directory for the state file (env KPROXY_STATE_DIR; default ~/.config/kproxy)", env=True, aliases=("state-path",)),
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
        CommandSpec("rollout deploy", "Deploy a rollout group beside a service's targets; it gets no traffic until rollout set", ("service",), (
            Flag("target", L, (), "Target host:port(s) to deploy", required=True),
            Flag("read-target", L, (), "Read-only target host:port(s)"),
            Flag("deploy-timeout", D, opt.DEFAULT_DEPLOY_TIMEOUT, "How long new targets may take to become healthy"),
            Flag("drain-timeout", D, opt.DEFAULT_DRAIN_TIMEOUT, "How long in-flight requests may take"),
        )),
        CommandSpec("rollout set", "Send the kamal-rollout cookie values listed, and a share by hash, to the rollout group", ("service",), (
            Flag("percent", N, 0, "Percentage of kamal-rollout cookie values (by FNV-1a hash) for the rollout group"),
            Flag("list", L, (), "kamal-rollout cookie values (e.g. account ids) always sent to the rollout group"),
        )),
        CommandSpec("rollout stop", "Send all traffic back to the service's targets; drain and remove the rollout group", ("service",)),
        CommandSpec("help", "Show help for a command", ("command",), (
            Flag("markdown", B, False, "Print every command's reference as Markdown"),
        ), optional_args=True),
        CommandSpec("version", "Show the version of this program, and of the proxy if one answers"),
    )
}  # fmt: skip

ALIASES: Final = {"ls": "list"}
