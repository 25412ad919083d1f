"""
Validators and conditional requests (RFC 9110 section 13, RFC 9111 section 4.3):
answering a client's C{If-None-Match} or C{If-Modified-Since} from a stored
response, C{If-Range}, and updating a stored response from a C{304}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from balancebeam.cache.directives import split_list
from balancebeam.cache.freshness import entity_tag, parse_http_date
from balancebeam.cache.store import Entry, Fields
from balancebeam.http1.rewrite import HOP_BY_HOP

NOT_UPDATED: Final = HOP_BY_HOP | {
    b"age",
    b"set-cookie",
    b"vary",
    b"content-range",
}
"""
Fields a C{304} does not change in a stored response (RFC 9111 section 3.2):
framing and hop-by-hop fields, C{Content-Length}, C{Age} (recomputed),
C{Set-Cookie} (never stored), and C{Vary} (the entry's key depends on it).
"""

NOT_MODIFIED_FIELDS: Final = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"via"}
)
"""The stored fields a C{304} sent to a client carries (RFC 9110 section 15.4.5)."""


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag[:2] == b"W/" else tag


def weak_match(first: bytes | None, second: bytes | None) -> bool:
    """
    The weak comparison of two entity-tags (RFC 9110 section 8.8.3.2).
    """
    if first is None or second is None:
        return False
    return _opaque(first) == _opaque(second)


def strong_match(first: bytes | None, second: bytes | None) -> bool:
    """
    The strong comparison of two entity-tags: neither weak, and equal.
    """
    if first is None or second is None:
        return False
    return first[:2] != b"W/" and first == second


def none_match(values: Iterable[bytes], etag: bytes | None) -> bool:
    """
    Whether C{If-None-Match} with these field values is false for a stored
    response with C{etag}, so that the answer is C{304}: C{*}, or a member
    that weakly matches.
    """
    for member in split_list(values):
        if member == b"*":
            return True
        if etag is not None and weak_match(entity_tag(member), etag):
            return True
    return False


def not_modified_since(value: bytes, entry: Entry, now: float) -> bool:
    """
    Whether C{If-Modified-Since: value} is false for C{entry} (it was not
    modified since), judged on its C{Last-Modified}, else its C{Date}
    (RFC 9111 section 4.3.2). An invalid date is ignored (C{False}).
    """
    since = parse_http_date(value, now)
    if since is None:
        return False
    modified = entry.last_modified_time
    if modified is None:
        modified = entry.date
    return modified <= since


def if_range_matches(value: bytes, entry: Entry, now: float) -> bool:
    """
    Whether C{If-Range: value} holds for C{entry} (RFC 9110 section 13.1.5):
    a strong match of its C{ETag}, or its C{Last-Modified} date when that is
    a strong validator (at least a second before C{Date}).
    """
    value = value.strip(b" \t")
    if value[:1] == b'"' or value[:2] == b"W/":
        return strong_match(entity_tag(value), entry.etag)
    since = parse_http_date(value, now)
    modified = entry.last_modified_time
    if since is None or modified is None:
        return False
    return since == modified and entry.date - modified >= 1


def updated_fields(stored: Fields, update: Sequence[tuple[bytes, bytes, bytes]]) -> Fields:
    """
    The fields of a stored response refreshed by a C{304} (RFC 9111 section
    3.2): every field the C{304} carries (other than L{NOT_UPDATED} ones)
    replaces all stored fields of that name. The stored response's last
    field, balancebeam's C{Via}, stays last.

    @param stored: the stored fields, ending with balancebeam's C{Via}.
    @param update: the C{304}'s fields (lower-cased name, value, raw line).
    """
    replacing = [
        (raw[: len(name)], value, name)
        for name, value, raw in update
        if name not in NOT_UPDATED
    ]
    if not replacing:
        return stored
    names = {name for _, _, name in replacing}
    kept = [field for field in stored[:-1] if field[0].lower() not in names]
    kept.extend((name, value) for name, value, _ in replacing)
    kept.append(stored[-1])
    return tuple(kept)


def not_modified_fields(entry: Entry) -> list[tuple[bytes, bytes]]:
    """
    The stored fields a C{304} to a client's conditional request repeats:
    those of L{NOT_MODIFIED_FIELDS}, and C{Last-Modified} when there is no
    C{ETag}.
    """
    keep = NOT_MODIFIED_FIELDS if entry.etag is not None else NOT_MODIFIED_FIELDS | {
        b"last-modified"
    }
    return [field for field in entry.fields if field[0].lower() in keep]
