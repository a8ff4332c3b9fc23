"""core/tcp_info.py: TCP_INFO's bytes, and what they say of a request's bytes."""

from __future__ import annotations

import struct

import pytest

from kproxy.core import tcp_info
from kproxy.core.tcp_info import TCP_CLOSE, TCP_CLOSE_WAIT, TcpInfo

ESTABLISHED = 1


def test_parse_reads_state_rtt_and_bytes_acked_at_linux_offsets() -> None:
    data = bytearray(232)  # a newer kernel's longer struct
    data[0] = TCP_CLOSE
    struct.pack_into("=I", data, 68, 1500)  # tcpi_rtt, µs
    struct.pack_into("=Q", data, 120, 4242)  # tcpi_bytes_acked
    assert tcp_info.parse(bytes(data)) == TcpInfo(TCP_CLOSE, 0.0015, 4242)


def test_a_kernel_without_bytes_acked_tells_nothing() -> None:
    assert tcp_info.parse(bytes(104)) is None


@pytest.mark.parametrize(
    ("now", "never", "reset_may_follow"),
    [
        (TcpInfo(TCP_CLOSE, 0.0, 100), True, False),  # reset, nothing of ours acknowledged
        (TcpInfo(TCP_CLOSE, 0.0, 150), False, False),  # reset after taking our bytes
        (TcpInfo(TCP_CLOSE_WAIT, 0.0, 100), False, True),  # FIN first: wait for the reset
        (TcpInfo(TCP_CLOSE_WAIT, 0.0, 150), False, False),  # it read them, then closed
        (TcpInfo(ESTABLISHED, 0.0, 100), False, False),
    ],
)
def test_never_received(now: TcpInfo, never: bool, reset_may_follow: bool) -> None:
    assert tcp_info.never_received(100, now) is never
    assert tcp_info.reset_may_follow(100, now) is reset_may_follow
