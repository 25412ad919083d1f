"""
Twisted's TLS layer as balancebeam uses it.

Twisted's L{TLSMemoryBIOFactory} builds a C{BufferingTLSTransport} by
default: it holds every small write and sends them together on the next
reactor turn, which costs a delayed call per write. The relay already sends
what one reactor turn wrote in one write (L{balancebeam.relay.client}), so
that aggregation only adds work; L{DirectTLSFactory} builds the plain
L{TLSMemoryBIOProtocol}, which encrypts and sends each write at once.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer


class DirectTLSFactory(TLSMemoryBIOFactory):
    """
    A L{TLSMemoryBIOFactory} whose connections write without aggregation.
    """

    protocol = TLSMemoryBIOProtocol
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
