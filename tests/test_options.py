"""The options objects guard every door (control channel, state file, embedders) alike."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest

from kproxy.core import options as opt
from kproxy.core.addresses import Address

TARGETS = ("127.0.0.1:3000",)


# --- service names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "app-web", "app-web-staging", "a.b_c-1", "A", "x" * 128])
def test_valid_service_names(name: str) -> None:
    assert opt.validate_service_name(name) == name


@pytest.mark.parametrize("name", ["", "-web", ".web", "a b", "a/b", "x" * 129, "é", "web\n"])
def test_invalid_service_names(name: str) -> None:
    with pytest.raises(ValueError, match=r"invalid service name"):
        opt.validate_service_name(name)


# --- ServiceOptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "normalized"),
    [
        ((), ()),
        (("A.Example",), ("a.example",)),
        (("a.example", "A.EXAMPLE", "b.example"), ("a.example", "b.example")),
        (("*.example.com",), ("*.example.com",)),
        (("[::1]",), ("::1",)),
    ],
)
def test_hosts_are_normalized_and_deduplicated(
    hosts: tuple[str, ...], normalized: tuple[str, ...]
) -> None:
    assert opt.ServiceOptions(hosts=hosts).hosts == normalized


@pytest.mark.parametrize(
    ("prefixes", "normalized"),
    [
        ((), ("/",)),
        (("",), ("/",)),
        (("api",), ("/api",)),
        (("/api/",), ("/api",)),
        (("/api", "api", "/api/"), ("/api",)),
        (("/a/b", "/"), ("/a/b", "/")),
    ],
)
def test_path_prefixes_are_normalized_and_deduplicated(
    prefixes: tuple[str, ...], normalized: tuple[str, ...]
) -> None:
    assert opt.ServiceOptions(path_prefixes=prefixes).path_prefixes == normalized


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("hosts", ("a.example:80",), "a host must not include a port"),
        ("hosts", ("",), "empty"),
        ("hosts", ("a b",), "whitespace"),
        ("path_prefixes", ("/a?b",), "invalid path prefix"),
        ("path_prefixes", ("/a b",), "whitespace"),
    ],
)
def test_service_options_errors(field: str, value: tuple[str, ...], fragment: str) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=fragment):
        opt.ServiceOptions(**kwargs)


# --- TargetOptions ----------------------------------------------------------------------------


def test_target_option_defaults_match_kamal_proxy() -> None:
    options = opt.TargetOptions()
    assert options.health_check_path == "/up"
    assert (options.health_check_interval, options.health_check_timeout) == (1.0, 5.0)
    assert (options.health_check_port, options.health_check_host) == (None, None)
    assert options.target_timeout == 30.0
    assert options.forward_headers is True


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"health_check_path": "up"}, "invalid --health-check-path 'up': it must start with '/'"),
        ({"health_check_path": ""}, "invalid --health-check-path ''"),
        ({"health_check_path": "/a b"}, "invalid --health-check-path '/a b'"),
        (
            {"health_check_interval": 0.0},
            "--health-check-interval must be greater than zero, got 0s",
        ),
        ({"health_check_interval": -1.0}, "--health-check-interval must be greater than zero"),
        ({"health_check_timeout": 0.0}, "--health-check-timeout must be greater than zero"),
        ({"target_timeout": -0.5}, "--target-timeout must be greater than zero, got -500ms"),
        ({"health_check_port": 0}, "invalid --health-check-port 0: the port must be 1-65535"),
        ({"health_check_port": 65536}, "invalid --health-check-port 65536"),
        ({"health_check_host": "a b"}, "invalid --health-check-host 'a b'"),
        ({"health_check_host": "a\r\nX-Evil: 1"}, "invalid --health-check-host"),
        ({"log_request_headers": ("X-Ok", "Bad:Name")}, "invalid header name 'Bad:Name'"),
        ({"log_response_headers": ("",)}, "invalid header name ''"),
        ({"log_response_headers": ("X-A\n",)}, "invalid header name 'X-A\\n'"),
    ],
)
def test_target_options_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        opt.TargetOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"health_check_port": 1}, "health_check_port", 1),
        ({"health_check_port": 65535}, "health_check_port", 65535),
        ({"health_check_host": ""}, "health_check_host", None),
        ({"health_check_host": "internal.example"}, "health_check_host", "internal.example"),
        ({"health_check_path": "/health?full=1"}, "health_check_path", "/health?full=1"),
        ({"health_check_interval": 0.001}, "health_check_interval", 0.001),
    ],
)
def test_target_options_accept(kwargs: dict[str, Any], field: str, value: object) -> None:
    assert getattr(opt.TargetOptions(**kwargs), field) == value


# --- DeploymentOptions ------------------------------------------------------------------------


def test_deployment_option_defaults() -> None:
    options = opt.DeploymentOptions(targets=TARGETS)
    assert (options.deploy_timeout, options.drain_timeout, options.force) == (30.0, 30.0, False)
    assert options.service == opt.ServiceOptions()
    assert options.target == opt.TargetOptions()


def test_targets_are_canonical_and_deduplicated() -> None:
    options = opt.DeploymentOptions(targets=("WEB", "web:80", "[0::1]:3000", "[::1]:3000"))
    assert options.targets == ("web:80", "[::1]:3000")
    assert options.addresses == (Address("web", 80), Address("::1", 3000))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"targets": ()}, "at least one --target is required"),
        ({"targets": ("foo bar",)}, "invalid target 'foo bar'"),
        ({"targets": TARGETS, "deploy_timeout": 0.0}, "--deploy-timeout must be greater than zero"),
        (
            {"targets": TARGETS, "drain_timeout": -1.0},
            "--drain-timeout must not be negative, got -1s",
        ),
    ],
)
def test_deployment_options_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        opt.DeploymentOptions(**kwargs)


def test_zero_drain_timeout_is_allowed() -> None:
    assert opt.DeploymentOptions(targets=TARGETS, drain_timeout=0.0).drain_timeout == 0.0


def test_evolve_validates_again() -> None:
    options = opt.DeploymentOptions(targets=TARGETS)
    with pytest.raises(ValueError, match="--deploy-timeout"):
        attrs.evolve(options, deploy_timeout=-1.0)


def test_options_are_frozen() -> None:
    options = opt.DeploymentOptions(targets=TARGETS)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        options.force = True  # type: ignore[misc]


# --- RunOptions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"http_port": -1}, "--http-port must be 0-65535, got -1"),
        ({"http_port": 65536}, "--http-port must be 0-65535, got 65536"),
        ({"https_port": 70000}, "--https-port must be 0-65535, got 70000"),
    ],
)
def test_run_options_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        opt.RunOptions(socket_path="/s", state_dir="/d", **kwargs)


def test_run_options_defaults() -> None:
    options = opt.RunOptions(socket_path="/s", state_dir="/d")
    assert (options.bind, options.http_port, options.https_port, options.debug) == (
        "",
        80,
        None,  # embedding opens no HTTPS port unless asked (``kproxy run`` asks for 443)
        False,
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tls": True}, "--host must be set when using --tls"),
        (
            {"tls": True, "hosts": ("a.test",), "path_prefixes": ("/api",)},
            "TLS settings must be given on the root path service",
        ),
        ({"tls": True, "hosts": ("a.test",), "tls_certificate_path": "c"}, "given together"),
        ({"tls_certificate_path": "c", "tls_private_key_path": "k"}, "need --tls"),
    ],
)
def test_tls_options_are_checked_for_every_door(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        opt.ServiceOptions(**kwargs)
    assert opt.ServiceOptions(hosts=("a.test",), path_prefixes=("/", "/api"), tls=True).tls


@pytest.mark.parametrize(
    ("hosts", "canonical", "error"),
    [
        (("a.test", "b.test"), "c.test", "must be one of the --host values (a.test, b.test)"),
        ((), "a.test", "must be one of the --host values (none given)"),
        (("*.a.test",), "*.a.test", "must be a host name, not a wildcard"),
    ],
)
def test_canonical_host_must_be_one_of_the_plain_hosts(
    hosts: tuple[str, ...], canonical: str, error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        opt.ServiceOptions(hosts=hosts, canonical_host=canonical)
    assert opt.ServiceOptions(
        hosts=("a.test", "B.test"), canonical_host="b.TEST"
    ).canonical_host == ("b.test")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (
            {"tls": True, "hosts": ("a.test", "*.b.test")},
            "wildcard host *.b.test needs a certificate file",
        ),
        (
            {"tls": True, "hosts": ("a.test",), "tls_staging": True,
             "tls_acme_directory": "https://ca.test/dir"},
            "give --tls-staging or --tls-acme-directory, not both",
        ),
        ({"tls_on_demand_url": "//h/allow"}, "give a path or an absolute http(s) URL"),
        ({"tls_on_demand_url": "ftp://h/allow"}, "give a path or an absolute http(s) URL"),
        ({"tls_acme_directory": "http://ca.test/dir"}, "give the CA's https:// URL"),
    ],
)  # fmt: skip
def test_automatic_tls_options(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        opt.ServiceOptions(**kwargs)


def test_automatic_tls_is_tls_without_files() -> None:
    assert opt.ServiceOptions(hosts=("a.test",), tls=True).automatic_tls
    # A wildcard with certificate files is fine: the files cover it.
    files = opt.ServiceOptions(
        hosts=("*.a.test",), tls=True, tls_certificate_path="c", tls_private_key_path="k"
    )
    assert not files.automatic_tls
    # With an on-demand URL a TLS service may take every host (kamal-proxy's catch-all).
    on_demand = opt.ServiceOptions(tls=True, tls_on_demand_url="http://127.0.0.1:9/ask")
    assert on_demand.hosts == ()
    assert on_demand.automatic_tls
