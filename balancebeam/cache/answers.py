"""
Answers made from stored responses, and the C{Cache-Status} values (RFC
9211) that say how each response came about.

L{respond} turns a stored L{Entry} into an L{Answer} for one request: the
whole stored response, a C{304} when the client's own conditional is false,
or a C{206}/C{416} for a single byte range. Each answer ends with C{Age}
and C{Cache-Status}; the relay adds C{Content-Length} and C{Connection}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Final

from balancebeam.cache.ranges import (
    Unsatisfiable,
    content_range,
    parse_range,
    unsatisfied_range,
)
from balancebeam.cache.request import PLAIN_REQUEST, RequestInfo
from balancebeam.cache.store import Entry, Fields
from balancebeam.cache.validation import (
    if_range_matches,
    none_match,
    not_modified_fields,
    not_modified_since,
)
from balancebeam.filters import Answer, text_answer
from balancebeam.http1.heads import RequestHead

HIT: Final = b"balancebeam; hit; ttl=%d"
"""The C{Cache-Status} of a fresh hit, to be formatted with its seconds of freshness left."""

METHOD_LINE: Final = b"Cache-Status: balancebeam; fwd=method\r\n"
"""Added to responses to methods the cache does not look up."""

BYPASS_LINE: Final = b"Cache-Status: balancebeam; fwd=bypass\r\n"
"""Added to responses to requests the cache does not look up (preconditions, multiple ranges)."""

_RANGE_MESSAGE: Final = b"416 Range Not Satisfiable: the range is outside the response\n"


def hit_status(ttl: float) -> bytes:
    """
    The C{Cache-Status} of a response served from the cache without going
    upstream, with C{ttl} seconds of freshness left (negative when stale).
    """
    return HIT % math.floor(ttl)


def forwarded_status(
    kind: bytes,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
) -> bytes:
    """
    The C{Cache-Status} value of a response that went upstream (or waited
    for one that did).

    @param kind: the C{fwd} parameter: C{uri-miss}, C{vary-miss}, C{stale},
        C{request}.
    @param fwd_status: the upstream's status code, if one was received.
    @param stored: whether the response is being stored.
    @param collapsed: whether the request waited for another's miss.
    @param ttl: seconds of freshness left, if stored or served from storage.
    @param detail: why it was not stored, or another detail.
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


def status_line(value: bytes) -> bytes:
    """
    A C{Cache-Status} header line, for L{IExchange.add_response_headers
    <balancebeam.interfaces.IExchange.add_response_headers>}.
    """
    return b"Cache-Status: " + value + b"\r\n"


def only_if_cached(message: str) -> Answer:
    """
    The C{504} answering C{only-if-cached} when nothing stored fits (RFC
    9111 section 5.2.1.7).
    """
    return text_answer(
        504, message, ((b"Cache-Status", b"balancebeam; detail=only-if-cached"),)
    )


def reason_phrase(status: int, status_line: bytes) -> bytes:
    """
    The upstream's reason phrase, or the standard one when it sent none.

    @param status_line: the response's status line, C{HTTP/1.1 200 OK}.
    """
    phrase = status_line[13:]
    if phrase:
        return phrase
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def respond(
    entry: Entry,
    request: RequestHead,
    info: RequestInfo,
    now: float,
    cache_status: bytes,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> Answer:
    """
    Answer a request from C{entry}: C{304} when the client's own
    conditional is false, C{206}/C{416} for a single range, else the
    whole stored response (the relay leaves the body out for C{HEAD}).

    @param cache_status: the C{Cache-Status} value.
    @param extra: fields sent before C{Age} (a C{304}'s C{Set-Cookie}).
    """
    age = now - entry.born
    tail: Fields = (
        (b"Age", b"%d" % (age if age > 0 else 0)),
        (b"Cache-Status", cache_status),
    )
    if extra:
        tail = tuple(extra) + tail
    if info is PLAIN_REQUEST:
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
                    entry.fields + ((b"Content-Range", content_range(first, last, length)),)
                    + tail,
                    entry.body[first : last + 1],
                    b"Partial Content",
                )
            if isinstance(chosen, Unsatisfiable):
                return Answer(
                    416,
                    (
                        (b"Content-Type", b"text/plain; charset=utf-8"),
                        (b"Content-Range", unsatisfied_range(length)),
                        *tail,
                    ),
                    _RANGE_MESSAGE,
                    b"Range Not Satisfiable",
                )
    return Answer(entry.status, entry.fields + tail, entry.body, entry.reason)
