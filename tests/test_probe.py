"""
Tests for L{balancebeam.health.probe}.

Most tests run the probe on a L{MemoryReactorClock}: the test takes the
connection attempt from C{reactor.tcpClients}, connects it to a
L{StringTransport} and plays the upstream. One test probes a real
L{twisted.web.server.Site} over loopback.
"""

from __future__ import annotations

from typing import cast

from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from balancebeam.config import UpstreamSpec
from balancebeam.config_values import parse_health_check_path
from balancebeam.health.probe import MAX_STATUS_LINE, HTTPProbe, ProbeFailed
from balancebeam.registry import UpstreamState

EXPECTED_REQUEST = (
    b"GET /health HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8081\r\n"
    b"User-Agent: balancebeam-health-check\r\n"
    b"Connection: close\r\n"
    b"\r\n"
)


class HTTPProbeTests(SynchronousTestCase):
    """
    Tests for L{HTTPProbe} on an in-memory reactor.
    """

    def setUp(self) -> None:
        """
        A probe of C{/health} whose endpoints connect through a memory reactor.
        """
        self.reactor = MemoryReactorClock()
        self.specs: list[UpstreamSpec] = []
        self.probe = HTTPProbe(self.connect, "/health")
        self.upstream = UpstreamState(UpstreamSpec("127.0.0.1", 8081))

    def connect(self, spec: UpstreamSpec) -> IStreamClientEndpoint:
        """
        Record C{spec} and return a TCP endpoint on the memory reactor.
        """
        self.specs.append(spec)
        return TCP4ClientEndpoint(self.reactor, spec.host, spec.port, timeout=5)

    def accept(self, index: int = -1) -> tuple[Protocol, StringTransport]:
        """
        Complete the connection attempt number C{index}.

        @return: the client protocol and its transport.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert isinstance(protocol, Protocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_request_bytes(self) -> None:
        """
        The probe connects to the upstream and sends exactly the documented request.
        """
        result = self.probe(self.upstream)
        self.assertEqual(self.specs, [self.upstream.spec])
        self.assertEqual(
            [(host, port) for host, port, *_ in self.reactor.tcpClients], [("127.0.0.1", 8081)]
        )
        _, transport = self.accept()
        self.assertEqual(transport.value(), EXPECTED_REQUEST)
        self.assertNoResult(result)

    def test_host_header_for_ipv6(self) -> None:
        """
        An IPv6 upstream's Host header is bracketed.
        """
        upstream = UpstreamState(UpstreamSpec("::1", 8081))
        self.assertIn(b"\r\nHost: [::1]:8081\r\n", self.probe.request_for(upstream))

    def test_status_200(self) -> None:
        """
        A 200 status line fires the probe with 200 and aborts the connection.
        """
        result = self.probe(self.upstream)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.successResultOf(result), 200)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_status_500(self) -> None:
        """
        A 500 status line fires the probe with 500.
        """
        result = self.probe(self.upstream)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 500 Internal Server Error\r\n")
        self.assertEqual(self.successResultOf(result), 500)

    def test_status_line_in_pieces(self) -> None:
        """
        The status fires only once the whole status line has arrived.
        """
        result = self.probe(self.upstream)
        protocol, transport = self.accept()
        for byte in b"HTTP/1.0 503 Busy\r":
            protocol.dataReceived(bytes([byte]))
        self.assertNoResult(result)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"\n")
        self.assertEqual(self.successResultOf(result), 503)

    def test_status_without_reason(self) -> None:
        """
        A status line without a reason phrase is accepted.
        """
        result = self.probe(self.upstream)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200\r\n")
        self.assertEqual(self.successResultOf(result), 200)

    def test_interim_response_skipped(self) -> None:
        """
        A 103 Early Hints response is skipped and the final status reported.
        """
        result = self.probe(self.upstream)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
        self.assertNoResult(result)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.successResultOf(result), 200)

    def test_closed_before_status_line(self) -> None:
        """
        A connection closed after a partial status line fails the probe.
        """
        result = self.probe(self.upstream)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 20")
        protocol.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(result, ProbeFailed)
        self.assertEqual(str(failure.value), "connection closed before the status line")

    def test_garbage(self) -> None:
        """
        A line that is not an HTTP status line fails the probe and aborts the connection.
        """
        result = self.probe(self.upstream)
        protocol, transport = self.accept()
        protocol.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
        failure = self.failureResultOf(result, ProbeFailed)
        self.assertEqual(str(failure.value), "malformed status line")
        self.assertTrue(transport.disconnected)

    def test_bad_status_code(self) -> None:
        """
        A status code that is not three digits fails the probe.
        """
        for line in [b"HTTP/1.1 20 OK\r\n", b"HTTP/1.1 2000 OK\r\n", b"HTTP/1.1 099 X\r\n"]:
            result = self.probe(self.upstream)
            protocol, _ = self.accept()
            protocol.dataReceived(line)
            self.failureResultOf(result, ProbeFailed)

    def test_status_line_at_limit(self) -> None:
        """
        A status line of exactly the limit (line ending included) is accepted.
        """
        result = self.probe(self.upstream)
        protocol, _ = self.accept()
        head = b"HTTP/1.1 200 "
        protocol.dataReceived(head + b"x" * (MAX_STATUS_LINE - len(head) - 2) + b"\r\n")
        self.assertEqual(self.successResultOf(result), 200)

    def test_status_line_over_limit(self) -> None:
        """
        One byte more than the limit fails the probe, even before the line ends.
        """
        result = self.probe(self.upstream)
        protocol, transport = self.accept()
        head = b"HTTP/1.1 200 "
        protocol.dataReceived(head + b"x" * (MAX_STATUS_LINE - len(head) - 1))
        self.assertNoResult(result)
        protocol.dataReceived(b"x")
        failure = self.failureResultOf(result, ProbeFailed)
        self.assertEqual(str(failure.value), f"status line longer than {MAX_STATUS_LINE} bytes")
        self.assertTrue(transport.disconnected)

    def test_connect_refused(self) -> None:
        """
        A refused connection fails the probe with the connection error.
        """
        result = self.probe(self.upstream)
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        assert isinstance(factory, ClientFactory)
        refused = Failure(ConnectionRefusedError())
        factory.clientConnectionFailed(self.reactor.connectors[0], refused)
        self.failureResultOf(result, ConnectionRefusedError)

    def test_cancel_while_connecting(self) -> None:
        """
        Cancelling before the connection is made stops the connection attempt.
        """
        result = self.probe(self.upstream)
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_cancel_while_waiting(self) -> None:
        """
        Cancelling after the request was sent aborts the connection.
        """
        result = self.probe(self.upstream)
        protocol, transport = self.accept()
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionDone()))
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")

    def test_timeout(self) -> None:
        """
        Under C{addTimeout}, an upstream that never answers times the probe out and is aborted.
        """
        result = self.probe(self.upstream)
        result.addTimeout(2.0, self.reactor)
        _, transport = self.accept()
        self.reactor.advance(1.9)
        self.assertNoResult(result)
        self.reactor.advance(0.1)
        self.failureResultOf(result, TimeoutError)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_new_connection_per_probe(self) -> None:
        """
        Each probe opens its own connection.
        """
        first = self.probe(self.upstream)
        self.accept(0)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        second = self.probe.probe(self.upstream)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.accept(1)[0].dataReceived(b"HTTP/1.1 500 Oops\r\n")
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (200, 500))

    def test_invalid_path(self) -> None:
        """
        A path without a leading slash, with a space or non-ASCII text is
        rejected with the reason of L{parse_health_check_path}, the one rule.
        """
        for path in ["health", "/a b", "/caf\u00e9", "/x\r\nEvil: 1", ""]:
            error = self.assertRaises(ValueError, HTTPProbe, self.connect, path)
            expected = self.assertRaises(ValueError, parse_health_check_path, path)
            self.assertEqual(str(error), str(expected))


def port_number(port: IListeningPort) -> int:
    """
    The TCP port number C{port} listens on.
    """
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


class _StatusResource(Resource):
    """
    Answers every GET with a fixed status and records the request headers.

    @ivar seen: C{(path, Host, User-Agent)} per request.
    """

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.seen: list[tuple[bytes, bytes | None, bytes | None]] = []

    def render_GET(self, request: Request) -> bytes:
        """
        Record the request and answer with C{self.status}.
        """
        self.seen.append(
            (request.uri, request.getHeader(b"host"), request.getHeader(b"user-agent"))
        )
        request.setResponseCode(self.status)
        return b"checked\n"


class _ConnectionTracker(WrappingFactory):
    """
    Wraps a server factory and tells when all its connections have closed.
    """

    def __init__(self, wrapped: IProtocolFactory) -> None:
        super().__init__(wrapped)
        self._waiting: list[Deferred[None]] = []

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """
        Forget a closed connection; wake the waiters when none is left.
        """
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once no connection is open.
        """
        d: Deferred[None] = Deferred()
        if self.protocols:
            self._waiting.append(d)
        else:
            d.callback(None)
        return d


class LoopbackProbeTests(TestCase):
    """
    L{HTTPProbe} against a real web server on 127.0.0.1.
    """

    def listen(self, status: int) -> tuple[_StatusResource, _ConnectionTracker, IListeningPort]:
        """
        Serve C{status} on an ephemeral loopback port, closed at cleanup.
        """
        resource = _StatusResource(status)
        tracker = _ConnectionTracker(Site(resource))
        # WrappingFactory derives from ClientFactory but serves like any factory
        # (Twisted's own ThrottlingFactory is one); only the annotation disagrees.
        port = cast(IReactorTCP, global_reactor).listenTCP(
            0, tracker, interface="127.0.0.1"  # type: ignore[arg-type]
        )
        self.addCleanup(tracker.all_closed)
        self.addCleanup(port.stopListening)
        return resource, tracker, port

    def make_probe(self) -> HTTPProbe:
        """
        A probe of C{/health} with real TCP endpoints.
        """

        def connect(spec: UpstreamSpec) -> IStreamClientEndpoint:
            return TCP4ClientEndpoint(
                cast(IReactorTCP, global_reactor), spec.host, spec.port, timeout=5
            )

        return HTTPProbe(connect, "/health")

    async def test_real_server(self) -> None:
        """
        A real server's 200 and 500 reach the probe, which sent the right path and headers.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        probe = self.make_probe()
        for status in (200, 500):
            resource, tracker, port = self.listen(status)
            number = port_number(port)
            upstream = UpstreamState(UpstreamSpec("127.0.0.1", number))
            self.assertEqual(await probe(upstream).addTimeout(5, global_reactor), status)
            await tracker.all_closed()
            self.assertEqual(
                resource.seen,
                [(b"/health", f"127.0.0.1:{number}".encode(), b"balancebeam-health-check")],
            )
        client_side = ("balancebeam", "twisted.internet.endpoints")
        self.assertEqual(
            [e["log_namespace"] for e in events if e["log_namespace"].startswith(client_side)],
            [],
        )

    async def test_real_refused(self) -> None:
        """
        A loopback port nobody listens on fails the probe with ConnectionRefusedError.
        """
        _, _, port = self.listen(200)
        number = port_number(port)
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        upstream = UpstreamState(UpstreamSpec("127.0.0.1", number))
        with self.assertRaises(ConnectionRefusedError):
            await self.make_probe()(upstream)
