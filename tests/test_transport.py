"""
Tests for L{balancebeam.transport.send_now}, the direct-to-socket write.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancebeam.relay.transport import StreamTransport
from balancebeam.twisted_internals import send_now


class _Collector(Protocol):
    """
    Collects what it receives; fires C{done} once C{expected} bytes arrived.
    """

    def __init__(self, expected: int) -> None:
        self.received = b""
        self.expected = expected
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(self.received)


class SendNowFallbackTests(SynchronousTestCase):
    """
    Transports that are not plain TCP get an ordinary write.
    """

    def test_other_transports_use_write(self) -> None:
        """
        On a StringTransport, send_now is exactly transport.write.
        """
        transport = StringTransport()
        send_now(transport, b"abc")
        send_now(transport, b"def")
        self.assertEqual(transport.value(), b"abcdef")


class SendNowTCPTests(TestCase):
    """
    On real TCP connections, send_now bypasses the queue only when it is empty.
    """

    async def _connected_pair(self, expected: int) -> tuple[StreamTransport, _Collector]:
        collector = _Collector(expected)
        factory = Factory.forProtocol(lambda: collector)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        sender = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol()
        )
        assert sender.transport is not None
        self.addCleanup(sender.transport.loseConnection)
        return sender.transport, collector

    async def test_empty_queue_sends_directly(self) -> None:
        """
        With nothing queued, the data goes to the socket at once and nothing is
        left in Twisted's buffer.
        """
        transport, collector = await self._connected_pair(5)
        send_now(transport, b"hello")
        self.assertEqual(transport._tempDataLen, 0)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.done, b"hello")

    async def test_queued_data_keeps_order(self) -> None:
        """
        With data already queued by write(), send_now queues behind it, so the
        peer receives everything in order.
        """
        transport, collector = await self._connected_pair(10)
        transport.write(b"first")
        send_now(transport, b"later")
        self.assertEqual(transport._tempDataLen, 10)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.done, b"firstlater")

    async def test_large_write_partially_queued(self) -> None:
        """
        Data larger than the kernel takes at once arrives complete and in order.
        """
        payload = bytes(range(256)) * 40000
        transport, collector = await self._connected_pair(len(payload) + 3)
        send_now(transport, payload)
        send_now(transport, b"end")
        self.assertEqual(await collector.done, payload + b"end")
