"""
Twisted's TLS layer as balancebeam uses it.

Twisted's L{TLSMemoryBIOFactory} builds a C{BufferingTLSTransport} by
default: it holds every small write and sends them together on the next
reactor turn, which costs a delayed call per write. The relay already sends
what one reactor turn wrote in one write (L{balancebeam.relay.client}), so
that aggregation only adds work; L{DirectTLSFactory} builds connections on
the plain L{TLSMemoryBIOProtocol}, which encrypts each write at once.

The encrypted bytes then go to the TCP connection below with the relay's
L{send_now} (straight to the socket when nothing is queued, on the Twisted
versions that was checked against; C{transport.write} otherwise), as plain
HTTP responses do, instead of waiting for the reactor's next turn.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import directlyProvides, implementer, providedBy

from balancebeam.relay.transport import StreamTransport
from balancebeam.twisted_internals import send_now


class _SendNowBelow:
    """
    The transport below a TLS connection, as the TLS layer sees it: the
    same transport, except that its writes go through L{send_now}.

    @ivar below: the real transport (TCP).
    """

    def __init__(self, below: ITransport) -> None:
        self.below = below
        directlyProvides(self, providedBy(below))

    def write(self, data: bytes) -> None:
        """
        Send encrypted bytes, at once when the socket takes them.
        """
        send_now(self._stream, data)

    @property
    def _stream(self) -> StreamTransport:
        below: Any = self.below  # TCP transports have every StreamTransport operation
        return below

    def __getattr__(self, name: str) -> Any:
        """
        Everything else is the real transport's.
        """
        return getattr(self.below, name)


class DirectTLSProtocol(TLSMemoryBIOProtocol):
    """
    A TLS connection that encrypts each write at once and sends the result
    with L{send_now}.
    """

    def makeConnection(self, transport: ITransport) -> None:
        """
        Connect on top of C{transport}, writing to it through L{send_now}.
        """
        super().makeConnection(_SendNowBelow(transport))


class DirectTLSFactory(TLSMemoryBIOFactory):
    """
    A L{TLSMemoryBIOFactory} of L{DirectTLSProtocol}s: no write aggregation,
    encrypted bytes sent at once.
    """

    protocol = DirectTLSProtocol
    noisy = False


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    A server endpoint with TLS from C{creator} on top of another one, as
    Twisted's C{wrapServerTLS}, with L{DirectTLSFactory}.
    """

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
    ) -> None:
        self._creator = creator
        self._endpoint = endpoint
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with the wrapped endpoint; every connection gets TLS first.
        """
        factory = DirectTLSFactory(self._creator, False, protocolFactory, clock=self._clock)
        listening: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return listening
