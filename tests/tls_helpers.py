"""Real certificates (trustme) and a real TLS client for the HTTPS tests.

The client is the stdlib's ssl through trio.SSLStream, trusting the test CA: ``server_name``
is what it sends as SNI (None: no SNI, as a client connecting by IP address), and the served
certificate's names are read back from the session.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import h11
import trio
import trustme

from tests.helpers import Headers, Reply


@attrs.define
class CertFiles:
    certificate: Path
    key: Path

    def flags(self) -> str:
        return f"--tls --tls-certificate-path {self.certificate} --tls-private-key-path {self.key}"


def issue(ca: trustme.CA, directory: Path, *names: str) -> CertFiles:
    """A certificate for ``names`` (its chain in one file) and its key, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names)
    stem = names[0].replace("*", "star")
    files = CertFiles(directory / f"{stem}.crt", directory / f"{stem}.key")
    files.certificate.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


def client_context(ca: trustme.CA, *, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = check_hostname
    return context


@attrs.define(eq=False)
class HttpsClient:
    """One TLS connection carrying HTTP/1.1 requests in turn (keep-alive)."""

    stream: trio.SSLStream[trio.SocketStream]
    conn: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))

    def served_names(self) -> list[str]:
        """The DNS names of the certificate the server presented."""
        cert = self.stream.getpeercert()
        assert cert is not None
        return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]

    def peer_certificate(self) -> bytes:
        der = self.stream.getpeercert(binary_form=True)
        assert isinstance(der, bytes)
        return der

    async def request(
        self, target: str = "/", *, host: str, headers: Headers | None = None
    ) -> Reply:
        request = h11.Request(
            method="GET", target=target, headers=[(b"host", host.encode()), *(headers or [])]
        )
        await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        status, reply_headers, body = 0, [], b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status, reply_headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(status, reply_headers, body)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def open_https(
    port: int, server_name: str | None, ca: trustme.CA, *, timeout: float = 10
) -> HttpsClient:
    """Connect to 127.0.0.1:``port`` and complete the handshake, asking for ``server_name``."""
    context = client_context(ca, check_hostname=server_name is not None)
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, context, server_hostname=server_name)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return HttpsClient(stream)


async def https_get(
    port: int,
    ca: trustme.CA,
    target: str = "/",
    *,
    host: str,
    server_name: str | None = "",
    headers: Headers | None = None,
) -> Reply:
    """One request on a fresh TLS connection; SNI is ``host`` unless ``server_name`` says."""
    client = await open_https(port, host if server_name == "" else server_name, ca)
    try:
        return await client.request(target, host=host, headers=headers)
    finally:
        await client.aclose()
