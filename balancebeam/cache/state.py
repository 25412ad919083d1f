"""
What the request side of the cache (L{balancebeam.cache.filter}) and its
response observers (L{balancebeam.cache.fill}, L{balancebeam.cache.invalidation})
share: one L{CacheState} per cache.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from balancebeam.cache.coalescing import Coalescer
from balancebeam.cache.interfaces import IBackgroundFetch
from balancebeam.cache.store import CacheCounters, CacheStore, Entry, VariantKey


class Doomable(Protocol):
    """
    A response in flight that an invalidation can keep from being stored.
    """

    doomed: bool


class CacheState:
    """
    The store, the counters, the fills in flight and the settings of one cache.

    @ivar clock: gives the time for ages, freshness and the lock timeout.
    @ivar counters: what the cache has done.
    @ivar store: the stored responses.
    @ivar coalescer: the misses in flight that other requests may wait for.
    @ivar background: sends background revalidations, or C{None}.
    @ivar max_object_size: the largest body stored.
    @ivar store_set_cookie: whether responses with C{Set-Cookie} are stored
        (without that field).
    @ivar hit_for_miss_ttl: how long a hit-for-miss marker lasts.
    """

    __slots__ = (
        "clock",
        "counters",
        "store",
        "coalescer",
        "background",
        "max_object_size",
        "store_set_cookie",
        "hit_for_miss_ttl",
        "_active",
    )

    def __init__(
        self,
        clock: IReactorTime,
        counters: CacheCounters,
        max_bytes: int,
        max_object_size: int,
        lock_timeout: float,
        background: IBackgroundFetch | None,
        store_set_cookie: bool,
        hit_for_miss_ttl: float,
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.store = CacheStore(max_bytes, counters)
        self.coalescer = Coalescer(clock, lock_timeout)
        self.background = background
        self.max_object_size = max_object_size
        self.store_set_cookie = store_set_cookie
        self.hit_for_miss_ttl = hit_for_miss_ttl
        self._active: dict[bytes, set[Doomable]] = {}

    def track(self, primary: bytes, response: Doomable) -> None:
        """
        Remember a response in flight for C{primary}, until L{untrack}.
        """
        self._active.setdefault(primary, set()).add(response)

    def untrack(self, primary: bytes, response: Doomable) -> None:
        """
        Forget a response in flight.
        """
        responses = self._active.get(primary)
        if responses is not None:
            responses.discard(response)
            if not responses:
                del self._active[primary]

    def invalidate(self, primary: bytes) -> None:
        """
        Drop every stored response for C{primary}, and keep the responses in
        flight for it from being stored (RFC 9111 section 4.4).
        """
        self.counters.invalidated += self.store.invalidate(primary)
        for response in self._active.get(primary, ()):
            response.doomed = True

    def mark_uncacheable(self, primary: bytes, variant: VariantKey, status: int) -> None:
        """
        Remember for a while that C{primary} gave a response that could not
        be stored (hit-for-miss), so that requests for it do not wait for
        each other.
        """
        marker = Entry(primary, variant, status, None, (), b"")
        marker.hit_for_miss = True
        marker.fresh_until = self.clock.seconds() + self.hit_for_miss_ttl
        self.store.put(marker)
