"""
Per-client rate limiting in memory: fixed windows and the sliding-window counter.

Windows are aligned on the clock: window number C{i} covers
C{[i * window, (i + 1) * window)} seconds of C{clock.seconds()}.

Two algorithms are offered:

  - C{"fixed"}: one counter per window; it starts again from 0 at each
    boundary, so a client can send C{limit} requests at the end of one window
    and C{limit} more at the start of the next.
  - C{"sliding"}: the sliding-window counter (as used by Cloudflare and
    HAProxy). The previous window's count is weighted by the share of the
    previous window still covered by a window-long interval ending now::

        estimate = previous * (1 - elapsed / window) + current

    and a request is allowed when C{estimate + 1 <= limit}. A burst at the end
    of one window therefore still counts at the start of the next.

Denied requests are not counted (as Cloudflare does): a client that keeps
retrying while limited is let through as soon as its allowed traffic falls back
under the limit, and counters never grow past C{limit}.

Memory is bounded without a timer per key: the counters live in an
L{OrderedDict} in least-recently-used order. Entries whose windows are both
over are dropped lazily, a few per call, from the old end; and when more than
C{max_keys} clients are tracked, the least recently seen one is evicted. An
evicted client starts again from a fresh count, so the cap errs towards letting
traffic through, never towards blocking it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime
from zope.interface import classImplements

from balancebeam.interfaces import IRateLimiter, RateLimitDecision

ALGORITHMS = ("fixed", "sliding")
"""
The names accepted by C{--rate-limit-algorithm}.
"""

_EPSILON = 1e-9
"""
Slack for floating point rounding when comparing an estimate with the limit,
so that a request made exactly C{retry_after} seconds later is allowed.
"""

_EXPIRE_PER_CHECK = 32
"""
At most this many dead entries are dropped by one L{MemoryRateLimiter.check},
which bounds the work of any single call.
"""


def validate_parameters(limit: int, window: float, algorithm: str) -> None:
    """
    Check the parameters shared by all rate limiters.

    @raise ValueError: when C{limit} is below 1, C{window} is not a positive
        finite number or C{algorithm} is not one of L{ALGORITHMS}.
    """
    if limit < 1:
        raise ValueError(f"rate limit {limit} must be at least 1")
    if not (0 < window < math.inf):
        raise ValueError(f"rate limit window {window!r} must be a positive number of seconds")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"rate limit algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}"
        )


def sliding_retry_after(
    limit: int, window: float, elapsed: float, current: int, previous: int
) -> float:
    """
    Seconds until the sliding-window counter allows a request again.

    Counts do not change while a client is denied, so this solves
    C{previous * (1 - t / window) + current + 1 <= limit} for the earliest
    time C{t} in the current window, or, when C{current} alone is at the
    limit, C{current * (1 - t / window) + 1 <= limit} in the next one.

    @param elapsed: seconds since the current window started.
    @param current: requests allowed in the current window.
    @param previous: requests allowed in the previous window.
    @return: a positive number of seconds (not rounded).
    """
    reset_after = window - elapsed
    if current < limit and previous > 0:
        return max(0.0, reset_after - (limit - 1 - current) * window / previous)
    return reset_after + window - (limit - 1) * window / current


class _Counters:
    """
    The counters of one client.

    @ivar index: the number of the window C{current} counts.
    @ivar current: requests allowed in window C{index}.
    @ivar previous: requests allowed in window C{index - 1} (always 0 for
        the fixed window algorithm).
    """

    __slots__ = ("index", "current", "previous")

    def __init__(self, index: int) -> None:
        """
        Start with empty counters in window C{index}.
        """
        self.index = index
        self.current = 0
        self.previous = 0


class MemoryRateLimiter:
    """
    Rate limits keys (client IPs) with counters held in this process.

    L{check} answers synchronously and does constant work per call (amortised).

    @ivar evictions: how many live entries were dropped because of C{max_keys}.
    @ivar expirations: how many idle entries were dropped because their windows
        were over.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limit: int,
        window: float,
        algorithm: str = "sliding",
        max_keys: int = 1_000_000,
    ) -> None:
        """
        @param clock: where time comes from (only C{seconds()} is used).
        @param limit: requests allowed per key per window.
        @param window: window length in seconds.
        @param algorithm: C{"fixed"} or C{"sliding"}.
        @param max_keys: the most keys tracked at once.
        @raise ValueError: on a bad limit, window, algorithm or C{max_keys}.
        """
        validate_parameters(limit, window, algorithm)
        if max_keys < 1:
            raise ValueError(f"rate limit max keys {max_keys} must be at least 1")
        self._clock = clock
        self._limit = limit
        self._window = float(window)
        self._sliding = algorithm == "sliding"
        self._max_keys = max_keys
        self._entries: OrderedDict[str, _Counters] = OrderedDict()
        # Window number up to which dead entries are known to be gone.
        self._expired_through = -1
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        """
        The number of keys currently tracked.
        """
        return len(self._entries)

    def check(self, key: str) -> RateLimitDecision:
        """
        Count one request for C{key} if it is allowed, and say whether it is.

        @return: the decision; C{retry_after} is exact (the caller rounds it).
        """
        window = self._window
        quotient, elapsed = divmod(self._clock.seconds(), window)
        index = int(quotient)
        if index != self._expired_through:
            self._expire(index)

        entries = self._entries
        counters = entries.get(key)
        if counters is None:
            counters = entries[key] = _Counters(index)
            if len(entries) > self._max_keys:
                entries.popitem(last=False)
                self.evictions += 1
        else:
            entries.move_to_end(key)
            if counters.index != index:
                if self._sliding and counters.index == index - 1:
                    counters.previous = counters.current
                else:
                    counters.previous = 0
                counters.current = 0
                counters.index = index

        limit = self._limit
        current = counters.current
        previous = counters.previous
        reset_after = window - elapsed
        if previous:
            estimate = previous * (reset_after / window) + current
        else:
            estimate = float(current)  # one type in both branches (mypyc needs it)
        if estimate + 1 <= limit + _EPSILON:
            counters.current = current + 1
            remaining = max(0, math.floor(limit - estimate - 1 + _EPSILON))
            return RateLimitDecision(True, limit, remaining, reset_after, 0.0)
        if self._sliding:
            retry_after = sliding_retry_after(limit, window, elapsed, current, previous)
        else:
            retry_after = reset_after
        return RateLimitDecision(False, limit, 0, reset_after, retry_after)

    def _expire(self, index: int) -> None:
        """
        Drop up to L{_EXPIRE_PER_CHECK} entries whose windows are all over.

        Entries are kept in order of last use, and each use moves an entry to
        window C{index}, so dead entries are all at the old end: once the
        oldest entry is alive, nothing is left to expire until the window
        changes.
        """
        # Alive: the entry's window is the current one, or (sliding) the previous one.
        oldest_alive = index - 1 if self._sliding else index
        entries = self._entries
        for _ in range(_EXPIRE_PER_CHECK):
            if not entries:
                break
            oldest = entries[next(iter(entries))]
            if oldest.index >= oldest_alive:
                break
            entries.popitem(last=False)
            self.expirations += 1
        else:
            return
        self._expired_through = index

    def purge(self) -> int:
        """
        Drop every entry whose windows are all over, however many there are.

        L{check} does this a little at a time; this is for callers that want
        memory back after a quiet period, from a periodic task for example.

        @return: how many entries were dropped.
        """
        before = self.expirations
        self._expired_through = -1
        index = int(self._clock.seconds() // self._window)
        while self._expired_through != index:
            self._expire(index)
        return self.expirations - before

    def start(self) -> None:
        """
        Nothing to do: there is no connection and no timer.
        """

    def close(self) -> None:
        """
        Forget every counter; there are no timers to cancel.
        """
        self._entries.clear()


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(MemoryRateLimiter, IRateLimiter)
