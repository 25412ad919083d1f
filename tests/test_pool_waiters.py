"""
Deterministic tests of the pool's queued waiters and their cancellation,
driving L{UpstreamPool} directly on a L{MemoryReactorClock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.config import UpstreamSpec
from balancebeam.errors import QueueTimeout, UpstreamDown
from balancebeam.pool import UpstreamPool, sweep_interval
from balancebeam.registry import UpstreamRegistry, UpstreamState
from balancebeam.relay.upstream import UpstreamConnection


class _OneUpstream:
    """
    A pool for one upstream on a memory reactor, with helpers to accept or
    refuse the connection attempts it makes and to deliver the closes it asks
    for, and the bookkeeping to check its counts against what really exists.

    @ivar connect_failures: what the pool reported to C{on_connect_failed}.
    """

    def __init__(self, **pool_options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = UpstreamRegistry([UpstreamSpec("127.0.0.1", 8081)], self.reactor)
        self.upstream = self.registry.upstreams[0]
        self.connect_failures: list[tuple[UpstreamState, Failure]] = []
        self.pool = UpstreamPool(
            self.reactor,
            self.endpoint,
            on_connect_failed=self._connect_failed,
            **pool_options,
        )
        self.registry.add_observer(self.pool.upstream_changed)
        self.pool.start(self.registry.upstreams)
        self._settled = 0
        self._accepted: list[tuple[UpstreamConnection, StringTransport]] = []
        self._lost: set[UpstreamConnection] = set()

    def endpoint(self, spec: UpstreamSpec) -> IStreamClientEndpoint:
        """
        A TCP endpoint on the memory reactor.
        """
        return TCP4ClientEndpoint(self.reactor, spec.host, spec.port, timeout=5)

    def _connect_failed(self, upstream: UpstreamState, reason: Failure) -> None:
        self.connect_failures.append((upstream, reason))

    def attempts(self) -> int:
        """
        How many connection attempts the pool has started in all.
        """
        return len(self.reactor.tcpClients)

    def _skip_cancelled(self) -> None:
        connectors = self.reactor.connectors
        while self._settled < len(connectors) and connectors[self._settled].stoppedConnecting:
            self._settled += 1

    def pending(self) -> int:
        """
        Connection attempts neither accepted, refused nor cancelled.
        """
        pending = 0
        for connector in self.reactor.connectors[self._settled :]:
            if not connector.stoppedConnecting:
                pending += 1
        return pending

    def cancelled(self) -> int:
        """
        Connection attempts the pool cancelled.
        """
        return sum(1 for connector in self.reactor.connectors if connector.stoppedConnecting)

    def accept(self) -> UpstreamConnection:
        """
        Complete the oldest pending connection attempt.

        @return: the pool's connection, now connected to a L{StringTransport}.
        """
        self._skip_cancelled()
        host, port, factory, _, _ = self.reactor.tcpClients[self._settled]
        self._settled += 1
        wrapper = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert wrapper is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        wrapper.makeConnection(transport)
        connection = wrapper._wrappedProtocol  # type: ignore[attr-defined]  # the endpoint wraps the pool's protocol
        assert isinstance(connection, UpstreamConnection)
        self._accepted.append((connection, transport))
        return connection

    def refuse(self) -> None:
        """
        Fail the oldest pending connection attempt with "connection refused".
        """
        self._skip_cancelled()
        _, _, factory, _, _ = self.reactor.tcpClients[self._settled]
        connector = self.reactor.connectors[self._settled]
        self._settled += 1
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def lose(self, connection: UpstreamConnection) -> None:
        """
        The peer closes C{connection}.
        """
        self._lost.add(connection)
        connection.connectionLost(Failure(ConnectionDone()))

    def deliver_closes(self) -> int:
        """
        Deliver C{connectionLost} to every connection the pool asked to close,
        as the reactor would on its next turn.

        @return: how many connections this closed.
        """
        closing = [
            connection
            for connection, transport in self._accepted
            if transport.disconnecting and connection not in self._lost
        ]
        for connection in closing:
            self.lose(connection)
        return len(closing)

    def live(self) -> int:
        """
        Connections accepted and not yet lost (those the pool is closing
        count until L{deliver_closes}).
        """
        return sum(1 for connection, _ in self._accepted if connection not in self._lost)

    def assert_counts(self, test: SynchronousTestCase, open_: int, idle: int) -> None:
        """
        Assert the pool's counts, and that its open count is exactly the live
        connections plus the pending attempts (nothing leaked, nothing lost).
        """
        test.assertEqual(
            (self.pool.open_count(self.upstream), self.pool.idle_count(self.upstream)),
            (open_, idle),
        )
        test.assertEqual(self.live() + self.pending(), open_)

    def checkout(self) -> UpstreamConnection | Deferred[UpstreamConnection]:
        """
        Check out a connection to the upstream.
        """
        return self.pool.checkout(self.upstream)

    def waiter(self) -> Deferred[UpstreamConnection]:
        """
        Check out a connection that must wait (a L{Deferred}).
        """
        result = self.checkout()
        assert isinstance(result, Deferred)
        return result

    def held(self) -> UpstreamConnection:
        """
        Check out a connection through a fresh connection attempt, accepted.
        """
        waiting = self.waiter()
        connection = self.accept()
        assert waiting.called
        return connection


class CancelledWaiterTests(SynchronousTestCase):
    """
    A cancelled waiter leaves the pool exactly as if it had never queued.
    """

    def test_checked_in_connection_idles_past_cancelled_waiter(self) -> None:
        """
        At cap 1, a connection checked in after its only waiter was cancelled
        idles, and the next checkout gets it at once.
        """
        pool = _OneUpstream(max_connections_per_upstream=1, queue_timeout=3)
        held = pool.held()
        waiting = pool.waiter()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        pool.pool.checkin(held)
        pool.assert_counts(self, open_=1, idle=1)
        self.assertIs(pool.checkout(), held)
        pool.reactor.advance(4)
        pool.assert_counts(self, open_=1, idle=0)
        self.assertEqual(pool.attempts(), 1)

    def test_short_queue_timeout_is_kept(self) -> None:
        """
        A queued request fails within 10% of a short queue timeout (the
        sweep runs often enough), also after a reload shortens it.
        """
        pool = _OneUpstream(max_connections_per_upstream=1, queue_timeout=0.2)
        pool.held()
        waiting = pool.waiter()
        pool.reactor.advance(0.19)
        self.assertNoResult(waiting)
        pool.reactor.pump([0.01] * 3)
        self.failureResultOf(waiting, QueueTimeout)
        self.assertEqual(sweep_interval(60, 0.2), 0.02)
        self.assertEqual(sweep_interval(0, 0), 1.0)
        self.assertEqual(sweep_interval(0.1, 0), 0.025)
        self.assertEqual(sweep_interval(60, 0.01), 0.01)

    def test_cancelled_waiter_frees_its_queue_place(self) -> None:
        """
        A cancelled waiter leaves the queue at once, so it no longer counts
        against the queue limit.
        """
        pool = _OneUpstream(max_connections_per_upstream=1, max_queue_per_upstream=1)
        held = pool.held()
        first = pool.waiter()
        self.failureResultOf(pool.waiter(), QueueTimeout)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        second = pool.waiter()
        self.assertNoResult(second)
        pool.pool.checkin(held)
        self.assertIs(self.successResultOf(second), held)
        pool.assert_counts(self, open_=1, idle=0)

    def test_connection_opened_for_cancelled_waiter_idles(self) -> None:
        """
        At cap 1, a connection opened for a waiter cancelled meanwhile idles
        (it is not swallowed), and the next checkout gets it without waiting
        for the queue timeout.
        """
        pool = _OneUpstream(max_connections_per_upstream=1, queue_timeout=3)
        held = pool.held()
        waiting = pool.waiter()
        pool.lose(held)
        self.assertEqual(pool.pending(), 1)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        pool.assert_counts(self, open_=1, idle=0)
        opened = pool.accept()
        pool.assert_counts(self, open_=1, idle=1)
        self.assertIs(pool.checkout(), opened)
        pool.reactor.advance(4)
        pool.assert_counts(self, open_=1, idle=0)
        self.assertEqual(pool.attempts(), 2)

    def test_connection_opened_for_cancelled_waiter_goes_to_next(self) -> None:
        """
        At cap 1, a connection opened for a waiter cancelled meanwhile goes to
        the next waiter.
        """
        pool = _OneUpstream(max_connections_per_upstream=1)
        held = pool.held()
        first = pool.waiter()
        second = pool.waiter()
        pool.lose(held)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        opened = pool.accept()
        self.assertIs(self.successResultOf(second), opened)
        pool.assert_counts(self, open_=1, idle=0)
        self.assertEqual(pool.attempts(), 2)
        pool.pool.checkin(opened)
        pool.assert_counts(self, open_=1, idle=1)

    def test_refused_attempt_of_cancelled_waiter(self) -> None:
        """
        When the attempt opened for a cancelled waiter is refused, the slot
        goes to a fresh attempt for the next waiter, and the refusal is
        reported like a warm-up's.
        """
        pool = _OneUpstream(max_connections_per_upstream=1)
        held = pool.held()
        first = pool.waiter()
        second = pool.waiter()
        pool.lose(held)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        pool.refuse()
        self.assertEqual([u for u, _ in pool.connect_failures], [pool.upstream])
        self.assertTrue(pool.connect_failures[0][1].check(ConnectionRefusedError))
        self.assertEqual(pool.attempts(), 3)
        pool.assert_counts(self, open_=1, idle=0)
        opened = pool.accept()
        self.assertIs(self.successResultOf(second), opened)

    def test_queue_timeout_skips_cancelled_waiters(self) -> None:
        """
        The queue-timeout sweep fails the waiters still queued and leaves a
        cancelled one alone.
        """
        pool = _OneUpstream(max_connections_per_upstream=1, queue_timeout=3)
        pool.held()
        first, second, third = pool.waiter(), pool.waiter(), pool.waiter()
        second.cancel()
        pool.reactor.advance(2.5)
        self.assertNoResult(first)
        self.assertNoResult(third)
        pool.reactor.advance(1)
        self.failureResultOf(first, QueueTimeout)
        self.failureResultOf(second, CancelledError)
        self.failureResultOf(third, QueueTimeout)
        pool.assert_counts(self, open_=1, idle=0)

    def test_upstream_down_skips_cancelled_waiters(self) -> None:
        """
        An upstream going down fails the waiters still queued, and a
        connection then opened for a cancelled waiter is closed, not kept.
        """
        pool = _OneUpstream(max_connections_per_upstream=1)
        held = pool.held()
        connecting, queued, cancelled = pool.waiter(), pool.waiter(), pool.waiter()
        pool.lose(held)
        connecting.cancel()
        cancelled.cancel()
        pool.registry.mark_down(pool.upstream, "test")
        self.failureResultOf(queued, UpstreamDown)
        self.failureResultOf(connecting, CancelledError)
        self.failureResultOf(cancelled, CancelledError)
        pool.accept()
        pool.assert_counts(self, open_=1, idle=0)
        self.assertEqual(pool.deliver_closes(), 1)
        pool.assert_counts(self, open_=0, idle=0)

    def test_waiter_cancelled_by_another_waiters_failure(self) -> None:
        """
        A waiter cancelled from another waiter's errback, while the upstream
        goes down, is failed only by its cancellation.
        """
        pool = _OneUpstream(max_connections_per_upstream=1)
        pool.held()
        first, second = pool.waiter(), pool.waiter()
        first.addErrback(lambda _: second.cancel())
        pool.registry.mark_down(pool.upstream, "test")
        self.assertIsNone(self.successResultOf(first))
        self.failureResultOf(second, CancelledError)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_close_skips_cancelled_waiters(self) -> None:
        """
        close() fails the waiters still queued, cancels the attempt of a
        cancelled waiter without reporting a connect failure, and fires once
        every connection has gone.
        """
        pool = _OneUpstream(max_connections_per_upstream=1)
        held = pool.held()
        connecting, cancelled, queued = pool.waiter(), pool.waiter(), pool.waiter()
        pool.lose(held)
        connecting.cancel()
        cancelled.cancel()
        closed = pool.pool.close()
        self.failureResultOf(queued, UpstreamDown)
        self.failureResultOf(connecting, CancelledError)
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(pool.cancelled(), 1)
        self.assertEqual(pool.connect_failures, [])
        pool.assert_counts(self, open_=0, idle=0)
        self.successResultOf(closed)

    def test_cancelling_a_served_waiter_changes_nothing(self) -> None:
        """
        Cancelling a waiter after it got its connection leaves that connection
        with the caller.
        """
        pool = _OneUpstream(max_connections_per_upstream=1)
        held = pool.held()
        waiting = pool.waiter()
        pool.pool.checkin(held)
        waiting.cancel()
        self.assertIs(self.successResultOf(waiting), held)
        pool.assert_counts(self, open_=1, idle=0)
        self.assertEqual(pool.pending(), 0)

    def test_cancelling_a_new_connection_attempt(self) -> None:
        """
        Without a cap, cancelling a checkout that is a new connection attempt
        cancels that attempt and frees its slot.
        """
        pool = _OneUpstream()
        waiting = pool.waiter()
        self.assertEqual(pool.pending(), 1)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(pool.cancelled(), 1)
        self.assertEqual(pool.connect_failures, [])
        pool.assert_counts(self, open_=0, idle=0)
        pool.held()
        pool.assert_counts(self, open_=1, idle=0)
