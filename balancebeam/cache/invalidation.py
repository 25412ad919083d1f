"""
Invalidation by unsafe requests (RFC 9111 section 4.4): a C{POST}, C{PUT},
C{DELETE}, C{PATCH} (or any method not known to be safe) that succeeds
drops the stored responses for its URI, and for its C{Location} and
C{Content-Location} when they are on the same origin.
"""

from __future__ import annotations

from typing import Final

from zope.interface import implementer

from balancebeam.cache.keys import primary_key, same_origin_key
from balancebeam.cache.state import CacheState
from balancebeam.filters import Answer
from balancebeam.http1.heads import ResponseHead
from balancebeam.interfaces import IExchange, IResponseObserver

SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
"""Methods that never invalidate (RFC 9110 section 9.2.1); any other does."""


@implementer(IResponseObserver)
class InvalidationObserver:
    """
    Invalidates the stored responses an unsafe request changed, once its
    response says it succeeded (a 2xx or 3xx).
    """

    __slots__ = ("_cache", "_exchange")

    def __init__(self, cache: CacheState, exchange: IExchange) -> None:
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
