"""Automatic certificates under ``run --workers N``: the supervisor orders, workers ask.

The supervisor holds the one ``AcmeCertificates`` (its managers, its cache, its HTTP-01
tokens). A worker's router has a :class:`RemoteAcme` instead, which asks the supervisor over
the worker's channel (core/worker_protocol.py):

- ``acme-certificate`` (name) → (path, not_after): the supervisor checks the name against the
  service that serves it (its hosts, its on-demand URL), has the certificate ordered if there
  is none (concurrent askers share the order), and answers the cache file's path ("" when
  there is none); the worker loads it once per certificate, as a single process does;
- ``acme-token`` (target) → (answer): a request under ``/.well-known/acme-challenge/`` that
  reaches a worker is answered from the supervisor's tokens, so whichever worker the CA's
  connection reaches answers it, and a token is never answered before it is pending.
"""

from __future__ import annotations

import ssl
from typing import Final

import attrs

from kproxy.core import worker_protocol as wp
from kproxy.core.options import ServiceOptions
from kproxy.core.service_map import ROOT_PATH
from kproxy.runtime.acme_certificates import AcmeCertificates, AcmeSource, ContextCache
from kproxy.runtime.certificates import Targets
from kproxy.runtime.log import Logger
from kproxy.runtime.router import Router
from kproxy.runtime.tls_transport import CERTIFICATE_TIMEOUT
from kproxy.runtime.worker_channel import WorkerChannel

TOKEN_TIMEOUT: Final = 5.0  # seconds for the supervisor's answer about a token
CERTIFICATE = "acme-certificate"
TOKEN = "acme-token"


@attrs.define(eq=False)
class RemoteAcme:
    """A worker's automatic certificates: the supervisor's, asked over ``channel``."""

    channel: WorkerChannel
    logger: Logger
    contexts: ContextCache = attrs.field(factory=ContextCache)

    def source(self, options: ServiceOptions, targets: Targets = list) -> RemoteSource:
        return RemoteSource(self)

    async def answer(self, target: bytes) -> bytes | None:
        message = {"type": TOKEN, "target": target.decode("latin-1")}
        reply = await self.channel.ask(message, TOKEN_TIMEOUT)
        answer = str(reply.get("answer", "")) if reply is not None else ""
        return answer.encode("ascii") if answer else None

    async def context(self, name: str) -> ssl.SSLContext | None:
        reply = await self.channel.ask({"type": CERTIFICATE, "name": name}, CERTIFICATE_TIMEOUT)
        if reply is None or not reply.get("path"):
            return None
        return self.contexts.load(str(reply["path"]), float(reply["not_after"]), logger=self.logger)


@attrs.frozen
class RemoteSource:
    """A worker's ``CertificateSource`` of an ACME service."""

    acme: RemoteAcme

    async def context_for(self, server_name: str) -> ssl.SSLContext | None:
        return await self.acme.context(server_name)


async def answer_worker(router: Router, message: wp.Message) -> wp.Message:
    """The supervisor's answer to a worker's request (its channel's ``handle_request``)."""
    acme = router.acme
    kind = message["type"]
    if kind == TOKEN:
        answer = await acme.answer(str(message["target"]).encode("latin-1")) if acme else None
        return {"answer": answer.decode("ascii") if answer else ""}
    if kind == CERTIFICATE:
        name = str(message["name"])
        routed = router.route(name, ROOT_PATH)
        source = routed[0].certificates if routed is not None else None
        found = None
        if isinstance(source, AcmeSource) and isinstance(acme, AcmeCertificates):
            found = await source.certificate(name)
        path, not_after = found if found is not None else ("", 0.0)
        return {"path": path, "not_after": not_after}
    raise wp.ChannelError(f"unknown message type {kind!r}")
