"""The certificate cache on disk: per-directory scoping, atomic 0600 files, read back at start."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

import pytest
import trustme

from kproxy.core.acme_certificate import IssuedCertificate, parse_issued
from kproxy.core.acme_jws import thumbprint
from kproxy.core.acme_problem import AcmeError
from kproxy.runtime.acme_cache import CertificateCache, default_cache_root, directory_scope

PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def _issued(*names: str) -> IssuedCertificate:
    cert = trustme.CA(key_type=trustme.KeyType.ECDSA).issue_cert(*names)
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return parse_issued(chain, cert.private_key_pem.bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("url", "scope_start"),
    [
        (PRODUCTION, "acme-v02.api.letsencrypt.org-"),
        (STAGING, "acme-staging-v02.api.letsencrypt.org-"),
        ("https://127.0.0.1:14000/dir", "127.0.0.1_14000-"),
        ("https://CA.Example/a b/dir", "ca.example-"),
    ],
)
def test_directory_scope_is_readable_and_distinct(url: str, scope_start: str) -> None:
    scope = directory_scope(url)
    assert scope.startswith(scope_start)
    assert "/" not in scope
    assert scope == directory_scope(url)  # stable across restarts
    assert directory_scope(url + "?") != scope


def test_default_root_is_under_the_state_dir(tmp_path: Path) -> None:
    assert default_cache_root(tmp_path) == tmp_path / "certs"


async def test_write_then_read_back_after_a_restart(tmp_path: Path) -> None:
    cert = _issued("app.example.com")
    cache = CertificateCache(tmp_path / "certs", PRODUCTION)
    path = await cache.write("App.Example.com", cert)
    assert path == cache.directory / "app.example.com.pem"
    assert _mode(path) == 0o600
    assert _mode(cache.directory) == 0o700
    assert [p.name for p in cache.directory.iterdir()] == ["app.example.com.pem"]  # no temp
    # A new process: a new cache object over the same files.
    restarted = CertificateCache(tmp_path / "certs", PRODUCTION)
    assert restarted.read("app.example.com") == cert
    assert restarted.read_all() == {"app.example.com": cert}
    # The file is what an HTTPS listener loads, key and chain at once.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(restarted.path("app.example.com"))


async def test_a_staging_certificate_is_never_read_for_production(tmp_path: Path) -> None:
    staging = CertificateCache(tmp_path, STAGING)
    await staging.write("app.example.com", _issued("app.example.com"))
    production = CertificateCache(tmp_path, PRODUCTION)
    assert production.read("app.example.com") is None
    assert production.read_all() == {}
    assert staging.directory != production.directory


async def test_rewrite_replaces_atomically_and_keeps_the_mode(tmp_path: Path) -> None:
    cache = CertificateCache(tmp_path, PRODUCTION)
    await cache.write("a.example", _issued("a.example"))
    os.chmod(cache.path("a.example"), 0o644)  # even if someone loosened it
    renewed = _issued("a.example")
    await cache.write("a.example", renewed)
    assert cache.read("a.example") == renewed
    assert _mode(cache.path("a.example")) == 0o600


async def test_unreadable_entries_and_leftovers_are_skipped(tmp_path: Path) -> None:
    cache = CertificateCache(tmp_path, PRODUCTION)
    good = _issued("good.example")
    await cache.write("good.example", good)
    (cache.directory / "broken.example.pem").write_bytes(b"not a certificate")
    mismatched = _issued("other.example")
    (cache.directory / "other.example.pem").write_bytes(
        _issued("x.example").key_pem + mismatched.chain_pem
    )
    leftover = cache.directory / ".good.example.pem.123.tmp"
    leftover.write_bytes(b"half")
    assert cache.read_all() == {"good.example": good}
    assert not leftover.exists()
    assert cache.read("missing.example") is None


@pytest.mark.parametrize("name", ["*.example.com", "../etc/passwd", "a/b", "", "-x.example"])
def test_names_that_are_not_dns_names_have_no_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(AcmeError, match="not a DNS name"):
        CertificateCache(tmp_path, PRODUCTION).path(name)


async def test_account_key_is_created_once_and_scoped(tmp_path: Path) -> None:
    cache = CertificateCache(tmp_path, PRODUCTION)
    key = await cache.account_key()
    key_file = cache.directory / "account.key"
    assert _mode(key_file) == 0o600
    again = await CertificateCache(tmp_path, PRODUCTION).account_key()
    assert thumbprint(again) == thumbprint(key)
    staging_key = await CertificateCache(tmp_path, STAGING).account_key()
    assert thumbprint(staging_key) != thumbprint(key)


async def test_a_corrupt_account_key_is_an_error_not_a_new_account(tmp_path: Path) -> None:
    cache = CertificateCache(tmp_path, PRODUCTION)
    cache.directory.mkdir(parents=True)
    (cache.directory / "account.key").write_bytes(b"garbage")
    with pytest.raises(AcmeError, match="account key"):
        await cache.account_key()
    assert (cache.directory / "account.key").read_bytes() == b"garbage"
