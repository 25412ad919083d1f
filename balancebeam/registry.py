"""
The upstream registry: which upstreams exist, which are alive, and how busy
each is. Pure state on an injected clock; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

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

    __slots__ = ("spec", "name", "alive", "in_flight", "weight", "down_since")

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.alive = True
        self.in_flight = 0
        self.weight = spec.weight
        self.down_since: float | None = None

    def __repr__(self) -> str:
        state = "up" if self.alive else "down"
        return f"<UpstreamState {self.name} {state} in_flight={self.in_flight}>"


class UpstreamRegistry:
    """
    Holds every upstream's state and tells observers when one goes up or down.

    Passive health (the dispatcher, L{balancebeam.routing}) and active
    health checks (L{balancebeam.health.checker}) write here; the dispatcher
    reads L{live}. Pure state: no timers, no policy.

    @ivar upstreams: every configured upstream, in configuration order.
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too

    def __init__(self, specs: Sequence[UpstreamSpec], clock: IReactorTime) -> None:
        if not specs:
            raise ValueError("at least one upstream is required")
        self.upstreams: tuple[UpstreamState, ...] = tuple(UpstreamState(s) for s in specs)
        self._by_name = {u.name: u for u in self.upstreams}
        self._clock = clock
        self._live: list[UpstreamState] = list(self.upstreams)
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
        The upstreams that may receive traffic now, in configuration order.
        Empty when all are down. The same list object is returned until a
        state changes (strategies rely on it; see L{balancebeam.strategies}).
        """
        return self._live

    def mark_down(self, upstream: UpstreamState, reason: str) -> None:
        """
        Take C{upstream} out of rotation (no-op if it is already down).
        """
        if not upstream.alive:
            return
        upstream.alive = False
        upstream.down_since = self._clock.seconds()
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
        self.log.warn(
            "upstream {upstream} is now up: {reason}", upstream=upstream.name, reason=reason
        )
        self._changed(upstream)

    def _changed(self, upstream: UpstreamState) -> None:
        self._live = [u for u in self.upstreams if u.alive]
        for observer in self._observers:
            observer(upstream)
