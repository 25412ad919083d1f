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
HTTP responses do, instead of waiting for the reactor's next turn. Once the
handshake is done, reads and writes take a direct path into OpenSSL
(L{balancebeam.tls.fast}).
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
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from balancebeam.http1.dates import DateField
from balancebeam.http1.rewrite import error_response
from balancebeam.tls.fast import PLAIN_HTTP_REASON, DirectTLSProtocol


class DirectTLSFactory(TLSMemoryBIOFactory):
    """
    A L{TLSMemoryBIOFactory} of L{DirectTLSProtocol}s: no write aggregation,
    encrypted bytes sent at once.
    """

    protocol = DirectTLSProtocol
    noisy = False

    def __init__(
        self,
        contextFactory: Any,
        isClient: bool,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        #: A server answers a plain HTTP request with a plain 400.
        self.answers_plain_http = not isClient
        self._date = DateField(clock.seconds) if clock is not None else None

    def plain_http_answer(self) -> bytes:
        """
        A server's answer to a plain HTTP request: a dated 400 that closes.
        """
        date = self._date.line() if self._date is not None else b""
        return error_response(400, PLAIN_HTTP_REASON, False, date=date)


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
