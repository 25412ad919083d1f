"""
A client endpoint whose connection attempt fires only once the TLS handshake
has completed and the upstream's certificate has been verified
(L{UpstreamTLSEndpoint}); until then a L{_HandshakeGate} stands between
Twisted's TLS layer and the application protocol.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam.tls.layer import DirectTLSFactory
from balancebeam.tls.upstream_verify import UpstreamConnectionCreator, UpstreamTLSError


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    Sits between Twisted's TLS layer and the application protocol until the
    handshake completes, so that the application sees a connection only
    once the upstream has been verified.

    @ivar _state: one of:
        - C{"handshaking"}: TCP connected, TLS handshake in progress; the
          application protocol has no transport.
        - C{"open"}: handshake done; bytes and events pass through.
        - C{"closed"}: the connection ended before the handshake completed.
    """

    def __init__(
        self,
        application: IProtocol,
        creator: UpstreamConnectionCreator,
        clock: IReactorTime,
        timeout: float,
        result: Deferred[IProtocol],
    ) -> None:
        self._application = application
        self._creator = creator
        self._clock = clock
        self._timeout = timeout
        self._result = result
        self._state = "handshaking"
        self._timer: IDelayedCall | None = None
        self._timed_out = False
        self.cancelled = False

    def connectionMade(self) -> None:
        """
        Start the handshake deadline.
        """
        if self._timeout > 0:
            self._timer = self._clock.callLater(self._timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._timed_out = True
        self.abort()

    def abort(self) -> None:
        """
        Drop the connection at once (a cancelled or expired handshake).
        """
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # TLS transports have it

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def handshakeCompleted(self) -> None:
        """
        Hand the verified connection to the application protocol.
        """
        self._stop_timer()
        if self._state != "handshaking" or self._result.called:
            return
        tls = self.transport
        assert isinstance(tls, TLSMemoryBIOProtocol)
        self._creator.handshake_completed(tls.getHandle())
        self._state = "open"
        self._application.makeConnection(tls)
        if IHandshakeListener.providedBy(self._application):
            self._application.handshakeCompleted()
        self._result.callback(self._application)

    def dataReceived(self, data: bytes) -> None:
        """
        The first application bytes: a TLS 1.3 session ticket has been
        processed by now, so remember the session, then pass bytes straight
        to the application from here on.
        """
        tls = self.transport
        if isinstance(tls, TLSMemoryBIOProtocol):
            self._creator.remember_session(tls.getHandle())
        self.dataReceived = self._application.dataReceived  # type: ignore[method-assign]  # hot path: skip this layer
        self._application.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Pass the loss on once open; before that, fail the connection attempt.
        """
        self._stop_timer()
        if self._state == "open":
            self._state = "closed"
            self._application.connectionLost(reason)
            return
        self._state = "closed"
        if self._result.called:
            return
        upstream = self._creator.upstream
        if self.cancelled:
            self._result.errback(CancelledError())
        elif reason.check(UpstreamTLSError):
            self._result.errback(reason)
        elif self._timed_out:
            self._result.errback(
                UpstreamTLSError(upstream, f"handshake timed out after {self._timeout:g} s")
            )
        else:
            self._result.errback(UpstreamTLSError(upstream, _describe(reason)))


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, SSL.Error):
        queue = value.args[0] if value.args and isinstance(value.args[0], list) else []
        texts = [entry[2] for entry in queue if isinstance(entry, tuple) and len(entry) == 3]
        return "; ".join(texts) or "the TLS layer failed"
    if reason.check(ConnectionDone, ConnectionLost):
        return "the upstream closed the connection during the handshake"
    return f"{type(value).__name__}: {value}"


class _GateFactory(Factory):
    """
    Builds the one L{_HandshakeGate} of one connection attempt.
    """

    def __init__(self, application: IProtocolFactory, make_gate: Any) -> None:
        self._application = application
        self._make_gate = make_gate
        self.gate: _HandshakeGate | None = None

    def doStart(self) -> None:
        """Start the application factory too."""
        self._application.doStart()

    def doStop(self) -> None:
        """Stop the application factory too."""
        self._application.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """
        A gate in front of the application's protocol for C{addr}.

        @raise NoProtocol: when the application's factory builds none (the
            TCP endpoint then fails the connection attempt with it).
        """
        assert addr is not None, "stream endpoints always pass the peer's address"
        application = self._application.buildProtocol(addr)
        if application is None:
            raise NoProtocol()
        self.gate = self._make_gate(application)
        return self.gate


@implementer(IStreamClientEndpoint)
class UpstreamTLSEndpoint:
    """
    A client endpoint that connects over C{endpoint}, performs the TLS
    handshake with C{creator}, and fires only once it completed.

    The Deferred of L{connect} fails with L{UpstreamVerificationError} when
    the upstream's certificate does not verify, with L{UpstreamTLSError}
    for other handshake failures (including the deadline), and with the TCP
    endpoint's own error when the TCP connection fails. Cancelling it
    cancels the TCP attempt or aborts the handshake.
    """

    def __init__(
        self,
        clock: IReactorTime,
        creator: UpstreamConnectionCreator,
        endpoint: IStreamClientEndpoint,
        handshake_timeout: float,
    ) -> None:
        self._clock = clock
        self._creator = creator
        self._endpoint = endpoint
        self._timeout = handshake_timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect, handshake, verify, then connect C{protocolFactory}'s protocol.
        """
        gates = _GateFactory(
            protocolFactory,
            lambda application: _HandshakeGate(
                application, self._creator, self._clock, self._timeout, result
            ),
        )

        cancelled: list[bool] = []

        def cancel(_: Deferred[IProtocol]) -> None:
            cancelled.append(True)
            if gates.gate is None:
                # Deferred.cancel then fails the result with CancelledError.
                connecting.cancel()
            else:
                gates.gate.cancelled = True
                gates.gate.abort()

        result: Deferred[IProtocol] = Deferred(cancel)
        tls = DirectTLSFactory(self._creator, True, gates, clock=self._clock)
        connecting = self._endpoint.connect(tls)

        def failed(reason: Failure) -> None:
            if not result.called and not cancelled:
                result.errback(reason)

        connecting.addErrback(failed)
        return result
