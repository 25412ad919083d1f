"""
The upstream registry: which upstreams exist, which are alive, and how busy
each is. Pure state on an injected clock; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from balancebeam.config import UpstreamSpec

StateObserver = Callable[["UpstreamState"], None]


class UpstreamState:
    """
    The live record of one upstream.

    @ivar spec: what was configured.
    @ivar name: C{host:port}, for logs and the health probe's C{Host} header.
    @ivar alive: whether the upstream receives traffic.
    @ivar in_flight: requests assigned to it that have not finished.
    @ivar weight: its relative share for weighted strategies.
    @ivar down_since: clock time it was last marked down, or C{None} while alive.
    """

    __slots__ = ("spec", "name", "alive", "in_flight", "weight", "down_since", "retry_at")

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.alive = True
        self.in_flight = 0
        self.weight = spec.weight
        self.down_since: float | None = None
        self.retry_at: float | None = None

    def __repr__(self) -> str:
        state = "up" if self.alive else "down"
        return f"<UpstreamState {self.name} {state} in_flight={self.in_flight}>"


class UpstreamRegistry:
    """
    Holds every upstream's state and tells observers when one goes up or down.

    Passive and active health checks write here; strategies read L{live}.
    When C{passive_retry_interval} is set (active checks off), an upstream
    marked down is put back into rotation that many seconds later, so that a
    restarted server is not lost forever; if it is still down, the next
    failed connect marks it down again.

    @ivar upstreams: every configured upstream, in configuration order.
    """

    log = Logger()

    def __init__(
        self,
        specs: Sequence[UpstreamSpec],
        clock: IReactorTime,
        passive_retry_interval: float | None = None,
    ) -> None:
        if not specs:
            raise ValueError("at least one upstream is required")
        self.upstreams: tuple[UpstreamState, ...] = tuple(UpstreamState(s) for s in specs)
        self._by_name = {u.name: u for u in self.upstreams}
        self._clock = clock
        self._passive_retry_interval = passive_retry_interval
        self._live: list[UpstreamState] = list(self.upstreams)
        self._next_retry_at: float | None = None
        self._observers: list[StateObserver] = []

    def add_observer(self, observer: StateObserver) -> None:
        """
        Call C{observer(upstream)} after every change of an upstream's state.
        """
        self._observers.append(observer)

    def get(self, name: str) -> UpstreamState | None:
        """
        Find an upstream by its C{host:port} name.
        """
        return self._by_name.get(name)

    def live(self) -> list[UpstreamState]:
        """
        The upstreams that may receive traffic now. Empty when all are down:
        the caller answers 503 (see L{balancebeam.relay.client}).
        """
        if self._next_retry_at is not None and self._clock.seconds() >= self._next_retry_at:
            self._retry_due()
        return self._live

    def mark_down(self, upstream: UpstreamState, reason: str) -> None:
        """
        Take C{upstream} out of rotation (no-op if it is already down).
        """
        if not upstream.alive:
            return
        now = self._clock.seconds()
        upstream.alive = False
        upstream.down_since = now
        if self._passive_retry_interval:
            upstream.retry_at = now + self._passive_retry_interval
            if self._next_retry_at is None or upstream.retry_at < self._next_retry_at:
                self._next_retry_at = upstream.retry_at
        self.log.warn(
            "upstream {upstream} is now down: {reason}", upstream=upstream.name, reason=reason
        )
        self._changed(upstream)

    def mark_up(self, upstream: UpstreamState, reason: str) -> None:
        """
        Put C{upstream} back into rotation (no-op if it is already up).
        """
        if upstream.alive:
            return
        upstream.alive = True
        upstream.down_since = None
        upstream.retry_at = None
        self.log.warn(
            "upstream {upstream} is now up: {reason}", upstream=upstream.name, reason=reason
        )
        self._changed(upstream)

    def _retry_due(self) -> None:
        now = self._clock.seconds()
        self._next_retry_at = None
        for upstream in self.upstreams:
            if upstream.alive or upstream.retry_at is None:
                continue
            if upstream.retry_at <= now:
                self.mark_up(upstream, "passive retry interval elapsed")
            elif self._next_retry_at is None or upstream.retry_at < self._next_retry_at:
                self._next_retry_at = upstream.retry_at

    def _changed(self, upstream: UpstreamState) -> None:
        self._live = [u for u in self.upstreams if u.alive]
        for observer in self._observers:
            observer(upstream)
