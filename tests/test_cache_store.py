"""
Tests for L{balancebeam.cache.store}: LRU order, byte accounting, and that
the accounting bounds the memory really held (measured with tracemalloc).
"""

from __future__ import annotations

import gc
import platform
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.filter import CacheFilter
from balancebeam.cache.store import (
    ENTRY_OVERHEAD,
    FIELD_OVERHEAD,
    PLAIN,
    CacheCounters,
    CacheStore,
    Entry,
    entry_size,
)

from .test_cache_fakes import EPOCH, FakeExchange, http_date, relay, request_head, response_head


def make_entry(
    path: bytes, body: bytes = b"x" * 100, variant: tuple = PLAIN, marker: bool = False
) -> Entry:
    """
    An entry for C{http://h<path>} with two fields.
    """
    entry = Entry(
        b"http://h" + path,
        variant,
        200,
        b"OK",
        ((b"Content-Type", b"text/plain"), (b"Via", b"1.1 balancebeam")),
        body,
    )
    entry.hit_for_miss = marker
    return entry


def no_fields() -> list[tuple[bytes, bytes, bytes]]:
    """
    A request without fields (for non-varying lookups).
    """
    return []


class StoreTests(SynchronousTestCase):
    """
    Tests for L{CacheStore}.
    """

    def setUp(self) -> None:
        self.counters = CacheCounters()
        size = make_entry(b"/0").size
        self.store = CacheStore(3 * size, self.counters)

    def test_size_counts_contents_and_overheads(self) -> None:
        """
        An entry is charged its body, key, fields and the fixed overheads.
        """
        entry = make_entry(b"/a", body=b"12345")
        self.assertEqual(
            entry.size,
            ENTRY_OVERHEAD + 5 + len(b"http://h/a") + 2 * FIELD_OVERHEAD
            + len(b"Content-Type" b"text/plain" b"Via" b"1.1 balancebeam"),
        )
        self.assertEqual(entry_size(entry.primary, ((b"a",), (b"gz",)), (), b""),
                         ENTRY_OVERHEAD + len(entry.primary) + 2 * FIELD_OVERHEAD + 3)

    def test_bytes_and_entries_counted(self) -> None:
        """
        Storing and removing keep bytes and entries equal to what is held.
        """
        first, second = make_entry(b"/1"), make_entry(b"/2", body=b"")
        self.store.put(first)
        self.store.put(second)
        self.assertEqual(self.counters.bytes, first.size + second.size)
        self.assertEqual(self.counters.entries, 2)
        self.assertTrue(self.store.remove(first))
        self.assertFalse(self.store.remove(first))
        self.assertEqual((self.counters.bytes, self.counters.entries), (second.size, 1))

    def test_least_recently_used_evicted(self) -> None:
        """
        Over the budget, the least recently used entry goes; a lookup makes an entry recent.
        """
        entries = [make_entry(b"/%d" % i) for i in range(3)]
        for entry in entries:
            self.assertTrue(self.store.put(entry))
        self.assertEqual(self.store.find(b"http://h/0", no_fields), (entries[0], PLAIN))
        self.store.put(make_entry(b"/3"))
        self.assertEqual(self.store.find(b"http://h/1", no_fields), (None, None))
        self.assertIs(self.store.find(b"http://h/0", no_fields)[0], entries[0])
        self.assertEqual(self.counters.evicted, 1)
        self.assertEqual(len(self.store), 3)
        self.assertLessEqual(self.counters.bytes, self.store.max_bytes)

    def test_too_large_not_stored(self) -> None:
        """
        An entry larger than the whole budget is not stored, and replaces nothing in place.
        """
        self.store.put(make_entry(b"/a"))
        self.assertFalse(self.store.put(make_entry(b"/b", body=b"x" * self.store.max_bytes)))
        self.assertEqual(self.counters.entries, 1)
        self.assertEqual(self.counters.evicted, 0)

    def test_same_key_replaced(self) -> None:
        """
        Storing under a key already held replaces the old entry.
        """
        old, new = make_entry(b"/a"), make_entry(b"/a", body=b"new")
        self.store.put(old)
        self.store.put(new)
        self.assertIs(self.store.get(b"http://h/a", PLAIN), new)
        self.assertEqual((self.counters.entries, self.counters.bytes), (1, new.size))

    def test_variants_and_invalidation(self) -> None:
        """
        Variants of one URL are held at once, and invalidation drops them all.
        """
        gzip = make_entry(b"/a", variant=((b"accept-encoding",), (b"gzip",)))
        plain = make_entry(b"/a", variant=((b"accept-encoding",), (None,)))
        self.store.put(gzip)
        self.store.put(plain)

        def gzip_request() -> list[tuple[bytes, bytes, bytes]]:
            return [(b"accept-encoding", b"gzip", b"Accept-Encoding: gzip")]

        self.assertIs(self.store.find(b"http://h/a", gzip_request)[0], gzip)
        self.assertIs(self.store.find(b"http://h/a", no_fields)[0], plain)
        self.assertEqual(self.store.invalidate(b"http://h/a"), 2)
        self.assertEqual((self.counters.entries, self.counters.bytes), (0, 0))

    def test_vary_miss_reports_key(self) -> None:
        """
        A lookup that matches no variant reports the secondary key it would have.
        """
        self.store.put(make_entry(b"/a", variant=((b"accept-encoding",), (b"gzip",))))
        self.assertEqual(
            self.store.find(b"http://h/a", no_fields), (None, ((b"accept-encoding",), (None,)))
        )

    def test_real_entry_replaces_markers(self) -> None:
        """
        A stored response drops the hit-for-miss markers of its URL.
        """
        self.store.put(make_entry(b"/a", marker=True))
        real = make_entry(b"/a", variant=((b"accept",), (None,)))
        self.store.put(real)
        self.assertIs(self.store.find(b"http://h/a", no_fields)[0], real)
        self.assertEqual(self.counters.entries, 1)

    def test_replace_fields(self) -> None:
        """
        New fields are charged, and an entry no longer stored stays out.
        """
        entry = make_entry(b"/a")
        self.store.put(entry)
        self.store.replace_fields(entry, ((b"X", b"y" * 50),))
        self.assertEqual(self.counters.bytes, entry.size)
        self.assertEqual(entry.fields, ((b"X", b"y" * 50),))
        self.store.remove(entry)
        self.store.replace_fields(entry, ())
        self.assertEqual(self.counters.entries, 0)


def _fill(cache: CacheFilter, clock: Clock, rng: random.Random, path: bytes, field_count: int,
          body_length: int) -> None:
    """
    Send one miss for C{path} through C{cache} and store its response.
    """
    exchange = FakeExchange(request_head(path), clock.seconds())
    if cache.on_request(exchange) is not None:
        return
    fields = [b"Cache-Control: max-age=600", b"Date: " + http_date(clock.seconds())]
    fields += [b"X-F%d: %s" % (k, b"v" * rng.randrange(1, 60)) for k in range(field_count)]
    body = b"b" * body_length
    relay(exchange, response_head(fields=fields, length=len(body)), [body[:7], body[7:]])


class MemoryTests(SynchronousTestCase):
    """
    The accounting bounds the memory really allocated for stored responses.
    """

    if platform.python_implementation() != "CPython":
        skip = "tracemalloc exists on CPython only (PyPy has no _tracemalloc)"

    def measure(self, field_count: int, body_length: int, count: int) -> tuple[int, int]:
        """
        Store C{count} responses; return the bytes allocated and the bytes charged.
        """
        import tracemalloc

        clock = Clock()
        clock.advance(EPOCH)
        rng = random.Random(5)
        cache = CacheFilter(clock, 1 << 40, 1 << 20, 5.0)
        _fill(cache, clock, rng, b"/warm-up", 0, 0)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            charged_before = cache.counters.bytes
            for index in range(count):
                _fill(cache, clock, rng, b"/item/%d" % index, field_count, body_length)
            gc.collect()
            real = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return real, cache.counters.bytes - charged_before

    def test_overhead_per_entry(self) -> None:
        """
        For small and large heads and bodies, what is charged covers what is allocated,
        without overcharging by more than 25%.
        """
        for field_count, body_length in ((0, 0), (20, 0), (5, 3000)):
            real, charged = self.measure(field_count, body_length, 1000)
            self.assertLessEqual(real, charged, (field_count, body_length))
            self.assertGreater(real, 0.75 * charged, (field_count, body_length))

    def test_bounded_under_random_keys(self) -> None:
        """
        Under random-key load with evictions, the memory held stays within the budget + 10%.
        """
        import tracemalloc

        limit = 1_000_000
        clock = Clock()
        clock.advance(EPOCH)
        rng = random.Random(6)
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            cache = CacheFilter(clock, limit, 1 << 16, 5.0)
            worst = 0
            for index in range(4000):
                path = b"/k/%d" % rng.randrange(20000)
                _fill(cache, clock, rng, path, rng.randrange(12),
                      rng.choice((0, 10, 300, 2000, 8000)))
                self.assertLessEqual(cache.counters.bytes, limit)
                if index % 500 == 499:
                    gc.collect()
                    worst = max(worst, tracemalloc.get_traced_memory()[0] - base)
        finally:
            tracemalloc.stop()
        self.assertGreater(cache.counters.evicted, 1000)
        self.assertLessEqual(worst, limit * 1.1)
