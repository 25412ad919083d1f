"""
The upstream registry: which upstreams exist, which are alive, and how busy
each is. Pure state on an injected clock; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from balancebeam.config_addresses import UpstreamSpec

StateObserver = Callable[["UpstreamState"], None]

#: Admin states (set through the admin listener, L{balancebeam.admin}), beside
#: the health state (C{alive}). Only an C{ENABLED} upstream takes new requests.
ENABLED = "enabled"
#: No new requests; requests in flight finish; health checks go on.
DRAINING = "draining"
#: Maintenance: no new requests, requests in flight finish, no health probes.
DISABLED = "disabled"
#: Taken out of the configuration by a reload: drains, then is forgotten.
REMOVED = "removed"
ADMIN_STATES: tuple[str, ...] = (ENABLED, DRAINING, DISABLED, REMOVED)


class UpstreamState:
    """
    The live record of one upstream.

    @ivar spec: what was configured.
    @ivar name: C{host:port}, for logs and the health probe's C{Host} header.
    @ivar alive: whether the upstream receives traffic.
    @ivar in_flight: requests assigned to it that have not finished.
    @ivar weight: its relative share for weighted strategies.
    @ivar down_since: clock time it was last marked down, or C{None} while alive.

    Operations (issue 13): plain counters, incremented where the event
    happens and read by the admin listener at scrape time.

    @ivar serving: whether it takes new requests: C{alive} and its
        C{admin_state} is L{ENABLED} (kept by the registry).
    @ivar admin_state: L{ENABLED}, L{DRAINING}, L{DISABLED} or L{REMOVED}.
    @ivar state_since: clock time of its last health or admin state change
        (or of its creation).
    @ivar requests: requests assigned to it (retries included).
    @ivar responses: response heads received from it, by status class
        (index 2 counts 2xx; indexes 6 to 9 the statuses beyond 599).
    @ivar connect_failures: failed connects for requests.
    @ivar response_errors: connections that failed before the response was complete.
    @ivar timeouts: requests it did not answer in time (504).
    @ivar retries: requests sent again after it failed before answering.
    @ivar check_failures: active health probes that failed.
    @ivar state_changes: health state changes (up to down and back).
    @ivar connections_opened: connections opened to it.
    @ivar connections_reused: checkouts answered with an idle connection.
    """

    __slots__ = (
        "spec",
        "name",
        "alive",
        "in_flight",
        "weight",
        "down_since",
        "serving",
        "admin_state",
        "state_since",
        "requests",
        "responses",
        "connect_failures",
        "response_errors",
        "timeouts",
        "retries",
        "check_failures",
        "state_changes",
        "connections_opened",
        "connections_reused",
    )

    def __init__(self, spec: UpstreamSpec, since: float = 0.0) -> None:
        self.spec = spec
        self.name = spec.name
        self.alive = True
        self.in_flight = 0
        self.weight = spec.weight
        self.down_since: float | None = None
        self.serving = True
        self.admin_state = ENABLED
        self.state_since = since
        self.requests = 0
        self.responses = [0] * 10
        self.connect_failures = 0
        self.response_errors = 0
        self.timeouts = 0
        self.retries = 0
        self.check_failures = 0
        self.state_changes = 0
        self.connections_opened = 0
        self.connections_reused = 0

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
    @ivar live_upstreams: what L{live} returns (read directly on the hot path).
    @ivar retiring: upstreams removed by a reload that may still have
        requests in flight or connections open (see L{remove}).
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too

    def __init__(self, specs: Sequence[UpstreamSpec], clock: IReactorTime) -> None:
        if not specs:
            raise ValueError("at least one upstream is required")
        now = clock.seconds()
        self.upstreams: tuple[UpstreamState, ...] = tuple(UpstreamState(s, now) for s in specs)
        self._by_name = {u.name: u for u in self.upstreams}
        self._clock = clock
        self.retiring: list[UpstreamState] = []
        self.live_upstreams: list[UpstreamState] = list(self.upstreams)
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
        return self.live_upstreams

    def mark_down(self, upstream: UpstreamState, reason: str) -> None:
        """
        Take C{upstream} out of rotation (no-op if it is already down).
        """
        if not upstream.alive:
            return
        upstream.alive = False
        upstream.down_since = upstream.state_since = self._clock.seconds()
        upstream.state_changes += 1
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
        upstream.state_since = self._clock.seconds()
        upstream.state_changes += 1
        self.log.warn(
            "upstream {upstream} is now up: {reason}", upstream=upstream.name, reason=reason
        )
        self._changed(upstream)

    def _changed(self, upstream: UpstreamState) -> None:
        upstream.serving = upstream.alive and upstream.admin_state == ENABLED
        self.live_upstreams = [u for u in self.upstreams if u.serving]
        for observer in self._observers:
            observer(upstream)

    # Operations (issue 13): admin states, and the upstream list changed by a reload.

    def remove_observer(self, observer: StateObserver) -> None:
        """
        Stop calling C{observer} (one added with L{add_observer}).
        """
        if observer in self._observers:
            self._observers.remove(observer)

    def set_admin_state(self, upstream: UpstreamState, state: str, reason: str) -> bool:
        """
        Put C{upstream} in admin state C{state} (L{ENABLED}, L{DRAINING} or
        L{DISABLED}). Leaving L{ENABLED} takes it out of rotation at once;
        requests in flight finish, and the pool closes its connections as
        they come back.

        @return: whether the state changed.
        @raise ValueError: for an unknown state, or an upstream that was removed.
        """
        if state not in (ENABLED, DRAINING, DISABLED):
            raise ValueError(f"unknown admin state {state!r}")
        if upstream.admin_state == REMOVED:
            raise ValueError(f"upstream {upstream.name} was removed from the configuration")
        if upstream.admin_state == state:
            return False
        upstream.admin_state = state
        upstream.state_since = self._clock.seconds()
        self.log.warn(
            "upstream {upstream} is now {state}: {reason}",
            upstream=upstream.name,
            state=state,
            reason=reason,
        )
        self._changed(upstream)
        return True

    def add(self, spec: UpstreamSpec) -> UpstreamState:
        """
        Add an upstream (a reload added it): it takes requests at once, as
        a configured one does at start.

        @raise ValueError: when one of that name is configured already.
        """
        if spec.name in self._by_name:
            raise ValueError(f"upstream {spec.name} is configured already")
        upstream = UpstreamState(spec, self._clock.seconds())
        self.upstreams = self.upstreams + (upstream,)
        self._by_name[upstream.name] = upstream
        self.log.info("upstream {upstream} added", upstream=upstream.name)
        self._changed(upstream)
        return upstream

    def remove(self, upstream: UpstreamState) -> None:
        """
        Take an upstream out of the configuration (a reload removed it): no
        new requests; requests in flight finish. It stays in L{retiring}
        until L{forget} is called.
        """
        if self._by_name.get(upstream.name) is not upstream:
            raise ValueError(f"upstream {upstream.name} is not configured")
        del self._by_name[upstream.name]
        self.upstreams = tuple(u for u in self.upstreams if u is not upstream)
        upstream.admin_state = REMOVED
        upstream.state_since = self._clock.seconds()
        self.retiring.append(upstream)
        self.log.info(
            "upstream {upstream} removed; {count} request(s) in flight finish there",
            upstream=upstream.name,
            count=upstream.in_flight,
        )
        self._changed(upstream)

    def forget(self, upstream: UpstreamState) -> None:
        """
        Drop a removed upstream from L{retiring} (nothing uses it any more).
        """
        if upstream in self.retiring:
            self.retiring.remove(upstream)

    def set_weight(self, upstream: UpstreamState, weight: int) -> None:
        """
        Change C{upstream}'s weight for the requests chosen from now on.
        """
        if weight < 1:
            raise ValueError(f"weight {weight} must be at least 1")
        if upstream.weight == weight:
            return
        upstream.weight = weight
        # Strategies compute weights once per live list: hand out a new one.
        self.live_upstreams = list(self.live_upstreams)
