"""
The dispatcher: turns a request into a connection to an upstream.

It chooses a live upstream with the balancing strategy, checks a connection
out of the pool, and, when connecting fails, marks the upstream down and
fails over to another one. It also decides whether a request whose upstream
failed before answering may be sent again (L{Dispatcher.upstream_failed}),
the counterpart of C{_shouldRetry} in Twisted's C{HTTPConnectionPool}.

Passive health lives here and only here: a failed connect takes an upstream
out of rotation, and, when active checks are off, the dispatcher puts it back
after C{passive_retry_interval} seconds. The registry only holds the state;
active health checks (L{balancebeam.health.checker}) write it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.errors import BalancerError
from balancebeam.interfaces import IBalancingStrategy
from balancebeam.pool import SAFE_REUSE_AGE, UpstreamPool
from balancebeam.registry import UpstreamRegistry, UpstreamState
from balancebeam.relay.upstream import UpstreamConnection
from balancebeam.stats import Stats


class Assigned(Protocol):
    """
    A request that may occupy an upstream.

    @ivar upstream: the upstream assigned now (set by the dispatcher).
    @ivar last_upstream: the name of the last upstream assigned.
    """

    upstream: UpstreamState | None
    last_upstream: str


class Routable(Assigned, Protocol):
    """
    A request as the dispatcher sees it (the relay's exchange).

    @ivar tried: the upstreams that failed it, or C{None}.
    @ivar connecting: the pending connection (set by the dispatcher).
    @ivar reused_retry: whether its one keep-alive-race retry was used.
    @ivar request_done: whether the whole request has been received.
    """

    tried: list[UpstreamState] | None
    connecting: Deferred[UpstreamConnection] | None
    reused_retry: bool
    request_done: bool

    @property
    def replayable(self) -> bool:
        """Whether the request may be sent again."""

    @property
    def method_text(self) -> str:
        """The method, for logs."""

    @property
    def path_text(self) -> str:
        """The target, for logs."""

    def connected(self, connection: UpstreamConnection) -> bool:
        """A connection is ready; return whether it was taken."""

    def dispatch_failed(
        self, status: int, message: str, fields: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """No upstream can take the request: answer C{status}."""

    def add_tried(self, upstream: UpstreamState) -> None:
        """Remember that C{upstream} failed the request."""

    def flush(self) -> None:
        """Send what was written to the client."""


class Dispatcher:
    """
    Finds an upstream connection for each exchange.

    The exchange tells the dispatcher nothing but itself; the dispatcher
    answers by calling C{exchange.connected(connection)} or
    C{exchange.dispatch_failed(status, message, fields)}, at once or later.
    While a connection is being made, C{exchange.connecting} holds the
    L{Deferred}, which the exchange cancels when it no longer needs it.
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too

    def __init__(
        self,
        registry: UpstreamRegistry,
        strategy: IBalancingStrategy,
        pool: UpstreamPool,
        stats: Stats,
        clock: IReactorTime,
        *,
        passive_retry_interval: float | None = None,
        retry_after: int = 5,
    ) -> None:
        """
        @param passive_retry_interval: with active health checks off, put an
            upstream marked down by a failed connect back into rotation this
            many seconds later (C{None} or 0: never; active checks revive it).
        @param retry_after: the C{Retry-After} seconds of a 503 answered when
            every upstream is down.
        """
        self._registry = registry
        self._strategy = strategy
        self._pool = pool
        self._stats = stats
        self._clock = clock
        self._passive_retry_interval = passive_retry_interval or None
        self._retry_at: dict[UpstreamState, float] = {}
        self._next_retry_at: float | None = None
        self._no_upstream_fields = ((b"Retry-After", b"%d" % retry_after),)
        #: Give back a connection whose response is complete (the pool's own
        #: method: one call less per request).
        self.checkin: Callable[[UpstreamConnection], None] = pool.checkin
        self._failure_observers: list[Callable[[UpstreamState, str], None]] = []

    # Choosing and connecting

    def live(self) -> list[UpstreamState]:
        """
        The upstreams that may take a request now; empty when all are down.
        Upstreams whose passive retry interval has elapsed come back first.
        """
        if self._next_retry_at is not None and self._clock.seconds() >= self._next_retry_at:
            self._revive_due()
        return self._registry.live_upstreams

    def dispatch(self, exchange: Routable) -> None:
        """
        Pick a live upstream not yet tried for C{exchange} and get it a
        connection. This is the one place that decides what happens when no
        upstream can take the request: 503 (with C{Retry-After}) when every
        upstream is down, 502 when the ones tried have all failed.
        """
        live = self.live()
        tried = exchange.tried
        candidates = [u for u in live if u not in tried] if tried else live
        if not candidates:
            if not live and not tried:
                self._stats.no_upstream += 1
                exchange.dispatch_failed(
                    503, "no upstream server is available", self._no_upstream_fields
                )
            else:
                exchange.dispatch_failed(502, "every upstream server tried has failed", ())
            return
        upstream = self._strategy.choose(candidates)
        exchange.upstream = upstream
        upstream.in_flight += 1
        upstream.requests += 1
        max_idle_age = None if exchange.replayable else SAFE_REUSE_AGE
        connection = self._pool.checkout(upstream, max_idle_age)
        # Deferred's metaclass is ABCMeta, whose isinstance is slow: test the
        # common answer, an idle connection, by exact type first.
        if type(connection) is UpstreamConnection:
            if not exchange.connected(connection):
                self._pool.checkin(connection)
            return
        assert isinstance(connection, Deferred)
        exchange.connecting = connection
        connection.addCallbacks(
            self._connected,
            self._connect_failed,
            callbackArgs=(exchange,),
            errbackArgs=(exchange, upstream),
        )

    def _connected(self, connection: UpstreamConnection, exchange: Routable) -> None:
        exchange.connecting = None
        if not exchange.connected(connection):
            self._pool.checkin(connection)
        exchange.flush()

    def _connect_failed(
        self, reason: Failure, exchange: Routable, upstream: UpstreamState
    ) -> None:
        exchange.connecting = None
        if reason.check(CancelledError):
            return
        self.release(exchange)
        error = reason.value
        if isinstance(error, BalancerError):
            exchange.dispatch_failed(error.status, error.reason, ())
            exchange.flush()
            return
        # Any other failure to connect (refused, timed out, unresolvable) is
        # a passive health check failure: fail over.
        message = reason.getErrorMessage()
        self.mark_down(upstream, f"connect failed: {message}")
        self._stats.connect_failures += 1
        upstream.connect_failures += 1
        self.log.warn(
            "connecting to {upstream} failed for {method} {path}: {reason}",
            upstream=upstream.name,
            method=exchange.method_text,
            path=exchange.path_text,
            reason=message,
        )
        exchange.add_tried(upstream)
        self.dispatch(exchange)
        exchange.flush()

    def release(self, exchange: Assigned) -> None:
        """
        The exchange no longer occupies its upstream.
        """
        upstream = exchange.upstream
        if upstream is not None:
            upstream.in_flight -= 1
            exchange.upstream = None
            exchange.last_upstream = upstream.name

    # Failures

    def upstream_failed(
        self, exchange: Routable, connection: UpstreamConnection, received_any: bool
    ) -> bool:
        """
        The upstream connection of C{exchange} failed before a response head
        was relayed: send the request again if that is safe.

        It is safe only when nothing at all was received, the whole request
        was sent and can be replayed (idempotent, body still held). A reused
        connection that failed that way met the keep-alive race (the upstream
        closed it as we reused it): the request is retried once on the same
        upstream, on a fresh connection. Otherwise the upstream is skipped.

        @return: whether to send it again (the caller dispatches it anew), else
            the caller answers.
        """
        upstream = exchange.upstream
        self.release(exchange)
        if received_any or not exchange.request_done or not exchange.replayable:
            return False
        if connection.requests > 1 and not exchange.reused_retry:
            exchange.reused_retry = True
            self._stats.reuse_retries += 1
        elif upstream is not None:
            exchange.add_tried(upstream)
            tried = exchange.tried
            if tried is not None and all([u in tried for u in self.live()]):
                # Nowhere to send it again: dispatch answers 502, and no
                # retry is counted.
                return True
        if upstream is not None:
            upstream.retries += 1
        self._stats.retries += 1
        return True

    def mark_down(self, upstream: UpstreamState, reason: str) -> None:
        """
        Passive health: take C{upstream} out of rotation, and schedule its
        return when active checks are off.
        """
        if not upstream.alive:
            return
        self._registry.mark_down(upstream, reason)
        for observer in self._failure_observers:
            observer(upstream, reason)
        interval = self._passive_retry_interval
        if interval is not None:
            retry_at = self._clock.seconds() + interval
            self._retry_at[upstream] = retry_at
            if self._next_retry_at is None or retry_at < self._next_retry_at:
                self._next_retry_at = retry_at

    def add_passive_failure_observer(
        self, observer: Callable[[UpstreamState, str], None]
    ) -> None:
        """
        Call C{observer(upstream, reason)} each time L{mark_down} takes a
        live upstream out of rotation (a worker tells its master, which
        tells the other workers: L{balancebeam.workers}).
        """
        self._failure_observers.append(observer)

    def disable_passive_retry(self) -> None:
        """
        Never put an upstream back into rotation here: another process
        decides when it comes back (the master of L{balancebeam.workers},
        by its health checks or its own passive retry interval).
        """
        self._passive_retry_interval = None
        self._retry_at.clear()
        self._next_retry_at = None

    def warm_up_failed(self, upstream: UpstreamState, reason: Failure) -> None:
        """
        The pool could not open a warm-up connection: the same verdict as a
        failed connect for a request.
        """
        self.mark_down(upstream, f"connect failed: {reason.getErrorMessage()}")

    def reconfigure(
        self,
        strategy: IBalancingStrategy | None,
        *,
        passive_retry_interval: float | None,
        retry_after: int,
    ) -> None:
        """
        A reload changed the strategy (C{None}: keep it) or the passive health
        settings: use them from the next choice on. Upstreams already
        scheduled for a passive retry keep their time; with passive retries
        now off, active health checks bring them back instead.
        """
        if strategy is not None:
            self._strategy = strategy
        self._passive_retry_interval = passive_retry_interval or None
        if self._passive_retry_interval is None:
            self._retry_at.clear()
            self._next_retry_at = None
        self._no_upstream_fields = ((b"Retry-After", b"%d" % retry_after),)

    def _revive_due(self) -> None:
        now = self._clock.seconds()
        self._next_retry_at = None
        for upstream, retry_at in list(self._retry_at.items()):
            if upstream.alive:
                del self._retry_at[upstream]
            elif retry_at <= now:
                del self._retry_at[upstream]
                self._registry.mark_up(upstream, "passive retry interval elapsed")
            elif self._next_retry_at is None or retry_at < self._next_retry_at:
                self._next_retry_at = retry_at
