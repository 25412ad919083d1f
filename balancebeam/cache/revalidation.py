"""
When a stored response may be used as it is, when it must be validated
first, and what a C{304} does to it (RFC 9111 sections 4.2, 4.3 and
5.2, RFC 5861).

L{decide} says what a request may do with a stored response; a stale one
with validators is revalidated with the fields of L{validators}; a C{304}
that L{selects} the stored response L{refresh}es its fields and freshness.
A C{304} that names another representation updates nothing: the client's
own conditional may still be answered by it (L{answers_client}), otherwise
the request is sent again without validators. A C{200} to a C{HEAD} freshens
the stored C{GET} response it L{head_matches}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from balancebeam.cache.freshness import Analysis, analyse, entity_tag, parse_http_date
from balancebeam.cache.request import RequestInfo
from balancebeam.cache.state import CacheState
from balancebeam.cache.store import Entry
from balancebeam.cache.validation import none_match, updated_fields, weak_match

CONDITIONAL_FIELDS: Final = (
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
    b"if-range",
    b"range",
)
"""The client's fields removed from a revalidation, which asks for the full response."""

VALIDATOR_FIELDS: Final = (b"if-none-match", b"if-modified-since")
"""The fields L{validators} adds, removed again when the request is sent unconditionally."""

FRESH: Final = 0
"""Fresh, and the request accepts it: serve it."""

STALE_OK: Final = 1
"""Stale, but within the request's C{max-stale}: serve it."""

REVALIDATE_IN_BACKGROUND: Final = 2
"""Stale within C{stale-while-revalidate}: serve it, and revalidate it in the background."""

FORCED: Final = 3
"""Fresh, but the request or the response (C{no-cache}) wants it validated."""

STALE: Final = 4
"""Stale: validate it (or fetch anew) before use."""


def decide(entry: Entry, info: RequestInfo, now: float, in_background: bool) -> int:
    """
    Whether a stored response may be used for a request as it is (RFC
    9111 sections 4.2 and 5.2.1, RFC 5861).

    @param in_background: whether a background revalidation could be sent
        (a background fetcher exists and the request is a C{GET}).
    @return: L{FRESH}, L{STALE_OK}, L{REVALIDATE_IN_BACKGROUND}, L{FORCED}
        or L{STALE}.
    """
    fresh = now < entry.fresh_until
    if entry.no_cache or info.no_cache:
        return FORCED if fresh else STALE
    if info.max_age is not None and now - entry.born > info.max_age:
        return FORCED if fresh else STALE
    if info.min_fresh is not None and entry.fresh_until - now < info.min_fresh:
        return FORCED if fresh else STALE
    if fresh:
        return FRESH
    if entry.must_revalidate:
        return STALE
    staleness = now - entry.fresh_until
    if info.max_stale is not None and staleness <= info.max_stale:
        return STALE_OK
    if in_background and staleness < entry.stale_while_revalidate:
        return REVALIDATE_IN_BACKGROUND
    return STALE


def usable_on_error(entry: Entry, info: RequestInfo, now: float) -> bool:
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


def validators(entry: Entry) -> list[tuple[bytes, bytes]]:
    """
    The conditional fields that revalidate C{entry} (RFC 9111 section 4.3.1).
    """
    add = []
    if entry.etag is not None:
        add.append((b"If-None-Match", entry.etag))
    if entry.last_modified is not None:
        add.append((b"If-Modified-Since", entry.last_modified))
    return add


def apply_analysis(entry: Entry, analysis: Analysis) -> None:
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


def _validators_of(
    fields: Sequence[tuple[bytes, bytes, bytes]],
) -> tuple[bytes | None, bytes | None]:
    """
    The first C{ETag} (as an entity-tag) and C{Last-Modified} of a response.
    """
    etag = None
    modified = None
    for name, value, _ in fields:
        if name == b"etag" and etag is None:
            etag = entity_tag(value) or value
        elif name == b"last-modified" and modified is None:
            modified = value
    return etag, modified


def selects(entry: Entry, fields: Sequence[tuple[bytes, bytes, bytes]]) -> bool:
    """
    Whether a C{304} with these fields is about C{entry} (RFC 9111 section
    4.3.4): its C{ETag}, else its C{Last-Modified}, names the stored one;
    without either it selects the only stored response.

    @param fields: the C{304}'s fields (lower-cased name, value, raw line).
    """
    etag, modified = _validators_of(fields)
    if etag is not None:
        return weak_match(etag, entry.etag)
    if modified is not None and entry.last_modified is not None:
        return modified == entry.last_modified
    return True


def head_matches(
    entry: Entry,
    fields: Sequence[tuple[bytes, bytes, bytes]],
    special: Sequence[tuple[bytes, bytes, bytes]],
) -> bool:
    """
    Whether a C{200} to a C{HEAD} request may freshen the stored C{GET}
    response C{entry} (RFC 9111 section 4.3.5): every validator it carries
    (C{ETag}, C{Last-Modified}) matches the stored one, and its
    C{Content-Length}, if any, is the stored body's length.

    @param fields: the response's fields (lower-cased name, value, raw line).
    @param special: its framing fields, where C{Content-Length} is.
    """
    etag, modified = _validators_of(fields)
    if etag is not None and not weak_match(etag, entry.etag):
        return False
    if modified is not None and modified != entry.last_modified:
        return False
    length = b"%d" % len(entry.body)
    return all(value.strip() == length for name, value, _ in special
               if name == b"content-length")


def answers_client(info: RequestInfo, fields: Sequence[tuple[bytes, bytes, bytes]],
                   now: float) -> bool:
    """
    Whether a C{304} with these fields also answers the client's own
    conditional request (RFC 9110 section 13.1): one of its C{If-None-Match}
    tags weakly matches the C{304}'s C{ETag}, or, without C{If-None-Match},
    the C{304}'s C{Last-Modified} is not after its C{If-Modified-Since}.
    """
    etag, modified = _validators_of(fields)
    if info.if_none_match is not None:
        return none_match(info.if_none_match, etag)
    if info.if_modified_since is None or modified is None:
        return False
    since = parse_http_date(info.if_modified_since, now)
    changed = parse_http_date(modified, now)
    return since is not None and changed is not None and changed <= since


def refresh(
    state: CacheState,
    entry: Entry,
    fields: Sequence[tuple[bytes, bytes, bytes]],
    requested: float,
    now: float,
    authorized: bool,
) -> None:
    """
    Update a stored response from a C{304} that selected it (RFC 9111
    section 4.3.4): its fields, then its freshness, computed again from
    the updated fields and the C{304}'s C{Age}. A response that the update
    makes unstorable is dropped.

    @param fields: the C{304}'s fields (lower-cased name, value, raw line).
    @param requested: when the revalidation was sent.
    @param authorized: whether the request carried C{Authorization}.
    """
    updated = updated_fields(entry.fields, fields)
    lowered = [(name.lower(), value) for name, value in updated[:-1]]
    lowered.extend((name, value) for name, value, _ in fields if name == b"age")
    analysis = analyse(
        entry.status, lowered, requested, now, authorized, state.store_set_cookie
    )
    apply_analysis(entry, analysis)
    state.store.replace_fields(entry, updated)
    if analysis.reason is not None:
        state.store.remove(entry)
    state.counters.revalidated += 1
