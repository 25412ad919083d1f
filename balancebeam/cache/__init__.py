"""
The in-memory HTTP response cache (RFC 9111, RFC 5861, RFC 9211): a request
filter (L{CacheFilter}) with a response observer, on the request-filter seam.

Modules: C{filter} (the request side: lookup, answer, wait or forward),
C{fill} (the observer that stores, refreshes or falls back on stale),
C{invalidation} (unsafe methods), C{revalidation} (when a stored response
may be used, validators, 304 updates), C{answers} (answers from stored
responses, C{Cache-Status}), C{request} (the request's directives),
C{state} (what the filter and its observers share), C{directives}
(list and Cache-Control parsing), C{freshness} (storability, age,
freshness), C{keys} (primary and Vary keys), C{store} (LRU store with
byte accounting, counters), C{coalescing} (request collapsing), C{ranges},
C{validation} (conditionals, 304 field updates) and C{interfaces}
(L{IBackgroundFetch}, L{IResendable}). See C{doc/cache.md}.
"""

from __future__ import annotations

from balancebeam.cache.filter import CacheFilter
from balancebeam.cache.interfaces import IBackgroundFetch
from balancebeam.cache.store import CacheCounters

__all__ = ["CacheCounters", "CacheFilter", "IBackgroundFetch"]
