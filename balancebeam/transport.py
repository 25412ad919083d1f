"""
The transport operations the relay uses, as one static type.

Twisted types C{Protocol.transport} as C{ITransport}, which lacks flow
control and C{abortConnection}; TCP, TLS and test transports all provide
them. Protocols keep the transport under this type once connected.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IAddress


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

    def getPeer(self) -> IAddress:
        """The remote address."""


_DIRECT_TYPES = (tcp.Server, tcp.Client)


def send_now(transport: StreamTransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it to the socket at once when
    nothing is queued before it.

    Twisted's C{write} queues data until the reactor's next turn, which costs
    two C{epoll_ctl} calls and a loop iteration per response. When the
    transport is a plain TCP connection with an empty send buffer, this sends
    directly with C{socket.send}; whatever the kernel does not take (and every
    other case: TLS, test transports, a transport already holding data or
    closing) goes through C{transport.write}, so ordering, flow control and
    error handling stay Twisted's.
    """
    if (
        type(transport) in _DIRECT_TYPES
        and not transport.dataBuffer  # type: ignore[attr-defined]  # tcp.Connection internals, checked by type above
        and not transport._tempDataLen  # type: ignore[attr-defined]  # idem
        and transport.connected  # type: ignore[attr-defined]  # idem
        and not transport.disconnecting  # type: ignore[attr-defined]  # idem
        and not transport._writeDisconnected  # type: ignore[attr-defined]  # idem
    ):
        try:
            sent = transport.socket.send(data)  # type: ignore[attr-defined]  # idem
        except OSError:
            # EAGAIN, or an error that the queued write will meet and report.
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    transport.write(data)


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
