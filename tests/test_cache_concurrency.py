"""
Tests for the parts of L{balancebeam.cache.filter.CacheFilter} that involve
several requests in flight, on a fake clock: request coalescing, hit-for-miss,
the lock timeout, clients leaving mid-fill, stale-while-revalidate with
background revalidation, and stale-if-error.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.revalidation import CONDITIONAL_FIELDS
from balancebeam.filters import Answer

from .test_cache_fakes import (
    CacheScenario,
    FakeExchange,
    fail_before_head,
    field,
    http_date,
    relay,
    relay_background,
    response_head,
)


class CoalescingTests(SynchronousTestCase):
    """
    Concurrent misses on one key send one request upstream.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()

    def waiters(self, count: int, target: bytes = b"/") -> list[tuple[FakeExchange, Deferred]]:
        """
        Send C{count} requests that must wait; return their exchanges and Deferreds.
        """
        waiting = []
        for _ in range(count):
            exchange, result = self.s.ask(target)
            assert isinstance(result, Deferred), result
            self.assertNoResult(result)
            self.assertEqual(exchange.observers, [])
            waiting.append((exchange, result))
        return waiting

    def test_one_request_upstream(self) -> None:
        """
        Concurrent misses wait for the first; its stored response serves them all, marked
        collapsed.
        """
        leader, result = self.s.ask()
        self.assertIsNone(result)
        waiting = self.waiters(5)
        self.s.clock.advance(1)
        self.s.respond(leader)
        for _, deferred in waiting:
            answer = self.successResultOf(deferred)
            assert isinstance(answer, Answer)
            self.assertEqual(answer.body, b"hello")
            # The leader's request took a second: the response is a second old.
            self.assertEqual(
                field(answer, b"Cache-Status"),
                b"balancebeam; fwd=uri-miss; fwd-status=200; collapsed; ttl=59",
            )
            self.assertEqual(field(answer, b"Age"), b"1")
        counters = self.s.cache.counters
        self.assertEqual((counters.misses, counters.collapsed, counters.hits), (1, 5, 5))

    def test_other_key_does_not_wait(self) -> None:
        """
        A miss on another key goes upstream at once.
        """
        self.s.ask(b"/a")
        self.assertIsNone(self.s.ask(b"/b")[1])

    def test_hit_for_miss(self) -> None:
        """
        When the response cannot be stored, the waiters go upstream themselves, and the next
        requests for the key do not wait for each other.
        """
        leader, _ = self.s.ask()
        waiting = self.waiters(2)
        self.s.respond(leader, [b"Cache-Control: private"])
        for exchange, deferred in waiting:
            self.assertIsNone(self.successResultOf(deferred))
            self.assertEqual(len(exchange.observers), 1)
        first, first_result = self.s.ask()
        second, second_result = self.s.ask()
        self.assertEqual((first_result, second_result), (None, None))
        self.assertEqual(self.s.cache.counters.stored, 0)

    def test_hit_for_miss_expires(self) -> None:
        """
        After the hit-for-miss time, requests wait for each other again.
        """
        leader, _ = self.s.ask()
        self.s.respond(leader, [b"Cache-Control: no-store"])
        self.s.clock.advance(120)
        self.assertIsNone(self.s.ask()[1])
        self.assertIsInstance(self.s.ask()[1], Deferred)

    def test_hit_for_miss_replaced_by_storable(self) -> None:
        """
        A storable response to a request passing a hit-for-miss marker is stored.
        """
        leader, _ = self.s.ask()
        self.s.respond(leader, [b"Cache-Control: no-store"])
        self.s.fetch()
        self.assertIsInstance(self.s.ask()[1], Answer)

    def test_lock_timeout(self) -> None:
        """
        A waiter goes upstream itself when the lock timeout passes, not before.
        """
        self.s.ask()
        [(exchange, deferred)] = self.waiters(1)
        self.s.clock.advance(4.9)
        self.assertNoResult(deferred)
        self.s.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(deferred))
        self.assertEqual(len(exchange.observers), 1)
        self.assertEqual(self.s.cache.counters.lock_timeouts, 1)

    def test_leader_fails(self) -> None:
        """
        When the first request fails, the waiters go upstream, and nothing is stored.
        """
        leader, _ = self.s.ask()
        waiting = self.waiters(2)
        self.s.respond(leader, failure="upstream reset")
        for exchange, deferred in waiting:
            self.assertIsNone(self.successResultOf(deferred))
            self.assertEqual(len(exchange.observers), 1)
        self.assertEqual(self.s.cache.counters.entries, 0)

    def test_client_leaves_with_waiters(self) -> None:
        """
        A fill others wait for outlives its client, and the waiters are served.
        """
        leader, _ = self.s.ask()
        [(_, deferred)] = self.waiters(1)
        outcome = self.s.respond(leader, client_leaves_after=1)
        self.assertTrue(outcome.continued)
        answer = self.successResultOf(deferred)
        assert isinstance(answer, Answer)
        self.assertEqual(answer.body, b"hello")

    def test_client_leaves_without_waiters(self) -> None:
        """
        With no one waiting, the fill is abandoned: nothing stored, the next request leads.
        """
        leader, _ = self.s.ask()
        outcome = self.s.respond(leader, client_leaves_after=1)
        self.assertFalse(outcome.continued)
        self.assertEqual(self.s.cache.counters.entries, 0)
        self.assertIsNone(self.s.ask()[1])

    def test_waiter_leaves(self) -> None:
        """
        A waiter that is cancelled is forgotten: the fill is then abandoned with its client.
        """
        leader, _ = self.s.ask()
        [(_, deferred)] = self.waiters(1)
        deferred.cancel()
        self.failureResultOf(deferred, CancelledError)
        self.assertFalse(self.s.respond(leader, client_leaves_after=1).continued)
        self.assertEqual(self.s.clock.getDelayedCalls(), [])

    def test_expiry_stampede(self) -> None:
        """
        When a popular entry goes stale, one request revalidates and the others wait for it.
        """
        self.s.fetch(response_fields=[b"Cache-Control: max-age=10", b'ETag: "v"'])
        self.s.clock.advance(11)
        first, result = self.s.ask()
        self.assertIsNone(result)
        waiting = self.waiters(3)
        outcome = self.s.respond(first, [b'ETag: "v"', b"Cache-Control: max-age=10"], b"",
                                 b"304 Not Modified")
        self.assertIsNotNone(outcome.answer)
        for _, deferred in waiting:
            answer = self.successResultOf(deferred)
            assert isinstance(answer, Answer)
            self.assertEqual(field(answer, b"Cache-Status"),
                             b"balancebeam; fwd=stale; fwd-status=200; collapsed; ttl=10")
        self.assertEqual(self.s.cache.counters.misses, 2)

    def test_vary_mismatch_after_wait(self) -> None:
        """
        A waiter whose request does not match the stored variant goes upstream for its own.
        """
        leader, _ = self.s.ask(fields=[b"Accept-Encoding: gzip"])
        exchange, deferred = self.s.ask(fields=[b"Accept-Encoding: br"])
        assert isinstance(deferred, Deferred)
        self.s.respond(leader, [b"Cache-Control: max-age=60", b"Vary: Accept-Encoding"])
        self.assertIsNone(self.successResultOf(deferred))
        self.s.respond(exchange, [b"Cache-Control: max-age=60", b"Vary: Accept-Encoding"], b"br")
        self.assertEqual(exchange.cache_status(),
                         b"balancebeam; fwd=vary-miss; fwd-status=200; stored; ttl=60")
        self.assertEqual(self.s.cache.counters.entries, 2)


class StaleWhileRevalidateTests(SynchronousTestCase):
    """
    stale-while-revalidate: serve stale at once, revalidate once in the background.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()
        self.s.fetch(response_fields=[b"Cache-Control: max-age=10, stale-while-revalidate=30",
                                      b'ETag: "v1"'])
        self.s.clock.advance(15)

    def test_served_stale_with_one_revalidation(self) -> None:
        """
        Within the window the stale response is served at once and one background
        conditional request starts; a second request starts none.
        """
        answer = self.s.answer()
        self.assertEqual(field(answer, b"Cache-Status"), b"balancebeam; hit; ttl=-5")
        self.assertEqual(field(answer, b"Age"), b"15")
        self.assertIsInstance(self.s.ask()[1], Answer)
        [(request, client_ip, scheme, remove, add, _)] = self.s.background.fetches
        self.assertEqual((request.method, request.target, client_ip, scheme),
                         (b"GET", b"/", "192.0.2.1", b"http"))
        self.assertEqual((remove, add), (CONDITIONAL_FIELDS, ((b"If-None-Match", b'"v1"'),)))
        self.assertEqual(self.s.cache.counters.stale, 2)

    def test_background_304_refreshes(self) -> None:
        """
        The background 304 makes the entry fresh again.
        """
        self.s.answer()
        observer = self.s.background.fetches[0][5]
        relay_background(observer, response_head(b"304 Not Modified", [
            b"Date: " + http_date(self.s.clock.seconds()), b'ETag: "v1"']))
        answer = self.s.answer()
        self.assertEqual(field(answer, b"Cache-Status"), b"balancebeam; hit; ttl=10")
        self.assertEqual(self.s.cache.counters.revalidated, 1)

    def test_background_304_for_other_representation(self) -> None:
        """
        A background 304 naming another ETag updates nothing and drops the
        entry, so that the next request fetches it anew.
        """
        self.s.answer()
        observer = self.s.background.fetches[0][5]
        relay_background(observer, response_head(b"304 Not Modified", [
            b"Date: " + http_date(self.s.clock.seconds()), b'ETag: "v7"']))
        self.assertEqual(self.s.cache.counters.revalidated, 0)
        self.assertEqual(self.s.cache.counters.entries, 0)
        exchange, result = self.s.ask()
        self.assertIsNone(result)
        self.assertEqual(exchange.rewrites, [])

    def test_background_200_replaces(self) -> None:
        """
        A background 200 stores the new response.
        """
        self.s.answer()
        observer = self.s.background.fetches[0][5]
        relay_background(observer, response_head(b"200 OK", [
            b"Cache-Control: max-age=10", b'ETag: "v2"'], 3), [b"new"])
        self.assertEqual(self.s.answer().body, b"new")

    def test_background_failure_allows_retry(self) -> None:
        """
        After a failed background revalidation, the next request starts another.
        """
        self.s.answer()
        self.s.background.fetches[0][5].response_failed("connect failed")
        self.s.answer()
        self.assertEqual(len(self.s.background.fetches), 2)

    def test_beyond_window(self) -> None:
        """
        Past the window the request waits for a foreground revalidation.
        """
        self.s.clock.advance(25)
        exchange, result = self.s.ask()
        self.assertIsNone(result)
        self.assertEqual(self.s.background.fetches, [])
        self.assertEqual(exchange.rewrites[0][1], ((b"If-None-Match", b'"v1"'),))

    def test_without_background_fetcher(self) -> None:
        """
        Without a background fetcher, stale entries are revalidated before use.
        """
        s = CacheScenario(background=False)
        s.fetch(response_fields=[b"Cache-Control: max-age=10, stale-while-revalidate=30"])
        s.clock.advance(15)
        self.assertIsNone(s.ask()[1])

    def test_request_no_cache_overrides(self) -> None:
        """
        A request with no-cache is not served stale; it waits for a background revalidation
        in flight.
        """
        self.s.answer()
        exchange, result = self.s.ask(fields=[b"Cache-Control: no-cache"])
        assert isinstance(result, Deferred)
        relay_background(self.s.background.fetches[0][5], response_head(b"304 Not Modified", [
            b"Date: " + http_date(self.s.clock.seconds()), b'ETag: "v1"']))
        answer = self.successResultOf(result)
        assert isinstance(answer, Answer)
        self.assertEqual(answer.body, b"hello")


class StaleIfErrorTests(SynchronousTestCase):
    """
    stale-if-error: a stale response replaces an upstream failure or 5xx within its window.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()
        self.s.fetch(response_fields=[b"Cache-Control: max-age=10, stale-if-error=60",
                                      b'ETag: "v1"'])
        self.s.clock.advance(20)

    def test_5xx_replaced(self) -> None:
        """
        A 503 within the window is replaced by the stale response.
        """
        exchange, _ = self.s.ask()
        outcome = self.s.respond(exchange, [], b"down", b"503 Service Unavailable")
        assert outcome.answer is not None
        self.assertEqual(outcome.answer.body, b"hello")
        self.assertEqual(
            field(outcome.answer, b"Cache-Status"),
            b"balancebeam; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error",
        )
        self.assertEqual(self.s.cache.counters.stale, 1)

    def test_failure_replaced(self) -> None:
        """
        A failure before any response head is replaced by the stale response.
        """
        exchange, _ = self.s.ask()
        answer = fail_before_head(exchange, "connect refused")
        assert answer is not None
        self.assertEqual(answer.body, b"hello")

    def test_failure_mid_body_not_replaced(self) -> None:
        """
        Once a response head was relayed, a failure is not replaced.
        """
        exchange, _ = self.s.ask()
        head = response_head(b"200 OK", [b'ETag: "v2"', b"Cache-Control: max-age=9"], 10)
        relay(exchange, head, [b"abc"], complete=False)
        self.assertIsNone(exchange.observers[0].response_failed("upstream reset"))

    def test_beyond_window(self) -> None:
        """
        Past the window the 5xx is relayed.
        """
        self.s.clock.advance(51)
        exchange, _ = self.s.ask()
        outcome = self.s.respond(exchange, [], b"down", b"503 Service Unavailable")
        self.assertIsNone(outcome.answer)
        self.assertEqual(exchange.cache_status(),
                         b"balancebeam; fwd=stale; fwd-status=503; detail=status")

    def test_4xx_not_replaced(self) -> None:
        """
        A 404 is an answer, not an error: it is relayed.
        """
        exchange, _ = self.s.ask()
        self.assertIsNone(self.s.respond(exchange, [], b"gone", b"404 Not Found").answer)

    def test_request_stale_if_error(self) -> None:
        """
        The request's own stale-if-error allows stale on error when the response has none.
        """
        s = CacheScenario()
        s.fetch(response_fields=[b"Cache-Control: max-age=10", b'ETag: "v"'])
        s.clock.advance(30)
        exchange, _ = s.ask(fields=[b"Cache-Control: stale-if-error=30"])
        self.assertIsNotNone(fail_before_head(exchange))
        exchange, _ = s.ask()
        self.assertIsNone(fail_before_head(exchange))

    def test_must_revalidate_forbids(self) -> None:
        """
        must-revalidate forbids stale on error, even when the request asks for it.
        """
        s = CacheScenario()
        s.fetch(response_fields=[b"Cache-Control: max-age=10, must-revalidate", b'ETag: "v"'])
        s.clock.advance(30)
        exchange, _ = s.ask(fields=[b"Cache-Control: stale-if-error=300"])
        self.assertIsNone(fail_before_head(exchange))

    def test_waiters_get_stale(self) -> None:
        """
        Requests waiting on a revalidation that fails get the stale response too.
        """
        exchange, _ = self.s.ask()
        _, waiting = self.s.ask()
        assert isinstance(waiting, Deferred)
        self.assertIsNotNone(fail_before_head(exchange))
        answer = self.successResultOf(waiting)
        assert isinstance(answer, Answer)
        self.assertEqual(field(answer, b"Cache-Status"),
                         b"balancebeam; fwd=stale; collapsed; ttl=-10; detail=stale-if-error")
        self.assertEqual(self.s.cache.counters.stale, 2)
