"""Per-service options, set at deploy time, and their validation.

These are the values behind the ``deploy`` flags (see ``command_table.py`` for the flag table). The
same objects are used by the control channel, the state file and embedders, so one
``validate()`` guards all three doors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from kproxy.core.addresses import Address, parse_target
from kproxy.core.flag_values import format_duration
from kproxy.core.service_map import normalize_host, normalize_path_prefix

DEFAULT_HTTP_PORT: Final = 80
DEFAULT_HTTPS_PORT: Final = 443
DEFAULT_DEPLOY_TIMEOUT: Final = 30.0  # seconds
DEFAULT_DRAIN_TIMEOUT: Final = 30.0  # seconds
DEFAULT_PAUSE_TIMEOUT: Final = 30.0  # seconds, --max-pause
DEFAULT_TARGET_TIMEOUT: Final = 30.0  # seconds
DEFAULT_HEALTH_CHECK_PATH: Final = "/up"
DEFAULT_HEALTH_CHECK_INTERVAL: Final = 1.0  # seconds
DEFAULT_HEALTH_CHECK_TIMEOUT: Final = 5.0  # seconds
DEFAULT_WRITER_AFFINITY_TIMEOUT: Final = 3.0  # seconds
DEFAULT_BUFFER_MEMORY: Final = 1 << 20  # bytes

# Used with fullmatch(): "$" would also match before a trailing newline.
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token


def validate_service_name(name: str) -> str:
    """Service names end up in logs, state and tables: keep them to a safe alphabet."""
    if not _SERVICE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid service name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


def positive(name: str) -> Callable[[object, object, float], None]:
    """An attrs validator: the duration ``--name`` must be greater than zero."""

    def check(_instance: object, _attribute: object, value: float) -> None:
        if value <= 0:
            raise ValueError(f"--{name} must be greater than zero, got {format_duration(value)}")

    return check


def not_negative(name: str) -> Callable[[object, object, float], None]:
    """An attrs validator: the duration ``--name`` may be zero but not negative."""

    def check(_instance: object, _attribute: object, value: float) -> None:
        if value < 0:
            raise ValueError(f"--{name} must not be negative, got {format_duration(value)}")

    return check


def deploy_timeout_field() -> Any:
    """The ``--deploy-timeout`` field of a command or options class (default and check)."""
    return attrs.field(default=DEFAULT_DEPLOY_TIMEOUT, validator=positive("deploy-timeout"))


def drain_timeout_field() -> Any:
    """The ``--drain-timeout`` field of a command or options class (default and check)."""
    return attrs.field(default=DEFAULT_DRAIN_TIMEOUT, validator=not_negative("drain-timeout"))


def _normalize_hosts(values: tuple[str, ...]) -> tuple[str, ...]:
    hosts: list[str] = []
    for value in values:
        host = normalize_host(value)
        if host not in hosts:
            hosts.append(host)
    return tuple(hosts)


def _normalize_prefixes(values: tuple[str, ...]) -> tuple[str, ...]:
    prefixes: list[str] = []
    for value in values or ("/",):
        prefix = normalize_path_prefix(value)
        if prefix not in prefixes:
            prefixes.append(prefix)
    return tuple(prefixes)


def _normalize_header_names(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError(f"invalid header name {value!r}")
    return tuple(values)


def _health_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"invalid --health-check-path {value!r}: it must start with '/'")
    return value


def _health_host(value: str | None) -> str | None:
    # Sent as the Host header of every check: no whitespace or control characters.
    if not value:
        return None
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"invalid --health-check-host {value!r}: it must be a bare host name")
    return value


def _optional_port(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 65535:
        raise ValueError(f"invalid --health-check-port {value}: the port must be 1-65535")
    return value


def _optional_host(value: str) -> str:
    return normalize_host(value) if value else ""


def _optional_header_name(value: str) -> str:
    return _normalize_header_names((value,))[0] if value else ""


def _on_demand_url(value: str) -> str:
    # As kamal-proxy's parseTLSOnDemandURL: a path (asked of the service's own target) or an
    # absolute http(s) URL.
    absolute = value.startswith(("http://", "https://"))
    path = value.startswith("/") and not value.startswith("//")
    if value and (not (absolute or path) or any(c.isspace() for c in value)):
        raise ValueError(
            f"invalid --tls-on-demand-url {value!r}: give a path or an absolute http(s) URL"
        )
    return value


def _acme_directory(value: str) -> str:
    if value and (not value.startswith("https://") or any(c.isspace() for c in value)):
        raise ValueError(f"invalid --tls-acme-directory {value!r}: give the CA's https:// URL")
    return value


def _not_negative_size(name: str) -> Callable[[object, object, int], None]:
    def check(_instance: object, _attribute: object, value: int) -> None:
        if value < 0:
            raise ValueError(f"--{name} must not be negative, got {value}")

    return check


def _positive_size(name: str) -> Callable[[object, object, int], None]:
    def check(_instance: object, _attribute: object, value: int) -> None:
        if value <= 0:
            raise ValueError(f"--{name} must be greater than zero, got {value}")

    return check


def _paths(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class ServiceOptions:
    """Where a service is reachable (hosts, path prefixes) and how it answers there."""

    hosts: tuple[str, ...] = attrs.field(default=(), converter=_normalize_hosts)
    path_prefixes: tuple[str, ...] = attrs.field(default=("/",), converter=_normalize_prefixes)
    strip_path_prefix: bool = True
    # Requests for the other hosts are redirected (301) here; it must be one of ``hosts``.
    canonical_host: str = attrs.field(default="", converter=_optional_host)
    error_pages: str = ""  # a directory of <status>.html templates; "" = built-in pages
    client_ip_header: str = attrs.field(default="", converter=_optional_header_name)
    scope_cookie_paths: bool = False
    # TLS (kamal-proxy's ServiceOptions.TLS*): served on the HTTPS port with the certificate
    # in these PEM files (the chain may hold intermediates); plain HTTP is redirected to
    # HTTPS unless ``tls_redirect`` is off. Only a service on the root path sets them: the
    # host's path-prefix services follow it.
    tls: bool = False
    tls_certificate_path: str = ""
    tls_private_key_path: str = ""
    tls_redirect: bool = True
    # Automatic certificates (ACME, HTTP-01) when --tls comes without certificate files:
    # ordered at the first handshake for a --host (or, with ``tls_on_demand_url``, for any
    # name that URL allows) from ``tls_acme_directory`` (else Let's Encrypt's staging with
    # ``tls_staging``, else the run's KPROXY_ACME_DIRECTORY, else Let's Encrypt), cached in
    # ``tls_acme_cache_path`` (else ``<state-dir>/certs``).
    tls_staging: bool = False
    tls_on_demand_url: str = attrs.field(default="", converter=_on_demand_url)
    tls_acme_cache_path: str = ""
    tls_acme_directory: str = attrs.field(default="", converter=_acme_directory)
    # Read targets (issue 12): how long after a write the client's reads go to a writer
    # (0: never), and whether WebSocket upgrades may go to read targets.
    writer_affinity_timeout: float = attrs.field(
        default=DEFAULT_WRITER_AFFINITY_TIMEOUT, validator=not_negative("writer-affinity-timeout")
    )
    read_target_websockets: bool = False
    # Paths (as the target sees them, the prefix stripped) left out of the request metrics.
    exclude_metrics_paths: tuple[str, ...] = attrs.field(default=(), converter=_paths)

    @property
    def automatic_tls(self) -> bool:
        """TLS with certificates from ACME (no certificate files given)."""
        return self.tls and not self.tls_certificate_path

    def __attrs_post_init__(self) -> None:
        self._check_tls()
        if self.canonical_host.startswith("*."):
            raise ValueError(
                f"--canonical-host {self.canonical_host} must be a host name, not a wildcard"
            )
        if self.canonical_host and self.canonical_host not in self.hosts:
            raise ValueError(
                f"--canonical-host {self.canonical_host} must be one of the --host values"
                f" ({', '.join(self.hosts) or 'none given'})"
            )

    def _check_tls(self) -> None:
        """kamal-proxy's deploy preRun rules, here too for embedders and the state file."""
        if bool(self.tls_certificate_path) != bool(self.tls_private_key_path):
            raise ValueError(
                "--tls-certificate-path and --tls-private-key-path must be given together"
            )
        if not self.tls:
            if self.tls_certificate_path:
                raise ValueError("--tls-certificate-path and --tls-private-key-path need --tls")
            return
        if not self.hosts and not (self.automatic_tls and self.tls_on_demand_url):
            raise ValueError("--host must be set when using --tls")
        if "/" not in self.path_prefixes:
            raise ValueError(
                "TLS settings must be given on the root path service (--path-prefix /)"
            )
        if not self.automatic_tls:
            return
        if self.tls_staging and self.tls_acme_directory:
            raise ValueError("give --tls-staging or --tls-acme-directory, not both")
        for host in self.hosts:
            if host.startswith("*."):
                raise ValueError(
                    f"wildcard host {host} needs a certificate file: give "
                    "--tls-certificate-path and --tls-private-key-path (automatic "
                    "certificates are proven by HTTP-01, which cannot cover a wildcard)"
                )


@attrs.frozen
class TargetOptions:
    """How requests reach each target and how targets are checked."""

    health_check_path: str = attrs.field(default=DEFAULT_HEALTH_CHECK_PATH, converter=_health_path)
    health_check_interval: float = attrs.field(
        default=DEFAULT_HEALTH_CHECK_INTERVAL, validator=positive("health-check-interval")
    )
    health_check_timeout: float = attrs.field(
        default=DEFAULT_HEALTH_CHECK_TIMEOUT, validator=positive("health-check-timeout")
    )
    health_check_port: int | None = attrs.field(default=None, converter=_optional_port)
    health_check_host: str | None = attrs.field(default=None, converter=_health_host)
    target_timeout: float = attrs.field(
        default=DEFAULT_TARGET_TIMEOUT, validator=positive("target-timeout")
    )
    forward_headers: bool = True
    log_request_headers: tuple[str, ...] = attrs.field(
        default=(), converter=_normalize_header_names
    )
    log_response_headers: tuple[str, ...] = attrs.field(
        default=(), converter=_normalize_header_names
    )
    buffer_requests: bool = False
    buffer_responses: bool = False
    buffer_memory: int = attrs.field(
        default=DEFAULT_BUFFER_MEMORY, validator=_positive_size("buffer-memory")
    )  # bytes a buffer holds in memory before it spills to a temporary file
    max_request_body: int = attrs.field(
        default=0, validator=_not_negative_size("max-request-body")
    )  # bytes, 0 = unlimited; only with buffer_requests
    max_response_body: int = attrs.field(
        default=0, validator=_not_negative_size("max-response-body")
    )  # bytes, 0 = unlimited; only with buffer_responses


def _parse_targets(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise ValueError("at least one --target is required")
    return _parse_read_targets(values)


def _parse_read_targets(values: tuple[str, ...]) -> tuple[str, ...]:
    targets: list[str] = []
    for value in values:
        target = str(parse_target(value))
        if target not in targets:
            targets.append(target)
    return tuple(targets)


@attrs.frozen
class DeploymentOptions:
    """Everything one ``deploy`` says: the new targets, their options, and the deadlines.

    Example (embedding)::

        DeploymentOptions(targets=("127.0.0.1:3000",), service=ServiceOptions(hosts=("a.test",)))
    """

    targets: tuple[str, ...] = attrs.field(converter=_parse_targets)
    service: ServiceOptions = attrs.field(factory=ServiceOptions)
    target: TargetOptions = attrs.field(factory=TargetOptions)
    deploy_timeout: float = deploy_timeout_field()
    drain_timeout: float = drain_timeout_field()
    force: bool = False
    # --read-target: GET and HEAD requests go to these (core/balancer.py ReadWriteBalancer).
    read_targets: tuple[str, ...] = attrs.field(default=(), converter=_parse_read_targets)

    @property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(parse_target(t) for t in self.targets)

    @property
    def read_addresses(self) -> tuple[Address, ...]:
        return tuple(parse_target(t) for t in self.read_targets)


def _port(name: str) -> Callable[[object, object, int], None]:
    def check(_instance: object, _attribute: object, value: int) -> None:
        if not 0 <= value <= 65535:
            raise ValueError(f"--{name} must be 0-65535, got {value}")

    return check


def _port_or_none(name: str) -> Callable[[object, object, int | None], None]:
    check = _port(name)

    def check_optional(instance: object, attribute: object, value: int | None) -> None:
        if value is not None:
            check(instance, attribute, value)

    return check_optional


@attrs.frozen
class RunOptions:
    """How ``kproxy run`` listens, and where it keeps its socket and state.

    ``http_port=0`` picks a free port (useful for tests and embedding). ``https_port=None``,
    the default here, opens no HTTPS port (embedding: existing code binds nothing new, and a
    TLS deploy is refused); ``kproxy run`` passes ``--https-port``, 443 unless told.
    """

    socket_path: str
    state_dir: str
    bind: str = ""
    http_port: int = attrs.field(default=DEFAULT_HTTP_PORT, validator=_port("http-port"))
    https_port: int | None = attrs.field(default=None, validator=_port_or_none("https-port"))
    metrics_port: int = attrs.field(default=0, validator=_port("metrics-port"))  # 0: no metrics
    debug: bool = False
    # Simultaneous client connections, beyond which new ones wait in the listen backlog.
    # 0 = automatic: 10 000, or fewer if the open-file limit cannot hold two descriptors each.
    max_connections: int = attrs.field(default=0, validator=_not_negative_size("max-connections"))
    # Processes serving HTTP (``run --workers``): 1 is this process alone (embedding always is);
    # N > 1 is a supervisor and N workers; 0 = one per core (the CLI decides).
    workers: int = attrs.field(default=1, validator=_not_negative_size("workers"))
    # The ACME directory of TLS services that name none (``KPROXY_ACME_DIRECTORY`` for
    # ``kproxy run``); "" = Let's Encrypt's production directory.
    acme_directory: str = attrs.field(default="", converter=_acme_directory)
