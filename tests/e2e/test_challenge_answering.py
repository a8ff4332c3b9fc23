"""HTTP-01 tokens answered on the HTTP port before routing, redirects and pause/stop, for
pending tokens only (no CA needed: the tokens are put in the proxy's registry by hand)."""

from __future__ import annotations

from pathlib import Path

import trio

from kproxy import DeploymentOptions, ServiceOptions
from kproxy.runtime.acme_certificates import AcmeCertificates
from tests.helpers import request, start_proxy, start_upstream

GUARD = 10  # seconds
TOKEN_PATH = "/.well-known/acme-challenge/"


async def test_pending_tokens_are_answered_before_anything_else(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        proxy, _ = await start_proxy(nursery, tmp_path)
        upstream = await start_upstream(nursery, "app")
        service = ServiceOptions(hosts=("a.test",), tls=True)  # plain HTTP is redirected
        await proxy.deploy("app", DeploymentOptions(targets=(upstream.address,), service=service))
        await proxy.stop("app", drain_timeout=0)
        acme = proxy.router.acme
        assert isinstance(acme, AcmeCertificates)
        acme.tokens.add("tok-1", "tok-1.thumbprint")
        for host in ("a.test", "a.test:80", "nowhere.test"):  # a TLS service, no service
            reply = await request(proxy.http_port, TOKEN_PATH + "tok-1", host=host)
            assert (reply.status, reply.body) == (200, b"tok-1.thumbprint")
            assert reply.header(b"content-type") == b"application/octet-stream"
        # Not pending (never, or no longer): routed as usual.
        reply = await request(proxy.http_port, TOKEN_PATH + "other", host="a.test")
        assert reply.status == 301
        acme.tokens.remove("tok-1")
        reply = await request(proxy.http_port, TOKEN_PATH + "tok-1", host="nowhere.test")
        assert reply.status == 404
        assert not [r for r in upstream.received if r.target.startswith(TOKEN_PATH.encode())]
