"""
Purging the cache on an operator's request (C{POST /cache/purge?url=URL} on
the admin listener): L{CachePurger}.
"""

from __future__ import annotations

from zope.interface import implementer

from balancebeam.admin.providers import IPurger, parse_purge_url
from balancebeam.cache.keys import primary_key
from balancebeam.cache.store import CacheStore


@implementer(IPurger)
class CachePurger:
    """
    Drops the stored responses for one URL, every variant of it.
    """

    def __init__(self, store: CacheStore) -> None:
        self._store = store

    def purge(self, url: str) -> int:
        """
        Drop what is stored for C{url}: an absolute URL
        (C{https://example.com/a?b}) names one resource of one host; a path
        (C{/a?b}) names it on every host and scheme the cache holds it for.

        @return: how many stored responses were dropped.
        @raise ValueError: when C{url} is neither (L{parse_purge_url}).
        """
        named = parse_purge_url(url)
        if named.host:
            return self._store.invalidate(primary_key(named.scheme, named.host, named.target))
        path = primary_key(b"http", b"", named.target)[len(b"http://") :]
        return sum(
            self._store.invalidate(key)
            for key in self._store.keys()
            if key.endswith(path) and key[: -len(path)].count(b"/") == 2
        )
