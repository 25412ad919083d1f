"""
The upstream connection pool: idle connections kept per upstream and reused
last-in first-out, opened on demand or ahead of demand (warm-up), capped per
upstream with a bounded queue of cancellable waiters, and expired on the
injected clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import ClassVar

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.config import UpstreamSpec
from balancebeam.errors import QueueTimeout, UpstreamDown
from balancebeam.registry import UpstreamState
from balancebeam.relay.upstream import UpstreamConnection

Connector = Callable[[UpstreamSpec], IStreamClientEndpoint]

#: A request that must not be replayed only reuses a connection idle for less than this.
SAFE_REUSE_AGE = 2.0


class _Waiter:
    """
    A checkout queued for a connection slot to a capped upstream.

    Its L{deferred} is what the caller of L{UpstreamPool.checkout} holds, and
    cancelling it leaves the pool as if this checkout had never queued:

        - while queued, the waiter leaves its queue at once, so it no longer
          counts against C{max_queue_per_upstream} and nothing (checkin, the
          queue-timeout sweep, an upstream going down, L{UpstreamPool.close})
          ever sees it again;
        - once a connection attempt was started for it (a slot came free by a
          close), the attempt is left to finish: its connection is handed to
          L{UpstreamPool.checkin} (the next waiter, else the idle list, else
          closed), and its failure is handled like a warm-up's. Cancelling the
          attempt instead would only make the next waiter start a new one.

    Invariant: a waiter in a queue has not fired, since firing it (served,
    failed, cancelled) always takes it out of the queue first.

    @ivar deferred: fires with the connection, or fails.
    @ivar deadline: clock time after which the queue-timeout sweep fails it.
    @ivar queue: the queue holding it, or C{None} once it has left the queue.
    """

    __slots__ = ("deferred", "deadline", "queue", "_pool", "_upstream")

    def __init__(
        self,
        pool: UpstreamPool,
        upstream: UpstreamState,
        queue: deque[_Waiter],
        deadline: float,
    ) -> None:
        self._pool = pool
        self._upstream = upstream
        self.queue: deque[_Waiter] | None = queue
        self.deadline = deadline
        self.deferred: Deferred[UpstreamConnection] = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[UpstreamConnection]) -> None:
        """
        Leave the queue if still queued; L{Deferred.cancel} then fails
        C{deferred} with L{CancelledError}. An attempt already started for
        this waiter is left to L{connected} or L{connect_failed}.
        """
        queue = self.queue
        if queue is not None:
            self.queue = None
            queue.remove(self)

    def connected(self, connection: UpstreamConnection) -> None:
        """
        The attempt started for this waiter connected: hand the connection
        over, or back to the pool if the waiter was cancelled meanwhile.
        """
        if self.deferred.called:
            self._pool.checkin(connection)
        else:
            self.deferred.callback(connection)

    def connect_failed(self, reason: Failure) -> None:
        """
        The attempt started for this waiter failed: fail the waiter, or, if it
        was cancelled meanwhile, report the failure as a warm-up's would be.
        """
        if self.deferred.called:
            self._pool._background_connect_failed(reason, self._upstream)
        else:
            self.deferred.errback(reason)


def _next_waiter(waiters: deque[_Waiter]) -> _Waiter:
    """
    Take the oldest waiter out of its queue.
    """
    waiter = waiters.popleft()
    waiter.queue = None
    return waiter


def sweep_interval(idle_timeout: float, queue_timeout: float) -> float:
    """
    How often the pool expires idle connections and queued requests: a
    quarter of the idle timeout and a tenth of the queue timeout, between
    10 ms and 1 s, so that a queued request's 503 comes at most 10% late.
    """
    interval = 1.0
    if idle_timeout:
        interval = min(interval, idle_timeout / 4)
    if queue_timeout:
        interval = min(interval, queue_timeout / 10)
    return max(0.01, interval)


class UpstreamPool:
    """
    Owns every connection to every upstream.

    Callers L{checkout} a connection for one request and L{checkin} it when
    the response is complete; the pool keeps it only if it is clean and
    reusable, else closes it.

    @ivar opened: connections opened so far (for stats and tests).
    @ivar reused: checkouts answered with an idle connection.
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too

    def __init__(
        self,
        clock: IReactorTime,
        connect: Connector,
        *,
        max_idle_per_upstream: int = 32,
        idle_timeout: float = 30.0,
        max_requests_per_connection: int = 0,
        max_connections_per_upstream: int = 0,
        queue_timeout: float = 10.0,
        max_queue_per_upstream: int = 1024,
        warm: int = 0,
        is_alive: Callable[[UpstreamState], bool] = lambda upstream: upstream.serving,
        on_connect_failed: Callable[[UpstreamState, Failure], None] | None = None,
    ) -> None:
        self._clock = clock
        self._connect = connect
        self._max_idle = max_idle_per_upstream
        self._idle_timeout = idle_timeout
        self._max_requests = max_requests_per_connection
        self._max_connections = max_connections_per_upstream
        self._queue_timeout = queue_timeout
        self._max_queue = max_queue_per_upstream
        self._warm = warm
        self._is_alive = is_alive
        self._on_connect_failed = on_connect_failed
        self._idle: dict[UpstreamState, list[UpstreamConnection]] = {}
        self._open: dict[UpstreamState, int] = {}
        self._warming: dict[UpstreamState, int] = {}
        self._waiters: dict[UpstreamState, deque[_Waiter]] = {}
        self._connections: set[UpstreamConnection] = set()
        self._pending: set[Deferred[IProtocol]] = set()
        self._closing: list[Deferred[None]] | None = None
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self.opened = 0
        self.reused = 0

    # Lifecycle

    def start(self, upstreams: tuple[UpstreamState, ...]) -> None:
        """
        Start expiring idle connections and warm every live upstream.
        """
        self._sweeper.start(sweep_interval(self._idle_timeout, self._queue_timeout), now=False)
        for upstream in upstreams:
            self._top_up(upstream)

    def close(self) -> Deferred[None]:
        """
        Close every connection and fail every waiter.

        @return: fires once every connection has gone.
        """
        if self._sweeper.running:
            self._sweeper.stop()
        self._warm = 0
        for waiters in list(self._waiters.values()):
            while waiters:
                _next_waiter(waiters).deferred.errback(
                    UpstreamDown("the balancer is shutting down")
                )
        for pending in list(self._pending):
            pending.cancel()
        waiting: list[Deferred[None]] = []
        self._closing = waiting
        for connection in list(self._connections):
            gone: Deferred[None] = Deferred()
            waiting.append(gone)
            connection.close()
        if not self._connections:
            return succeed(None)
        return DeferredList(waiting).addCallback(lambda _: None)

    # Checkout and checkin

    def checkout(
        self, upstream: UpstreamState, max_idle_age: float | None = None
    ) -> UpstreamConnection | Deferred[UpstreamConnection]:
        """
        A connection to C{upstream} for one request.

        @param max_idle_age: reuse only a connection idle for less than this
            many seconds (for requests that must not be replayed).
        @return: an idle connection at once, or a L{Deferred} firing with a new
            one; it fails with C{ConnectError}/C{TimeoutError} when connecting
            fails, or L{QueueTimeout} when the upstream stays at its cap (or
            its queue is full). Cancelling the L{Deferred} cancels its new
            connection attempt; a checkout queued at the cap leaves the queue
            at once, and a connection already being opened for it goes to the
            next waiter or the idle list (see L{_Waiter}).
        """
        idle = self._idle.get(upstream)
        if idle:
            connection = idle.pop()
            idle_for = self._clock.seconds() - connection.idle_since
            if max_idle_age is None or idle_for < max_idle_age:
                self.reused += 1
                upstream.connections_reused += 1
                if self._warm:
                    self._top_up(upstream)
                return connection
            connection.close()
        if self._max_connections and self._open.get(upstream, 0) >= self._max_connections:
            return self._enqueue(upstream)
        return self._open_connection(upstream)

    def checkin(self, connection: UpstreamConnection) -> None:
        """
        Take back a connection whose response is complete: keep it idle if it
        is clean and reusable, else close it.
        """
        connection.release()
        upstream = connection.upstream
        if (
            not connection.reusable
            or self._closing is not None
            or (self._max_requests and connection.requests >= self._max_requests)
            or not self._is_alive(upstream)
        ):
            connection.close()
            return
        waiters = self._waiters.get(upstream)
        if waiters:
            _next_waiter(waiters).deferred.callback(connection)
            return
        idle = self._idle.setdefault(upstream, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = self._clock.seconds()
        idle.append(connection)

    def discard(self, connection: UpstreamConnection) -> None:
        """
        Close a connection that is not clean.
        """
        connection.close()

    def idle_count(self, upstream: UpstreamState) -> int:
        """
        How many idle connections to C{upstream} the pool holds.
        """
        return len(self._idle.get(upstream, ()))

    def open_count(self, upstream: UpstreamState) -> int:
        """
        How many connections to C{upstream} are open or being opened.
        """
        return self._open.get(upstream, 0)

    # Events

    def upstream_changed(self, upstream: UpstreamState) -> None:
        """
        Registry observer: close idle connections to an upstream that went
        down and fail its waiters; warm one that came back. One taken out of
        rotation while healthy (drained, disabled, removed) only loses its
        idle connections: requests already queued for it are still served.
        """
        if self._is_alive(upstream):
            self._top_up(upstream)
            return
        for connection in self._idle.pop(upstream, []):
            connection.close()
        if upstream.alive:
            return
        waiters = self._waiters.pop(upstream, None)
        while waiters:
            _next_waiter(waiters).deferred.errback(
                UpstreamDown(f"upstream {upstream.name} went down")
            )

    def connection_closed(self, connection: UpstreamConnection) -> None:
        """
        L{UpstreamConnection} listener: forget a connection that has gone.
        """
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        upstream = connection.upstream
        self._open[upstream] -= 1
        idle = self._idle.get(upstream)
        if idle and connection in idle:
            idle.remove(connection)
        if self._closing is not None:
            if not self._connections:
                for gone in self._closing:
                    if not gone.called:
                        gone.callback(None)
            return
        self._serve_waiters(upstream)
        self._top_up(upstream)

    # Operations (issue 13): a reload changes the settings in place.

    def reconfigure(
        self,
        *,
        max_idle_per_upstream: int,
        idle_timeout: float,
        max_requests_per_connection: int,
        max_connections_per_upstream: int,
        queue_timeout: float,
        warm: int,
        upstreams: tuple[UpstreamState, ...] = (),
    ) -> None:
        """
        Use new settings from now on. Connections open now stay; idle ones
        beyond the new C{max_idle_per_upstream} close; a raised connection
        cap serves queued requests; C{warm} tops up C{upstreams}. Waiters
        already queued keep their deadline.
        """
        self._max_idle = max_idle_per_upstream
        self._max_requests = max_requests_per_connection
        self._max_connections = max_connections_per_upstream
        old_interval = sweep_interval(self._idle_timeout, self._queue_timeout)
        self._queue_timeout = queue_timeout
        if self._closing is None:
            self._warm = warm
        self._idle_timeout = idle_timeout
        interval = sweep_interval(idle_timeout, queue_timeout)
        if interval != old_interval and self._sweeper.running:
            self._sweeper.stop()
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self._clock
            self._sweeper.start(interval, now=False)
        for idle in self._idle.values():
            while len(idle) > self._max_idle:
                idle.pop(0).close()
        for upstream in list(self._waiters):
            self._serve_waiters(upstream)
        for upstream in upstreams:
            self._top_up(upstream)

    def forget(self, upstream: UpstreamState) -> bool:
        """
        Drop what the pool remembers of an upstream removed by a reload,
        once it has no connection open and no request queued.

        @return: whether it was forgotten (else call again later).
        """
        if self._open.get(upstream, 0) or self._waiters.get(upstream):
            return False
        for connection in self._idle.pop(upstream, []):
            connection.close()
        self._open.pop(upstream, None)
        self._warming.pop(upstream, None)
        self._waiters.pop(upstream, None)
        return True

    # Internals

    def _open_connection(self, upstream: UpstreamState) -> Deferred[UpstreamConnection]:
        self._open[upstream] = self._open.get(upstream, 0) + 1
        self.opened += 1
        upstream.connections_opened += 1
        connection = UpstreamConnection(upstream, self)
        endpoint = self._connect(upstream.spec)
        attempt = endpoint.connect(_OneConnectionFactory(connection))
        self._pending.add(attempt)
        cancelled = []

        def cancel(_: Deferred[UpstreamConnection]) -> None:
            # Let Deferred.cancel fail the result with CancelledError, not
            # with the endpoint's ConnectingCancelledError, which would read
            # as a failed connect.
            cancelled.append(True)
            attempt.cancel()

        result: Deferred[UpstreamConnection] = Deferred(cancel)

        def connected(_: object) -> None:
            self._pending.discard(attempt)
            self._connections.add(connection)
            if result.called:
                connection.close()
            else:
                result.callback(connection)

        def failed(reason: Failure) -> None:
            self._pending.discard(attempt)
            self._open[upstream] -= 1
            self._serve_waiters(upstream)
            if not result.called and not cancelled:
                result.errback(reason)

        attempt.addCallbacks(connected, failed)
        return result

    def _enqueue(self, upstream: UpstreamState) -> Deferred[UpstreamConnection]:
        waiters = self._waiters.setdefault(upstream, deque())
        if len(waiters) >= self._max_queue:
            return fail(QueueTimeout(f"queue for upstream {upstream.name} is full"))
        waiter = _Waiter(self, upstream, waiters, self._clock.seconds() + self._queue_timeout)
        waiters.append(waiter)
        return waiter.deferred

    def _serve_waiters(self, upstream: UpstreamState) -> None:
        waiters = self._waiters.get(upstream)
        while waiters and (
            not self._max_connections or self._open.get(upstream, 0) < self._max_connections
        ):
            waiter = _next_waiter(waiters)
            self._open_connection(upstream).addCallbacks(waiter.connected, waiter.connect_failed)

    def _top_up(self, upstream: UpstreamState) -> None:
        """
        Open connections in the background until C{upstream} has C{warm} idle
        (or opening) ones, within its cap; none to a dead upstream.
        """
        if not self._warm or self._closing is not None or not self._is_alive(upstream):
            return
        warming = self._warming.get(upstream, 0)
        missing = self._warm - len(self._idle.get(upstream, ())) - warming
        for _ in range(missing):
            if self._max_connections and self._open.get(upstream, 0) >= self._max_connections:
                return
            self._warming[upstream] = self._warming.get(upstream, 0) + 1
            self._open_connection(upstream).addCallbacks(
                self._warmed, self._warm_failed, errbackArgs=(upstream,)
            )

    def _warmed(self, connection: UpstreamConnection) -> None:
        self._warming[connection.upstream] -= 1
        self.checkin(connection)

    def _warm_failed(self, reason: Failure, upstream: UpstreamState) -> None:
        self._warming[upstream] -= 1
        self._background_connect_failed(reason, upstream)

    def _background_connect_failed(self, reason: Failure, upstream: UpstreamState) -> None:
        """
        A connection attempt that no request waits for (a warm-up, or one
        whose waiter was cancelled) failed: log it, and report a connect
        failure to C{on_connect_failed}. Cancellations (by L{close}) are not
        failures of the upstream.
        """
        if reason.check(CancelledError, ConnectingCancelledError):
            return
        self.log.debug(
            "background connection to {upstream} failed: {reason}",
            upstream=upstream.name,
            reason=reason.getErrorMessage(),
        )
        if self._on_connect_failed is not None and reason.check(ConnectError):
            self._on_connect_failed(upstream, reason)

    def _sweep(self) -> None:
        now = self._clock.seconds()
        for upstream, idle in list(self._idle.items()):
            expired = [c for c in idle if now >= c.idle_since + self._idle_limit(c)]
            for connection in expired:
                idle.remove(connection)
                connection.close()
            if expired:
                self._top_up(upstream)
        for upstream, waiters in list(self._waiters.items()):
            while waiters and waiters[0].deadline <= now:
                _next_waiter(waiters).deferred.errback(
                    QueueTimeout(f"no connection to {upstream.name} became free in time")
                )

    def _idle_limit(self, connection: UpstreamConnection) -> float:
        limit = self._idle_timeout
        if connection.keep_alive_timeout is not None:
            limit = min(limit, max(connection.keep_alive_timeout - 1.0, 0.0))
        return limit


class _OneConnectionFactory(ClientFactory):
    """
    Hands an endpoint one prepared L{UpstreamConnection}, quietly.
    """

    noisy = False

    def __init__(self, connection: UpstreamConnection) -> None:
        self._connection = connection

    def buildProtocol(self, addr: IAddress | None) -> UpstreamConnection:
        """
        The prepared connection.
        """
        return self._connection
