"""
Whether a response may be stored, how long it stays fresh and how old it is
(RFC 9111 sections 3, 4.2 and 5.2.2, RFC 5861).

The cache calls L{analyse} once per response it might store, and once more
when a C{304} refreshes a stored response; everything a hit needs later is
precomputed here as two clock times (L{Analysis.born} and
L{Analysis.fresh_until}), so that serving a hit costs two subtractions.

Nothing here raises on malformed input: invalid C{Expires} means already
expired, an invalid C{Age} is ignored, an invalid C{Date} is replaced by the
time the response arrived, an invalid or conflicting C{max-age} or
C{s-maxage} makes the response stale (RFC 9111 sections 4.2.1, 5.1, 5.3).
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from collections.abc import Sequence
from typing import Final

from balancebeam.cache.directives import (
    Directives,
    delta_seconds,
    parse_cache_control,
    split_list,
)

CACHEABLE_BY_DEFAULT: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Status codes that are heuristically cacheable (RFC 9110 section 15.1)."""

UNDERSTOOD_STATUSES: Final = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426, 500, 501, 502, 503, 504, 505}
)
"""The status codes whose caching requirements this cache knows (for C{must-understand})."""

HEURISTIC_FRACTION: Final = 0.1
"""Heuristic freshness is this share of the time since C{Last-Modified}."""

HEURISTIC_MAX: Final = 86400.0
"""
Heuristic freshness is capped at one day: beyond it RFC 7234 required a
warning, and a day is the longest an operator is likely to be surprised by.
"""

Field = tuple[bytes, bytes]
"""A header field: lower-cased name and value."""

_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct",
         b"nov", b"dec"),
        start=1,
    )
}
_IMF_FIXDATE: Final = re.compile(
    rb"[A-Za-z]{3}, ([0-9]{2}) ([A-Za-z]{3}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_RFC850: Final = re.compile(
    rb"[A-Za-z]{6,9}, ([0-9]{2})-([A-Za-z]{3})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_ASCTIME: Final = re.compile(
    rb"[A-Za-z]{3} ([A-Za-z]{3}) ([0-9 ][0-9]) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})"
)
_ENTITY_TAG: Final = re.compile(rb'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')


def parse_http_date(value: bytes, now: float) -> float | None:
    """
    An HTTP-date in any of its three formats (RFC 9110 section 5.6.7) as
    seconds since the epoch.

    @param now: the current time, to place a two-digit RFC 850 year in the
        century that puts it at most 50 years in the future.
    @return: the time, or C{None} when C{value} is not a valid HTTP-date.
    """
    value = value.strip(b" \t")
    matched = _IMF_FIXDATE.fullmatch(value)
    if matched is not None:
        day, month, year, hour, minute, second = matched.groups()
        full_year = int(year)
    else:
        matched = _RFC850.fullmatch(value)
        if matched is not None:
            day, month, year, hour, minute, second = matched.groups()
            this_year = time.gmtime(now).tm_year
            full_year = this_year - this_year % 100 + int(year)
            if full_year > this_year + 50:
                full_year -= 100
        else:
            matched = _ASCTIME.fullmatch(value)
            if matched is None:
                return None
            month, day, hour, minute, second, year = matched.groups()
            full_year = int(year)
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    try:
        moment = datetime.datetime(
            full_year, month_number, int(day), int(hour), int(minute), int(second)
        )
    except ValueError:
        return None
    return float(calendar.timegm(moment.timetuple()))


def entity_tag(value: bytes) -> bytes | None:
    """
    C{value} when it is a valid entity-tag (RFC 9110 section 8.8.3), else C{None}.
    """
    value = value.strip(b" \t")
    return value if _ENTITY_TAG.fullmatch(value) is not None else None


def _first(fields: Sequence[Field], name: bytes) -> bytes | None:
    for field_name, value in fields:
        if field_name == name:
            return value
    return None


class Analysis:
    """
    What RFC 9111 says of one response, for a shared cache.

    @ivar reason: C{None} when the response may be stored, else a short
        token saying why not (for C{Cache-Status}'s C{detail}).
    @ivar directives: the response's cache directives.
    @ivar born: the clock time at which the response's age was 0, so that
        its current age is C{now - born} (RFC 9111 section 4.2.3).
    @ivar lifetime: the freshness lifetime in seconds (section 4.2.1).
    @ivar fresh_until: C{born + lifetime}: fresh while C{now < fresh_until}.
    @ivar date: the C{Date} as a time (the arrival time when missing or invalid).
    @ivar no_cache: whether every reuse needs validation (C{no-cache}).
    @ivar must_revalidate: whether a stale response may never be served
        unvalidated (C{must-revalidate}, C{proxy-revalidate}, C{s-maxage}).
    @ivar stale_while_revalidate: seconds after C{fresh_until} during which
        the response may be served while it is revalidated (RFC 5861).
    @ivar stale_if_error: seconds after C{fresh_until} during which the
        response may be served when the upstream fails (RFC 5861).
    @ivar authorized_ok: whether it may be stored for, and served to, a request
        with C{Authorization} (C{public}, C{s-maxage} or C{must-revalidate}).
    @ivar etag: the C{ETag}, or C{None}.
    @ivar last_modified: the C{Last-Modified} value, or C{None} when absent
        or not a valid date.
    @ivar last_modified_time: C{last_modified} as a time.
    """

    __slots__ = (
        "reason",
        "directives",
        "born",
        "lifetime",
        "fresh_until",
        "date",
        "no_cache",
        "must_revalidate",
        "stale_while_revalidate",
        "stale_if_error",
        "authorized_ok",
        "etag",
        "last_modified",
        "last_modified_time",
    )

    def __init__(self) -> None:
        self.reason: str | None = None
        self.directives: Directives = {}
        self.born = 0.0
        self.lifetime = 0.0
        self.fresh_until = 0.0
        self.date = 0.0
        self.no_cache = False
        self.must_revalidate = False
        self.stale_while_revalidate = 0.0
        self.stale_if_error = 0.0
        self.authorized_ok = False
        self.etag: bytes | None = None
        self.last_modified: bytes | None = None
        self.last_modified_time: float | None = None

    @property
    def has_validator(self) -> bool:
        """
        Whether the response can be revalidated (it has an C{ETag} or a
        valid C{Last-Modified}).
        """
        return self.etag is not None or self.last_modified is not None


def analyse(
    status: int,
    fields: Sequence[Field],
    request_time: float,
    response_time: float,
    authorized: bool = False,
    store_set_cookie: bool = False,
) -> Analysis:
    """
    Decide whether a response to a GET may be stored, and compute its age
    and freshness.

    @param fields: the response's header fields, lower-cased names.
    @param request_time: when the request was sent (the exchange start).
    @param response_time: when the response head arrived.
    @param authorized: whether the request carried C{Authorization}.
    @param store_set_cookie: whether a response with C{Set-Cookie} may be
        stored (the field itself is then left out of the stored copy).
    """
    result = Analysis()
    directives = parse_cache_control(value for name, value in fields if name == b"cache-control")
    result.directives = directives

    # Age (RFC 9111 section 4.2.3).
    date_value = response_time
    date_text = _first(fields, b"date")
    if date_text is not None:
        parsed = parse_http_date(date_text, response_time)
        if parsed is not None:
            date_value = parsed
    result.date = date_value
    age_value = 0
    age_text = _first(fields, b"age")
    if age_text is not None:
        members = split_list((age_text,))
        age = delta_seconds(members[0]) if members else None
        if age is not None:
            age_value = age
    apparent_age = max(0.0, response_time - date_value)
    response_delay = max(0.0, response_time - request_time)
    corrected_initial_age = max(apparent_age, age_value + response_delay)
    result.born = response_time - corrected_initial_age

    # Validators.
    etag_text = _first(fields, b"etag")
    if etag_text is not None:
        result.etag = entity_tag(etag_text)
    modified_text = _first(fields, b"last-modified")
    if modified_text is not None:
        modified = parse_http_date(modified_text, response_time)
        if modified is not None:
            result.last_modified = modified_text
            result.last_modified_time = modified

    # Freshness lifetime (section 4.2.1), in order of precedence.
    explicit = True
    if b"s-maxage" in directives:
        lifetime: float = delta_seconds(directives[b"s-maxage"]) or 0
    elif b"max-age" in directives:
        lifetime = delta_seconds(directives[b"max-age"]) or 0
    else:
        expires = [value for name, value in fields if name == b"expires"]
        if expires:
            expires_time = parse_http_date(expires[0], response_time)
            if expires_time is None or any(value != expires[0] for value in expires):
                lifetime = 0  # invalid (or several differing) Expires: already expired
            else:
                lifetime = max(0.0, expires_time - date_value)
        else:
            explicit = False
            lifetime = 0
            public = b"public" in directives
            if (status in CACHEABLE_BY_DEFAULT or public) and result.last_modified_time:
                since = date_value - result.last_modified_time
                lifetime = min(HEURISTIC_FRACTION * max(0.0, since), HEURISTIC_MAX)
    result.lifetime = lifetime
    result.fresh_until = result.born + lifetime

    result.no_cache = b"no-cache" in directives
    result.must_revalidate = (
        b"must-revalidate" in directives
        or b"proxy-revalidate" in directives
        or b"s-maxage" in directives
    )
    if not (result.no_cache or result.must_revalidate):
        result.stale_while_revalidate = float(
            delta_seconds(directives.get(b"stale-while-revalidate")) or 0
        )
        result.stale_if_error = float(delta_seconds(directives.get(b"stale-if-error")) or 0)
    result.authorized_ok = (
        b"public" in directives or b"s-maxage" in directives or b"must-revalidate" in directives
    )
    result.reason = _refusal(status, fields, directives, explicit, result, authorized,
                             store_set_cookie)
    return result


def _refusal(
    status: int,
    fields: Sequence[Field],
    directives: Directives,
    explicit: bool,
    result: Analysis,
    authorized: bool,
    store_set_cookie: bool,
) -> str | None:
    """
    Why a response may not be stored (RFC 9111 section 3), or C{None}.
    """
    if status == 206:
        return "partial"
    if status < 200 or status == 304:
        return "status"
    if b"must-understand" in directives:
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
    elif b"no-store" in directives:
        return "no-store"
    if b"private" in directives:
        return "private"
    if authorized and not result.authorized_ok:
        return "authorization"
    if not store_set_cookie and any(name == b"set-cookie" for name, _ in fields):
        return "set-cookie"
    if status not in CACHEABLE_BY_DEFAULT and not explicit and b"public" not in directives:
        return "status"
    reusable_fresh = result.lifetime > 0 and not result.no_cache
    if not (
        reusable_fresh
        or result.has_validator
        or result.stale_if_error > 0
        or result.stale_while_revalidate > 0
    ):
        return "not-reusable"
    return None
