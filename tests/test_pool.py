"""
Deterministic tests of the upstream connection pool.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.errors import QueueTimeout, UpstreamDown
from balancebeam.relay.upstream import UpstreamConnection
from tests.helpers import Harness, response

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def _connection(harness: Harness) -> tuple[UpstreamConnection, StringTransport]:
    """
    Accept the oldest pending connect and return our protocol and transport.
    """
    wrapper, transport, _ = harness.accept()
    return wrapper._wrappedProtocol, transport  # type: ignore[attr-defined]  # the endpoint wraps our protocol


def _checked_out(harness: Harness, index: int = 0) -> UpstreamConnection:
    """
    Check out a connection to upstream C{index}, accepting a connect if needed.
    """
    result = harness.pool.checkout(harness.registry.upstreams[index])
    if isinstance(result, Deferred):
        _connection(harness)
        connection: UpstreamConnection = harness_result(result)
        return connection
    return result


def harness_result(deferred: Deferred[UpstreamConnection]) -> UpstreamConnection:
    """
    The result of an already-fired Deferred.
    """
    results: list[UpstreamConnection] = []
    deferred.addCallback(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


class PoolTests(SynchronousTestCase):
    """
    Checkout, checkin, expiry and caps.
    """

    def test_lifo_reuse(self) -> None:
        """
        Idle connections are reused last-in first-out.
        """
        harness = Harness(upstream_count=1)
        first = _checked_out(harness)
        second = _checked_out(harness)
        harness.pool.checkin(first)
        harness.pool.checkin(second)
        self.assertIs(harness.pool.checkout(harness.registry.upstreams[0]), second)
        self.assertIs(harness.pool.checkout(harness.registry.upstreams[0]), first)
        self.assertEqual(harness.pool.opened, 2)
        self.assertEqual(harness.pool.reused, 2)

    def test_unclean_connection_closed(self) -> None:
        """
        A connection that is not reusable is closed on checkin, not kept.
        """
        harness = Harness(upstream_count=1)
        connection = _checked_out(harness)
        connection.reusable = False
        harness.pool.checkin(connection)
        self.assertEqual(harness.pool.idle_count(harness.registry.upstreams[0]), 0)
        self.assertTrue(connection.stream.disconnecting)  # type: ignore[attr-defined]  # StringTransport

    def test_idle_timeout(self) -> None:
        """
        An idle connection is closed once it has been idle for the idle timeout.
        """
        harness = Harness(upstream_count=1, idle_timeout=8)
        connection = _checked_out(harness)
        harness.pool.checkin(connection)
        harness.reactor.advance(7)
        self.assertEqual(harness.pool.idle_count(harness.registry.upstreams[0]), 1)
        harness.reactor.advance(2.1)
        self.assertEqual(harness.pool.idle_count(harness.registry.upstreams[0]), 0)

    def test_keep_alive_timeout_honoured(self) -> None:
        """
        An upstream's Keep-Alive: timeout=N shortens the idle limit to N - 1 s.
        """
        harness = Harness(upstream_count=1, idle_timeout=30)
        client, _ = harness.client()
        client.dataReceived(GET)
        wrapper, _, _ = harness.accept()
        wrapper.dataReceived(response(b"x", extra=b"Keep-Alive: timeout=5\r\n"))
        upstream = harness.registry.upstreams[0]
        self.assertEqual(harness.pool.idle_count(upstream), 1)
        harness.reactor.advance(3.5)
        self.assertEqual(harness.pool.idle_count(upstream), 1)
        harness.reactor.advance(1)
        self.assertEqual(harness.pool.idle_count(upstream), 0)

    def test_max_requests_per_connection(self) -> None:
        """
        A connection that has carried the maximum number of requests is closed.
        """
        harness = Harness(upstream_count=1, max_requests_per_connection=2)
        client, _ = harness.client()
        wrapper = None
        for _ in range(2):
            client.dataReceived(GET)
            if wrapper is None:
                wrapper, _, _ = harness.accept()
            wrapper.dataReceived(response(b"x"))
        self.assertEqual(harness.pool.idle_count(harness.registry.upstreams[0]), 0)
        client.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 1)

    def test_closed_idle_connection_forgotten(self) -> None:
        """
        An idle connection that the upstream closes leaves the pool.
        """
        harness = Harness(upstream_count=1)
        connection = _checked_out(harness)
        harness.pool.checkin(connection)
        connection.connectionLost(Failure(ConnectionDone()))
        upstream = harness.registry.upstreams[0]
        self.assertEqual(harness.pool.idle_count(upstream), 0)
        self.assertEqual(harness.pool.open_count(upstream), 0)

    def test_down_upstream_idle_closed(self) -> None:
        """
        Idle connections to an upstream that goes down are closed.
        """
        harness = Harness(upstream_count=1)
        connection = _checked_out(harness)
        harness.pool.checkin(connection)
        harness.registry.mark_down(harness.registry.upstreams[0], "test")
        self.assertTrue(connection.stream.disconnecting)  # type: ignore[attr-defined]  # StringTransport

    def test_cap_queues_then_times_out(self) -> None:
        """
        At the per-upstream cap a checkout waits; a checkin hands the
        connection over, and a wait beyond the queue timeout fails with 503's
        QueueTimeout.
        """
        harness = Harness(upstream_count=1, max_connections_per_upstream=1, queue_timeout=3)
        upstream = harness.registry.upstreams[0]
        held = _checked_out(harness)
        waiting = harness.pool.checkout(upstream)
        assert isinstance(waiting, Deferred)
        self.assertEqual(harness.pending_connects(), 0)
        harness.pool.checkin(held)
        self.assertIs(harness_result(waiting), held)
        late = harness.pool.checkout(upstream)
        assert isinstance(late, Deferred)
        harness.reactor.advance(2.5)
        self.assertNoResult(late)
        harness.reactor.advance(1)
        self.failureResultOf(late, QueueTimeout)

    def test_queue_timeout_answers_503(self) -> None:
        """
        A client whose request waits past the queue timeout gets 503.
        """
        harness = Harness(upstream_count=1, max_connections_per_upstream=1, queue_timeout=3)
        _checked_out(harness)
        client, client_transport = harness.client()
        client.dataReceived(GET)
        harness.reactor.advance(4)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 503 "))

    def test_waiters_fail_when_upstream_dies(self) -> None:
        """
        Requests queued for an upstream that goes down fail at once.
        """
        harness = Harness(upstream_count=1, max_connections_per_upstream=1)
        _checked_out(harness)
        waiting = harness.pool.checkout(harness.registry.upstreams[0])
        assert isinstance(waiting, Deferred)
        harness.registry.mark_down(harness.registry.upstreams[0], "test")
        self.failureResultOf(waiting, UpstreamDown)

    def test_warm_connections(self) -> None:
        """
        With warm=2, two connections per live upstream are opened at start,
        replaced after use and after expiry, none while it is down, and again
        after revival.
        """
        harness = Harness(upstream_count=1, warm=2, idle_timeout=10)
        upstream = harness.registry.upstreams[0]
        self.assertEqual(harness.pending_connects(), 2)
        _connection(harness)
        _connection(harness)
        self.assertEqual(harness.pool.idle_count(upstream), 2)
        used = harness.pool.checkout(upstream)
        self.assertIsInstance(used, UpstreamConnection)
        self.assertEqual(harness.pending_connects(), 1)
        _connection(harness)
        self.assertEqual(harness.pool.idle_count(upstream), 2)
        harness.reactor.advance(11)
        self.assertEqual(harness.pending_connects(), 2)
        harness.registry.mark_down(upstream, "test")
        _connection(harness)
        _connection(harness)
        self.assertEqual(harness.pool.idle_count(upstream), 0)
        self.assertEqual(harness.pending_connects(), 0)
        harness.registry.mark_up(upstream, "test")
        self.assertEqual(harness.pending_connects(), 2)

    def test_close_waits_for_connections(self) -> None:
        """
        close() closes every connection and fires once they are gone.
        """
        harness = Harness(upstream_count=1)
        connection = _checked_out(harness)
        harness.pool.checkin(connection)
        closed = harness.pool.close()
        self.assertNoResult(closed)
        connection.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)


class ReuseRaceTests(SynchronousTestCase):
    """
    The keep-alive race: an upstream closes an idle connection as it is reused.
    """

    def _reused_and_closed(self, request: bytes) -> tuple[Harness, StringTransport]:
        harness = Harness(upstream_count=1)
        client, client_transport = harness.client()
        client.dataReceived(GET)
        wrapper, _, _ = harness.accept()
        wrapper.dataReceived(response(b"first"))
        client_transport.clear()
        client.dataReceived(request)
        wrapper.connectionLost(Failure(ConnectionDone()))
        return harness, client_transport

    def test_idempotent_retried_once_on_fresh_connection(self) -> None:
        """
        A GET on a reused connection that closes before any response byte is
        sent again on a fresh connection, and counted.
        """
        harness, client_transport = self._reused_and_closed(GET)
        self.assertEqual(harness.pending_connects(), 1)
        wrapper, upstream, _ = harness.accept()
        self.assertTrue(upstream.value().startswith(b"GET / HTTP/1.1"))
        wrapper.dataReceived(response(b"second"))
        self.assertTrue(client_transport.value().endswith(b"second"))
        self.assertEqual(harness.stats.reuse_retries, 1)

    def test_retry_happens_once(self) -> None:
        """
        If the retry's fresh connection also closes, the client gets 502.
        """
        harness, client_transport = self._reused_and_closed(GET)
        wrapper, _, _ = harness.accept()
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(harness.pending_connects(), 0)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502 "))
        # The request was sent again once, and only that is counted.
        self.assertEqual((harness.stats.retries, harness.stats.reuse_retries), (1, 1))
        self.assertEqual(harness.registry.upstreams[0].retries, 1)

    def test_post_uses_only_fresh_idle_connections(self) -> None:
        """
        A POST is not sent on a connection idle for longer than the safe reuse
        age: a new connection is opened instead.
        """
        harness = Harness(upstream_count=1)
        client, _ = harness.client()
        client.dataReceived(GET)
        wrapper, _, _ = harness.accept()
        wrapper.dataReceived(response(b"first"))
        harness.reactor.advance(3)
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(harness.pending_connects(), 1)
