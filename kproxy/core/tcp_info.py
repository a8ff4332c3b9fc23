"""What Linux's ``TCP_INFO`` tells of a target connection: did any byte of a request reach it?

A target that closes a keep-alive connection right after answering races the next request
sent on it. When that request's bytes arrive at a socket the target has already closed, the
target's kernel discards them and answers with a reset, without acknowledging them: the
application never saw a byte, so even a POST may be sent again (issue 14, scenario 8). Bytes
the target's kernel did acknowledge may have been read, and a connection that merely ended
(a FIN, no reset) may be a half-close whose reader is still at work: neither is retried.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

# struct tcp_info (linux/tcp.h): tcpi_state is its first byte, tcpi_rtt (µs) the 32-bit field
# at offset 68, tcpi_bytes_acked (RFC 4898 tcpEStatsAppHCThruOctetsAcked, Linux 4.1+) the
# 64-bit one at offset 120.
_LAYOUT: Final = struct.Struct("=B67xI48xQ")
SIZE: Final = _LAYOUT.size  # bytes to ask getsockopt for
TCP_CLOSE: Final = 7  # tcpi_state of a connection that was reset (we never close first)
TCP_CLOSE_WAIT: Final = 8  # the peer's FIN came; a reset may follow


@attrs.frozen
class TcpInfo:
    state: int
    rtt: float  # seconds, smoothed
    bytes_acked: int  # bytes of ours the peer's kernel has acknowledged


def parse(data: bytes) -> TcpInfo | None:
    """``getsockopt(IPPROTO_TCP, TCP_INFO, SIZE)``'s bytes; None from a kernel too old."""
    if len(data) < SIZE:
        return None
    state, rtt, bytes_acked = _LAYOUT.unpack_from(data)
    return TcpInfo(state, rtt / 1e6, bytes_acked)


def never_received(acked_before: int, now: TcpInfo) -> bool:
    """Whether the bytes sent since the peer had acknowledged ``acked_before`` never reached
    the peer's application: none was acknowledged, and the peer reset the connection."""
    return now.state == TCP_CLOSE and now.bytes_acked == acked_before


def reset_may_follow(acked_before: int, now: TcpInfo) -> bool:
    """The peer's FIN came before it acknowledged any of the bytes sent since
    ``acked_before``: if it had closed its socket, its reset of them is on the way (it may
    instead have half-closed and still read them; then their acknowledgement comes)."""
    return now.state == TCP_CLOSE_WAIT and now.bytes_acked == acked_before
