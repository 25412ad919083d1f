"""
The response cache on the request-filter seam: L{CacheFilter} answers
requests from stored responses, and attaches a L{_Fill} observer to the
ones it sends upstream to store, refresh or fall back on what comes back.

A request goes through these steps (RFC 9111 section 4):

  1. Only C{GET} and C{HEAD} are looked up; any other method passes, and an
     unsafe one (C{POST}, C{PUT}, C{DELETE}, C{PATCH}, ...) invalidates the
     stored responses for its URI, C{Location} and C{Content-Location} once
     it succeeds (section 4.4).
  2. The primary key (scheme, host, normalised target) and then the
     secondary key (the fields named by the stored C{Vary}) select an entry.
  3. A fresh entry the request's directives accept is a hit: an L{Answer}
     built from the entry's precomputed fields and body, with C{Age} and
     C{Cache-Status}; a client's C{If-None-Match}/C{If-Modified-Since} is
     answered C{304} and a single C{Range} C{206} or C{416}.
  4. A stale one may still be served: under the request's C{max-stale}, or
     under C{stale-while-revalidate} while one background request
     revalidates it (L{IBackgroundFetch}).
  5. Otherwise the request goes upstream, conditionally when the entry has
     a validator. Concurrent requests for one key wait for the first
     (L{Coalescer}); the first one's response is stored when it may be, a
     C{304} refreshes the stored response (section 4.3.4) and a 5xx or a
     failure within C{stale-if-error} is replaced by the stale response.

C{Cache-Status} (RFC 9211) says which of these happened; see C{doc/cache.md}.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from balancebeam.cache.coalescing import FAILED, RELEASED, STORED, TIMEOUT, Coalescer, Fill
from balancebeam.cache.directives import delta_seconds, parse_cache_control, split_list
from balancebeam.cache.freshness import Analysis, analyse, entity_tag
from balancebeam.cache.interfaces import IBackgroundFetch
from balancebeam.cache.keys import primary_key, same_origin_key, secondary_key, vary_names
from balancebeam.cache.ranges import (
    PassThrough,
    Unsatisfiable,
    content_range,
    parse_range,
    unsatisfied_range,
)
from balancebeam.cache.store import (
    PLAIN,
    CacheCounters,
    CacheStore,
    Entry,
    Fields,
    VariantKey,
)
from balancebeam.cache.validation import (
    if_range_matches,
    none_match,
    not_modified_fields,
    not_modified_since,
    updated_fields,
    weak_match,
)
from balancebeam.filters import Answer, text_answer
from balancebeam.http1.heads import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, RequestHead, ResponseHead
from balancebeam.http1.rewrite import HOP_BY_HOP
from balancebeam.interfaces import IExchange, IRequestFilter, IResponseObserver

if TYPE_CHECKING:
    from balancebeam.interfaces import FilterResult

log = Logger()

SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
"""Methods that never invalidate (RFC 9110 section 9.2.1); any other does."""

CONDITIONAL_FIELDS: Final = (
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
    b"if-range",
    b"range",
)
"""The client's fields removed from a revalidation, which asks for the full response."""

NOT_STORED: Final = HOP_BY_HOP | {b"age", b"set-cookie"}
"""
Response fields never stored: hop-by-hop and framing fields, C{Age}
(recomputed on each hit) and C{Set-Cookie} (see C{doc/cache.md}).
"""

MARKED_REASONS: Final = frozenset(
    {
        "no-store",
        "private",
        "set-cookie",
        "status",
        "must-understand",
        "not-reusable",
        "vary",
        "too-large",
        "no-length",
        "transfer-coding",
    }
)
"""
Reasons for not storing that belong to the response rather than to the
request: after one of them, a hit-for-miss marker lets the next requests
for the key go upstream at once instead of waiting for each other.
"""

_REQUEST_FIELDS: Final = re.compile(
    rb"\r\n(cache-control|pragma|authorization|range|if-range|if-none-match"
    rb"|if-modified-since|if-match|if-unmodified-since):[ \t]*([^\r]*)",
    re.IGNORECASE,
)

_HIT: Final = b"balancebeam; hit; ttl=%d"

_FRESH, _STALE_OK, _REVALIDATE_IN_BACKGROUND, _FORCED, _STALE = range(5)


class _RequestInfo:
    """
    What a request says to the cache (RFC 9111 section 5.2.1), parsed once.

    @ivar max_age: C{max-age} (0 when invalid), or C{None}.
    @ivar max_stale: C{max-stale} (infinite without a value), or C{None}.
    @ivar min_fresh: C{min-fresh}, or C{None}.
    @ivar stale_if_error: C{stale-if-error} (RFC 5861), or C{None}.
    @ivar precondition: whether it has C{If-Match} or C{If-Unmodified-Since},
        which only the origin server evaluates.
    """

    __slots__ = (
        "no_cache",
        "no_store",
        "only_if_cached",
        "max_age",
        "max_stale",
        "min_fresh",
        "stale_if_error",
        "authorized",
        "range",
        "if_range",
        "if_none_match",
        "if_modified_since",
        "precondition",
    )

    def __init__(self) -> None:
        self.no_cache = False
        self.no_store = False
        self.only_if_cached = False
        self.max_age: int | None = None
        self.max_stale: float | None = None
        self.min_fresh: int | None = None
        self.stale_if_error: int | None = None
        self.authorized = False
        self.range: bytes | None = None
        self.if_range: bytes | None = None
        self.if_none_match: list[bytes] | None = None
        self.if_modified_since: bytes | None = None
        self.precondition = False

    @property
    def conditional(self) -> bool:
        """
        Whether the client asked conditionally or for a range.
        """
        return (
            self.if_none_match is not None
            or self.if_modified_since is not None
            or self.range is not None
        )


_PLAIN_REQUEST: Final = _RequestInfo()
"""The info of every request with none of the fields the cache reads (shared)."""


def request_info(raw: bytes) -> _RequestInfo:
    """
    Parse the fields of a request head that the cache acts on.

    @param raw: the request head as received.
    """
    found = _REQUEST_FIELDS.findall(raw)
    if not found:
        return _PLAIN_REQUEST
    info = _RequestInfo()
    cache_control: list[bytes] = []
    pragma: list[bytes] = []
    for name, value in found:
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"cache-control":
            cache_control.append(value)
        elif name == b"pragma":
            pragma.append(value)
        elif name == b"authorization":
            info.authorized = True
        elif name == b"range":
            info.range = value if info.range is None else info.range + b"," + value
        elif name == b"if-range":
            info.if_range = value
        elif name == b"if-none-match":
            info.if_none_match = (info.if_none_match or []) + [value]
        elif name == b"if-modified-since":
            if info.if_modified_since is None:
                info.if_modified_since = value
        else:
            info.precondition = True
    if cache_control:
        directives = parse_cache_control(cache_control)
        info.no_cache = b"no-cache" in directives
        info.no_store = b"no-store" in directives
        info.only_if_cached = b"only-if-cached" in directives
        if b"max-age" in directives:
            info.max_age = delta_seconds(directives[b"max-age"]) or 0
        if b"max-stale" in directives:
            argument = directives[b"max-stale"]
            if argument is None:
                info.max_stale = math.inf
            else:
                info.max_stale = delta_seconds(argument)
        if b"min-fresh" in directives:
            info.min_fresh = delta_seconds(directives[b"min-fresh"])
        if b"stale-if-error" in directives:
            info.stale_if_error = delta_seconds(directives[b"stale-if-error"])
    elif any(member.lower() == b"no-cache" for member in split_list(pragma)):
        # RFC 9111 section 5.4: Pragma only counts without Cache-Control.
        info.no_cache = True
    return info


class _Waited:
    """
    A request that waited for another's miss: what it missed, and how the wait ended.
    """

    __slots__ = ("kind", "outcome")

    def __init__(self, kind: bytes, outcome: str) -> None:
        self.kind = kind
        self.outcome = outcome


def _reason_phrase(status: int, status_line: bytes) -> bytes:
    """
    The upstream's reason phrase, or the standard one when it sent none.
    """
    phrase = status_line[13:]
    if phrase:
        return phrase
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def stored_fields(response: ResponseHead, received: float) -> Fields:
    """
    The fields of an upstream response as stored: without L{NOT_STORED}
    fields or those its C{Connection} names, names in their original case,
    a C{Date} of C{received} when it had none (RFC 9110 section 6.6.1), and
    balancebeam's C{Via} last (as the relay adds it to what it relays).
    """
    dropped = NOT_STORED | response.connection_names if response.connection_names else NOT_STORED
    kept = [
        (raw[: len(name)], value) for name, value, raw in response.fields if name not in dropped
    ]
    if not any(name == b"date" for name, _, _ in response.fields):
        kept.append((b"Date", formatdate(received, usegmt=True).encode("ascii")))
    kept.append((b"Via", b"1.%d balancebeam" % response.minor))
    return tuple(kept)


def _apply(entry: Entry, analysis: Analysis) -> None:
    """
    Copy the freshness and validators of C{analysis} into C{entry}.
    """
    entry.born = analysis.born
    entry.fresh_until = analysis.fresh_until
    entry.date = analysis.date
    entry.stale_while_revalidate = analysis.stale_while_revalidate
    entry.stale_if_error = analysis.stale_if_error
    entry.no_cache = analysis.no_cache
    entry.must_revalidate = analysis.must_revalidate
    entry.authorized_ok = analysis.authorized_ok
    entry.etag = analysis.etag
    entry.last_modified = analysis.last_modified
    entry.last_modified_time = analysis.last_modified_time


def _validators(entry: Entry) -> list[tuple[bytes, bytes]]:
    """
    The conditional fields that revalidate C{entry} (RFC 9111 section 4.3.1).
    """
    add = []
    if entry.etag is not None:
        add.append((b"If-None-Match", entry.etag))
    if entry.last_modified is not None:
        add.append((b"If-Modified-Since", entry.last_modified))
    return add


def _status(
    kind: bytes,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
) -> bytes:
    """
    A C{Cache-Status} value (RFC 9211) for a response that went upstream.
    """
    value = b"balancebeam; fwd=" + kind
    if fwd_status is not None:
        value += b"; fwd-status=%d" % fwd_status
    if stored:
        value += b"; stored"
    if collapsed:
        value += b"; collapsed"
    if ttl is not None:
        value += b"; ttl=%d" % math.floor(ttl)
    if detail is not None:
        value += b"; detail=" + detail.encode("ascii")
    return value


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
        self._clock = clock
        self.counters = counters if counters is not None else CacheCounters()
        self.store = CacheStore(max_bytes, self.counters)
        self.max_object_size = max_object_size
        self.store_set_cookie = store_set_cookie
        self._hit_for_miss_ttl = hit_for_miss_ttl
        self._background = background
        self._coalescer = Coalescer(clock, lock_timeout)
        self._active: dict[bytes, set[_Fill]] = {}

    # The request side.

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
                exchange.observe(_Invalidation(self, exchange))
            exchange.add_response_headers(b"Cache-Status: balancebeam; fwd=method\r\n")
            return None
        info = request_info(request.raw)
        primary = primary_key(exchange.scheme, request.host, request.target)
        if info is _PLAIN_REQUEST:
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
                            (b"Cache-Status", _HIT % (entry.fresh_until - now)),
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
        info: _RequestInfo,
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
            exchange.add_response_headers(b"Cache-Status: balancebeam; fwd=bypass\r\n")
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
            kind = b"uri-miss" if variant is None else b"vary-miss"
            if info.only_if_cached:
                counters.misses += 1
                return text_answer(
                    504,
                    "not in the cache (only-if-cached)",
                    ((b"Cache-Status", b"balancebeam; detail=only-if-cached"),),
                )
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
            decision = _FRESH
        else:
            decision = self._decide(entry, info, request, now)
        if decision == _FRESH:
            counters.hits += 1
            if waited is not None:
                status = _status(waited.kind, entry.status, collapsed=True,
                                 ttl=entry.fresh_until - now)
            else:
                status = b"balancebeam; hit; ttl=%d" % math.floor(entry.fresh_until - now)
            return self._respond(entry, request, info, now, status)
        if decision == _STALE_OK or decision == _REVALIDATE_IN_BACKGROUND:
            counters.hits += 1
            counters.stale += 1
            if decision == _REVALIDATE_IN_BACKGROUND:
                self._revalidate_in_background(exchange, request, primary, entry, now)
            status = b"balancebeam; hit; ttl=%d" % math.floor(entry.fresh_until - now)
            return self._respond(entry, request, info, now, status)
        if (
            waited is not None
            and waited.outcome == FAILED
            and self._usable_on_error(entry, info, now)
        ):
            counters.hits += 1
            counters.stale += 1
            status = _status(waited.kind, collapsed=True, ttl=entry.fresh_until - now,
                             detail="stale-if-error")
            return self._respond(entry, request, info, now, status)
        if info.only_if_cached:
            counters.misses += 1
            return text_answer(
                504,
                "no fresh response in the cache (only-if-cached)",
                ((b"Cache-Status", b"balancebeam; detail=only-if-cached"),),
            )
        kind = b"request" if decision == _FORCED else b"stale"
        return self._forward(exchange, request, info, primary, entry.variant, entry, kind, waited)

    def _decide(self, entry: Entry, info: _RequestInfo, request: RequestHead, now: float) -> int:
        """
        Whether a stored response may be used for a request as it is (RFC
        9111 section 4.2 and 5.2.1, RFC 5861).

        @return: C{_FRESH}; C{_STALE_OK} (stale, accepted by C{max-stale});
            C{_REVALIDATE_IN_BACKGROUND} (stale within
            C{stale-while-revalidate}); C{_FORCED} (fresh, but the request
            or C{no-cache} wants it validated); or C{_STALE}.
        """
        fresh = now < entry.fresh_until
        if entry.no_cache or info.no_cache:
            return _FORCED if fresh else _STALE
        if info.max_age is not None and now - entry.born > info.max_age:
            return _FORCED if fresh else _STALE
        if info.min_fresh is not None and entry.fresh_until - now < info.min_fresh:
            return _FORCED if fresh else _STALE
        if fresh:
            return _FRESH
        if entry.must_revalidate:
            return _STALE
        staleness = now - entry.fresh_until
        if info.max_stale is not None and staleness <= info.max_stale:
            return _STALE_OK
        if (
            staleness < entry.stale_while_revalidate
            and self._background is not None
            and request.method == b"GET"
        ):
            return _REVALIDATE_IN_BACKGROUND
        return _STALE

    def _usable_on_error(self, entry: Entry, info: _RequestInfo, now: float) -> bool:
        """
        Whether C{entry} may be served because the upstream failed or
        answered 5xx (C{stale-if-error} of the response or the request).
        """
        if entry.must_revalidate or entry.no_cache:
            return False
        window = entry.stale_if_error
        if info.stale_if_error is not None:
            window = max(window, info.stale_if_error)
        elif info.no_cache:
            return False
        return window > 0 and now - entry.fresh_until <= window

    def _forward(
        self,
        exchange: IExchange,
        request: RequestHead,
        info: _RequestInfo,
        primary: bytes,
        variant: VariantKey,
        stale: Entry | None,
        kind: bytes,
        waited: _Waited | None,
        may_wait: bool = True,
    ) -> FilterResult:
        """
        Send a request upstream with a L{_Fill} observer, or make it wait
        for another request's miss on the same key.

        @param stale: the stored response this revalidates, if any.
        """
        fill_key = (primary, variant)
        if waited is None and may_wait:
            waiting = self._coalescer.wait(fill_key)
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
            fill = self._coalescer.begin(fill_key)
        validated = stale is not None and (
            stale.etag is not None or stale.last_modified is not None
        )
        if validated or (fill is not None and stale is not None):
            assert stale is not None
            exchange.rewrite_upstream_request(remove=CONDITIONAL_FIELDS, add=_validators(stale))
        observer = _Fill(
            self, exchange, request, info, primary, variant, kind, fill, stale, validated,
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
        info: _RequestInfo,
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
        background = self._background
        if background is None or entry.revalidating:
            return
        fill = self._coalescer.begin((primary, entry.variant))
        if fill is None:
            return
        entry.revalidating = True
        validated = entry.etag is not None or entry.last_modified is not None
        observer = _Fill(
            self, None, request, _PLAIN_REQUEST, primary, entry.variant, b"stale", fill, entry,
            validated, True, now,
        )
        try:
            background.fetch(
                request,
                exchange.client_ip,
                exchange.scheme,
                CONDITIONAL_FIELDS,
                _validators(entry),
                observer,
            )
        except Exception:
            log.failure("background revalidation of {key} failed to start", key=primary)
            observer.response_failed("background fetch raised")

    # Building answers.

    def _respond(
        self,
        entry: Entry,
        request: RequestHead,
        info: _RequestInfo,
        now: float,
        cache_status: bytes,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> Answer:
        """
        Answer a request from C{entry}: C{304} when the client's own
        conditional is false, C{206}/C{416} for a single range, else the
        whole stored response (the relay leaves the body out for C{HEAD}).
        """
        age = now - entry.born
        tail: Fields = (
            (b"Age", b"%d" % (age if age > 0 else 0)),
            (b"Cache-Status", cache_status),
        )
        if extra:
            tail = tuple(extra) + tail
        if info is _PLAIN_REQUEST:
            return Answer(entry.status, entry.fields + tail, entry.body, entry.reason)
        if 200 <= entry.status < 300:
            not_modified = False
            if info.if_none_match is not None:
                not_modified = none_match(info.if_none_match, entry.etag)
            elif info.if_modified_since is not None:
                not_modified = not_modified_since(info.if_modified_since, entry, now)
            if not_modified:
                return Answer(304, (*not_modified_fields(entry), *tail), b"", b"Not Modified")
        if info.range is not None and entry.status == 200 and request.method == b"GET":
            if info.if_range is None or if_range_matches(info.if_range, entry, now):
                length = len(entry.body)
                chosen = parse_range(info.range, length)
                if isinstance(chosen, tuple):
                    first, last = chosen
                    return Answer(
                        206,
                        entry.fields
                        + ((b"Content-Range", content_range(first, last, length)),)
                        + tail,
                        entry.body[first : last + 1],
                        b"Partial Content",
                    )
                if isinstance(chosen, Unsatisfiable):
                    message = b"416 Range Not Satisfiable: the range is outside the response\n"
                    return Answer(
                        416,
                        (
                            (b"Content-Type", b"text/plain; charset=utf-8"),
                            (b"Content-Range", unsatisfied_range(length)),
                            *tail,
                        ),
                        message,
                        b"Range Not Satisfiable",
                    )
        return Answer(entry.status, entry.fields + tail, entry.body, entry.reason)

    # Bookkeeping for observers.

    def _track(self, primary: bytes, fill: _Fill) -> None:
        self._active.setdefault(primary, set()).add(fill)

    def _untrack(self, primary: bytes, fill: _Fill) -> None:
        fills = self._active.get(primary)
        if fills is not None:
            fills.discard(fill)
            if not fills:
                del self._active[primary]

    def invalidate(self, primary: bytes) -> None:
        """
        Drop every stored response for C{primary}, and keep the responses in
        flight for it from being stored (RFC 9111 section 4.4).
        """
        self.counters.invalidated += self.store.invalidate(primary)
        for fill in self._active.get(primary, ()):
            fill.doomed = True

    def mark_uncacheable(self, primary: bytes, variant: VariantKey, status: int) -> None:
        """
        Remember for a while that C{primary} gave a response that could not
        be stored (hit-for-miss), so that requests for it do not wait for
        each other.
        """
        marker = Entry(primary, variant, status, None, (), b"")
        marker.hit_for_miss = True
        marker.fresh_until = self._clock.seconds() + self._hit_for_miss_ttl
        self.store.put(marker)


@implementer(IResponseObserver)
class _Fill:
    """
    Sees the response to a request the cache sent upstream: stores it when
    it may, refreshes a stored response on a C{304}, falls back on a stale
    response on errors, and ends the coalescing fill it leads, if any.

    @ivar doomed: set when the URI was invalidated meanwhile: nothing is stored.
    @ivar _state: C{"head"} until the response head, C{"body"} while the
        body is relayed, C{"done"} once the fill ended.
    @ivar _pieces: the body pieces kept for storing, or C{None} when the
        response will not be stored.
    """

    __slots__ = (
        "doomed",
        "_cache",
        "_exchange",
        "_request",
        "_info",
        "_primary",
        "_variant",
        "_kind",
        "_fill",
        "_stale",
        "_validated",
        "_may_store",
        "_started",
        "_state",
        "_pieces",
        "_size",
        "_limit",
        "_expected",
        "_status",
        "_prepared",
    )

    def __init__(
        self,
        cache: CacheFilter,
        exchange: IExchange | None,
        request: RequestHead,
        info: _RequestInfo,
        primary: bytes,
        variant: VariantKey,
        kind: bytes,
        fill: Fill | None,
        stale: Entry | None,
        validated: bool,
        may_store: bool,
        started: float,
    ) -> None:
        """
        @param exchange: the client's exchange, or C{None} for a background
            revalidation.
        @param variant: the secondary key the request was looked up with
            (where a hit-for-miss marker goes).
        @param kind: the C{fwd} value of C{Cache-Status}.
        @param fill: the coalescing fill this request leads, if any.
        @param stale: the stored response this request revalidates, if any.
        @param validated: whether the request was made conditional on C{stale}.
        @param may_store: whether the response may be stored (a C{GET}
            without C{no-store}).
        @param started: when the request was sent.
        """
        self.doomed = False
        self._cache = cache
        self._exchange = exchange
        self._request = request
        self._info = info
        self._primary = primary
        self._variant = variant
        self._kind = kind
        self._fill = fill
        self._stale = stale
        self._validated = validated
        self._may_store = may_store
        self._started = started
        self._state = "head"
        self._pieces: list[bytes] | None = None
        self._size = 0
        self._limit = 0
        self._expected: int | None = None
        self._status = 0
        self._prepared: tuple[VariantKey, Fields, bytes, Analysis] | None = None
        cache._track(primary, self)

    def _add_status(self, value: bytes) -> None:
        if self._exchange is not None:
            self._exchange.add_response_headers(b"Cache-Status: " + value + b"\r\n")

    def response_head(self, response: ResponseHead) -> Answer | None:
        """
        Decide what the response means for the cache (see the class docstring).
        """
        if self._state != "head":
            return None
        self._state = "body"
        cache = self._cache
        now = cache._clock.seconds()
        status = self._status = response.status
        stale = self._stale
        if stale is not None:
            if status == 304 and self._validated:
                return self._refresh(response, now)
            if status >= 500 and self._exchange is not None and cache._usable_on_error(
                stale, self._info, now
            ):
                cache.counters.stale += 1
                answer = cache._respond(
                    stale,
                    self._request,
                    self._info,
                    now,
                    _status(b"stale", status, ttl=stale.fresh_until - now,
                            detail="stale-if-error"),
                )
                self._end(FAILED)
                return answer
        reason = self._prepare(response, now)
        if reason is None:
            assert self._prepared is not None
            analysis = self._prepared[3]
            announced = response.body_kind != BODY_CHUNKED
            self._add_status(
                _status(self._kind, status, stored=announced, ttl=analysis.fresh_until - now)
            )
            self._pieces = []
            return None
        self._add_status(_status(self._kind, status, detail=reason if self._may_store else None))
        if stale is not None and status < 500 and (self._may_store or self._validated):
            # A full response supersedes the stored one (RFC 9111 section 4.3.3).
            cache.store.remove(stale)
        if self._fill is not None and reason in MARKED_REASONS and status < 500:
            cache.mark_uncacheable(self._primary, self._variant, status)
        # Waiters on a 5xx may still be served stale (their own stale-if-error).
        self._end(FAILED if status >= 500 else RELEASED)
        return None

    def _prepare(self, response: ResponseHead, now: float) -> str | None:
        """
        Check that the response may be stored and compute its entry's head.

        @return: C{None} when it may (L{_prepared} is then set), else why not.
        """
        if not self._may_store:
            return "request"
        cache = self._cache
        kind = response.body_kind
        if kind == BODY_LENGTH or kind == BODY_NONE:
            self._expected = response.content_length if kind == BODY_LENGTH else 0
            if self._expected > cache.max_object_size:
                return "too-large"
            self._limit = self._expected
        elif kind == BODY_CHUNKED:
            coding_values = [v for n, v, _ in response.special if n == b"transfer-encoding"]
            codings = [t for t in split_list(coding_values) if t.lower() != b"chunked"]
            if codings:
                return "transfer-coding"
            self._limit = cache.max_object_size
        else:
            return "no-length"
        if self.doomed:
            return "invalidated"
        fields = [(name, value) for name, value, _ in response.fields]
        names = vary_names([value for name, value in fields if name == b"vary"])
        if names is None:
            return "vary"
        analysis = analyse(
            response.status,
            fields,
            self._started,
            now,
            self._info.authorized,
            cache.store_set_cookie,
        )
        if analysis.reason is not None:
            return analysis.reason
        variant = (names, secondary_key(self._request.fields, names)) if names else PLAIN
        reason = _reason_phrase(response.status, response.status_line)
        self._prepared = (variant, stored_fields(response, now), reason, analysis)
        return None

    def _refresh(self, response: ResponseHead, now: float) -> Answer | None:
        """
        A C{304} validated the stored response: update its fields and
        freshness (RFC 9111 section 4.3.4) and serve it.
        """
        cache = self._cache
        entry = self._stale
        assert entry is not None
        etag = None
        modified = None
        for name, value, _ in response.fields:
            if name == b"etag" and etag is None:
                etag = entity_tag(value) or value
            elif name == b"last-modified" and modified is None:
                modified = value
        if (etag is not None and not weak_match(etag, entry.etag)) or (
            etag is None
            and modified is not None
            and entry.last_modified is not None
            and modified != entry.last_modified
        ):
            # The 304 is about another representation: none stored is selected.
            cache.store.remove(entry)
            self._end(RELEASED)
            if self._exchange is None:
                return None
            return text_answer(
                502,
                "the upstream validated a response the cache does not hold",
                ((b"Cache-Status", _status(self._kind, 304, detail="validator-mismatch")),),
            )
        fields = updated_fields(entry.fields, response.fields)
        lowered = [(name.lower(), value) for name, value in fields[:-1]]
        lowered.extend((name, value) for name, value, _ in response.fields if name == b"age")
        analysis = analyse(
            entry.status, lowered, self._started, now, self._info.authorized,
            cache.store_set_cookie,
        )
        _apply(entry, analysis)
        cache.store.replace_fields(entry, fields)
        if analysis.reason is not None:
            cache.store.remove(entry)
        cache.counters.revalidated += 1
        self._end(STORED)
        if self._exchange is None:
            return None
        set_cookies = [
            (raw[:10], value) for name, value, raw in response.fields if name == b"set-cookie"
        ]
        return cache._respond(
            entry,
            self._request,
            self._info,
            now,
            _status(self._kind, 304, ttl=entry.fresh_until - now),
            set_cookies,
        )

    def response_body(self, data: bytes) -> None:
        """
        Keep a body piece for storing, until the body turns out too large.
        """
        pieces = self._pieces
        if pieces is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            # Larger than announced, or than the largest object stored.
            self._pieces = None
            if self._fill is not None and self._expected is None:
                self._cache.mark_uncacheable(self._primary, self._variant, self._status)
            self._end(RELEASED)
            return
        pieces.append(data)

    def response_complete(self) -> None:
        """
        Store the response when all of it arrived as announced.
        """
        if self._state == "done":
            return
        pieces = self._pieces
        prepared = self._prepared
        self._pieces = None
        if pieces is None or prepared is None or self.doomed:
            self._end(RELEASED)
            return
        body = b"".join(pieces)
        if self._expected is not None and len(body) != self._expected:
            self._end(RELEASED)
            return
        cache = self._cache
        variant, fields, reason, analysis = prepared
        entry = Entry(self._primary, variant, self._status, reason, fields, body)
        _apply(entry, analysis)
        if self._stale is not None:
            cache.store.remove(self._stale)
        stored = cache.store.put(entry)
        if stored:
            cache.counters.stored += 1
        self._end(STORED if stored else RELEASED)

    def continue_without_client(self) -> bool:
        """
        Keep filling only when other requests wait for this response.
        """
        fill = self._fill
        if fill is not None and fill.open and fill.waiters:
            return True
        self._pieces = None
        self._end(RELEASED)
        return False

    def response_failed(self, reason: str) -> Answer | None:
        """
        Nothing is stored; before any response head, a stale response within
        C{stale-if-error} is sent instead of the balancer's error.
        """
        if self._state == "done":
            return None
        head_seen = self._state != "head"
        self._pieces = None
        cache = self._cache
        stale = self._stale
        answer = None
        if not head_seen and stale is not None and self._exchange is not None:
            now = cache._clock.seconds()
            if cache._usable_on_error(stale, self._info, now):
                cache.counters.stale += 1
                answer = cache._respond(
                    stale,
                    self._request,
                    self._info,
                    now,
                    _status(b"stale", ttl=stale.fresh_until - now, detail="stale-if-error"),
                )
        self._end(FAILED)
        return answer

    def _end(self, outcome: str) -> None:
        """
        The fill is over: forget it and tell the requests waiting for it.
        """
        if self._state == "done":
            return
        self._state = "done"
        self._cache._untrack(self._primary, self)
        if self._exchange is None and self._stale is not None:
            self._stale.revalidating = False
        if self._fill is not None:
            self._fill.finish(outcome)


@implementer(IResponseObserver)
class _Invalidation:
    """
    Invalidates the stored responses an unsafe request changed, once its
    response says it succeeded (a 2xx or 3xx; RFC 9111 section 4.4).
    """

    __slots__ = ("_cache", "_exchange")

    def __init__(self, cache: CacheFilter, exchange: IExchange) -> None:
        self._cache = cache
        self._exchange = exchange

    def response_head(self, response: ResponseHead) -> Answer | None:
        """
        Invalidate the request's URI and the same-origin C{Location} and
        C{Content-Location} of a successful response.
        """
        if not 200 <= response.status < 400:
            return None
        exchange = self._exchange
        request = exchange.request
        scheme = exchange.scheme
        keys = {primary_key(scheme, request.host, request.target)}
        for name, value, _ in response.fields:
            if name == b"location" or name == b"content-location":
                key = same_origin_key(scheme, request.host, request.target, value)
                if key is not None:
                    keys.add(key)
        for key in keys:
            self._cache.invalidate(key)
        return None

    def response_body(self, data: bytes) -> None:
        """
        Nothing to do with the body.
        """

    def response_complete(self) -> None:
        """
        Nothing to do.
        """

    def continue_without_client(self) -> bool:
        """
        No need to read a response nobody waits for.
        """
        return False

    def response_failed(self, reason: str) -> Answer | None:
        """
        A failed unsafe request invalidates nothing.
        """
        return None
