"""Where TLS certificates come from: per service a source, and the store the handshakes ask.

The certificate is chosen per handshake by the name the client asks for, before the handshake
starts (``tls_transport`` reads the ClientHello first), so choosing may await: a source's
``context_for`` is async. Today's source is :class:`StaticCertificate`, the PEM files of
``--tls-certificate-path``/``--tls-private-key-path``, read and checked at deploy (so a bad
file fails the deploy, naming the file, before any health check). ``--tls`` without files
gets an ``AcmeSource`` (``runtime/acme_certificates``), whose first handshake for a name may
await the certificate's issuance.

:class:`CertificateStore` maps a server name to a context as kamal-proxy's
``Router.GetCertificate`` (internal/server/router.go) does: the root service of that host
(exact, then wildcard), a handshake without a name gets the first TLS host's certificate
(kamal-proxy #172), and a name no TLS service serves gets none (the handshake fails; never a
default certificate that shows another app's names). The same code runs in one process, in
the supervisor of ``--workers N`` (which checks the files at deploy) and in each worker (which
loads them itself from the options in the state it is sent).

A re-deploy makes a new context; connections already open keep theirs (an ``SSLObject`` holds
its context), so they finish on the old certificate.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from kproxy.core.options import ServiceOptions
from kproxy.core.service_map import ROOT_PATH
from kproxy.errors import CertificateError
from kproxy.runtime.log import Logger

if TYPE_CHECKING:
    from kproxy.runtime.router import Router

Targets = Callable[[], list[str]]  # a service's target addresses, asked when needed
ALPN_PROTOCOLS: Final = ["http/1.1"]  # an HTTP/2 listener adds "h2" in front
AUTOMATIC_TLS_UNAVAILABLE: Final = (
    "--tls without --tls-certificate-path and --tls-private-key-path means automatic "
    "certificates (ACME), which this proxy cannot order: give the certificate and key files"
)


class CertificateSource(Protocol):
    """The certificates of one TLS service."""

    async def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The server context for a handshake asking for ``server_name`` (one of the
        service's hosts, or a name its wildcard covers); None fails the handshake."""
        ...


class AutomaticCertificates(Protocol):
    """A process's automatic certificates: ``AcmeCertificates`` where certificates are
    ordered (one process, the supervisor of ``--workers N``), ``RemoteAcme`` in a worker."""

    def source(self, options: ServiceOptions, targets: Targets = list) -> CertificateSource:
        """The source of a service with ``--tls`` and no files (it may refuse: raises
        CertificateError)."""
        ...

    async def answer(self, target: bytes) -> bytes | None:
        """The key authorization for an HTTP-01 request target, if its token is pending."""
        ...


@attrs.frozen
class StaticCertificate:
    """A certificate chain and key from PEM files, loaded once (at deploy)."""

    context: ssl.SSLContext
    certificate_path: str

    async def context_for(self, server_name: str) -> ssl.SSLContext | None:
        return self.context


def certificate_source(
    options: ServiceOptions, acme: AutomaticCertificates | None = None, targets: Targets = list
) -> CertificateSource | None:
    """The source a deploy with these options gets; None when the service has no TLS.

    Args:
      acme: the process's automatic certificates, for ``--tls`` without files (None: none).
      targets: the service's target addresses now (an on-demand URL that is a path asks one).

    Raises:
      CertificateError: a file is missing, unreadable or not PEM, the key does not match the
        certificate, or no files were given and ACME is unavailable here (or has no cache).
    """
    if not options.tls:
        return None
    if not options.tls_certificate_path:
        if acme is None:
            raise CertificateError(AUTOMATIC_TLS_UNAVAILABLE)
        return acme.source(options, targets)
    return StaticCertificate(
        server_context(options.tls_certificate_path, options.tls_private_key_path),
        options.tls_certificate_path,
    )


def restored_source(
    name: str,
    options: ServiceOptions,
    logger: Logger,
    acme: AutomaticCertificates | None = None,
    targets: Targets = list,
) -> CertificateSource | None:
    """:func:`certificate_source` for a service brought back (a restart, a worker following
    the supervisor): a certificate that no longer loads is logged, naming the file, and the
    service comes back without one. Its HTTPS handshakes then fail, and plain HTTP keeps its
    TLS rules (the redirect): kproxy never serves a TLS service in the clear instead. The
    options keep the paths, so the state file does not forget them and the next deploy with
    good files serves HTTPS again."""
    try:
        return certificate_source(options, acme, targets)
    except CertificateError as exc:
        message = "TLS certificate unavailable; HTTPS fails for the service"
        logger.error(message, service=name, error=str(exc))
        return None


def server_context(certificate_path: str, private_key_path: str) -> ssl.SSLContext:
    """A server context for TLS 1.2 and 1.3 with this chain and key; ALPN offers http/1.1.

    Raises:
      CertificateError: naming the file and what is wrong with it.
    """
    certificate = _read_pem(certificate_path, "certificate")
    key = _read_pem(private_key_path, "private key")
    if b"-----BEGIN CERTIFICATE-----" not in certificate:
        raise CertificateError(
            f"certificate file {certificate_path} holds no PEM certificate "
            "(expected -----BEGIN CERTIFICATE-----)"
        )
    if b"PRIVATE KEY-----" not in key:
        raise CertificateError(
            f"private key file {private_key_path} holds no PEM private key "
            "(expected -----BEGIN PRIVATE KEY-----)"
        )
    if b"ENCRYPTED" in key:
        raise CertificateError(
            f"private key file {private_key_path} is encrypted; kproxy needs it unencrypted"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    try:
        # The password callback keeps OpenSSL from ever prompting on a terminal.
        context.load_cert_chain(certificate_path, private_key_path, password=_no_password)
    except ssl.SSLError as exc:
        raise CertificateError(_load_problem(exc, certificate_path, private_key_path)) from None
    except OSError as exc:  # the files changed under us
        raise CertificateError(f"cannot load {certificate_path}: {exc.strerror}") from None
    return context


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load (it was refused above already)


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise CertificateError(f"{what} file {path} is a directory") from None
    except PermissionError:
        raise CertificateError(f"{what} file {path} cannot be read: permission denied") from None
    except OSError as exc:
        raise CertificateError(f"{what} file {path} cannot be read: {exc.strerror}") from None


def _load_problem(exc: ssl.SSLError, certificate_path: str, private_key_path: str) -> str:
    reason = (exc.reason or "").upper()
    if "KEY_VALUES_MISMATCH" in reason:
        return (
            f"the private key in {private_key_path} does not match the certificate "
            f"in {certificate_path}"
        )
    if "KEY" in reason or "PRIVATE" in reason:
        return f"private key file {private_key_path} cannot be loaded ({exc.reason})"
    return f"certificate file {certificate_path} cannot be loaded ({exc.reason or exc})"


@attrs.define(eq=False)
class CertificateStore:
    """Server name → context, asked by each TLS handshake (see the module doc)."""

    router: Router

    def default_name(self) -> str | None:
        """For a handshake without a name: the first TLS service's first host, in deploy
        order (kamal-proxy #172: clients that connect by IP address)."""
        for service in self.router.services.values():
            if service.certificates is not None and service.options.service.hosts:
                return service.options.service.hosts[0]
        return None

    async def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for a handshake, or None to fail it."""
        name = server_name or self.default_name()
        if not name:
            return None
        routed = self.router.route(name, ROOT_PATH)
        if routed is None:
            return None
        source = routed[0].certificates
        if source is None:
            return None
        return await source.context_for(name)
