"""kproxy's ACME client against a real CA: Debian's pebble on loopback (``tests/pebble.py``),
with HTTP-01 answered by a real HTTP server from the client's token registry.

Skipped only when the ``pebble`` binary is absent; CI installs it (``.ci/run``).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from josepy.jwk import JWK

from kproxy.core.acme_certificate import IssuedCertificate
from kproxy.core.acme_challenges import ChallengeTokens
from kproxy.core.acme_jws import new_account_key, thumbprint
from kproxy.core.acme_problem import AcmeProblem
from kproxy.core.acme_renewal import is_due, renewal_time
from kproxy.runtime.acme_cache import CertificateCache
from kproxy.runtime.acme_client import AcmeClient
from kproxy.runtime.acme_http import HttpsClient, HttpsResponse
from tests.pebble import ChallengeServer, Pebble, requires_pebble, run_pebble

pytestmark = requires_pebble

BLOCKED = "blocked.example"
GUARD = 30  # seconds: no test here should come near it


@attrs.define(eq=False)
class RecordingHttps(HttpsClient):
    """The real HTTPS client, noting each exchange (method, url, status, problem type)."""

    seen: list[tuple[str, str, int, str]] = attrs.field(factory=list)

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    ) -> HttpsResponse:
        response = await super().request(method, url, body=body, headers=headers)
        problem = response.body.decode("utf-8", "replace") if response.status >= 400 else ""
        self.seen.append((method, url, response.status, problem))
        return response

    def count(self, url: str, *, ok: bool) -> int:
        return sum(1 for _, u, status, _ in self.seen if u == url and (status < 400) == ok)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with run_pebble(tmp_path_factory.mktemp("pebble"), blocklist=[BLOCKED]) as running:
        yield running


async def _serve_challenges(
    nursery: trio.Nursery, pebble: Pebble, tokens: ChallengeTokens
) -> ChallengeServer:
    server = ChallengeServer(tokens)
    await nursery.start(server.serve, pebble.http_port)
    return server


def _client(pebble: Pebble, tokens: ChallengeTokens, account_key: JWK | None = None) -> AcmeClient:
    return AcmeClient(
        pebble.directory_url,
        account_key or new_account_key(),
        tokens,
        http=RecordingHttps(ssl_context=pebble.ssl_context),
    )


async def _tls_handshake(cert_file: Path, root_pem: bytes, name: str) -> dict[str, object]:
    """A real TLS handshake: a server loading ``cert_file`` (as the HTTPS listener will), a
    client trusting only pebble's root and checking ``name``; returns the client's view of the
    peer certificate."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file)
    client_context = ssl.create_default_context(cadata=root_pem.decode("ascii"))
    server_end, client_end = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_end, server_context, server_side=True)
    client = trio.SSLStream(client_end, client_context, server_hostname=name)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
    peer = client.getpeercert()
    assert peer is not None
    return dict(peer)


async def _verify(cert: IssuedCertificate, root_pem: bytes, name: str, tmp: Path) -> None:
    path = tmp / f"{name}.pem"
    path.write_bytes(cert.combined_pem())
    peer = await _tls_handshake(path, root_pem, name)
    assert ("DNS", name) in peer["subjectAltName"]  # type: ignore[operator]  # a tuple of pairs


async def test_obtain_a_certificate_with_http01(
    pebble: Pebble, nursery: trio.Nursery, tmp_path: Path
) -> None:
    tokens = ChallengeTokens()
    server = await _serve_challenges(nursery, pebble, tokens)
    client = _client(pebble, tokens)
    names = ["app.example.com", "www.app.example.com"]
    with trio.fail_after(GUARD):
        cert = await client.obtain(names)
    assert cert.names == tuple(names)
    assert cert.not_before <= time.time() < cert.not_after
    assert cert.ari_id  # pebble's leaf has an Authority Key Identifier
    # The chain verifies against pebble's issuing root, for each name, in a TLS handshake.
    root = await pebble.root_pem()
    for name in names:
        await _verify(cert, root, name, tmp_path)
    # Pebble's VA fetched each token from our HTTP server, with the port in Host.
    hosts = {host for host, target in server.requests}
    assert hosts == {f"{n}:{pebble.http_port}".encode() for n in names}
    assert all(t.startswith(b"/.well-known/acme-challenge/") for _, t in server.requests)
    assert tokens.pending() == ()  # answered tokens are withdrawn


async def test_the_account_is_created_once_and_found_again_after_a_restart(
    pebble: Pebble, nursery: trio.Nursery
) -> None:
    tokens = ChallengeTokens()
    await _serve_challenges(nursery, pebble, tokens)
    client = _client(pebble, tokens)
    assert isinstance(client.http, RecordingHttps)
    with trio.fail_after(GUARD):
        first = await client.obtain(["one.example.com"])
        second = await client.obtain(["two.example.com"])
    new_account = (await client.directory()).new_account
    assert client.http.count(new_account, ok=True) == 1
    assert first.key_pem != second.key_pem  # a fresh certificate key per order
    # A restarted proxy with the cached key gets the same account back (newAccount → 200).
    restarted = _client(pebble, tokens, account_key=client.account_key)
    assert thumbprint(restarted.account_key) == thumbprint(client.account_key)
    with trio.fail_after(GUARD):
        assert await restarted.account() == client.account_url


async def test_a_name_the_ca_refuses_surfaces_its_problem(
    pebble: Pebble, nursery: trio.Nursery
) -> None:
    tokens = ChallengeTokens()
    await _serve_challenges(nursery, pebble, tokens)
    with trio.fail_after(GUARD), pytest.raises(AcmeProblem) as caught:
        await _client(pebble, tokens).obtain([BLOCKED])
    assert caught.value.short_type == "rejectedIdentifier"
    assert caught.value.status == 400
    assert BLOCKED in str(caught.value)


async def test_a_name_the_va_cannot_validate_surfaces_its_problem(
    pebble: Pebble, nursery: trio.Nursery
) -> None:
    # The HTTP server answers from another registry: the CA's validator gets 404.
    await _serve_challenges(nursery, pebble, ChallengeTokens())
    tokens = ChallengeTokens()
    with trio.fail_after(GUARD), pytest.raises(AcmeProblem) as caught:
        await _client(pebble, tokens).obtain(["typo.example.com"])
    assert caught.value.short_type == "unauthorized"
    assert "404" in caught.value.detail
    assert tokens.pending() == ()  # withdrawn even on failure


async def test_renewal_information_is_absent_when_the_ca_offers_none(
    pebble: Pebble, nursery: trio.Nursery
) -> None:
    tokens = ChallengeTokens()
    await _serve_challenges(nursery, pebble, tokens)
    client = _client(pebble, tokens)
    with trio.fail_after(GUARD):
        cert = await client.obtain(["ari.example.com"])
        assert (await client.directory()).renewal_info is None  # pebble 2.4 has no ARI
        assert await client.renewal_info(cert) is None


async def test_bad_nonces_are_retried_with_the_fresh_nonce(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # 40 % of good nonces rejected: every POST has a 40 % chance of a badNonce answer.
    with run_pebble(tmp_path / "pebble", env={"PEBBLE_WFE_NONCEREJECT": "40"}) as pebble:
        tokens = ChallengeTokens()
        await _serve_challenges(nursery, pebble, tokens)
        client = _client(pebble, tokens)
        with trio.fail_after(GUARD):
            cert = await client.obtain(["nonce.example.com", "www.nonce.example.com"])
    assert cert.names == ("nonce.example.com", "www.nonce.example.com")
    assert isinstance(client.http, RecordingHttps)
    bad = [s for s in client.http.seen if "badNonce" in s[3]]
    assert bad, "pebble rejected no nonce: the retry went untested"
    assert all(status == 400 for _, _, status, _ in bad)


async def test_a_short_lived_certificate_falls_due_and_renews(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    lifetime = 6  # seconds: renewal is due when a third (2 s) is left
    with run_pebble(tmp_path / "pebble", validity=lifetime) as pebble:
        tokens = ChallengeTokens()
        await _serve_challenges(nursery, pebble, tokens)
        client = _client(pebble, tokens)
        with trio.fail_after(GUARD):
            cert = await client.obtain(["short.example.com"])
            assert cert.lifetime == pytest.approx(lifetime, abs=1)
            assert not is_due(cert, time.time())
            await trio.sleep(max(renewal_time(cert) - time.time(), 0))
            assert is_due(cert, time.time())
            renewed = await client.obtain(["short.example.com"], replaces=cert.ari_id)
    assert renewed.not_after > cert.not_after
    assert not is_due(renewed, time.time())


async def test_a_restart_without_the_ca_serves_from_the_cache(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    cache_root = tmp_path / "certs"
    with run_pebble(tmp_path / "pebble") as pebble:
        cache = CertificateCache(cache_root, pebble.directory_url)
        tokens = ChallengeTokens()
        await _serve_challenges(nursery, pebble, tokens)
        client = AcmeClient(
            pebble.directory_url,
            await cache.account_key(),
            tokens,
            http=HttpsClient(ssl_context=pebble.ssl_context),
        )
        with trio.fail_after(GUARD):
            cert = await client.obtain(["cached.example.com"])
            root = await pebble.root_pem()
        await cache.write("cached.example.com", cert)
        directory_url = pebble.directory_url
    # Pebble is gone. A new process reads the cache and serves the certificate.
    restarted = CertificateCache(cache_root, directory_url)
    assert restarted.read_all() == {"cached.example.com": cert}
    peer = await _tls_handshake(restarted.path("cached.example.com"), root, "cached.example.com")
    assert ("DNS", "cached.example.com") in peer["subjectAltName"]  # type: ignore[operator]  # pairs
    # And its account key is the one the account was made with.
    assert thumbprint(await restarted.account_key()) == thumbprint(client.account_key)
