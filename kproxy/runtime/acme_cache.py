"""Certificates and account keys on disk, per ACME directory.

Layout (``root`` is ``--tls-acme-cache-path``, by default ``<state-dir>/certs``)::

    <root>/<ca host>-<hash of the directory URL>/   one per directory URL, mode 0700
        account.key                                 the account's key (PKCS#8 PEM)
        <name>.pem                                  key, then chain (leaf first)

A staging directory's certificates live apart from production's, so one is never served for
the other. A certificate and its key share one file, so a crash can never pair a new chain
with an old key, and ``ssl.SSLContext.load_cert_chain(cache.path(name))`` loads it as it is
(autocert keeps them together the same way). Every file is written atomically (a temp file in
the same directory, fsync, rename, fsync of the directory) with mode 0600, in a worker thread
as the state file is (``state_store``): an fsync can block for a while.

Reads are synchronous: ``read_all`` runs once at start, before serving, so a proxy restarted
while the CA is unreachable serves what it had.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import attrs
import trio
from josepy.jwk import JWK

from kproxy.core.acme_certificate import IssuedCertificate, parse_combined
from kproxy.core.acme_jws import account_key_pem, load_account_key, new_account_key
from kproxy.core.acme_problem import AcmeError
from kproxy.runtime.atomic_file import write_atomically

CERTS_DIR_NAME: Final = "certs"
ACCOUNT_KEY_FILE: Final = "account.key"
CERT_SUFFIX: Final = ".pem"
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def default_cache_root(state_dir: Path) -> Path:
    """Where certificates live without ``--tls-acme-cache-path``."""
    return state_dir / CERTS_DIR_NAME


def directory_scope(directory_url: str) -> str:
    """The cache subdirectory of a directory URL: its host and port, for people, and a hash of
    the whole URL, so two directories on one host (staging, production) stay apart."""
    parts = urlsplit(directory_url)
    host = re.sub(r"[^a-z0-9.-]", "_", (parts.hostname or "ca").lower())
    if parts.port is not None:
        host += f"_{parts.port}"
    digest = hashlib.sha256(directory_url.encode("utf-8")).hexdigest()[:16]
    return f"{host}-{digest}"


def _file_name(name: str) -> str:
    name = name.lower().rstrip(".")
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise AcmeError(f"not a DNS name that can have a cached certificate: {name!r}")
    return name + CERT_SUFFIX


@attrs.define(eq=False)
class CertificateCache:
    """The cache of one ACME directory under ``root``.

    Args:
        root: the cache's root (``default_cache_root(state_dir)`` or the deploy option).
        directory_url: the CA's directory URL: it picks the subdirectory.
    """

    root: Path
    directory_url: str

    @property
    def directory(self) -> Path:
        return self.root / directory_scope(self.directory_url)

    def path(self, name: str) -> Path:
        """The file of ``name``'s certificate: key and chain, loadable by
        ``ssl.SSLContext.load_cert_chain``.

        Raises:
            AcmeError: ``name`` is not a DNS name (a wildcard, a path).
        """
        return self.directory / _file_name(name)

    def read(self, name: str) -> IssuedCertificate | None:
        """``name``'s cached certificate, or None when there is none or it is unreadable (the
        caller then orders a new one)."""
        try:
            return parse_combined(self.path(name).read_bytes())
        except (OSError, AcmeError):
            return None

    def read_all(self) -> dict[str, IssuedCertificate]:
        """Every readable certificate of this directory, by name (at start-up); temp files
        left by an interrupted write are removed."""
        found: dict[str, IssuedCertificate] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif path.suffix == CERT_SUFFIX:
                cert = self.read(path.name.removesuffix(CERT_SUFFIX))
                if cert is not None:
                    found[path.name.removesuffix(CERT_SUFFIX)] = cert
        return found

    async def write(self, name: str, cert: IssuedCertificate) -> Path:
        """Store ``cert`` as ``name``'s (replacing the previous one atomically); returns the
        file's path."""
        path = self.path(name)
        await self._write(path, cert.combined_pem())
        return path

    async def account_key(self) -> JWK:
        """The directory's account key: the cached one, or a new one, stored before use.

        Raises:
            AcmeError: the cached key cannot be read or parsed (it is not replaced: a new key
                would be a new account, and the old one's certificates would be orphaned).
        """
        path = self.directory / ACCOUNT_KEY_FILE
        try:
            return load_account_key(path.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, AcmeError) as exc:
            raise AcmeError(f"cannot use the ACME account key {path}: {exc}") from exc
        key = new_account_key()
        await self._write(path, account_key_pem(key))
        return key

    async def _write(self, path: Path, data: bytes) -> None:
        try:
            await trio.to_thread.run_sync(
                functools.partial(
                    write_atomically, path, data, mode=FILE_MODE, directory_mode=DIR_MODE
                )
            )
        except OSError as exc:
            raise AcmeError(f"cannot write {path}: {exc}") from exc
