"""A real ACME CA for tests: Debian's ``pebble`` with ``pebble-challtestsrv`` answering its DNS
(every name resolves to 127.0.0.1), on free loopback ports, and a small HTTP server that answers
HTTP-01 from a ``ChallengeTokens`` registry, standing in for the proxy's HTTP port.

Pebble's HTTPS listener gets a trustme certificate; ``Pebble.ssl_context`` trusts its CA.
Settings as ../shared/ENVIRONMENT.md describes (PEBBLE_VA_NOSLEEP=1, ``-strict=false``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs
import h11
import pytest
import trio
import trustme

from kproxy.core.acme_challenges import ChallengeTokens
from kproxy.runtime.acme_http import HttpsClient
from kproxy.runtime.h11_stream import H11Stream

PEBBLE: Final = shutil.which("pebble")
CHALLTESTSRV: Final = shutil.which("pebble-challtestsrv")
START_TIMEOUT: Final = 10.0  # seconds for pebble to listen

requires_pebble = pytest.mark.skipif(
    PEBBLE is None or CHALLTESTSRV is None,
    reason="the pebble ACME test server is not installed (apt-get install pebble)",
)


def free_port(*kinds: socket.SocketKind) -> int:
    """A loopback port free for every socket kind in ``kinds`` (TCP alone by default)."""
    kinds = kinds or (socket.SOCK_STREAM,)
    while True:
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                for kind in kinds[1:]:
                    with socket.socket(socket.AF_INET, kind) as other:
                        other.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@attrs.frozen
class Pebble:
    directory_url: str
    management_url: str
    http_port: int  # where pebble's VA sends HTTP-01 validation requests
    ssl_context: ssl.SSLContext  # trusts pebble's own HTTPS listener
    ca_path: str = ""  # the CA of pebble's HTTPS listener, PEM (for SSL_CERT_FILE)

    def https(self) -> HttpsClient:
        return HttpsClient(ssl_context=self.ssl_context)

    async def root_pem(self) -> bytes:
        """The issuing root, made anew at every pebble start (management port)."""
        response = await self.https().request("GET", f"{self.management_url}/roots/0")
        assert response.status == 200
        return response.body


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{log.stem} is not listening on {port}: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def run_pebble(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    validity: int | None = None,
    blocklist: Sequence[str] = (),
) -> Iterator[Pebble]:
    """Start challtestsrv and pebble in ``workdir`` and stop them on exit.

    Args:
        env: extra environment for pebble (``PEBBLE_WFE_NONCEREJECT``, say).
        validity: certificate lifetime in seconds (pebble's ``certificateValidityPeriod``).
        blocklist: names pebble refuses to order (``domainBlocklist``).
    """
    assert PEBBLE is not None
    assert CHALLTESTSRV is not None
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    server.private_key_pem.write_to_path(str(workdir / "key.pem"))
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    acme_port, management_port, http_port = free_port(), free_port(), free_port()
    dns_port = free_port(socket.SOCK_DGRAM, socket.SOCK_STREAM)
    challtest_management = free_port()
    config: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(workdir / "cert.pem"),
        "privateKey": str(workdir / "key.pem"),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "domainBlocklist": list(blocklist),
    }
    if validity is not None:
        config["certificateValidityPeriod"] = validity
    (workdir / "pebble.json").write_text(json.dumps({"pebble": config}))
    challtest_log = workdir / "challtestsrv.log"
    pebble_log = workdir / "pebble.log"
    with open(challtest_log, "wb") as out:
        challtest = subprocess.Popen(
            [
                *(CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
                *("-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", ""),
                *("-tlsalpn01", "", "-management", f"127.0.0.1:{challtest_management}"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(challtest_management, challtest, challtest_log)
        pebble_env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", **(env or {})}
        with open(pebble_log, "wb") as out:
            pebble = subprocess.Popen(
                [
                    *(PEBBLE, "-config", str(workdir / "pebble.json")),
                    *("-dnsserver", f"127.0.0.1:{dns_port}", "-strict=false"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=pebble_env,
            )
        try:
            _wait_listening(acme_port, pebble, pebble_log)
            _wait_listening(management_port, pebble, pebble_log)
            context = ssl.create_default_context()
            ca.configure_trust(context)
            yield Pebble(
                directory_url=f"https://127.0.0.1:{acme_port}/dir",
                management_url=f"https://127.0.0.1:{management_port}",
                http_port=http_port,
                ssl_context=context,
                ca_path=str(workdir / "ca.pem"),
            )
        finally:
            _stop(pebble)
    finally:
        _stop(challtest)


@attrs.define(eq=False)
class ChallengeServer:
    """HTTP on 127.0.0.1: ``/.well-known/acme-challenge/<token>`` answered from ``tokens``
    (200 with the key authorization; 404 for anything else), each request's target recorded."""

    tokens: ChallengeTokens
    requests: list[tuple[bytes, bytes]] = attrs.field(factory=list)  # (host, target)

    async def serve(
        self, port: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        client = H11Stream(stream, h11.Connection(h11.SERVER))
        try:
            with trio.move_on_after(10):
                await self._serve(client)
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            await client.aclose()

    async def _serve(self, client: H11Stream) -> None:
        while True:
            event = await client.next_event()
            if not isinstance(event, h11.Request):
                return
            host = next((v for k, v in event.headers if k == b"host"), b"")
            self.requests.append((host, event.target))
            while not isinstance(await client.next_event(), h11.EndOfMessage):
                pass
            body = self.tokens.answer(event.target)
            status = 404 if body is None else 200
            body = body or b"not a pending token\n"
            await client.send(
                h11.Response(status_code=status, headers=[(b"content-length", b"%d" % len(body))])
            )
            await client.send(h11.Data(data=body))
            await client.send(h11.EndOfMessage())
            if client.conn.our_state is h11.MUST_CLOSE:
                return
            client.conn.start_next_cycle()
