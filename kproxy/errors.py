"""The one exception hierarchy of kproxy.

Every error kproxy raises on purpose derives from :class:`KProxyError`. Three families matter
at the edges: :class:`CommandError` becomes an ``ERR <message>`` line on the control channel
(and exit status 1 in the CLI); :class:`UpstreamError` becomes an HTTP status for the client
(``status_hint``), and :class:`ExchangeError` says how an exchange ended early on the client's
side; ``kproxy.core.relay_rules.status_for`` turns either into the status, in one place. A
fourth stays inside: :class:`ProtocolError`, raised by the sans-IO readers when a peer's bytes
break the protocol, which the runtime turns into one of the others (or a 400) where it knows
who the peer is. Its members elsewhere: ``kproxy.core.response_head.BadResponse`` (a target's
response) and ``kproxy.core.worker_protocol.ChannelError`` (the worker channel).
"""

from __future__ import annotations


class KProxyError(Exception):
    """Base of every error kproxy raises on purpose."""


class CommandError(KProxyError):
    """A control command that cannot be carried out; the message is shown to the user."""


class UsageError(CommandError):
    """A command line that does not parse: unknown command, unknown flag, bad value."""


class DeployError(CommandError):
    """A deploy that failed; the previous deployment keeps serving."""


class CertificateError(DeployError):
    """A deploy's TLS certificate or key cannot be used; the message names the file."""


class DeployTimeout(DeployError):
    """The new targets did not become healthy within ``--deploy-timeout``."""


class ServiceNotFound(CommandError):
    """A command named a service that is not deployed."""


class StateError(KProxyError):
    """The state file cannot be read or written."""


class ProtocolError(KProxyError):
    """A peer's bytes break the protocol spoken with it (HTTP/1.1 framing, the worker channel);
    the message says how."""


class UpstreamError(KProxyError):
    """A request could not be served by its target; ``status_hint`` is the client's status."""

    status_hint = 502


class UpstreamUnreachable(UpstreamError):
    """The target refused, reset or broke the connection before a response head arrived."""

    status_hint = 502


class UpstreamTimeout(UpstreamError):
    """No response head within ``--target-timeout``, or cancelled by the end of a drain."""

    status_hint = 504


class NoHealthyTargets(UpstreamError):
    """The service has no healthy target to send the request to."""

    status_hint = 503


class ServiceUnavailable(UpstreamError):
    """The service is stopped (maintenance mode); the message goes into the 503 page."""

    status_hint = 503

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class NotServedOverTls(UpstreamError):
    """A request over HTTPS for a service that does not serve TLS (kamal-proxy: 503)."""

    status_hint = 503


class PauseExpired(UpstreamError):
    """A request was held by a paused service for longer than ``--max-pause``."""

    status_hint = 504


class NoMatchingService(UpstreamError):
    """No service serves the request's host and path."""

    status_hint = 404


class BodyTooLarge(UpstreamError):
    """A buffered request body larger than ``--max-request-body``."""

    status_hint = 413


class ResponseTooLarge(UpstreamError):
    """A buffered response body larger than ``--max-response-body``: kamal-proxy answers 500
    (internal/server/response_buffer_middleware.go) rather than send a truncated body."""

    status_hint = 500


class ExchangeError(KProxyError):
    """A request/response exchange that ended early on the client's side or mid-response; the
    status it is logged with is chosen in one place (``kproxy.core.relay_rules.status_for``)."""


class ClientGone(ExchangeError):
    """The client disconnected (or half-closed) before the exchange finished: logged as 499."""


class BadRequestBody(ExchangeError):
    """The client's body broke HTTP framing (e.g. a malformed chunk): answered 400."""


class BodyTimeout(BadRequestBody):
    """The client sent a buffered request body too slowly (runtime/request_body.py): 408."""


class ResponseAborted(ExchangeError):
    """The target broke off after the response head was sent: the client connection is cut."""
