"""
The response cache on the request-filter seam: L{CacheFilter} answers
requests from stored responses, and attaches a response observer to the
ones it sends upstream.

A request goes through these steps (RFC 9111 section 4):

  1. Only C{GET} and C{HEAD} are looked up; any other method passes, and an
     unsafe one (C{POST}, C{PUT}, C{DELETE}, C{PATCH}, ...) invalidates the
     stored responses for its URI, C{Location} and C{Content-Location} once
     it succeeds (L{balancebeam.cache.invalidation}).
  2. The primary key (scheme, host, target as sent upstream) and then the
     secondary key (the fields named by the stored C{Vary}) select an entry.
  3. A fresh entry the request's directives accept is a hit: an L{Answer}
     built from the entry's precomputed fields and body, with C{Age} and
     C{Cache-Status}; a client's C{If-None-Match}/C{If-Modified-Since} is
     answered C{304} and a single C{Range} C{206} or C{416}
     (L{balancebeam.cache.answers}).
  4. A stale one may still be served: under the request's C{max-stale}, or
     under C{stale-while-revalidate} while one background request
     revalidates it (L{IBackgroundFetch}; L{balancebeam.cache.revalidation}
     decides).
  5. Otherwise the request goes upstream, conditionally when the entry has
     a validator. Concurrent requests for one key wait for the first
     (L{Coalescer}); the first one's response is stored when it may be, a
     C{304} refreshes the stored response and a 5xx or a failure within
     C{stale-if-error} is replaced by the stale response
     (L{balancebeam.cache.fill}).

This module is the request side; C{Cache-Status} (RFC 9211) says which of
these happened: see C{doc/cache.md}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from balancebeam.cache.answers import (
    BYPASS_LINE,
    HIT,
    METHOD_LINE,
    forwarded_status,
    hit_status,
    only_if_cached,
    respond,
)
from balancebeam.cache.coalescing import FAILED, STORED, TIMEOUT, Fill
from balancebeam.cache.fill import FillObserver
from balancebeam.cache.interfaces import IBackgroundFetch
from balancebeam.cache.invalidation import SAFE_METHODS, InvalidationObserver
from balancebeam.cache.keys import primary_key
from balancebeam.cache.ranges import PassThrough, parse_range
from balancebeam.cache.request import PLAIN_REQUEST, RequestInfo, request_info
from balancebeam.cache.revalidation import (
    CONDITIONAL_FIELDS,
    FORCED,
    FRESH,
    REVALIDATE_IN_BACKGROUND,
    STALE_OK,
    decide,
    usable_on_error,
    validators,
)
from balancebeam.cache.state import CacheState
from balancebeam.cache.store import PLAIN, CacheCounters, CacheStore, Entry, VariantKey
from balancebeam.filters import Answer
from balancebeam.http1.heads import RequestHead
from balancebeam.interfaces import IExchange, IRequestFilter

if TYPE_CHECKING:
    from balancebeam.interfaces import FilterResult

log = Logger()


class _Waited:
    """
    A request that waited for another's miss: what it missed, and how the wait ended.
    """

    __slots__ = ("kind", "outcome")

    def __init__(self, kind: bytes, outcome: str) -> None:
        self.kind = kind
        self.outcome = outcome


@implementer(IRequestFilter)
class CacheFilter:
    """
    An in-memory shared HTTP cache (RFC 9111, RFC 5861) as a request filter.

    @ivar counters: what the cache has done (L{CacheCounters}).
    @ivar store: the stored responses.
    """

    name = "cache"
    fail_open = True

    def __init__(
        self,
        clock: IReactorTime,
        max_bytes: int,
        max_object_size: int,
        lock_timeout: float,
        counters: CacheCounters | None = None,
        background: IBackgroundFetch | None = None,
        store_set_cookie: bool = False,
        hit_for_miss_ttl: float = 120.0,
    ) -> None:
        """
        @param clock: gives the time for ages and freshness, and the lock timeout.
        @param max_bytes: C{--cache-size}: the most bytes held (see L{CacheStore}).
        @param max_object_size: C{--cache-max-object-size}: the largest body stored.
        @param lock_timeout: C{--cache-lock-timeout}: how long a request
            waits for another request's miss on the same key.
        @param counters: where to count; a new L{CacheCounters} by default.
        @param background: sends background revalidations; without it,
            C{stale-while-revalidate} is not used (stale entries are
            revalidated before they are served).
        @param store_set_cookie: store responses with C{Set-Cookie}, without
            that field (by default they are not stored).
        @param hit_for_miss_ttl: seconds during which requests for a key
            whose last response could not be stored go upstream without
            waiting for each other.
        @raise ValueError: on a size below 1 or a negative timeout.
        """
        if max_bytes < 1 or max_object_size < 0:
            raise ValueError("cache sizes must be positive")
        if lock_timeout < 0 or hit_for_miss_ttl < 0:
            raise ValueError("cache timeouts must not be negative")
        self._cache = CacheState(
            clock,
            counters if counters is not None else CacheCounters(),
            max_bytes,
            max_object_size,
            lock_timeout,
            background,
            store_set_cookie,
            hit_for_miss_ttl,
        )
        self._clock = clock
        self.counters: CacheCounters = self._cache.counters
        self.store: CacheStore = self._cache.store

    def on_request(self, exchange: IExchange) -> FilterResult:
        """
        Answer C{exchange} from the cache, make it wait for another request's
        miss, or let it go upstream with an observer (see the module docstring).
        """
        request = exchange.request
        method = request.method
        if method != b"GET" and method != b"HEAD":
            self.counters.bypassed += 1
            if method not in SAFE_METHODS:
                exchange.observe(InvalidationObserver(self._cache, exchange))
            exchange.add_response_headers(METHOD_LINE)
            return None
        info = request_info(request.raw)
        primary = primary_key(exchange.scheme, request.host, request.target)
        if info is PLAIN_REQUEST:
            # The hot path: a plain request for a fresh entry.
            entry, variant = self.store.find(primary, lambda: request.fields)
            if entry is not None and not entry.no_cache and not entry.hit_for_miss:
                now = self._clock.seconds()
                if now < entry.fresh_until:
                    self.counters.hits += 1
                    age = now - entry.born
                    return Answer(
                        entry.status,
                        entry.fields
                        + (
                            (b"Age", b"%d" % (age if age > 0 else 0)),
                            (b"Cache-Status", HIT % (entry.fresh_until - now)),
                        ),
                        entry.body,
                        entry.reason,
                    )
            return self._serve(exchange, request, info, primary, None, entry, variant, True)
        return self._serve(exchange, request, info, primary, None)

    def _serve(
        self,
        exchange: IExchange,
        request: RequestHead,
        info: RequestInfo,
        primary: bytes,
        waited: _Waited | None,
        entry: Entry | None = None,
        variant: VariantKey | None = None,
        found: bool = False,
    ) -> FilterResult:
        """
        Everything but the hot path: look up (unless C{found}), then answer,
        wait or forward.
        """
        counters = self.counters
        if info.precondition or (
            info.range is not None
            and request.method == b"GET"
            and isinstance(parse_range(info.range, 0), PassThrough)
        ):
            counters.bypassed += 1
            exchange.add_response_headers(BYPASS_LINE)
            return None
        if not found:
            entry, variant = self.store.find(primary, lambda: request.fields)
        now = self._clock.seconds()
        if entry is not None and entry.hit_for_miss:
            if now < entry.fresh_until:
                return self._forward(
                    exchange, request, info, primary, entry.variant, None, b"uri-miss",
                    waited, may_wait=False,
                )
            self.store.remove(entry)
            entry = None
        if entry is None:
            if info.only_if_cached:
                counters.misses += 1
                return only_if_cached("not in the cache (only-if-cached)")
            kind = b"uri-miss" if variant is None else b"vary-miss"
            return self._forward(
                exchange, request, info, primary, variant or PLAIN, None, kind, waited
            )

        if info.authorized and not entry.authorized_ok:
            return self._forward(
                exchange, request, info, primary, entry.variant, None, b"request", waited
            )
        if waited is not None and waited.outcome == STORED and now < entry.fresh_until:
            # The response this request waited for was just fetched or
            # validated after it arrived: that satisfies no-cache and max-age.
            decision = FRESH
        else:
            in_background = self._cache.background is not None and request.method == b"GET"
            decision = decide(entry, info, now, in_background)
        if decision == FRESH:
            counters.hits += 1
            if waited is not None:
                status = forwarded_status(
                    waited.kind, entry.status, collapsed=True, ttl=entry.fresh_until - now
                )
            else:
                status = hit_status(entry.fresh_until - now)
            return respond(entry, request, info, now, status)
        if decision == STALE_OK or decision == REVALIDATE_IN_BACKGROUND:
            counters.hits += 1
            counters.stale += 1
            if decision == REVALIDATE_IN_BACKGROUND:
                self._revalidate_in_background(exchange, request, primary, entry, now)
            return respond(entry, request, info, now, hit_status(entry.fresh_until - now))
        if waited is not None and waited.outcome == FAILED and usable_on_error(entry, info, now):
            counters.hits += 1
            counters.stale += 1
            status = forwarded_status(
                waited.kind, collapsed=True, ttl=entry.fresh_until - now, detail="stale-if-error"
            )
            return respond(entry, request, info, now, status)
        if info.only_if_cached:
            counters.misses += 1
            return only_if_cached("no fresh response in the cache (only-if-cached)")
        kind = b"request" if decision == FORCED else b"stale"
        return self._forward(exchange, request, info, primary, entry.variant, entry, kind, waited)

    def _forward(
        self,
        exchange: IExchange,
        request: RequestHead,
        info: RequestInfo,
        primary: bytes,
        variant: VariantKey,
        stale: Entry | None,
        kind: bytes,
        waited: _Waited | None,
        may_wait: bool = True,
    ) -> FilterResult:
        """
        Send a request upstream with a L{FillObserver}, or make it wait for
        another request's miss on the same key.

        @param stale: the stored response this revalidates, if any.
        """
        cache = self._cache
        fill_key = (primary, variant)
        if waited is None and may_wait:
            waiting = cache.coalescer.wait(fill_key)
            if waiting is not None:
                self.counters.collapsed += 1
                return waiting.addCallback(
                    self._after_wait, exchange, request, info, primary, kind
                )
        may_store = request.method == b"GET" and not info.no_store
        fill: Fill | None = None
        if (
            may_store
            and may_wait
            and not info.authorized
            and (stale is not None or not info.conditional)
        ):
            fill = cache.coalescer.begin(fill_key)
        validated = stale is not None and (
            stale.etag is not None or stale.last_modified is not None
        )
        if validated or (fill is not None and stale is not None):
            assert stale is not None
            exchange.rewrite_upstream_request(remove=CONDITIONAL_FIELDS, add=validators(stale))
        observer = FillObserver(
            cache, exchange, request, info, primary, variant, kind, fill, stale, validated,
            may_store, exchange.started,
        )
        exchange.observe(observer)
        self.counters.misses += 1
        return None

    def _after_wait(
        self,
        outcome: str,
        exchange: IExchange,
        request: RequestHead,
        info: RequestInfo,
        primary: bytes,
        kind: bytes,
    ) -> FilterResult:
        """
        The miss this request waited for has ended (or the wait timed out):
        look again, and go upstream without waiting if nothing fits now.
        """
        if outcome == TIMEOUT:
            self.counters.lock_timeouts += 1
        return self._serve(exchange, request, info, primary, _Waited(kind, outcome))

    def _revalidate_in_background(
        self, exchange: IExchange, request: RequestHead, primary: bytes, entry: Entry, now: float
    ) -> None:
        """
        Start one background revalidation of C{entry} (stale-while-revalidate),
        unless one is in flight.
        """
        cache = self._cache
        background = cache.background
        if background is None or entry.revalidating:
            return
        fill = cache.coalescer.begin((primary, entry.variant))
        if fill is None:
            return
        entry.revalidating = True
        validated = entry.etag is not None or entry.last_modified is not None
        observer = FillObserver(
            cache, None, request, PLAIN_REQUEST, primary, entry.variant, b"stale", fill, entry,
            validated, True, now,
        )
        try:
            background.fetch(
                request,
                exchange.client_ip,
                exchange.scheme,
                CONDITIONAL_FIELDS,
                validators(entry),
                observer,
            )
        except Exception:
            log.failure("background revalidation of {key} failed to start", key=primary)
            observer.response_failed("background fetch raised")
