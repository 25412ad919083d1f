"""
Tests for L{balancebeam.twisted_internals}, the lean epoll reactor.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.twisted_internals import LeanEPollReactor


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"ping" * 1000)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def _factory_for(client: _Client) -> ClientFactory:
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: client  # type: ignore[method-assign]  # one prepared protocol
    return factory


class _Broken(Protocol):
    def dataReceived(self, data: bytes) -> None:
        raise RuntimeError("a bug in a protocol")


class LeanEPollReactorTests(SynchronousTestCase):
    """
    The reactor dispatches events like Twisted's epoll reactor.
    """

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.addCleanup(self._close)

    def _close(self) -> None:
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionDone()))
        self.reactor._poller.close()

    def _spin(self, done: Callable[[], bool], limit: int = 2000) -> None:
        for _ in range(limit):
            if done():
                return
            self.reactor.iterate(0.01)
        self.fail("the exchange did not finish")

    def test_bytes_round_trip(self) -> None:
        """
        A client and an echo server on the lean reactor exchange 4000 bytes.
        """
        port = self.reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        client = _Client()
        self.reactor.connectTCP("127.0.0.1", port.getHost().port, _factory_for(client))
        self._spin(lambda: len(client.received) >= 4000)
        self.assertEqual(client.received, b"ping" * 1000)

    def test_protocol_error_disconnects_and_is_logged(self) -> None:
        """
        An exception in a protocol is logged and drops that connection only,
        as with Twisted's reactor.
        """
        port = self.reactor.listenTCP(0, Factory.forProtocol(_Broken), interface="127.0.0.1")
        client = _Client()
        self.reactor.connectTCP("127.0.0.1", port.getHost().port, _factory_for(client))
        self._spin(lambda: client.lost)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
