"""
The transport operations the relay uses, as one static type.

Twisted types C{Protocol.transport} as C{ITransport}, which lacks flow
control and C{abortConnection}; TCP, TLS and test transports all provide
them. Protocols keep the transport under this type once connected.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Protocol

from twisted.internet.interfaces import IAddress, INegotiated


class StreamTransport(Protocol):
    """
    A connected, flow-controlled byte stream.
    """

    def write(self, data: bytes) -> None:
        """Queue C{data} for sending."""

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Queue each of C{data} for sending."""

    def loseConnection(self) -> None:
        """Close once queued data is sent."""

    def abortConnection(self) -> None:
        """Close at once, dropping queued data."""

    def pauseProducing(self) -> None:
        """Stop reading."""

    def resumeProducing(self) -> None:
        """Read again."""

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """Tell C{producer} when the send buffer fills and drains."""

    def unregisterProducer(self) -> None:
        """Stop telling the producer."""

    def getPeer(self) -> IAddress:
        """The remote address."""


def enable_no_delay(transport: object) -> None:
    """
    Turn off Nagle's algorithm where the transport supports it: the relay
    writes whole messages, and delayed small segments would add latency.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass


_TCP_INFO_SIZE = 232
"""Bytes of C{struct tcp_info} asked for (Linux 4.x and later fill at least 128)."""

_BYTES_ACKED_OFFSET = 120
"""Where C{tcpi_bytes_acked} (a C{__u64}, Linux 4.1) is in C{struct tcp_info}."""


def acked_bytes(transport: object) -> int:
    """
    How many bytes the peer of C{transport}'s TCP connection has
    acknowledged so far (Linux's C{tcpi_bytes_acked}), or C{-1} where that
    is unknown (another system, not a TCP socket, a closed one).

    Once the kernel buffers are full, the peer acknowledges new bytes only
    as its application reads: a growing count is a slow reader making
    progress, which user space otherwise sees only when a large part of
    the kernel's send buffer has emptied. For TLS the TCP transport under
    the TLS layer is asked.
    """
    for _ in range(3):
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            try:
                info = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
            except (OSError, AttributeError, ValueError):
                return -1
            if len(info) < _BYTES_ACKED_OFFSET + 8:
                return -1
            acked: int = struct.unpack_from("=Q", info, _BYTES_ACKED_OFFSET)[0]
            return acked
        # A TLS layer (TLSMemoryBIOProtocol) keeps its TCP transport here.
        transport = getattr(transport, "transport", None)
        if transport is None:
            return -1
    return -1


def close_when_sent(transport: StreamTransport) -> None:
    """
    Close C{transport} once the data queued on it is sent.

    A TLS transport (Twisted's C{TLSMemoryBIOProtocol}) does not close while
    a producer is registered, as C{ITransport.loseConnection} allows, and the
    relay's protocols stay registered as their transport's producer for
    their whole life: on a TLS transport the producer is unregistered first.
    TCP transports close either way and are left as they are.
    """
    if INegotiated.providedBy(transport):
        transport.unregisterProducer()
    transport.loseConnection()
