"""
What a request says to the cache (RFC 9111 section 5.2.1): its
C{Cache-Control} and C{Pragma} directives, C{Authorization}, its own
conditional fields and C{Range}, parsed once per request into a
L{RequestInfo}.

Most requests carry none of these fields: they all share L{PLAIN_REQUEST},
which the hot path recognises by identity.
"""

from __future__ import annotations

import math
import re
from typing import Final

from balancebeam.cache.directives import delta_seconds, parse_cache_control, split_list

_REQUEST_FIELDS: Final = re.compile(
    rb"\r\n(cache-control|pragma|authorization|range|if-range|if-none-match"
    rb"|if-modified-since|if-match|if-unmodified-since):[ \t]*([^\r]*)",
    re.IGNORECASE,
)
"""The request fields the cache reads, found in the raw head in one pass."""


class RequestInfo:
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


PLAIN_REQUEST: Final = RequestInfo()
"""The info of every request with none of the fields the cache reads (shared)."""


def request_info(raw: bytes) -> RequestInfo:
    """
    Parse the fields of a request head that the cache acts on.

    @param raw: the request head as received.
    """
    found = _REQUEST_FIELDS.findall(raw)
    if not found:
        return PLAIN_REQUEST
    info = RequestInfo()
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
