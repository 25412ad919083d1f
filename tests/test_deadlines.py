"""
Every deadline of the relay on a fake clock: each state's timeout is
enforced, and activity in the state starts it again (issue 9, defects 1 and 2).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.config import Limits, Timeouts
from balancebeam.filters import Answer
from balancebeam.http1.heads import ResponseHead
from balancebeam.interfaces import IExchange, IRequestFilter, IResponseObserver
from balancebeam.relay.states import ExchangeState, deadline_table
from tests.helpers import Harness

GET = b"GET /stream HTTP/1.1\r\nHost: example.com\r\n\r\n"
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def _aborted(transport: StringTransport) -> bool:
    """
    Whether the connection was aborted (not closed after its data).
    """
    return bool(transport.disconnected)


@implementer(IRequestFilter)
class _NeverDecides:
    """
    A filter whose decision never comes.
    """

    name = "never"
    fail_open = True

    def __init__(self) -> None:
        self.pending: list[Deferred[Answer | None]] = []

    def on_request(self, exchange: IExchange) -> Deferred[Answer | None]:
        """
        Decide later, that is never.
        """
        deciding: Deferred[Answer | None] = Deferred()
        self.pending.append(deciding)
        return deciding


class DeadlineTableTests(SynchronousTestCase):
    """
    Each state names its timeout.
    """

    def test_every_state_has_a_deadline_entry(self) -> None:
        """
        The table has one entry per exchange state, taken from the named
        timeout, and only C{DONE} waits forever.
        """
        timeouts = Timeouts(
            upstream=1, client_body=2, client_idle=3, tunnel_idle=4, client_header=5
        )
        table = deadline_table(timeouts)
        self.assertEqual(len(table), len(ExchangeState))
        self.assertEqual(table[ExchangeState.RECEIVING], 1)
        self.assertEqual(table[ExchangeState.SENDING], 2)
        self.assertEqual(table[ExchangeState.RECEIVE_BLOCKED], 3)
        self.assertEqual(table[ExchangeState.TUNNEL], 4)
        self.assertEqual(table[ExchangeState.DONE], float("inf"))


class ResponseStreamTests(SynchronousTestCase):
    """
    C{--upstream-timeout} bounds the wait for the head and then the silence
    between two reads of the body, not the whole response (defect 1).
    """

    def test_stream_longer_than_upstream_timeout_arrives_whole(self) -> None:
        """
        A chunked response sending a chunk every second for 9 seconds, with
        a 3 s upstream timeout, reaches the client whole, and the connection
        stays open.
        """
        harness = Harness(timeouts=Timeouts(upstream=3))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for index in range(8):
            harness.reactor.advance(1)
            protocol.dataReceived(b"1\r\n%d\r\n" % index)
        harness.reactor.advance(1)
        protocol.dataReceived(b"0\r\n\r\n")
        body = client_transport.value().partition(b"\r\n\r\n")[2]
        self.assertEqual(
            body, b"".join(b"1\r\n%d\r\n" % index for index in range(8)) + b"0\r\n\r\n"
        )
        self.assertFalse(client_transport.disconnecting)
        self.assertEqual(harness.stats.upstream_timeouts, 0)

    def test_stalled_stream_is_cut(self) -> None:
        """
        A response that goes silent for longer than the upstream timeout is
        cut: the client is aborted (it must not take the body for whole) and
        the upstream connection closed.
        """
        harness = Harness(timeouts=Timeouts(upstream=3))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        protocol.dataReceived(b"1\r\na\r\n")
        harness.reactor.advance(2.5)
        self.assertFalse(client_transport.disconnecting)
        harness.reactor.advance(1)
        self.assertTrue(_aborted(client_transport))
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(harness.registry.upstreams[0].in_flight, 0)

    def test_client_not_reading_is_cut_after_idle_timeout(self) -> None:
        """
        While the client does not read (its send buffer is full) the upstream
        is paused and the client gets C{--client-idle-timeout}, not the
        upstream timeout; then it is cut.
        """
        harness = Harness(timeouts=Timeouts(upstream=2, client_idle=10))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.pauseProducing()
        harness.reactor.advance(9)
        self.assertFalse(client_transport.disconnecting)
        self.assertEqual(upstream.producerState, "paused")
        harness.reactor.advance(1.5)
        self.assertTrue(_aborted(client_transport))

    def test_client_resuming_restarts_upstream_deadline(self) -> None:
        """
        When the client reads again, the upstream deadline starts afresh.
        """
        harness = Harness(timeouts=Timeouts(upstream=2, client_idle=10))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        client.pauseProducing()
        harness.reactor.advance(8)
        client.resumeProducing()
        harness.reactor.advance(1.5)
        protocol.dataReceived(b"def")
        self.assertTrue(client_transport.value().endswith(b"abcdef"))
        self.assertFalse(client_transport.disconnecting)


class _Acknowledged:
    """
    A stand-in for L{balancebeam.relay.transport.acked_bytes}: each peer
    asked about is recorded, and the count given is C{self.count}.
    """

    def __init__(self) -> None:
        self.count = 0
        self.asked: list[object] = []

    def __call__(self, peer: object) -> int:
        self.asked.append(peer)
        return self.count


class SlowReaderTests(SynchronousTestCase):
    """
    A side that reads slowly is not cut at a blocked state's deadline: once
    the kernel buffers are full, user space sees its reads only when much
    of the send buffer has emptied, so at the deadline the relay asks
    whether its TCP acknowledged bytes since the exchange blocked.
    """

    def test_client_reading_slowly_is_not_cut(self) -> None:
        """
        A client whose TCP acknowledges more bytes at every idle deadline
        keeps its response; once it stops, it is cut at the next one.
        """
        harness = Harness(timeouts=Timeouts(upstream=2, client_idle=10))
        acked = _Acknowledged()
        harness.factory.settings.progress = acked
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.pauseProducing()
        for _ in range(5):
            acked.count += 4096
            harness.reactor.advance(10.5)
            self.assertFalse(client_transport.disconnecting)
            self.assertEqual(upstream.producerState, "paused")
        harness.reactor.advance(10.5)
        self.assertTrue(_aborted(client_transport))
        self.assertEqual(set(map(id, acked.asked)), {id(client)})

    def test_unknown_progress_cuts_as_before(self) -> None:
        """
        Where acknowledged bytes cannot be read (C{-1}), a client not
        reading is cut at the idle deadline.
        """
        harness = Harness(timeouts=Timeouts(upstream=2, client_idle=10))
        acked = _Acknowledged()
        acked.count = -1
        harness.factory.settings.progress = acked
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.pauseProducing()
        harness.reactor.advance(10.5)
        self.assertTrue(_aborted(client_transport))

    def test_upstream_reading_upload_slowly_gets_no_504(self) -> None:
        """
        An upstream taking the request body slowly (its TCP acknowledges
        more at every deadline) is not answered 504 for it; when it stops
        reading, it is.
        """
        harness = Harness(timeouts=Timeouts(client_body=2, upstream=5))
        acked = _Acknowledged()
        harness.factory.settings.progress = acked
        client, client_transport = harness.client()
        client.dataReceived(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n0123")
        protocol, _, _ = harness.accept()
        protocol._wrappedProtocol.pauseProducing()  # type: ignore[attr-defined]  # the endpoint wraps our UpstreamConnection
        for _ in range(4):
            acked.count += 1000
            harness.reactor.advance(5.5)
            self.assertEqual(client_transport.value(), b"")
        harness.reactor.advance(5.5)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertIs(acked.asked[0], protocol._wrappedProtocol)  # type: ignore[attr-defined]


class RequestStreamTests(SynchronousTestCase):
    """
    The request body is bounded the same way in the other direction.
    """

    def test_slow_upload_within_body_timeout_relayed(self) -> None:
        """
        A body sent a piece a second for 8 seconds, with a 3 s body timeout,
        is relayed whole and answered.
        """
        harness = Harness(timeouts=Timeouts(client_body=3, upstream=3))
        client, client_transport = harness.client()
        client.dataReceived(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n")
        protocol, upstream, _ = harness.accept()
        for index in range(8):
            harness.reactor.advance(1)
            client.dataReceived(b"%d" % index)
        self.assertTrue(upstream.value().endswith(b"\r\n\r\n01234567"))
        harness.reactor.advance(2)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertFalse(client_transport.disconnecting)

    def test_stalled_upload_gets_408(self) -> None:
        """
        A client silent for longer than the body timeout mid-body gets 408
        and is closed; the upstream connection is closed too.
        """
        harness = Harness(timeouts=Timeouts(client_body=3, upstream=60))
        client, client_transport = harness.client()
        client.dataReceived(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n0123")
        _, upstream, _ = harness.accept()
        harness.reactor.advance(2.5)
        self.assertEqual(client_transport.value(), b"")
        harness.reactor.advance(1)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(client_transport.disconnecting)
        self.assertTrue(upstream.disconnecting)

    def test_upstream_not_reading_body_gets_upstream_timeout(self) -> None:
        """
        While the upstream takes no more of the body (its buffer is full),
        the client is paused and the upstream timeout applies: then 504.
        """
        harness = Harness(timeouts=Timeouts(client_body=2, upstream=5))
        client, client_transport = harness.client()
        client.dataReceived(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n0123")
        protocol, _, _ = harness.accept()
        protocol._wrappedProtocol.pauseProducing()  # type: ignore[attr-defined]  # the endpoint wraps our UpstreamConnection
        self.assertEqual(client_transport.producerState, "paused")
        harness.reactor.advance(4)
        self.assertEqual(client_transport.value(), b"")
        harness.reactor.advance(1.5)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 504 "))


class TunnelTests(SynchronousTestCase):
    """
    A tunnel with no byte either way for C{--tunnel-idle-timeout} is closed
    on both sides (defect 2).
    """

    def _tunnel(self, harness: Harness) -> tuple[StringTransport, object, StringTransport]:
        client, client_transport = harness.client()
        client.dataReceived(UPGRADE)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(SWITCH)
        self._client = client
        return client_transport, protocol, upstream

    def test_idle_tunnel_closed_on_both_sides(self) -> None:
        """
        After the tunnel idle timeout without a byte, both connections close.
        """
        harness = Harness(timeouts=Timeouts(tunnel_idle=30, upstream=5, client_idle=5))
        client_transport, _, upstream = self._tunnel(harness)
        harness.reactor.advance(29)
        self.assertFalse(client_transport.disconnecting)
        self.assertFalse(upstream.disconnecting)
        harness.reactor.advance(1.5)
        self.assertTrue(client_transport.disconnecting)
        self.assertTrue(upstream.disconnecting)

    def test_bytes_either_way_keep_the_tunnel(self) -> None:
        """
        A byte from either side starts the idle timeout again: a tunnel busy
        for far longer than the timeout stays open, with every byte through.
        """
        harness = Harness(timeouts=Timeouts(tunnel_idle=30, upstream=5, client_idle=5))
        client_transport, protocol, upstream = self._tunnel(harness)
        for step in range(10):
            harness.reactor.advance(20)
            if step % 2:
                protocol.dataReceived(b"s")  # type: ignore[attr-defined]  # the wrapped UpstreamConnection
            else:
                self._client.dataReceived(b"c")
        self.assertFalse(client_transport.disconnecting)
        self.assertFalse(upstream.disconnecting)
        self.assertEqual(upstream.value().rpartition(b"\r\n\r\n")[2], b"ccccc")
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nsssss"))


class WaitingStateTests(SynchronousTestCase):
    """
    The waits before a response starts end in 504, and each one is counted.
    """

    def test_filter_that_never_decides_gets_504(self) -> None:
        """
        A request filter deciding for longer than the upstream timeout makes
        the request end with 504, and the filter's Deferred is cancelled.
        """
        never = _NeverDecides()
        harness = Harness(timeouts=Timeouts(upstream=4), filters=[never])
        client, client_transport = harness.client()
        client.dataReceived(GET)
        harness.reactor.advance(3.5)
        self.assertEqual(client_transport.value(), b"")
        harness.reactor.advance(1)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertEqual(harness.stats.upstream_timeouts, 1)
        self.assertEqual(harness.pending_connects(), 0)
        self.assertTrue(never.pending[0].called)

    def test_connect_that_never_completes_gets_504(self) -> None:
        """
        A connection attempt still pending at the upstream timeout is
        cancelled and the client gets 504.
        """
        harness = Harness(timeouts=Timeouts(upstream=4, connect=60))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        harness.reactor.advance(4.5)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertEqual(harness.pending_connects(), 0)

    def test_interim_responses_refresh_the_wait(self) -> None:
        """
        Interim (1xx) responses show the upstream is alive: each one starts
        the wait for the final head again.
        """
        harness = Harness(timeouts=Timeouts(upstream=3))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        for _ in range(4):
            harness.reactor.advance(2)
            protocol.dataReceived(b"HTTP/1.1 102 Processing\r\n\r\n")
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nok"))
        self.assertNotIn(b" 504 ", client_transport.value())


class DiscardTests(SynchronousTestCase):
    """
    The body of a request answered early is read within the body timeout.
    """

    def test_discarded_body_stalled_aborts(self) -> None:
        """
        After an early answer (all upstreams down), a client that stops
        sending the rest of its body is cut after the body timeout.
        """
        harness = Harness(timeouts=Timeouts(client_body=3))
        for upstream in harness.registry.upstreams:
            harness.registry.mark_down(upstream, "test")
        client, client_transport = harness.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 503 "))
        harness.reactor.advance(2)
        client.dataReceived(b"de")
        harness.reactor.advance(2)
        self.assertFalse(client_transport.disconnecting)
        harness.reactor.advance(1.5)
        self.assertTrue(_aborted(client_transport))


@implementer(IRequestFilter)
class _Replacing:
    """
    A filter whose observer replaces every upstream response at its head.
    """

    name = "replace"
    fail_open = True

    def on_request(self, exchange: IExchange) -> None:
        """
        Observe with an observer that answers instead of the upstream.
        """
        exchange.observe(_ReplacingObserver())


@implementer(IResponseObserver)
class _ReplacingObserver:
    def response_head(self, response: ResponseHead) -> Answer:
        return Answer(200, (), b"replacement")

    def response_body(self, data: bytes) -> None:
        raise AssertionError("a replaced response is not shown")

    def response_complete(self) -> None:
        raise AssertionError("a replaced response is not shown")

    def continue_without_client(self) -> bool:
        return False

    def response_failed(self, reason: str) -> None:
        return None


class SubstitutingTests(SynchronousTestCase):
    """
    The rest of an upstream response that an observer replaced is read
    within the upstream timeout.
    """

    def test_replaced_response_that_stalls_is_dropped(self) -> None:
        """
        When the replaced response's body stops coming, its connection is
        closed after the upstream timeout and the client, which already has
        its whole answer, goes on with its next request.
        """
        harness = Harness(timeouts=Timeouts(upstream=3), filters=[_Replacing()])
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\nabc")
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nreplacement"))
        harness.reactor.advance(2)
        protocol.dataReceived(b"more")
        harness.reactor.advance(2)
        self.assertFalse(upstream.disconnecting)
        harness.reactor.advance(1.5)
        self.assertTrue(upstream.disconnecting)
        self.assertFalse(client_transport.disconnecting)
        client.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 1)


class ReconfigureTests(SynchronousTestCase):
    """
    New settings apply to new requests; requests in flight keep theirs.
    """

    def test_request_in_flight_keeps_its_timeouts(self) -> None:
        """
        After a reconfiguration with a longer upstream timeout, the request
        already waiting still gets 504 at the old timeout, and a request
        started afterwards waits for the new one.
        """
        harness = Harness(timeouts=Timeouts(upstream=3))
        old_client, old_transport = harness.client(40001)
        old_client.dataReceived(GET)
        harness.accept()
        harness.factory.reconfigure(harness.dispatcher, Timeouts(upstream=30), Limits(), (), False)
        new_client, new_transport = harness.client(40002)
        new_client.dataReceived(GET)
        harness.accept()
        harness.reactor.advance(3.5)
        self.assertTrue(old_transport.value().startswith(b"HTTP/1.1 504 "))
        harness.reactor.advance(20)
        self.assertEqual(new_transport.value(), b"")
        harness.reactor.advance(7)
        self.assertTrue(new_transport.value().startswith(b"HTTP/1.1 504 "))
