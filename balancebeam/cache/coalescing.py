"""
Request collapsing: concurrent misses on one key send one request upstream.

The first miss on a key opens a L{Fill}; later misses on the same key wait
for it (L{Coalescer.wait}) for at most the lock timeout, measured on the
injected clock. When the fill ends, every waiter learns the outcome at once
(L{STORED}: look again, the response is there; L{RELEASED}: it could not be
stored, go upstream yourself, as Varnish's hit-for-miss; L{FAILED}: the
upstream failed, serve stale if allowed or go upstream). A waiter
whose time runs out gets L{TIMEOUT} and goes upstream on its own.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

STORED: Final = "stored"
"""The fill stored a response: look it up again."""

RELEASED: Final = "released"
"""The fill's response was not stored (or failed): go upstream."""

FAILED: Final = "failed"
"""The fill's upstream failed or answered 5xx: a stale response may be served."""

TIMEOUT: Final = "timeout"
"""The lock timeout passed before the fill ended: go upstream."""


class Fill:
    """
    One miss in flight that others may wait for.

    @ivar key: the key it fills.
    @ivar doomed: set when the key was invalidated meanwhile: the response
        must not be stored.
    """

    __slots__ = ("key", "doomed", "_coalescer", "_waiters", "_open")

    def __init__(self, coalescer: Coalescer, key: Hashable) -> None:
        self.key = key
        self.doomed = False
        self._coalescer = coalescer
        self._waiters: list[tuple[Deferred[str], IDelayedCall]] = []
        self._open = True

    @property
    def waiters(self) -> int:
        """
        How many requests are waiting for this fill now.
        """
        return len(self._waiters)

    @property
    def open(self) -> bool:
        """
        Whether the fill has not ended yet.
        """
        return self._open

    def add_waiter(self, clock: IReactorTime, timeout: float) -> Deferred[str]:
        """
        Wait for the fill to end, for at most C{timeout} seconds.

        @return: fires with L{STORED}, L{RELEASED}, L{FAILED} or L{TIMEOUT}; cancelling
            it stops the wait (the client went away).
        """

        def cancel(waiting: Deferred[str]) -> None:
            self._drop(waiting)
            timer.cancel()

        waiting: Deferred[str] = Deferred(cancel)
        timer = clock.callLater(timeout, self._time_out, waiting)
        self._waiters.append((waiting, timer))
        return waiting

    def _drop(self, waiting: Deferred[str]) -> None:
        self._waiters = [(d, t) for d, t in self._waiters if d is not waiting]

    def _time_out(self, waiting: Deferred[str]) -> None:
        self._drop(waiting)
        waiting.callback(TIMEOUT)

    def finish(self, outcome: str) -> None:
        """
        End the fill: forget it, then tell every waiter C{outcome}.
        Calling it again does nothing.
        """
        if not self._open:
            return
        self._open = False
        self._coalescer._forget(self)
        waiters, self._waiters = self._waiters, []
        for waiting, timer in waiters:
            timer.cancel()
            waiting.callback(outcome)


class Coalescer:
    """
    The fills in flight, by key.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        """
        @param clock: measures the lock timeout.
        @param timeout: how long a request waits for another's miss
            (C{--cache-lock-timeout}).
        """
        self._clock = clock
        self._timeout = timeout
        self._fills: dict[Hashable, Fill] = {}

    def __len__(self) -> int:
        return len(self._fills)

    def __iter__(self) -> Iterator[Fill]:
        return iter(list(self._fills.values()))

    def begin(self, key: Hashable) -> Fill | None:
        """
        Open a fill for C{key}, unless one is in flight.

        @return: the new fill, or C{None} when another request fills C{key}.
        """
        if key in self._fills:
            return None
        fill = self._fills[key] = Fill(self, key)
        return fill

    def wait(self, key: Hashable) -> Deferred[str] | None:
        """
        Wait for the fill in flight for C{key}.

        @return: as L{Fill.add_waiter}, or C{None} when no fill is in flight.
        """
        fill = self._fills.get(key)
        if fill is None:
            return None
        return fill.add_waiter(self._clock, self._timeout)

    def _forget(self, fill: Fill) -> None:
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]
