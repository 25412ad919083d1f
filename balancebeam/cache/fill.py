"""
The response observer of a request the cache sent upstream (L{FillObserver}):
it stores the response when it may (RFC 9111 section 3), refreshes the
stored response on a C{304} (section 4.3.4) or on a matching C{200} to a
C{HEAD} (section 4.3.5), falls back on a stale response
when the upstream fails (RFC 5861 C{stale-if-error}), and ends the
coalescing fill it leads so that the requests waiting for it go on.

The body is kept piece by piece as the relay passes it on, never more than
C{--cache-max-object-size} (or the announced length); nothing is stored
unless the whole body arrived exactly as announced.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Final

from zope.interface import implementer

from balancebeam.cache.answers import forwarded_status, reason_phrase, respond, status_line
from balancebeam.cache.coalescing import FAILED, RELEASED, STORED, Fill
from balancebeam.cache.directives import split_list
from balancebeam.cache.freshness import Analysis, analyse
from balancebeam.cache.interfaces import IResendable
from balancebeam.cache.keys import secondary_key, vary_names
from balancebeam.cache.request import RequestInfo
from balancebeam.cache.revalidation import (
    VALIDATOR_FIELDS,
    answers_client,
    apply_analysis,
    head_matches,
    refresh,
    selects,
    usable_on_error,
)
from balancebeam.cache.state import CacheState
from balancebeam.cache.store import PLAIN, Entry, Fields, VariantKey
from balancebeam.filters import Answer, text_answer
from balancebeam.http1.heads import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, RequestHead, ResponseHead
from balancebeam.http1.rewrite import HOP_BY_HOP
from balancebeam.interfaces import IExchange, IResponseObserver

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

_HEAD: Final = 0
_BODY: Final = 1
_DONE: Final = 2


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


@implementer(IResponseObserver)
class FillObserver:
    """
    Sees the response to a request the cache sent upstream: stores it when
    it may, refreshes a stored response on a C{304}, falls back on a stale
    response on errors, and ends the coalescing fill it leads, if any.

    @ivar doomed: set when the URI was invalidated meanwhile: nothing is stored.
    @ivar _state: C{_HEAD} until the response head, C{_BODY} while the
        body is relayed, C{_DONE} once the fill ended.
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
        cache: CacheState,
        exchange: IExchange | None,
        request: RequestHead,
        info: RequestInfo,
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
        self._state = _HEAD
        self._pieces: list[bytes] | None = None
        self._size = 0
        self._limit = 0
        self._expected: int | None = None
        self._status = 0
        self._prepared: tuple[VariantKey, Fields, bytes, Analysis] | None = None
        cache.track(primary, self)

    def _add_status(self, value: bytes) -> None:
        if self._exchange is not None:
            self._exchange.add_response_headers(status_line(value))

    def response_head(self, response: ResponseHead) -> Answer | None:
        """
        Decide what the response means for the cache (see the class docstring).
        """
        if self._state != _HEAD:
            return None
        self._state = _BODY
        cache = self._cache
        now = cache.clock.seconds()
        status = self._status = response.status
        stale = self._stale
        if stale is not None:
            if status == 304 and self._validated:
                if selects(stale, response.fields):
                    return self._refreshed(stale, response, now)
                return self._mismatch(stale, response, now)
            if status == 200 and self._request.method == b"HEAD":
                if head_matches(stale, response.fields, response.special):
                    # RFC 9111 section 4.3.5: a HEAD freshens the stored GET.
                    refresh(cache, stale, response.fields, self._started, now,
                            self._info.authorized)
                    self._add_status(
                        forwarded_status(self._kind, 200, ttl=stale.fresh_until - now)
                    )
                    self._end(STORED)
                    return None
                cache.store.remove(stale)
            if status >= 500 and self._exchange is not None and usable_on_error(
                stale, self._info, now
            ):
                cache.counters.stale += 1
                answer = respond(
                    stale,
                    self._request,
                    self._info,
                    now,
                    forwarded_status(b"stale", status, ttl=stale.fresh_until - now,
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
                forwarded_status(self._kind, status, stored=announced,
                                 ttl=analysis.fresh_until - now)
            )
            self._pieces = []
            return None
        self._add_status(
            forwarded_status(self._kind, status, detail=reason if self._may_store else None)
        )
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
        reason = reason_phrase(response.status, response.status_line)
        self._prepared = (variant, stored_fields(response, now), reason, analysis)
        return None

    def _refreshed(self, entry: Entry, response: ResponseHead, now: float) -> Answer | None:
        """
        A C{304} validated the stored response: update its fields and
        freshness (RFC 9111 section 4.3.4) and serve it.
        """
        refresh(self._cache, entry, response.fields, self._started, now, self._info.authorized)
        self._end(STORED)
        if self._exchange is None:
            return None
        set_cookies = [
            (raw[:10], value) for name, value, raw in response.fields if name == b"set-cookie"
        ]
        return respond(
            entry,
            self._request,
            self._info,
            now,
            forwarded_status(self._kind, 304, ttl=entry.fresh_until - now),
            set_cookies,
        )

    def _mismatch(self, entry: Entry, response: ResponseHead, now: float) -> Answer | None:
        """
        A C{304} that names another response than the stored one: it updates
        nothing, and the stored response, which the origin no longer
        confirms, is dropped (RFC 9111 section 4.3.4). A client whose own
        conditional the C{304} answers gets it as it is; otherwise the
        request is sent again without validators, and its response is
        handled as a miss's.
        """
        cache = self._cache
        cache.store.remove(entry)
        self._stale = None
        self._validated = False
        exchange = self._exchange
        if exchange is None:
            # A background revalidation: the next request fetches anew.
            self._end(RELEASED)
            return None
        mismatch = forwarded_status(self._kind, 304, detail="validator-mismatch")
        if self._info.conditional and answers_client(self._info, response.fields, now):
            self._add_status(mismatch)
            self._end(RELEASED)
            return None
        resendable = IResendable(exchange, None)
        if resendable is not None and resendable.send_again(VALIDATOR_FIELDS):
            self._state = _HEAD
            return None
        self._end(RELEASED)
        return text_answer(
            502,
            "the upstream validated a response the cache does not hold",
            ((b"Cache-Status", mismatch),),
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
        if self._state == _DONE:
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
        apply_analysis(entry, analysis)
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
        if self._state == _DONE:
            return None
        head_seen = self._state != _HEAD
        self._pieces = None
        cache = self._cache
        stale = self._stale
        answer = None
        if not head_seen and stale is not None and self._exchange is not None:
            now = cache.clock.seconds()
            if usable_on_error(stale, self._info, now):
                cache.counters.stale += 1
                answer = respond(
                    stale,
                    self._request,
                    self._info,
                    now,
                    forwarded_status(b"stale", ttl=stale.fresh_until - now,
                                     detail="stale-if-error"),
                )
        self._end(FAILED)
        return answer

    def _end(self, outcome: str) -> None:
        """
        The fill is over: forget it and tell the requests waiting for it.
        """
        if self._state == _DONE:
            return
        self._state = _DONE
        self._cache.untrack(self._primary, self)
        if self._exchange is None and self._stale is not None:
            self._stale.revalidating = False
        if self._fill is not None:
            self._fill.finish(outcome)
