"""kproxy's ACME client (RFC 8555) on trio: an account, then orders proven by HTTP-01.

``await AcmeClient(...).obtain(names)`` runs a whole order: newOrder, each authorization's
HTTP-01 challenge (its token put in the shared :class:`ChallengeTokens` registry, which the
HTTP port answers from, and taken out once the authorization is settled), finalize with a CSR
for a fresh key, and the download. The messages and their parsing are sans-IO
(``kproxy.core.acme_*``); this module only sequences them and waits.

- Nonces: each response's ``Replay-Nonce`` is kept for the next request; a ``badNonce``
  problem carries a fresh one, and the request is signed again with it (§6.5).
- Polling honours ``Retry-After`` (§7.5.1, §7.4) and otherwise backs off from 0.25 s to 4 s.
- Every wait is under the deadline of the whole ``obtain`` (``timeout``); one request is
  also under ``HttpsClient.timeout``.
- The account is created (or found again, for a known key) once per client, at the first
  order; the key is the caller's (the cache keeps it per directory).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio
from josepy.jwk import JWK

from kproxy.core.acme_certificate import (
    IssuedCertificate,
    make_csr,
    new_certificate_key,
    parse_issued,
)
from kproxy.core.acme_challenges import ChallengeTokens
from kproxy.core.acme_jws import key_authorization, sign_request
from kproxy.core.acme_messages import (
    HTTP_01,
    INVALID,
    JOSE_CONTENT_TYPE,
    PEM_CHAIN_CONTENT_TYPE,
    PENDING,
    READY,
    VALID,
    Authorization,
    Directory,
    Order,
    challenge_ready_payload,
    finalize_payload,
    new_account_payload,
    new_order_payload,
    parse_authorization,
    parse_directory,
    parse_order,
    retry_after,
)
from kproxy.core.acme_problem import AcmeError, AcmeProblem, AcmeTimeout, problem_from_response
from kproxy.core.acme_renewal import RenewalWindow, next_renewal_info_poll, parse_renewal_info
from kproxy.runtime.acme_http import HttpsClient, HttpsResponse

LETS_ENCRYPT: Final = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING: Final = "https://acme-staging-v02.api.letsencrypt.org/directory"

OBTAIN_TIMEOUT: Final = 300.0  # seconds for a whole order, validation included
BAD_NONCE_RETRIES: Final = 10  # a CA may reject a share of nonces at random (pebble: 5 %)
POLL_FIRST: Final = 0.25  # seconds, without Retry-After; doubles each poll
POLL_MAX: Final = 4.0
RETRY_AFTER_MAX: Final = 60.0  # seconds: a longer Retry-After waits this long at most


@attrs.define(eq=False)
class AcmeClient:
    """One ACME account at one CA.

    Args:
        directory_url: the CA's directory (Let's Encrypt's by default).
        account_key: the account's key (``kproxy.core.acme_jws.new_account_key()``, kept by
            ``CertificateCache``).
        challenge_tokens: where pending HTTP-01 tokens go for the HTTP port to answer.
        http: the HTTPS client (its SSL context says which CAs are trusted).
        contact: optional contact addresses for the account ("mailto:" added when missing).
        wall_clock: POSIX time, for Retry-After dates and renewalInfo polls.
    """

    directory_url: str
    account_key: JWK
    challenge_tokens: ChallengeTokens
    http: HttpsClient = attrs.field(factory=HttpsClient)
    contact: tuple[str, ...] = ()
    wall_clock: Callable[[], float] = time.time
    account_url: str | None = attrs.field(default=None, init=False)
    _directory: Directory | None = attrs.field(default=None, init=False)
    _nonces: list[str] = attrs.field(factory=list, init=False)
    _account_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    async def directory(self) -> Directory:
        """The CA's directory, fetched once."""
        if self._directory is None:
            response = await self.http.request("GET", self.directory_url)
            if response.status != 200:
                raise problem_from_response(response.status, response.body)
            self._directory = parse_directory(response.body)
        return self._directory

    async def account(self) -> str:
        """The account URL, registering the key at the first call (newAccount answers an
        existing key with its existing account, so a restart reuses it)."""
        async with self._account_lock:
            if self.account_url is None:
                directory = await self.directory()
                response = await self._post(
                    directory.new_account, new_account_payload(self.contact), new_account=True
                )
                location = response.header("Location")
                if not location:
                    raise AcmeError("the CA's newAccount answer has no Location")
                self.account_url = location
            return self.account_url

    async def obtain(
        self,
        names: Sequence[str],
        *,
        replaces: str | None = None,
        timeout: float = OBTAIN_TIMEOUT,
    ) -> IssuedCertificate:
        """A certificate for ``names``, with a fresh key.

        Args:
            names: DNS names; the first is also the subject's common name.
            replaces: the ARI id of the certificate this renews (sent when the CA offers ARI).
            timeout: the deadline of the whole order, seconds.

        Raises:
            AcmeProblem: the CA refused (its problem document: type, detail, subproblems).
            AcmeTimeout: the order did not complete within ``timeout``.
            AcmeError: the CA was unreachable or answered something that is not ACME.
        """
        try:
            with trio.fail_after(timeout):
                return await self._obtain(list(names), replaces)
        except trio.TooSlowError:
            raise AcmeTimeout(
                f"no certificate for {', '.join(names)} within {timeout:g} s"
            ) from None

    async def renewal_info(self, cert: IssuedCertificate) -> tuple[RenewalWindow, float] | None:
        """The CA's suggested renewal window for ``cert`` and when to ask again (RFC 9773),
        or None when the CA offers no renewalInfo (or ``cert`` has no ARI id)."""
        directory = await self.directory()
        if directory.renewal_info is None or not cert.ari_id:
            return None
        url = f"{directory.renewal_info.rstrip('/')}/{cert.ari_id}"
        response = await self.http.request("GET", url)
        if response.status != 200:
            raise problem_from_response(response.status, response.body)
        window = parse_renewal_info(response.body)
        return window, next_renewal_info_poll(response.header("Retry-After"), self.wall_clock())

    async def _obtain(self, names: list[str], replaces: str | None) -> IssuedCertificate:
        directory = await self.directory()
        await self.account()
        if directory.renewal_info is None:
            replaces = None  # "replaces" is an ARI field: a CA without ARI may reject it
        response = await self._post(directory.new_order, new_order_payload(names, replaces))
        location = response.header("Location")
        if not location:
            raise AcmeError("the CA's newOrder answer has no Location")
        order = parse_order(response.body, location)
        for url in order.authorizations:
            await self._authorize(url)
        order = await self._poll_order(order.url, until=(READY, VALID))
        if order.status != READY:
            raise self._order_failure(order)
        key_pem = new_certificate_key()
        response = await self._post(order.finalize, finalize_payload(make_csr(names, key_pem)))
        order = parse_order(response.body, order.url)
        if order.status != VALID:
            order = await self._poll_order(order.url, until=(VALID,))
        if order.status != VALID or order.certificate is None:
            raise self._order_failure(order)
        response = await self._post(order.certificate, None, accept=PEM_CHAIN_CONTENT_TYPE)
        return parse_issued(response.body, key_pem)

    def _order_failure(self, order: Order) -> AcmeError:
        if order.error is not None:
            return order.error
        return AcmeError(f"order for {', '.join(order.names)} is {order.status}")

    async def _authorize(self, url: str) -> None:
        authz = parse_authorization((await self._post(url, None)).body, url)
        if authz.status == VALID:
            return  # reused from an earlier order
        if authz.status != PENDING:
            raise authz.failure()
        challenge = authz.challenge(HTTP_01)
        if challenge is None:
            raise AcmeError(f"the CA offers no http-01 challenge for {authz.name}")
        self.challenge_tokens.add(
            challenge.token, key_authorization(challenge.token, self.account_key)
        )
        try:
            if challenge.status == PENDING:
                await self._post(challenge.url, challenge_ready_payload())
            authz = await self._poll_authorization(authz)
        finally:
            self.challenge_tokens.remove(challenge.token)
        if authz.status != VALID:
            raise authz.failure()

    async def _poll_authorization(self, authz: Authorization) -> Authorization:
        wait = POLL_FIRST
        while authz.status == PENDING:
            response = await self._post(authz.url, None)
            authz = parse_authorization(response.body, authz.url)
            if authz.status == PENDING:
                wait = await self._sleep(response, wait)
        return authz

    async def _poll_order(self, url: str, *, until: tuple[str, ...]) -> Order:
        """The order once its status is one of ``until`` (or invalid)."""
        wait = POLL_FIRST
        while True:
            response = await self._post(url, None)
            order = parse_order(response.body, url)
            if order.status in until or order.status == INVALID:
                return order
            wait = await self._sleep(response, wait)

    async def _sleep(self, response: HttpsResponse, wait: float) -> float:
        """Wait as the CA's Retry-After says, else ``wait``; returns the next default wait."""
        header = response.header("Retry-After")
        await trio.sleep(
            retry_after(header, now=self.wall_clock(), default=wait, limit=RETRY_AFTER_MAX)
        )
        return min(wait * 2, POLL_MAX)

    async def _post(
        self,
        url: str,
        payload: dict[str, Any] | None,
        *,
        new_account: bool = False,
        accept: str | None = None,
    ) -> HttpsResponse:
        """A signed POST (a POST-as-GET when ``payload`` is None); a ``badNonce`` answer is
        retried with the fresh nonce it carries."""
        headers = [("Content-Type", JOSE_CONTENT_TYPE)]
        if accept is not None:
            headers.append(("Accept", accept))
        kid = None if new_account else self.account_url
        for attempt in range(BAD_NONCE_RETRIES + 1):
            nonce = await self._nonce()
            body = sign_request(payload, key=self.account_key, url=url, nonce=nonce, kid=kid)
            response = await self.http.request("POST", url, body=body, headers=headers)
            fresh = response.header("Replay-Nonce")
            if fresh:
                self._nonces.append(fresh)
            if response.status < 400:
                return response
            problem = problem_from_response(response.status, response.body)
            if not (problem.is_bad_nonce and attempt < BAD_NONCE_RETRIES):
                raise problem
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _nonce(self) -> str:
        if self._nonces:
            return self._nonces.pop()
        directory = await self.directory()
        response = await self.http.request("HEAD", directory.new_nonce)
        nonce = response.header("Replay-Nonce")
        if not nonce:
            raise AcmeProblem("about:blank", f"newNonce answered {response.status} without a nonce")
        return nonce
