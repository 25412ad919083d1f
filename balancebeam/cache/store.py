"""
The cache's memory: stored responses in least-recently-used order, within a
byte budget that counts what they really hold.

Each stored response (an L{Entry}) is charged its body, its head fields and
its keys byte for byte, plus a fixed overhead per entry and per field that
stands for the Python objects around them (L{ENTRY_OVERHEAD},
L{FIELD_OVERHEAD}, measured with C{tracemalloc}; C{tests/test_cache_store.py}
checks that the charge bounds the memory really allocated). When the total
goes over the budget, the least recently used entries are dropped.

Variants of one URL (responses with C{Vary}) are held at once: a
L{Resource} per primary key maps each secondary key to its entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Callable, Final

from balancebeam.cache.keys import VaryNames, VaryValues, secondary_key

ENTRY_OVERHEAD: Final = 1024
"""
Bytes charged per entry besides its contents: the L{Entry} object, the body
and key objects' headers, the fields tuple, its place in the LRU and variant
dicts, and a L{Resource}. Measured with C{tracemalloc} at 930 to 980 bytes
on CPython 3.11 (C{tests/test_cache_store.py} checks it); rounded up.
"""

FIELD_OVERHEAD: Final = 144
"""
Bytes charged per stored header field (and per C{Vary} name or value)
besides its name and value: a 2-tuple and two bytes objects. Measured at
130 bytes on CPython 3.11; rounded up.
"""

Fields = tuple[tuple[bytes, bytes], ...]
"""Header fields as sent: C{(name, value)} with the name's original case."""

VariantKey = tuple[VaryNames, VaryValues]
"""A secondary key: the C{Vary} names and the request's values of them."""

PLAIN: Final[VariantKey] = ((), ())
"""The secondary key of a response without C{Vary}."""


class CacheCounters:
    """
    What the cache has done, as plain integers; L{snapshot} copies them.

    @ivar hits: requests answered from a stored response without going upstream
        (stale ones served under C{max-stale} or C{stale-while-revalidate} included).
    @ivar misses: GET and HEAD requests sent upstream because nothing stored fits.
    @ivar stale: requests answered with a stale response because the upstream
        failed (C{stale-if-error}) or while it is revalidated in the background.
    @ivar revalidated: stored responses confirmed by a C{304}.
    @ivar collapsed: requests that waited for another request's miss.
    @ivar lock_timeouts: of those, requests that stopped waiting after the lock timeout.
    @ivar stored: responses stored.
    @ivar evicted: stored responses dropped for room.
    @ivar invalidated: stored responses dropped by an unsafe request.
    @ivar bypassed: requests the cache did not look up (other methods,
        C{If-Match}, multiple ranges).
    @ivar bytes: bytes charged for what is stored now.
    @ivar entries: stored responses now (hit-for-miss markers included).
    """

    __slots__ = (
        "hits",
        "misses",
        "stale",
        "revalidated",
        "collapsed",
        "lock_timeouts",
        "stored",
        "evicted",
        "invalidated",
        "bypassed",
        "bytes",
        "entries",
    )

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.stale = 0
        self.revalidated = 0
        self.collapsed = 0
        self.lock_timeouts = 0
        self.stored = 0
        self.evicted = 0
        self.invalidated = 0
        self.bypassed = 0
        self.bytes = 0
        self.entries = 0

    def snapshot(self) -> dict[str, int]:
        """
        A copy of every counter, for the shutdown log line and metrics.
        """
        return {name: getattr(self, name) for name in self.__slots__}


class Entry:
    """
    One stored response, with everything a hit needs precomputed.

    @ivar primary: the primary key.
    @ivar variant: the secondary key: the C{Vary} names and the request's values.
    @ivar status: the status code.
    @ivar reason: the reason phrase, or C{None} for the standard one.
    @ivar fields: the header fields to send (no framing or hop-by-hop fields,
        no C{Age}), in order, ending with balancebeam's C{Via}.
    @ivar body: the whole body.
    @ivar born: the clock time at which the response's age was 0.
    @ivar fresh_until: the clock time at which it becomes stale.
    @ivar date: its C{Date} as a time.
    @ivar stale_while_revalidate: seconds after C{fresh_until} it may be
        served while revalidated in the background.
    @ivar stale_if_error: seconds after C{fresh_until} it may be served when
        the upstream fails.
    @ivar no_cache: whether every use needs validation.
    @ivar must_revalidate: whether it may never be served stale.
    @ivar authorized_ok: whether it may be served to a request with C{Authorization}.
    @ivar etag: the C{ETag}, or C{None}.
    @ivar last_modified: the C{Last-Modified} value, or C{None}.
    @ivar last_modified_time: C{last_modified} as a time.
    @ivar hit_for_miss: whether this is a marker saying the last response
        for this key could not be stored, until C{fresh_until}: requests
        then go upstream at once instead of waiting for each other.
    @ivar revalidating: whether a background revalidation is in flight.
    @ivar size: the bytes charged for it.
    """

    __slots__ = (
        "primary",
        "variant",
        "status",
        "reason",
        "fields",
        "body",
        "born",
        "fresh_until",
        "date",
        "stale_while_revalidate",
        "stale_if_error",
        "no_cache",
        "must_revalidate",
        "authorized_ok",
        "etag",
        "last_modified",
        "last_modified_time",
        "hit_for_miss",
        "revalidating",
        "size",
    )

    def __init__(
        self,
        primary: bytes,
        variant: VariantKey,
        status: int,
        reason: bytes | None,
        fields: Fields,
        body: bytes,
    ) -> None:
        self.primary = primary
        self.variant = variant
        self.status = status
        self.reason = reason
        self.fields = fields
        self.body = body
        self.born = 0.0
        self.fresh_until = 0.0
        self.date = 0.0
        self.stale_while_revalidate = 0.0
        self.stale_if_error = 0.0
        self.no_cache = False
        self.must_revalidate = False
        self.authorized_ok = False
        self.etag: bytes | None = None
        self.last_modified: bytes | None = None
        self.last_modified_time: float | None = None
        self.hit_for_miss = False
        self.revalidating = False
        self.size = entry_size(primary, variant, fields, body)

    def __repr__(self) -> str:
        return f"<Entry {self.primary!r} {self.variant!r} {self.status} {len(self.body)} bytes>"


def entry_size(primary: bytes, variant: VariantKey, fields: Fields, body: bytes) -> int:
    """
    The bytes charged for an entry with these contents.
    """
    names, values = variant
    size = ENTRY_OVERHEAD + len(body) + len(primary)
    size += FIELD_OVERHEAD * (len(fields) + len(names) + len(values))
    for name, value in fields:
        size += len(name) + len(value)
    for name in names:
        size += len(name)
    for item in values:
        if item is not None:
            size += len(item)
    return size


class Resource:
    """
    The stored variants of one primary key.

    @ivar variants: entries by secondary key.
    @ivar specs: each C{Vary} name tuple in use, in the order first stored
        (the order lookups try them); a list, as it nearly always has one item.
    """

    __slots__ = ("variants", "specs")

    def __init__(self) -> None:
        self.variants: dict[VariantKey, Entry] = {}
        self.specs: list[VaryNames] = []


class CacheStore:
    """
    Stored responses by key, least recently used first, within C{max_bytes}.

    @ivar max_bytes: the budget for L{CacheCounters.bytes}.
    """

    def __init__(self, max_bytes: int, counters: CacheCounters) -> None:
        """
        @param max_bytes: the most bytes charged at once (see L{entry_size}).
        @param counters: where C{bytes}, C{entries}, C{stored} and C{evicted} are kept.
        """
        self.max_bytes = max_bytes
        self._counters = counters
        self._resources: dict[bytes, Resource] = {}
        self._lru: OrderedDict[Entry, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def find(
        self, primary: bytes, request_fields: Callable[[], Sequence[tuple[bytes, bytes, bytes]]]
    ) -> tuple[Entry | None, VariantKey | None]:
        """
        The entry that matches a request, marked as just used.

        @param request_fields: gives the request's fields (lower-cased name,
            value, raw line); called only when the resource varies.
        @return: the entry and its secondary key; or C{None} and the
            secondary key the request would have under the first C{Vary}
            tried (a vary miss); or C{(None, None)} when nothing is stored
            for C{primary} (a URI miss).
        """
        resource = self._resources.get(primary)
        if resource is None:
            return None, None
        first: VariantKey | None = None
        for names in resource.specs:
            key = (names, secondary_key(request_fields(), names)) if names else PLAIN
            entry = resource.variants.get(key)
            if entry is not None:
                self._lru.move_to_end(entry)
                return entry, key
            if first is None:
                first = key
        return None, first

    def get(self, primary: bytes, variant: VariantKey) -> Entry | None:
        """
        The entry stored under exactly this key, if any (not marked as used).
        """
        resource = self._resources.get(primary)
        return None if resource is None else resource.variants.get(variant)

    def put(self, entry: Entry) -> bool:
        """
        Store C{entry}, replacing whatever has its key, then drop least
        recently used entries until the total is within the budget. A real
        response also replaces the hit-for-miss markers of its primary key.

        @return: whether it was stored (it is not when larger than the budget).
        """
        resource = self._resources.get(entry.primary)
        if resource is not None:
            old = resource.variants.get(entry.variant)
            if old is not None:
                self._remove(old, resource)
            if not entry.hit_for_miss:
                for marker in [e for e in resource.variants.values() if e.hit_for_miss]:
                    self._remove(marker, resource)
        if entry.size > self.max_bytes:
            return False
        resource = self._resources.get(entry.primary)
        if resource is None:
            resource = self._resources[entry.primary] = Resource()
        resource.variants[entry.variant] = entry
        names = entry.variant[0]
        if names not in resource.specs:
            resource.specs.append(names)
        self._lru[entry] = None
        counters = self._counters
        counters.bytes += entry.size
        counters.entries += 1
        while counters.bytes > self.max_bytes:
            oldest = next(iter(self._lru))
            self.remove(oldest)
            counters.evicted += 1
        return True

    def remove(self, entry: Entry) -> bool:
        """
        Drop C{entry} if it is still stored.

        @return: whether it was.
        """
        resource = self._resources.get(entry.primary)
        if resource is None or resource.variants.get(entry.variant) is not entry:
            return False
        self._remove(entry, resource)
        return True

    def _remove(self, entry: Entry, resource: Resource) -> None:
        del resource.variants[entry.variant]
        if not resource.variants:
            del self._resources[entry.primary]
        else:
            names = entry.variant[0]
            if all(key[0] != names for key in resource.variants):
                resource.specs.remove(names)
        del self._lru[entry]
        self._counters.bytes -= entry.size
        self._counters.entries -= 1

    def keys(self) -> list[bytes]:
        """
        The primary keys of every resource held, for a purge by path.
        """
        return list(self._resources)

    def invalidate(self, primary: bytes) -> int:
        """
        Drop every variant stored for C{primary} (RFC 9111 section 4.4).

        @return: how many real responses (not markers) were dropped.
        """
        resource = self._resources.get(primary)
        if resource is None:
            return 0
        dropped = 0
        for entry in list(resource.variants.values()):
            dropped += not entry.hit_for_miss
            self._remove(entry, resource)
        return dropped

    def replace_fields(self, entry: Entry, fields: Fields) -> None:
        """
        Give a stored entry new header fields (after a C{304}) and charge
        the difference, evicting others if needed.
        """
        stored = self.remove(entry)
        entry.fields = fields
        entry.size = entry_size(entry.primary, entry.variant, fields, entry.body)
        if stored:
            self.put(entry)
