"""HTTPS end to end with real certificates (trustme), real sockets and a stdlib TLS client:
certificate choice by SNI, redirects, the 503 for a service without TLS, header defaults,
certificate replacement and bad files, the handshake deadline, and restarts."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trustme

from kproxy import DeployError, DeploymentOptions, Proxy, RunOptions, ServiceOptions
from kproxy.runtime import tls_transport
from kproxy.runtime.log import Logger
from tests.helpers import (
    LogCapture,
    control,
    request,
    start_proxy,
    start_proxy_process,
    start_upstream,
    wait_until,
)
from tests.tls_helpers import CertFiles, issue, open_https

GUARD = 20  # seconds per test


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def deploy(sock: Path, line: str) -> str:
    return (await control(sock, line))[-1]


async def handshake_error(port: int, name: str, ca: trustme.CA) -> str:
    """The client's error when the proxy refuses the handshake for ``name``."""
    with pytest.raises(trio.BrokenResourceError) as info:
        await open_https(port, name, ca)
    assert isinstance(info.value.__cause__, ssl.SSLError)
    return str(info.value.__cause__)


async def tls_proxy(nursery: trio.Nursery, tmp_path: Path) -> tuple[Proxy, LogCapture, Path]:
    proxy, logs = await start_proxy(nursery, tmp_path)
    assert proxy.https_port
    return proxy, logs, tmp_path / "kproxy.sock"


async def test_sni_chooses_each_services_certificate(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    with trio.fail_after(GUARD):
        proxy, logs, sock = await tls_proxy(nursery, tmp_path)
        for name in ("a", "b"):
            upstream = await start_upstream(nursery, name)
            files = issue(ca, tmp_path / "certs", f"{name}.test")
            line = f"deploy {name} --target {upstream.address} --host {name}.test {files.flags()}"
            assert await deploy(sock, line) == f"OK deployed {name}"
        for name in ("a", "b"):
            client = await open_https(proxy.https_port or 0, f"{name}.test", ca)
            assert client.served_names() == [f"{name}.test"]
            reply = await client.request("/echo", host=f"{name}.test")
            await client.aclose()
            assert reply.status == 200
            echoed = json.loads(reply.body)
            assert echoed["upstream"] == name
            # --tls makes --forward-headers default to false: kproxy's own X-Forwarded-Proto.
            assert ["x-forwarded-proto", "https"] in echoed["headers"]
        await wait_until(lambda: len(logs.records("Request")) >= 2)
        logged = next(r for r in logs.records("Request") if r["path"] == "/echo")
        assert (logged["scheme"], logged["port"]) == ("https", proxy.https_port)


async def test_keep_alive_and_a_large_body_over_tls(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    big = os.urandom(300_000)

    async def large(_u: object, _r: object, client: object) -> None:
        from tests.helpers import send_reply

        await send_reply(client, 200, big)  # type: ignore[arg-type]

    with trio.fail_after(GUARD):
        proxy, _, sock = await tls_proxy(nursery, tmp_path)
        upstream = await start_upstream(nursery, "a", handlers={b"/big": large})
        files = issue(ca, tmp_path / "certs", "a.test")
        assert (
            await deploy(
                sock, f"deploy a --target {upstream.address} --host a.test {files.flags()}"
            )
            == "OK deployed a"
        )
        client = await open_https(proxy.https_port or 0, "a.test", ca)
        for _ in range(5):
            assert (await client.request("/big", host="a.test")).body == big
            assert (await client.request("/", host="a.test")).body == b"a"
        await client.aclose()


async def test_wildcard_no_sni_and_unknown_names(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    with trio.fail_after(GUARD):
        proxy, _, sock = await tls_proxy(nursery, tmp_path)
        port = proxy.https_port or 0
        first = await start_upstream(nursery, "first")
        wild = await start_upstream(nursery, "wild")
        plain = await start_upstream(nursery, "plain")
        first_files = issue(ca, tmp_path / "certs", "first.test")
        wild_files = issue(ca, tmp_path / "certs", "*.w.test")
        assert (
            await deploy(
                sock,
                f"deploy first --target {first.address} --host first.test {first_files.flags()}",
            )
        ).startswith("OK")
        assert (
            await deploy(
                sock, f"deploy wild --target {wild.address} --host *.w.test {wild_files.flags()}"
            )
        ).startswith("OK")
        assert (
            await deploy(sock, f"deploy plain --target {plain.address} --host plain.test")
        ).startswith("OK")

        client = await open_https(port, "x.w.test", ca)
        assert client.served_names() == ["*.w.test"]
        assert (await client.request(host="x.w.test")).body == b"wild"
        await client.aclose()

        # No SNI (a client connecting by IP): the first TLS host's certificate (kamal-proxy #172).
        client = await open_https(port, None, ca)
        assert client.served_names() == ["first.test"]
        assert (await client.request(host="first.test")).body == b"first"
        # Over HTTPS, a service without TLS answers 503 (kamal-proxy's answer).
        reply = await client.request(host="plain.test")
        assert reply.status == 503
        await client.aclose()

        # A name no TLS service serves fails the handshake: no other app's certificate shown.
        for name in ("unknown.test", "plain.test", "a.b.w.test"):
            assert "TLSV1_UNRECOGNIZED_NAME" in await handshake_error(port, name, ca)


async def test_redirects_to_https(nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA) -> None:
    with trio.fail_after(GUARD):
        proxy, _, sock = await tls_proxy(nursery, tmp_path)
        port = proxy.https_port or 0
        app = await start_upstream(nursery, "app")
        api = await start_upstream(nursery, "api")
        open_ = await start_upstream(nursery, "open")
        files = issue(ca, tmp_path / "certs", "a.test", "www.a.test")
        open_files = issue(ca, tmp_path / "certs", "o.test")
        line = (
            f"deploy app --target {app.address} --host a.test,www.a.test --canonical-host a.test "
            f"{files.flags()}"
        )
        assert await deploy(sock, line) == "OK deployed app"
        # A path-prefix service follows its host's root service (kamal-proxy syncs TLS).
        line = f"deploy api --target {api.address} --host a.test --path-prefix /api"
        assert await deploy(sock, line) == "OK deployed api"
        line = f"deploy open --target {open_.address} --host o.test {open_files.flags()}"
        line += " --tls-redirect=false"
        assert await deploy(sock, line) == "OK deployed open"

        reply = await request(proxy.http_port, "/x?q=1", host=f"a.test:{proxy.http_port}")
        assert (reply.status, reply.header(b"location")) == (301, b"https://a.test/x?q=1")
        assert reply.header(b"connection") == b"close"
        # --canonical-host and TLS: one hop, straight to https://<canonical>.
        reply = await request(proxy.http_port, "/p", host="www.a.test")
        assert (reply.status, reply.header(b"location")) == (301, b"https://a.test/p")
        reply = await request(proxy.http_port, "/api/v", host="a.test")
        assert (reply.status, reply.header(b"location")) == (301, b"https://a.test/api/v")
        # Over HTTPS: the canonical host alone redirects, and the prefix service serves.
        client = await open_https(port, "www.a.test", ca)
        reply = await client.request("/p", host="www.a.test")
        assert (reply.status, reply.header(b"location")) == (301, b"https://a.test/p")
        await client.aclose()
        client = await open_https(port, "a.test", ca)
        assert (await client.request("/api/v", host="a.test")).body == b"api"
        await client.aclose()
        # list shows TLS, a path-prefix service's being its root service's.
        (listing, _ok) = await control(sock, "list --json")
        assert {s["name"]: s["tls"] for s in json.loads(listing)["services"]} == {
            "api": True,
            "app": True,
            "open": True,
        }
        # --tls-redirect=false: plain HTTP is served too.
        assert (await request(proxy.http_port, "/", host="o.test")).body == b"open"
        client = await open_https(port, "o.test", ca)
        assert (await client.request(host="o.test")).body == b"open"
        await client.aclose()


async def test_a_new_certificate_serves_new_connections_only(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    with trio.fail_after(GUARD):
        proxy, _, sock = await tls_proxy(nursery, tmp_path)
        port = proxy.https_port or 0
        upstream = await start_upstream(nursery, "a")
        old = issue(ca, tmp_path / "old", "a.test")
        line = f"deploy a --target {upstream.address} --host a.test"
        assert await deploy(sock, f"{line} {old.flags()}") == "OK deployed a"
        held = await open_https(port, "a.test", ca)
        assert (await held.request(host="a.test")).status == 200
        # Same paths, new contents (as Kamal writes them): the re-deploy reads them again.
        issue(ca, tmp_path / "old", "a.test")
        assert await deploy(sock, f"{line} {old.flags()}") == "OK deployed a"
        fresh = await open_https(port, "a.test", ca)
        assert fresh.peer_certificate() != held.peer_certificate()
        assert (await fresh.request(host="a.test")).status == 200
        # The connection that was open goes on, on its certificate.
        assert (await held.request(host="a.test")).status == 200
        await held.aclose()
        await fresh.aclose()


def _bad_files(tmp_path: Path, ca: trustme.CA) -> list[tuple[str, CertFiles, str]]:
    good = issue(ca, tmp_path / "good", "a.test")
    other = issue(ca, tmp_path / "other", "a.test")
    text = tmp_path / "text.pem"
    text.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    garbled = tmp_path / "garbled.crt"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.crt"
    cert, key = good.certificate, good.key
    return [
        ("missing", CertFiles(missing, key), f"certificate file {missing} does not exist"),
        ("directory", CertFiles(cert, tmp_path), f"private key file {tmp_path} is a directory"),
        ("not PEM", CertFiles(text, key), f"certificate file {text} holds no PEM certificate"),
        ("key not PEM", CertFiles(cert, text), f"private key file {text} holds no PEM private"),
        ("encrypted", CertFiles(cert, encrypted), f"private key file {encrypted} is encrypted"),
        ("garbled", CertFiles(garbled, key), f"certificate file {garbled} cannot be loaded"),
        ("mismatch", CertFiles(cert, other.key),
         f"the private key in {other.key} does not match the certificate in {cert}"),
    ]  # fmt: skip


async def test_bad_certificate_files_fail_the_deploy(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    with trio.fail_after(GUARD):
        proxy, _, sock = await tls_proxy(nursery, tmp_path)
        upstream = await start_upstream(nursery, "a")
        line = f"deploy a --target {upstream.address} --host a.test"
        assert await deploy(sock, line) == "OK deployed a"
        hits = len(upstream.received)
        for case, files, message in _bad_files(tmp_path, ca):
            assert (await deploy(sock, f"{line} {files.flags()}")).startswith(f"ERR {message}"), (
                case
            )
        # Before any health check, and the service kept its settings: plain HTTP, no redirect.
        assert len(upstream.received) == hits
        assert (await request(proxy.http_port, "/", host="a.test")).body == b"a"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_an_unreadable_file_fails_the_deploy(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    with trio.fail_after(GUARD):
        _, _, sock = await tls_proxy(nursery, tmp_path)
        upstream = await start_upstream(nursery, "a")
        files = issue(ca, tmp_path / "certs", "a.test")
        files.key.chmod(0)
        line = f"deploy a --target {upstream.address} --host a.test {files.flags()}"
        assert await deploy(sock, line) == (
            f"ERR private key file {files.key} cannot be read: permission denied"
        )


async def test_a_stalled_handshake_is_cut_off(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_transport, "HANDSHAKE_TIMEOUT", 0.5)
    with trio.fail_after(GUARD):
        proxy, _, _ = await tls_proxy(nursery, tmp_path)
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.https_port or 0)
        await stream.send_all(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never ends
        began = trio.current_time()
        assert await stream.receive_some(100) == b""  # closed by the proxy
        assert 0.4 < trio.current_time() - began < 5
        await stream.aclose()


async def test_garbage_on_the_https_port_is_closed(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        proxy, _, _ = await tls_proxy(nursery, tmp_path)
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.https_port or 0)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert await stream.receive_some(100) == b""
        await stream.aclose()


async def test_embedding_without_an_https_port_refuses_tls(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    options = RunOptions(socket_path="", state_dir="", bind="127.0.0.1", http_port=0)
    proxy: Proxy = await nursery.start(Proxy(options, Logger(out=LogCapture())).serve)  # type: ignore[arg-type]
    assert proxy.https_port is None
    files = issue(ca, tmp_path, "a.test")
    service = ServiceOptions(
        hosts=("a.test",),
        tls=True,
        tls_certificate_path=str(files.certificate),
        tls_private_key_path=str(files.key),
    )
    with pytest.raises(DeployError, match=r"--tls needs an HTTPS port.*https_port"):
        await proxy.deploy("a", DeploymentOptions(targets=("127.0.0.1:1",), service=service))


async def test_workers_serve_https_and_a_restart_restores_tls(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    with trio.fail_after(40):
        upstream = await start_upstream(nursery, "a")
        files = issue(ca, tmp_path / "certs", "a.test")
        line = f"deploy a --target {upstream.address} --host a.test {files.flags()}"
        async with trio.open_nursery() as first:
            proxy = await start_proxy_process(first, tmp_path, "--workers", "2", timeout=20)
            assert await deploy(proxy.socket_path, line) == "OK deployed a"
            for _ in range(6):  # the kernel spreads the connections over both workers
                client = await open_https(proxy.https_port, "a.test", ca)
                assert (await client.request(host="a.test")).body == b"a"
                await client.aclose()
            first.cancel_scope.cancel()
        # Restarted on the state file: TLS comes back with the service.
        async with trio.open_nursery() as second:
            proxy = await start_proxy_process(second, tmp_path)
            client = await open_https(proxy.https_port, "a.test", ca)
            assert client.served_names() == ["a.test"]
            assert (await client.request(host="a.test")).body == b"a"
            await client.aclose()
            second.cancel_scope.cancel()
        # A certificate gone by the next start: logged, naming the file; HTTPS fails for that
        # service, and plain HTTP keeps redirecting (never served in the clear instead).
        files.certificate.unlink()
        async with trio.open_nursery() as third:
            proxy = await start_proxy_process(third, tmp_path)
            # By the supervisor and by each worker (``run`` has one per core), each loading it.
            errors = proxy.records("TLS certificate unavailable; HTTPS fails for the service")
            assert errors
            assert all(str(files.certificate) in error["error"] for error in errors)
            assert "TLSV1_UNRECOGNIZED_NAME" in await handshake_error(
                proxy.https_port, "a.test", ca
            )
            reply = await request(proxy.http_port, "/", host="a.test")
            assert (reply.status, reply.header(b"location")) == (301, b"https://a.test/")
            third.cancel_scope.cancel()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl(nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA) -> None:
    with trio.fail_after(GUARD):
        proxy, _, sock = await tls_proxy(nursery, tmp_path)
        upstream = await start_upstream(nursery, "a")
        files = issue(ca, tmp_path / "certs", "a.test")
        assert (
            await deploy(
                sock, f"deploy a --target {upstream.address} --host a.test {files.flags()}"
            )
            == "OK deployed a"
        )
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        result = await trio.run_process(
            ["curl", "-sS", "--cacert", str(tmp_path / "ca.pem"),
             "--resolve", f"a.test:{proxy.https_port}:127.0.0.1",
             "-w", "\n%{http_code} %{http_version}", f"https://a.test:{proxy.https_port}/"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == "a\n200 1.1"
        result = await trio.run_process(
            ["curl", "-sS", "--cacert", str(tmp_path / "ca.pem"),
             "--resolve", f"b.test:{proxy.https_port}:127.0.0.1", f"https://b.test:{proxy.https_port}/"],
            capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 35  # CURLE_SSL_CONNECT_ERROR
        assert b"unrecognized name" in result.stderr


async def test_a_tls_client_leaving_cancels_its_request(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    with trio.fail_after(GUARD):
        proxy, logs, sock = await tls_proxy(nursery, tmp_path)
        upstream = await start_upstream(nursery, "a")
        files = issue(ca, tmp_path / "certs", "a.test")
        line = f"deploy a --target {upstream.address} --host a.test {files.flags()}"
        assert await deploy(sock, line) == "OK deployed a"
        client = await open_https(proxy.https_port or 0, "a.test", ca)
        request_bytes = b"GET /slow?10 HTTP/1.1\r\nHost: a.test\r\n\r\n"
        await client.stream.send_all(request_bytes)
        await wait_until(lambda: upstream.active == 1)
        began = trio.current_time()
        await client.stream.aclose()  # close_notify, then the socket closes
        await wait_until(lambda: any(r["status"] == 499 for r in logs.records("Request")))
        assert trio.current_time() - began < 5


async def test_a_websocket_over_tls(nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA) -> None:
    from tests.e2e.test_data_path import UPGRADE_REQUEST, websocket_upstream

    target_saw_close = trio.Event()
    with trio.fail_after(GUARD):
        up = await nursery.start(websocket_upstream(target_saw_close, hang_up=False).serve)
        proxy, _, sock = await tls_proxy(nursery, tmp_path)
        files = issue(ca, tmp_path / "certs", "a")
        assert await deploy(sock, f"deploy ws --target {up.address} --host a {files.flags()}") == (
            "OK deployed ws"
        )
        client = await open_https(proxy.https_port or 0, "a", ca)
        await client.stream.send_all(UPGRADE_REQUEST)  # its Host is "a"
        data = b""
        while not data.endswith(b"hello from target;"):
            data += await client.stream.receive_some(65536)
        assert data.startswith(b"HTTP/1.1 101 ")
        for message in (b"ping", b"\x00\xffbinary" * 5000):
            await client.stream.send_all(message)
            echoed = b""
            while len(echoed) < len(message):
                echoed += await client.stream.receive_some(65536)
            assert echoed == message
        await client.aclose()
        await target_saw_close.wait()


async def test_a_busy_https_port_fails_at_start(nursery: trio.Nursery) -> None:
    with trio.socket.socket() as busy:
        await busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        options = RunOptions(
            socket_path="", state_dir="", bind="127.0.0.1", http_port=0, https_port=port
        )
        with pytest.raises(OSError, match="in use"):
            await nursery.start(Proxy(options, Logger(out=LogCapture())).serve)  # type: ignore[arg-type]
