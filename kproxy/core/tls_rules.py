"""What TLS decides about a request before it is routed on: sans-IO.

kamal-proxy's rules (internal/server/service.go ``serviceRequestWithTarget``, and
``syncTLSOptionsFromRootDomain`` in service_map.go): a request over HTTPS for a service that
does not serve TLS gets 503; a plain HTTP request for a TLS service is redirected (301) to
https, unless ``--tls-redirect=false``, in which case it is served; ``--canonical-host`` and
the move to https are one redirect. A service on a path prefix has no TLS options of its own:
it follows the root service of its (first) host.
"""

from __future__ import annotations

from typing import Final

import attrs

from kproxy.core.headers import redirect_location
from kproxy.core.options import ServiceOptions
from kproxy.core.service_map import DEFAULT_HOST, ROOT_PATH

STATUS_NOT_OVER_TLS: Final = 503  # kamal-proxy: SetErrorResponse(w, r, 503) for r.TLS != nil


@attrs.frozen
class TlsPolicy:
    """How a service treats the two schemes."""

    enabled: bool = False  # served over HTTPS
    redirect: bool = True  # plain HTTP gets a 301 to https (when enabled)


NO_TLS: Final = TlsPolicy()


def own_policy(options: ServiceOptions) -> TlsPolicy:
    return TlsPolicy(options.tls, options.tls_redirect) if options.tls else NO_TLS


def inherits_tls(options: ServiceOptions) -> bool:
    """Whether the service takes its TLS policy from its host's root service."""
    return ROOT_PATH not in options.path_prefixes


def root_host(options: ServiceOptions) -> str:
    """The host whose root service a path-prefix service follows (kamal-proxy: Hosts[0])."""
    return options.hosts[0] if options.hosts else DEFAULT_HOST


def policy_for(options: ServiceOptions, root: ServiceOptions | None) -> TlsPolicy:
    """A service's policy: its own on the root path, else that of ``root`` (the root service
    of :func:`root_host`, None if there is none: then no TLS)."""
    if not inherits_tls(options):
        return own_policy(options)
    return own_policy(root) if root is not None else NO_TLS


def check_scheme(
    policy: TlsPolicy,
    *,
    secure: bool,
    host_header: bytes | None,
    target: bytes,
    canonical_host: str,
) -> int | bytes | None:
    """Before admission: None to serve the request, ``STATUS_NOT_OVER_TLS`` to refuse it, or
    the Location of a 301 (to the canonical host, to https, or both in one hop).

    Args:
      policy: the service's, from :func:`policy_for`.
      secure: the request came over TLS.
      host_header, target: as sent.
      canonical_host: the service's normalized ``--canonical-host`` ("" for none).
    """
    if secure and not policy.enabled:
        return STATUS_NOT_OVER_TLS
    return redirect_location(
        host_header,
        target,
        canonical_host=canonical_host,
        scheme="https" if secure else "http",
        to_https=policy.enabled and policy.redirect and not secure,
    )
