"""core/tls_rules.py: which requests TLS refuses or redirects, and which policy a service has
(kamal-proxy's serviceRequestWithTarget and syncTLSOptionsFromRootDomain, as tables)."""

from __future__ import annotations

import pytest

from kproxy.core.options import ServiceOptions
from kproxy.core.tls_rules import (
    NO_TLS,
    STATUS_NOT_OVER_TLS,
    TlsPolicy,
    check_scheme,
    policy_for,
    root_host,
)

TLS = TlsPolicy(enabled=True, redirect=True)
TLS_NO_REDIRECT = TlsPolicy(enabled=True, redirect=False)


@pytest.mark.parametrize(
    ("policy", "secure", "host", "target", "canonical", "answer"),
    [
        # plain HTTP
        (NO_TLS, False, b"a.test", b"/x", "", None),
        (TLS, False, b"a.test", b"/x?q=1", "", b"https://a.test/x?q=1"),
        (TLS, False, b"a.test:8080", b"/x", "", b"https://a.test/x"),  # the port is dropped
        (TLS, False, b"A.Test", b"/", "", b"https://a.test/"),
        (TLS, False, b"[::1]:80", b"/", "", b"https://[::1]/"),
        (TLS, False, b"a.test", b"http://a.test/p?q", "", b"https://a.test/p?q"),
        (TLS, False, b"a.test", b"/caf\xc3\xa9", "", b"https://a.test/caf%C3%A9"),
        (TLS, False, None, b"/", "", None),  # nowhere to send it: served
        (TLS_NO_REDIRECT, False, b"a.test", b"/", "", None),
        # canonical host and TLS in one hop
        (TLS, False, b"www.a.test:8080", b"/p", "a.test", b"https://a.test/p"),
        (TLS_NO_REDIRECT, False, b"www.a.test:8080", b"/p", "a.test", b"http://a.test:8080/p"),
        (NO_TLS, False, b"www.a.test", b"/p", "a.test", b"http://a.test/p"),
        # over HTTPS
        (TLS, True, b"a.test", b"/", "", None),
        (TLS, True, b"www.a.test", b"/p", "a.test", b"https://a.test/p"),
        (TLS, True, b"www.a.test:8443", b"/p", "a.test", b"https://a.test:8443/p"),
        (NO_TLS, True, b"a.test", b"/", "", STATUS_NOT_OVER_TLS),
        (NO_TLS, True, b"www.a.test", b"/", "a.test", STATUS_NOT_OVER_TLS),  # 503 comes first
    ],
)
def test_check_scheme(
    policy: TlsPolicy,
    secure: bool,
    host: bytes | None,
    target: bytes,
    canonical: str,
    answer: int | bytes | None,
) -> None:
    assert (
        check_scheme(
            policy, secure=secure, host_header=host, target=target, canonical_host=canonical
        )
        == answer
    )


ROOT = ServiceOptions(hosts=("a.test", "b.test"), tls=True, tls_redirect=False)


@pytest.mark.parametrize(
    ("options", "root", "policy"),
    [
        (ServiceOptions(), None, NO_TLS),
        (ROOT, None, TLS_NO_REDIRECT),
        (ServiceOptions(hosts=("a.test",), tls=True), None, TLS),
        # A path-prefix service follows the root service of its first host, or has no TLS.
        (ServiceOptions(hosts=("a.test",), path_prefixes=("/api",)), ROOT, TLS_NO_REDIRECT),
        (ServiceOptions(hosts=("a.test",), path_prefixes=("/api",)), None, NO_TLS),
        (ServiceOptions(hosts=("a.test",), path_prefixes=("/api",)), ServiceOptions(), NO_TLS),
    ],
)
def test_policy_for(
    options: ServiceOptions, root: ServiceOptions | None, policy: TlsPolicy
) -> None:
    assert policy_for(options, root) == policy


def test_root_host_is_the_first_host() -> None:
    assert root_host(ServiceOptions(hosts=("b.test", "a.test"), path_prefixes=("/x",))) == "b.test"
    assert root_host(ServiceOptions(path_prefixes=("/x",))) == ""
