"""
The transport operations the relay uses, as one static type.

Twisted types C{Protocol.transport} as C{ITransport}, which lacks flow
control and C{abortConnection}; TCP, TLS and test transports all provide
them. Protocols keep the transport under this type once connected.
"""

from __future__ import annotations

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
