"""
Tests for L{balancebeam.cache.filter.CacheFilter} one request at a time, on a
fake clock: hits, what is stored, request directives, validation, Vary,
ranges, invalidation and Cache-Status values.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.revalidation import CONDITIONAL_FIELDS
from balancebeam.filters import Answer

from .test_cache_fakes import (
    CacheScenario,
    FakeExchange,
    ResendableExchange,
    fail_before_head,
    field,
    http_date,
    relay,
    render,
    response_head,
)


class HitTests(SynchronousTestCase):
    """
    A stored response is served with Age and Cache-Status.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()

    def test_miss_then_hit(self) -> None:
        """
        A miss goes upstream and is stored; the next request is answered from the cache.
        """
        exchange, outcome = self.s.fetch()
        self.assertIsNone(outcome.answer)
        self.assertEqual(
            exchange.cache_status(), b"balancebeam; fwd=uri-miss; fwd-status=200; stored; ttl=60"
        )
        answer = self.s.answer()
        self.assertEqual((answer.status, answer.body), (200, b"hello"))
        self.assertEqual(field(answer, b"Age"), b"0")
        self.assertEqual(field(answer, b"Cache-Status"), b"balancebeam; hit; ttl=60")
        counters = self.s.cache.counters.snapshot()
        self.assertEqual(
            (counters["hits"], counters["misses"], counters["stored"], counters["entries"]),
            (1, 1, 1, 1),
        )

    def test_rendered_hit(self) -> None:
        """
        The hit is the stored head without framing or hop-by-hop fields, plus Via, Age and
        Cache-Status.
        """
        date = http_date(self.s.clock.seconds())
        self.s.fetch(
            response_fields=[
                b"Date: " + date,
                b"Cache-Control: max-age=60",
                b"Connection: keep-alive, X-Hop",
                b"Keep-Alive: timeout=5",
                b"X-Hop: 1",
                b"Age: 0",
                b"content-type: text/plain",
            ]
        )
        self.s.clock.advance(7)
        self.assertEqual(
            render(self.s.answer()),
            b"HTTP/1.1 200 OK\r\nDate: " + date + b"\r\nCache-Control: max-age=60\r\n"
            b"content-type: text/plain\r\nVia: 1.1 balancebeam\r\nAge: 7\r\n"
            b"Cache-Status: balancebeam; hit; ttl=53\r\nContent-Length: 5\r\n"
            b"Connection: keep-alive\r\n\r\nhello",
        )

    def test_date_added(self) -> None:
        """
        A response stored without Date gets the time it was received.
        """
        exchange, _ = self.s.ask()
        relay(exchange, response_head(b"200 OK", [b"Cache-Control: max-age=60"], 2), [b"ok"])
        received = http_date(self.s.clock.seconds())
        self.s.clock.advance(3)
        self.assertEqual(field(self.s.answer(), b"Date"), received)

    def test_age_from_upstream(self) -> None:
        """
        The upstream's Age counts towards the age served and the freshness left.
        """
        self.s.fetch(response_fields=[b"Cache-Control: max-age=60", b"Age: 50"])
        self.s.clock.advance(5)
        answer = self.s.answer()
        self.assertEqual(field(answer, b"Age"), b"55")
        self.assertEqual(field(answer, b"Cache-Status"), b"balancebeam; hit; ttl=5")
        self.s.clock.advance(5)
        _, result = self.s.ask()
        self.assertIsNone(result)

    def test_stale_at_lifetime_end(self) -> None:
        """
        The response is fresh just before max-age has passed, and stale at it.
        """
        self.s.fetch()
        self.s.clock.advance(59.9)
        self.assertIsInstance(self.s.ask()[1], Answer)
        self.s.clock.advance(0.1)
        exchange, result = self.s.ask()
        self.assertIsNone(result)
        self.s.respond(exchange)
        self.assertEqual(
            exchange.cache_status(), b"balancebeam; fwd=stale; fwd-status=200; stored; ttl=60"
        )

    def test_key_host_normalised_target_as_sent(self) -> None:
        """
        The host's case and default port do not matter; the target is the
        one sent upstream, so an equivalent spelling of it is another entry.
        """
        self.s.fetch(b"/a/b~c?x=%2f")
        exchange, result = self.s.ask(b"/a/b~c?x=%2f", host=b"EXAMPLE.com:80")
        self.assertIsInstance(result, Answer)
        exchange, result = self.s.ask(b"/z/../a/./b%7Ec?x=%2F")
        self.assertIsNone(result)

    def test_key_parts(self) -> None:
        """
        The query, the host and the scheme are part of the key.
        """
        self.s.fetch(b"/a?x=1")
        self.assertIsNone(self.s.ask(b"/a?x=2")[1])
        self.assertIsNone(self.s.ask(b"/a?x=1", host=b"other.example")[1])
        self.assertIsNone(self.s.ask(b"/a?x=1", scheme=b"https")[1])
        self.assertIsInstance(self.s.ask(b"/a?x=1")[1], Answer)

    def test_head_from_stored_get(self) -> None:
        """
        HEAD is answered from a stored GET, with the GET's length and no body.
        """
        self.s.fetch()
        answer = self.s.answer(method=b"HEAD")
        rendered = render(answer, b"HEAD")
        self.assertIn(b"Content-Length: 5\r\n", rendered)
        self.assertTrue(rendered.endswith(b"\r\n\r\n"))

    def test_head_miss_not_stored(self) -> None:
        """
        The response to a HEAD is not stored.
        """
        exchange, _ = self.s.fetch(method=b"HEAD", body=b"")
        self.assertEqual(exchange.cache_status(), b"balancebeam; fwd=uri-miss; fwd-status=200")
        self.assertIsNone(self.s.ask()[1])
        self.assertEqual(self.s.cache.counters.stored, 0)

    def test_other_methods_bypass(self) -> None:
        """
        Other methods pass through with Cache-Status fwd=method and are counted as bypassed.
        """
        for method in (b"POST", b"OPTIONS"):
            exchange, result = self.s.ask(method=method)
            self.assertIsNone(result)
            self.assertEqual(exchange.cache_status(), b"balancebeam; fwd=method")
        self.assertEqual(self.s.cache.counters.bypassed, 2)

    def test_missing_host(self) -> None:
        """
        An HTTP/1.0 request without Host is cached under an empty host.
        """
        def http10() -> FakeExchange:
            return FakeExchange(b"GET /x HTTP/1.0", self.s.clock.seconds())

        exchange = http10()
        self.assertIsNone(self.s.cache.on_request(exchange))
        self.s.respond(exchange)
        self.assertIsInstance(self.s.cache.on_request(http10()), Answer)
        self.assertIsNone(self.s.ask(b"/x")[1])


class StorabilityTests(SynchronousTestCase):
    """
    What is stored and what is not, and why Cache-Status says so.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()

    def assert_not_stored(self, detail: bytes | None, **fetch: object) -> None:
        """
        Fetch a response that must not be stored, and check the Cache-Status detail.
        """
        exchange, _ = self.s.fetch(**fetch)  # type: ignore[arg-type]  # keyword passthrough
        status = exchange.cache_status()
        if detail is not None:
            self.assertTrue(status.endswith(b"; detail=" + detail), status)
        self.assertNotIn(b"stored", status)
        self.assertEqual(self.s.cache.counters.stored, 0)
        after, result = self.s.ask()
        self.assertIsNone(result)
        fail_before_head(after)

    def test_no_store(self) -> None:
        """
        no-store responses are not stored.
        """
        self.assert_not_stored(b"no-store", response_fields=[b"Cache-Control: no-store"])

    def test_private(self) -> None:
        """
        private responses are not stored.
        """
        self.assert_not_stored(b"private", response_fields=[b"Cache-Control: private, max-age=9"])

    def test_vary_star(self) -> None:
        """
        Vary: * is not stored.
        """
        self.assert_not_stored(
            b"vary", response_fields=[b"Cache-Control: max-age=9", b"Vary: *"]
        )

    def test_set_cookie_default(self) -> None:
        """
        A response with Set-Cookie is not stored by default.
        """
        self.assert_not_stored(
            b"set-cookie", response_fields=[b"Cache-Control: max-age=9", b"Set-Cookie: s=1"]
        )

    def test_set_cookie_stripped(self) -> None:
        """
        When configured, it is stored without Set-Cookie, which only its own client got.
        """
        s = CacheScenario(store_set_cookie=True)
        s.fetch(response_fields=[b"Cache-Control: max-age=9", b"Set-Cookie: s=1"])
        self.assertIsNone(field(s.answer(), b"Set-Cookie"))

    def test_partial_not_stored(self) -> None:
        """
        206 responses are not stored.
        """
        self.assert_not_stored(b"partial", status=b"206 Partial Content",
                               response_fields=[b"Cache-Control: max-age=9",
                                                b"Content-Range: bytes 0-4/10"])

    def test_status_without_explicit_freshness(self) -> None:
        """
        A 500 is stored only with explicit freshness.
        """
        self.assert_not_stored(b"status", status=b"500 Internal Server Error",
                               response_fields=[b'ETag: "a"'])
        self.s.fetch(status=b"500 Internal Server Error")
        self.assertEqual(self.s.answer().status, 500)

    def test_authorization(self) -> None:
        """
        Responses to requests with Authorization are stored only when public, and entries
        that are not are not served to them.
        """
        auth = [b"Authorization: Basic eDp5"]
        exchange, _ = self.s.fetch(request_fields=auth)
        self.assertEqual(self.s.cache.counters.entries, 0)
        self.s.fetch(request_fields=auth, response_fields=[b"Cache-Control: public, max-age=9"])
        self.assertIsInstance(self.s.ask(fields=auth)[1], Answer)
        self.s.fetch(b"/anonymous")
        exchange, result = self.s.ask(b"/anonymous", fields=auth)
        self.assertIsNone(result)
        self.s.respond(exchange)
        self.assertTrue(exchange.cache_status().startswith(b"balancebeam; fwd=request"))

    def test_too_large_announced(self) -> None:
        """
        A Content-Length over the largest object size is relayed and not stored.
        """
        self.assert_not_stored(b"too-large", body=b"x" * 1001)

    def test_too_large_chunked(self) -> None:
        """
        A chunked body that grows past the largest object size is not stored.
        """
        exchange, _ = self.s.ask()
        head = response_head(fields=[b"Cache-Control: max-age=9", b"Transfer-Encoding: chunked"])
        relay(exchange, head, [b"x" * 600, b"x" * 600])
        self.assertEqual(exchange.cache_status(), b"balancebeam; fwd=uri-miss; fwd-status=200; "
                                                  b"ttl=9")
        self.assertEqual(self.s.cache.counters.stored, 0)
        self.assertIsNone(self.s.ask()[1])

    def test_chunked_stored(self) -> None:
        """
        A chunked body within the limit is stored whole.
        """
        exchange, _ = self.s.ask()
        head = response_head(fields=[b"Cache-Control: max-age=9", b"Transfer-Encoding: chunked"])
        relay(exchange, head, [b"ab", b"cd"])
        self.assertEqual(self.s.answer().body, b"abcd")

    def test_shorter_than_announced(self) -> None:
        """
        A body shorter than its Content-Length is not stored.
        """
        exchange, _ = self.s.ask()
        relay(exchange, response_head(fields=[b"Cache-Control: max-age=9"], length=10), [b"abc"])
        self.assertEqual(self.s.cache.counters.stored, 0)

    def test_longer_than_announced(self) -> None:
        """
        A body longer than its Content-Length is not stored.
        """
        exchange, _ = self.s.ask()
        relay(exchange, response_head(fields=[b"Cache-Control: max-age=9"], length=3),
              [b"abc", b"d"])
        self.assertEqual(self.s.cache.counters.stored, 0)

    def test_upstream_dies_mid_body(self) -> None:
        """
        An upstream that fails mid-body leaves nothing stored.
        """
        exchange, _ = self.s.ask()
        self.s.respond(exchange, failure="upstream closed")
        self.assertEqual(self.s.cache.counters.entries, 0)

    def test_until_close_not_stored(self) -> None:
        """
        A body framed by the connection's end is not stored (truncation is undetectable).
        """
        exchange, _ = self.s.ask()
        relay(exchange, response_head(fields=[b"Cache-Control: max-age=9"]), [b"abc"])
        self.assertTrue(exchange.cache_status().endswith(b"detail=no-length"))
        self.assertEqual(self.s.cache.counters.stored, 0)

    def test_transfer_coding_not_stored(self) -> None:
        """
        A body with a transfer coding besides chunked is not stored.
        """
        exchange, _ = self.s.ask()
        head = response_head(
            fields=[b"Cache-Control: max-age=9", b"Transfer-Encoding: gzip, chunked"]
        )
        relay(exchange, head, [b"abc"])
        self.assertTrue(exchange.cache_status().endswith(b"detail=transfer-coding"))
        self.assertEqual(self.s.cache.counters.stored, 0)


class RequestDirectiveTests(SynchronousTestCase):
    """
    Request Cache-Control directives (RFC 9111 section 5.2.1).
    """

    def setUp(self) -> None:
        self.s = CacheScenario()
        self.s.fetch(response_fields=[b"Cache-Control: max-age=60", b'ETag: "v1"'])
        self.s.clock.advance(10)

    def test_no_cache_revalidates(self) -> None:
        """
        no-cache sends even a fresh entry upstream for validation (fwd=request).
        """
        for directive in (b"Cache-Control: no-cache", b"Pragma: no-cache"):
            exchange, result = self.s.ask(fields=[directive])
            self.assertIsNone(result)
            self.assertEqual(exchange.rewrites, [(CONDITIONAL_FIELDS, ((b"If-None-Match",
                                                                         b'"v1"'),))])
            outcome = self.s.respond(exchange, [b'ETag: "v1"', b"Cache-Control: max-age=60"],
                                     body=b"", status=b"304 Not Modified")
            assert outcome.answer is not None
            self.assertEqual(outcome.answer.body, b"hello")
            self.assertEqual(field(outcome.answer, b"Cache-Status"),
                             b"balancebeam; fwd=request; fwd-status=304; ttl=60")

    def test_pragma_ignored_with_cache_control(self) -> None:
        """
        Pragma: no-cache is ignored when Cache-Control is present.
        """
        self.assertIsInstance(
            self.s.ask(fields=[b"Pragma: no-cache", b"Cache-Control: max-age=100"])[1], Answer
        )

    def test_max_age(self) -> None:
        """
        A request max-age below the entry's age forces validation; above, it is a hit.
        """
        self.assertIsInstance(self.s.ask(fields=[b"Cache-Control: max-age=10"])[1], Answer)
        for too_young in (b"max-age=9", b"max-age=zero"):
            exchange, result = self.s.ask(fields=[b"Cache-Control: " + too_young])
            self.assertIsNone(result)
            fail_before_head(exchange)

    def test_min_fresh(self) -> None:
        """
        min-fresh beyond the freshness left forces validation.
        """
        self.assertIsInstance(self.s.ask(fields=[b"Cache-Control: min-fresh=50"])[1], Answer)
        exchange, result = self.s.ask(fields=[b"Cache-Control: min-fresh=51"])
        self.assertIsNone(result)
        self.assertEqual(len(exchange.observers), 1)

    def test_max_stale(self) -> None:
        """
        max-stale lets a stale entry be served, within its value when it has one.
        """
        self.s.clock.advance(60)
        answer = self.s.answer(fields=[b"Cache-Control: max-stale"])
        self.assertEqual(field(answer, b"Cache-Status"), b"balancebeam; hit; ttl=-10")
        self.assertEqual(field(answer, b"Age"), b"70")
        self.assertIsInstance(self.s.ask(fields=[b"Cache-Control: max-stale=10"])[1], Answer)
        self.assertIsNone(self.s.ask(fields=[b"Cache-Control: max-stale=9"])[1])
        self.assertEqual(self.s.cache.counters.stale, 2)

    def test_must_revalidate_beats_max_stale(self) -> None:
        """
        must-revalidate forbids serving the stale response even with max-stale.
        """
        self.s.fetch(b"/m", response_fields=[b"Cache-Control: max-age=5, must-revalidate",
                                             b'ETag: "m"'])
        self.s.clock.advance(6)
        self.assertIsNone(self.s.ask(b"/m", fields=[b"Cache-Control: max-stale"])[1])

    def test_only_if_cached(self) -> None:
        """
        only-if-cached gets a fresh entry, or 504 without going upstream.
        """
        only = [b"Cache-Control: only-if-cached"]
        self.assertEqual(self.s.answer(fields=only).status, 200)
        exchange, result = self.s.ask(b"/missing", fields=only)
        assert isinstance(result, Answer)
        self.assertEqual(result.status, 504)
        self.assertEqual(exchange.observers, [])
        self.s.clock.advance(60)
        self.assertEqual(self.s.answer(fields=only).status, 504)
        stale_ok = [b"Cache-Control: only-if-cached, max-stale"]
        self.assertEqual(self.s.answer(fields=stale_ok).status, 200)

    def test_no_store_request(self) -> None:
        """
        A no-store request may be served from the cache, but its response is not stored.
        """
        self.assertIsInstance(self.s.ask(fields=[b"Cache-Control: no-store"])[1], Answer)
        self.s.fetch(b"/other", request_fields=[b"Cache-Control: no-store"])
        self.assertIsNone(self.s.ask(b"/other")[1])

    def test_malformed_request_directives(self) -> None:
        """
        Garbage in request Cache-Control never raises.
        """
        rng = random.Random(7)
        alphabet = b'max-age=stale,min-fresh"only-if-cached no 0123456789'
        for _ in range(300):
            value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(40)))
            self.s.ask(fields=[b"Cache-Control: " + value.strip()])


class ValidationTests(SynchronousTestCase):
    """
    Revalidating stale entries, and answering clients' own conditional requests.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()
        self.modified = http_date(self.s.clock.seconds() - 3600)

    def stale(self, *fields: bytes) -> None:
        """
        Store a response with these fields and max-age=10, and let it go stale.
        """
        self.s.fetch(response_fields=[b"Cache-Control: max-age=10", *fields])
        self.s.clock.advance(11)

    def test_etag_revalidation_304(self) -> None:
        """
        A stale entry with an ETag is revalidated with If-None-Match; a 304 updates its
        fields and the stored body is served.
        """
        self.stale(b'ETag: "v1"', b"X-Old: 1", b"X-Kept: k")
        exchange, result = self.s.ask()
        self.assertIsNone(result)
        self.assertEqual(exchange.rewrites, [(CONDITIONAL_FIELDS, ((b"If-None-Match",
                                                                     b'"v1"'),))])
        outcome = self.s.respond(
            exchange, [b'ETag: "v1"', b"Cache-Control: max-age=120", b"X-Old: 2",
                       b"Content-Length: 999", b"Vary: Accept"],
            body=b"", status=b"304 Not Modified",
        )
        answer = outcome.answer
        assert answer is not None
        self.assertEqual((answer.status, answer.body), (200, b"hello"))
        self.assertEqual(field(answer, b"Cache-Status"),
                         b"balancebeam; fwd=stale; fwd-status=304; ttl=120")
        self.assertEqual(field(answer, b"X-Old"), b"2")
        self.assertEqual(field(answer, b"X-Kept"), b"k")
        self.assertIsNone(field(answer, b"Vary"))
        self.assertEqual(answer.fields[-3], (b"Via", b"1.1 balancebeam"))
        self.assertEqual(self.s.cache.counters.revalidated, 1)
        self.s.clock.advance(100)
        hit = self.s.answer()
        self.assertEqual(field(hit, b"Cache-Status"), b"balancebeam; hit; ttl=20")
        self.assertEqual(field(hit, b"Cache-Control"), b"max-age=120")

    def test_last_modified_revalidation(self) -> None:
        """
        A stale entry with Last-Modified is revalidated with If-Modified-Since.
        """
        self.stale(b"Last-Modified: " + self.modified)
        exchange, _ = self.s.ask()
        self.assertEqual(exchange.rewrites,
                         [(CONDITIONAL_FIELDS, ((b"If-Modified-Since", self.modified),))])
        outcome = self.s.respond(exchange, [b"Cache-Control: max-age=10"], b"",
                                 b"304 Not Modified")
        self.assertIsNotNone(outcome.answer)

    def test_full_response_replaces(self) -> None:
        """
        A 200 to a revalidation replaces the stored response.
        """
        self.stale(b'ETag: "v1"')
        exchange, _ = self.s.ask()
        self.s.respond(exchange, [b'ETag: "v2"', b"Cache-Control: max-age=10"], b"new")
        self.assertEqual(self.s.answer().body, b"new")
        self.assertEqual(self.s.cache.counters.entries, 1)

    def test_unstorable_full_response_removes(self) -> None:
        """
        A full response that may not be stored drops the stale entry.
        """
        self.stale(b'ETag: "v1"')
        exchange, _ = self.s.ask()
        self.s.respond(exchange, [b"Cache-Control: no-store"], b"new")
        exchange, result = self.s.ask(fields=[b"Cache-Control: max-stale"])
        self.assertIsNone(result)

    def test_304_for_other_representation(self) -> None:
        """
        A 304 whose ETag is not the stored one updates nothing, drops the entry
        and has the request sent again without validators, whose 200 is stored.
        """
        self.stale(b'ETag: "v1"', b"Last-Modified: " + self.modified)
        exchange, _ = self.s.ask(resendable=True)
        assert isinstance(exchange, ResendableExchange)
        outcome = self.s.respond(exchange, [b'ETag: "v9"', b"Cache-Control: max-age=99"],
                                 b"", b"304 Not Modified")
        self.assertEqual((outcome.answer, outcome.resent), (None, True))
        self.assertEqual(exchange.resends, [(b"if-none-match", b"if-modified-since")])
        self.assertEqual(exchange.added, [])
        self.assertEqual(self.s.cache.counters.entries, 0)
        self.assertEqual(self.s.cache.counters.revalidated, 0)
        outcome = self.s.respond(exchange, [b'ETag: "v9"', b"Cache-Control: max-age=60"],
                                 b"the new one")
        self.assertIsNone(outcome.answer)
        self.assertEqual(exchange.cache_status(),
                         b"balancebeam; fwd=stale; fwd-status=200; stored; ttl=60")
        hit = self.s.answer()
        self.assertEqual((hit.body, field(hit, b"ETag")), (b"the new one", b'"v9"'))

    def test_304_by_last_modified_for_other_representation(self) -> None:
        """
        Without an ETag, a 304 whose Last-Modified differs from the stored one
        is not about it either: the request is sent again.
        """
        self.stale(b"Last-Modified: " + self.modified)
        exchange, _ = self.s.ask(resendable=True)
        assert isinstance(exchange, ResendableExchange)
        newer = http_date(self.s.clock.seconds() - 60)
        outcome = self.s.respond(exchange, [b"Last-Modified: " + newer], b"",
                                 b"304 Not Modified")
        self.assertIsNone(outcome.answer)
        self.assertEqual(len(exchange.resends), 1)
        self.assertEqual(self.s.cache.counters.entries, 0)

    def test_304_for_other_representation_answers_client(self) -> None:
        """
        A mismatched 304 whose ETag the client's own If-None-Match names is
        relayed to that client as it is, and nothing is stored or sent again.
        """
        self.stale(b'ETag: "v1"')
        exchange, _ = self.s.ask(fields=[b'If-None-Match: "v0", "v9"'], resendable=True)
        assert isinstance(exchange, ResendableExchange)
        outcome = self.s.respond(exchange, [b'ETag: "v9"'], b"", b"304 Not Modified")
        self.assertEqual((outcome.answer, outcome.resent), (None, False))
        self.assertEqual(exchange.resends, [])
        self.assertEqual(exchange.cache_status(),
                         b"balancebeam; fwd=stale; fwd-status=304; detail=validator-mismatch")
        self.assertEqual(self.s.cache.counters.entries, 0)

    def test_304_for_other_representation_not_the_clients(self) -> None:
        """
        A mismatched 304 that does not answer the client's own conditional
        either has the request sent again.
        """
        self.stale(b'ETag: "v1"')
        exchange, _ = self.s.ask(fields=[b'If-None-Match: "v0"'], resendable=True)
        assert isinstance(exchange, ResendableExchange)
        outcome = self.s.respond(exchange, [b'ETag: "v9"'], b"", b"304 Not Modified")
        self.assertIsNone(outcome.answer)
        self.assertEqual(len(exchange.resends), 1)

    def test_304_for_other_representation_cannot_resend(self) -> None:
        """
        When the exchange cannot send the request again, a mismatched 304
        gets a 502 naming the mismatch, and the entry is dropped.
        """
        self.stale(b'ETag: "v1"')
        exchange, _ = self.s.ask(resendable=True)
        assert isinstance(exchange, ResendableExchange)
        exchange.resendable = False
        outcome = self.s.respond(exchange, [b'ETag: "v9"'], b"", b"304 Not Modified")
        assert outcome.answer is not None
        self.assertEqual(outcome.answer.status, 502)
        self.assertEqual(field(outcome.answer, b"Cache-Status"),
                         b"balancebeam; fwd=stale; fwd-status=304; detail=validator-mismatch")
        self.assertEqual(self.s.cache.counters.entries, 0)

    def test_head_freshens_stored_get(self) -> None:
        """
        A 200 to a HEAD with the stored ETag and body length updates the
        stored GET response's fields and freshness (RFC 9111 section 4.3.5).
        """
        self.stale(b'ETag: "v1"', b"X-Version: 1")
        exchange, result = self.s.ask(method=b"HEAD")
        self.assertIsNone(result)
        outcome = relay(exchange, response_head(b"200 OK", [
            b"Date: " + http_date(self.s.clock.seconds()), b'ETag: "v1"',
            b"Cache-Control: max-age=60", b"X-Version: 2"], length=5))
        self.assertIsNone(outcome.answer)
        self.assertEqual(exchange.cache_status(),
                         b"balancebeam; fwd=stale; fwd-status=200; ttl=60")
        hit = self.s.answer()
        self.assertEqual((hit.body, field(hit, b"X-Version")), (b"hello", b"2"))
        self.assertEqual(field(hit, b"Cache-Status"), b"balancebeam; hit; ttl=60")
        self.assertEqual(self.s.cache.counters.revalidated, 1)

    def test_head_with_other_length_invalidates(self) -> None:
        """
        A 200 to a HEAD whose Content-Length (or ETag) differs from the
        stored GET response's drops it.
        """
        for fields, length in (([b'ETag: "v1"'], 6), ([b'ETag: "v2"'], 5)):
            self.s = CacheScenario()
            self.stale(b'ETag: "v1"')
            exchange, _ = self.s.ask(method=b"HEAD")
            relay(exchange, response_head(b"200 OK", [
                b"Cache-Control: max-age=60", *fields], length=length))
            self.assertEqual(self.s.cache.counters.entries, 0)
            self.assertIsNone(self.s.ask()[1])

    def test_no_validator_unconditional(self) -> None:
        """
        A stale entry without a validator is fetched again unconditionally.
        """
        self.s.fetch(response_fields=[b"Cache-Control: max-age=10"])
        self.s.clock.advance(11)
        exchange, result = self.s.ask()
        self.assertIsNone(result)
        self.assertEqual(exchange.rewrites, [(CONDITIONAL_FIELDS, ())])

    def test_no_cache_response(self) -> None:
        """
        A no-cache response is stored but validated before every use.
        """
        self.s.fetch(response_fields=[b"Cache-Control: no-cache, max-age=60", b'ETag: "n"'])
        exchange, result = self.s.ask()
        self.assertIsNone(result)
        outcome = self.s.respond(exchange, [b'ETag: "n"'], b"", b"304 Not Modified")
        assert outcome.answer is not None
        self.assertEqual(field(outcome.answer, b"Cache-Status"),
                         b"balancebeam; fwd=request; fwd-status=304; ttl=60")

    def test_client_if_none_match(self) -> None:
        """
        A client's If-None-Match that matches a fresh entry gets 304; one that does not, 200.
        """
        self.s.fetch(response_fields=[b"Cache-Control: max-age=60", b'ETag: "v1"',
                                      b"Content-Type: text/plain", b"X-Other: 1"])
        for value in (b'"v1"', b'"x", W/"v1"', b"*"):
            answer = self.s.answer(fields=[b"If-None-Match: " + value])
            self.assertEqual((answer.status, answer.reason), (304, b"Not Modified"), value)
            self.assertEqual(field(answer, b"ETag"), b'"v1"')
            self.assertIsNone(field(answer, b"Content-Type"))
            self.assertNotIn(b"hello", render(answer))
        self.assertEqual(self.s.answer(fields=[b'If-None-Match: "v2"']).status, 200)
        self.assertEqual(self.s.cache.counters.hits, 4)

    def test_client_if_modified_since(self) -> None:
        """
        If-Modified-Since is judged on Last-Modified; If-None-Match takes precedence.
        """
        self.s.fetch(response_fields=[b"Cache-Control: max-age=60", b'ETag: "v1"',
                                      b"Last-Modified: " + self.modified])
        later = http_date(self.s.clock.seconds() - 10)
        earlier = http_date(self.s.clock.seconds() - 7200)
        self.assertEqual(self.s.answer(fields=[b"If-Modified-Since: " + later]).status, 304)
        self.assertEqual(self.s.answer(fields=[b"If-Modified-Since: " + earlier]).status, 200)
        self.assertEqual(self.s.answer(fields=[b"If-Modified-Since: garbage"]).status, 200)
        self.assertEqual(
            self.s.answer(fields=[b"If-Modified-Since: " + later, b'If-None-Match: "v0"']).status,
            200,
        )

    def test_client_conditional_on_stale(self) -> None:
        """
        A client's conditional on a stale entry is replaced by the cache's, and answered 304
        after the entry is validated.
        """
        self.stale(b'ETag: "v1"')
        exchange, _ = self.s.ask(fields=[b'If-None-Match: "v1"'])
        self.assertEqual(exchange.rewrites[0][1], ((b"If-None-Match", b'"v1"'),))
        outcome = self.s.respond(exchange, [b'ETag: "v1"'], b"", b"304 Not Modified")
        assert outcome.answer is not None
        self.assertEqual(outcome.answer.status, 304)

    def test_client_conditional_on_miss(self) -> None:
        """
        A client's conditional on a miss goes upstream unchanged.
        """
        exchange, result = self.s.ask(fields=[b'If-None-Match: "v1"'])
        self.assertIsNone(result)
        self.assertEqual(exchange.rewrites, [])

    def test_if_match_bypasses(self) -> None:
        """
        If-Match and If-Unmodified-Since are for the origin: the cache is bypassed.
        """
        self.s.fetch(response_fields=[b"Cache-Control: max-age=60", b'ETag: "v1"'])
        for condition in (b'If-Match: "v1"', b"If-Unmodified-Since: " + self.modified):
            exchange, result = self.s.ask(fields=[condition])
            self.assertIsNone(result)
            self.assertEqual(exchange.cache_status(), b"balancebeam; fwd=bypass")


class VaryTests(SynchronousTestCase):
    """
    Variants selected by the request fields named in Vary.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()
        self.vary = [b"Cache-Control: max-age=60", b"Vary: Accept-Encoding"]

    def test_variants_held_at_once(self) -> None:
        """
        Two encodings of one URL are stored side by side and each is served to its requests.
        """
        first, _ = self.s.fetch(response_fields=self.vary, body=b"gzip-body",
                                request_fields=[b"Accept-Encoding: gzip"])
        second, _ = self.s.fetch(response_fields=self.vary, body=b"br-body",
                                 request_fields=[b"Accept-Encoding: br"])
        self.assertTrue(first.cache_status().startswith(b"balancebeam; fwd=uri-miss"))
        self.assertTrue(second.cache_status().startswith(b"balancebeam; fwd=vary-miss"))
        self.assertEqual(self.s.answer(fields=[b"Accept-Encoding: gzip"]).body, b"gzip-body")
        self.assertEqual(self.s.answer(fields=[b"Accept-Encoding: br"]).body, b"br-body")
        self.assertIsNone(self.s.ask()[1])
        self.assertEqual(self.s.cache.counters.entries, 2)

    def test_normalised_request_values(self) -> None:
        """
        Repeated, differently spaced and differently cased Accept-Encoding hit one variant.
        """
        self.s.fetch(response_fields=self.vary, request_fields=[b"Accept-Encoding: gzip, br"])
        for fields in (
            [b"Accept-Encoding: gzip", b"Accept-Encoding: br"],
            [b"accept-encoding:gzip,br"],
            [b"Accept-Encoding:  GZIP ,  br "],
        ):
            self.assertIsInstance(self.s.ask(fields=fields)[1], Answer, fields)
        self.assertIsNone(self.s.ask(fields=[b"Accept-Encoding: br, gzip"])[1])

    def test_several_fields(self) -> None:
        """
        A response varying on two fields needs both to match.
        """
        self.s.fetch(
            response_fields=[b"Cache-Control: max-age=60", b"Vary: accept-language",
                             b"VARY: Accept-Encoding"],
            request_fields=[b"Accept-Encoding: gzip", b"Accept-Language: de"],
        )
        self.assertIsInstance(
            self.s.ask(fields=[b"Accept-Language: de", b"Accept-Encoding: gzip"])[1], Answer
        )
        self.assertIsNone(
            self.s.ask(fields=[b"Accept-Language: fr", b"Accept-Encoding: gzip"])[1]
        )


class RangeTests(SynchronousTestCase):
    """
    Single ranges served from a stored full response.
    """

    def setUp(self) -> None:
        self.s = CacheScenario()
        self.s.fetch(response_fields=[b"Cache-Control: max-age=60", b'ETag: "r"',
                                      b"Content-Type: text/plain"], body=b"0123456789")

    def test_single_range(self) -> None:
        """
        A single range gets a 206 with Content-Range and the slice.
        """
        answer = self.s.answer(fields=[b"Range: bytes=2-4"])
        self.assertEqual((answer.status, answer.reason, answer.body),
                         (206, b"Partial Content", b"234"))
        self.assertEqual(field(answer, b"Content-Range"), b"bytes 2-4/10")
        self.assertIn(b"Content-Length: 3\r\n", render(answer))
        self.assertEqual(self.s.answer(fields=[b"Range: bytes=-3"]).body, b"789")

    def test_unsatisfiable(self) -> None:
        """
        A range past the end gets 416 with the length.
        """
        answer = self.s.answer(fields=[b"Range: bytes=10-"])
        self.assertEqual((answer.status, answer.reason), (416, b"Range Not Satisfiable"))
        self.assertEqual(field(answer, b"Content-Range"), b"bytes */10")

    def test_invalid_range_ignored(self) -> None:
        """
        An invalid range is ignored: the whole response.
        """
        self.assertEqual(self.s.answer(fields=[b"Range: bytes=5-1"]).status, 200)

    def test_multiple_ranges_pass_through(self) -> None:
        """
        Several ranges go upstream, bypassing the cache.
        """
        exchange, result = self.s.ask(fields=[b"Range: bytes=0-1,4-5"])
        self.assertIsNone(result)
        self.assertEqual(exchange.cache_status(), b"balancebeam; fwd=bypass")

    def test_if_range(self) -> None:
        """
        If-Range with the strong ETag gets the range; another or a weak one, the whole response.
        """
        ranged = self.s.answer(fields=[b"Range: bytes=0-0", b'If-Range: "r"'])
        self.assertEqual(ranged.status, 206)
        for value in (b'"other"', b'W/"r"', b"garbage"):
            whole = self.s.answer(fields=[b"Range: bytes=0-0", b"If-Range: " + value])
            self.assertEqual(whole.status, 200, value)

    def test_range_on_head_ignored(self) -> None:
        """
        Range is ignored for HEAD.
        """
        self.assertEqual(self.s.answer(method=b"HEAD", fields=[b"Range: bytes=0-1"]).status, 200)

    def test_range_miss_passes_through(self) -> None:
        """
        A range request that misses goes upstream unchanged and its 206 is not stored.
        """
        exchange, result = self.s.ask(b"/big", fields=[b"Range: bytes=0-1"])
        self.assertIsNone(result)
        self.assertEqual(exchange.rewrites, [])
        self.s.respond(exchange, [b"Cache-Control: max-age=60", b"Content-Range: bytes 0-1/10"],
                       b"01", b"206 Partial Content")
        self.assertIsNone(self.s.ask(b"/big")[1])


class InvalidationTests(SynchronousTestCase):
    """
    Unsafe requests invalidate what they changed (RFC 9111 section 4.4).
    """

    def setUp(self) -> None:
        self.s = CacheScenario()
        for path in (b"/a", b"/b", b"/c"):
            self.s.fetch(path)

    def unsafe(self, method: bytes, status: bytes, *fields: bytes) -> None:
        """
        Send an unsafe request for /a and relay a response with C{fields}.
        """
        exchange, result = self.s.ask(b"/a", method)
        self.assertIsNone(result)
        relay(exchange, response_head(status, list(fields), 0))

    def stored(self) -> list[bytes]:
        """
        Which of /a, /b and /c are still served from the cache.
        """
        return [p for p in (b"/a", b"/b", b"/c") if isinstance(self.s.ask(p)[1], Answer)]

    def test_successful_post(self) -> None:
        """
        A successful POST invalidates its URI only.
        """
        self.unsafe(b"POST", b"200 OK")
        self.assertEqual(self.stored(), [b"/b", b"/c"])
        self.assertEqual(self.s.cache.counters.invalidated, 1)

    def test_location_and_content_location(self) -> None:
        """
        Same-origin Location and Content-Location are invalidated; other origins are not.
        """
        self.unsafe(b"PUT", b"201 Created", b"Location: /b",
                    b"Content-Location: http://example.com/c")
        self.assertEqual(self.stored(), [])

    def test_other_origin_untouched(self) -> None:
        """
        A Location on another host invalidates nothing there.
        """
        self.unsafe(b"DELETE", b"204 No Content", b"Location: http://other.example/b")
        self.assertEqual(self.stored(), [b"/b", b"/c"])

    def test_failed_request_invalidates_nothing(self) -> None:
        """
        An error response to an unsafe request invalidates nothing.
        """
        self.unsafe(b"PATCH", b"500 Internal Server Error")
        self.unsafe(b"POST", b"404 Not Found")
        exchange, _ = self.s.ask(b"/a", b"POST")
        fail_before_head(exchange)
        self.assertEqual(self.stored(), [b"/a", b"/b", b"/c"])

    def test_unknown_method_invalidates(self) -> None:
        """
        A method of unknown safety invalidates; OPTIONS does not.
        """
        self.unsafe(b"OPTIONS", b"200 OK")
        self.assertEqual(self.stored(), [b"/a", b"/b", b"/c"])
        self.unsafe(b"PURGE", b"200 OK")
        self.assertEqual(self.stored(), [b"/b", b"/c"])

    def test_fill_in_flight_not_stored(self) -> None:
        """
        A response in flight when its URI is invalidated is not stored.
        """
        exchange, _ = self.s.ask(b"/new")
        post, _ = self.s.ask(b"/new", b"POST")
        relay(post, response_head(b"200 OK", [], 0))
        self.s.respond(exchange)
        self.assertIsNone(self.s.ask(b"/new")[1])


class MalformedResponseTests(SynchronousTestCase):
    """
    Malformed response values are handled as RFC 9111 says and never raise.
    """

    def test_random_values(self) -> None:
        """
        Random Cache-Control, Expires, Age, Vary, Date, ETag and Last-Modified values never
        make the filter raise, and whatever is stored can be served.
        """
        s = CacheScenario()
        rng = random.Random(8)
        alphabet = b'max-age=s-maxage,no-cache"private*public 0123456789GMT:-W/'
        names = (b"Cache-Control", b"Expires", b"Age", b"Vary", b"Date", b"ETag",
                 b"Last-Modified")
        for index in range(400):
            fields = [
                name + b": " + bytes(rng.choice(alphabet) for _ in range(rng.randrange(25)))
                .strip()
                for name in rng.sample(names, 3)
            ]
            target = b"/r%d" % index
            exchange, _ = s.ask(target)
            s.respond(exchange, fields, b"body")
            _, result = s.ask(target)
            if isinstance(result, Answer):
                self.assertEqual(result.body, b"body")

    def test_invalid_expires_revalidates(self) -> None:
        """
        Expires: 0 means already expired: the next request revalidates.
        """
        s = CacheScenario()
        s.fetch(response_fields=[b"Expires: 0", b'ETag: "e"'])
        exchange, result = s.ask()
        self.assertIsNone(result)
        self.assertEqual(exchange.rewrites[0][1], ((b"If-None-Match", b'"e"'),))
