"""A scripted ACME CA over real HTTPS on 127.0.0.1, for what pebble 2.4 never does: answer
``Retry-After`` while an authorization or order is still in progress, and offer ACME Renewal
Information (RFC 9773). It follows one order for one name, signs the CSR it receives with a
trustme CA, and records when each request arrived; it checks no signatures (pebble does).
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl

import attrs
import h11
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

Headers = list[tuple[bytes, bytes]]
WINDOW = {"start": "2027-03-01T00:00:00Z", "end": "2027-03-02T00:00:00Z"}


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define(eq=False)
class StandInCA:
    """The CA; ``retry_after`` is what in-progress answers carry (seconds, as text)."""

    retry_after: str = "1"
    ca: trustme.CA = attrs.field(factory=lambda: trustme.CA(key_type=trustme.KeyType.ECDSA))
    base: str = ""
    requests: list[tuple[float, str, str]] = attrs.field(factory=list)  # (time, method, path)
    _authz_polls: int = 0
    _order_polls: int = 0
    _finalized: bool = False
    _challenged: bool = False
    _chain: bytes = b""
    _nonce: int = 0

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = tcp[0].socket.getsockname()[1]
        listeners = [trio.SSLListener(t, context, https_compatible=True) for t in tcp]
        self.base = f"https://127.0.0.1:{port}"
        task_status.started(f"{self.base}/dir")
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        try:
            with trio.move_on_after(5):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                method, path = request.method.decode(), request.target.decode()
                self.requests.append((trio.current_time(), method, path))
                status, headers, answer = self._answer(method, path, body)
                headers = [
                    (b"content-length", b"%d" % len(answer)),
                    (b"replay-nonce", self._next_nonce()),
                    *headers,
                ]
                data = conn.send(h11.Response(status_code=status, headers=headers))
                data += conn.send(h11.Data(data=answer)) if answer else b""
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _next_nonce(self) -> bytes:
        self._nonce += 1
        return b"nonce-%d" % self._nonce

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, Headers, bytes]:
        base = self.base
        later = [(b"retry-after", self.retry_after.encode())]
        if path == "/dir":
            return (
                200,
                [],
                _json(
                    {
                        "newNonce": f"{base}/nonce",
                        "newAccount": f"{base}/account",
                        "newOrder": f"{base}/order",
                        "renewalInfo": f"{base}/renewal-info",
                    }
                ),
            )
        if path == "/nonce":
            return 200, [], b""
        if path == "/account":
            return 201, [(b"location", f"{base}/acct/1".encode())], _json({"status": "valid"})
        if path == "/order":
            return 201, [(b"location", f"{base}/order/1".encode())], self._order("pending")
        if path == "/authz/1":
            if not self._challenged:
                return 200, [], self._authz("pending")
            self._authz_polls += 1
            if self._authz_polls == 1:
                return 200, later, self._authz("pending")  # still validating: come back later
            return 200, [], self._authz("valid")
        if path == "/chall/1":
            self._challenged = True
            return 200, [], _json({"type": "http-01", "status": "processing"})
        if path == "/finalize/1":
            payload = json.loads(_b64decode(json.loads(body)["payload"]))
            self._chain = self._sign(_b64decode(payload["csr"]))
            self._finalized = True
            return 200, later, self._order("processing")
        if path == "/order/1":
            if not self._finalized:
                return 200, [], self._order("ready")
            self._order_polls += 1
            if self._order_polls == 1:
                return 200, later, self._order("processing")
            return 200, [], self._order("valid")
        if path == "/cert/1":
            return 200, [(b"content-type", b"application/pem-certificate-chain")], self._chain
        if path.startswith("/renewal-info/"):
            return 200, [(b"retry-after", b"21600")], _json({"suggestedWindow": WINDOW})
        return 404, [], _json({"type": "about:blank", "detail": f"no {method} {path}"})

    def _order(self, status: str) -> bytes:
        order = {
            "status": status,
            "identifiers": [{"type": "dns", "value": "stand-in.example"}],
            "authorizations": [f"{self.base}/authz/1"],
            "finalize": f"{self.base}/finalize/1",
        }
        if status == "valid":
            order["certificate"] = f"{self.base}/cert/1"
        return _json(order)

    def _authz(self, status: str) -> bytes:
        challenge = {"type": "http-01", "url": f"{self.base}/chall/1", "token": "tok-1"}
        return _json(
            {
                "status": status,
                "identifier": {"type": "dns", "value": "stand-in.example"},
                "challenges": [{**challenge, "status": status}],
            }
        )

    def _sign(self, csr_der: bytes) -> bytes:
        csr = x509.load_der_x509_csr(csr_der)
        issuer = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        now = datetime.datetime.now(datetime.UTC)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        leaf = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(issuer.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(san, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return leaf.public_bytes(serialization.Encoding.PEM) + self.ca.cert_pem.bytes()


def _json(value: object) -> bytes:
    return json.dumps(value).encode()
