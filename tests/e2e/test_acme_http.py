"""The ACME client's HTTPS on real loopback sockets: trust (system store plus SSL_CERT_FILE),
errors that say what went wrong, and the deadline of one request."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme

from kproxy.core.acme_problem import AcmeError, AcmeTimeout
from kproxy.runtime.acme_http import HttpsClient, client_ssl_context
from tests.acme_stand_in import StandInCA


async def test_ssl_cert_file_adds_trust_to_the_system_store(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = StandInCA()
    directory_url = await nursery.start(ca.serve)
    system_only = client_ssl_context().cert_store_stats()["x509_ca"]
    bundle = tmp_path / "extra.pem"
    ca.ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    context = client_ssl_context()
    assert context.cert_store_stats()["x509_ca"] == system_only + 1  # added, not instead
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    response = await HttpsClient(ssl_context=context).request("GET", directory_url)
    assert response.status == 200
    assert response.header("Replay-Nonce") == response.header("replay-nonce") is not None


async def test_an_untrusted_ca_is_refused_with_the_tls_reason(nursery: trio.Nursery) -> None:
    ca = StandInCA()
    directory_url = await nursery.start(ca.serve)
    other = ssl.create_default_context()
    trustme.CA(key_type=trustme.KeyType.ECDSA).configure_trust(other)
    with pytest.raises(AcmeError, match="CERTIFICATE_VERIFY_FAILED"):
        await HttpsClient(ssl_context=other).request("GET", directory_url)


async def test_a_refused_connection_names_the_address() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(AcmeError, match=f"127.0.0.1:{port}.*[Cc]onnection refused"):
        await HttpsClient().request("GET", f"https://127.0.0.1:{port}/dir")


async def test_a_silent_server_hits_the_request_deadline(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, silent, listeners)
    start = trio.current_time()
    with pytest.raises(AcmeTimeout, match=r"no answer within 0\.3 s"):
        await HttpsClient(timeout=0.3).request("GET", f"https://127.0.0.1:{port}/dir")
    assert 0.3 <= trio.current_time() - start < 2


@pytest.mark.parametrize("url", ["http://127.0.0.1/dir", "ftp://x/", "https:///nohost"])
async def test_only_https_urls(url: str) -> None:
    with pytest.raises(AcmeError, match="not an https URL"):
        await HttpsClient().request("GET", url)
