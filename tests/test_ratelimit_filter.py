"""
Tests for L{balancebeam.ratelimit.filter}, against a small fake exchange.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from balancebeam.clientip import parse_trusted_networks
from balancebeam.filters import Answer
from balancebeam.http1.heads import RequestHead, parse_request_head
from balancebeam.interfaces import (
    IExchange,
    IRateLimiter,
    IRequestFilter,
    IResponseObserver,
    RateLimitDecision,
)
from balancebeam.ratelimit.filter import RateLimitFilter, forwarded_for
from balancebeam.ratelimit.memory import MemoryRateLimiter
from balancebeam.ratelimit.redis import RedisRateLimiter
from balancebeam.stats import Stats

DENIED_BODY = b"429 Too Many Requests: too many requests from this client\n"
TEXT = (b"Content-Type", b"text/plain; charset=utf-8")


def request(*fields: bytes) -> RequestHead:
    """
    A parsed C{GET /} request head with C{Host} and the given header lines.
    """
    head = b"\r\n".join((b"GET / HTTP/1.1", b"Host: example.com") + fields)
    return parse_request_head(head, 100)


@implementer(IExchange)
class FakeExchange:
    """
    An exchange that records the header lines a filter adds to the response
    and refuses everything the rate limit filter has no business doing.

    @ivar added: the arguments of each L{add_response_headers} call.
    """

    def __init__(self, head: RequestHead | None = None, client_ip: str = "192.0.2.1") -> None:
        """
        @param head: the request (a plain C{GET /} by default).
        @param client_ip: the TCP peer, in normal form.
        """
        self.request = request() if head is None else head
        self.client_ip = client_ip
        self.scheme = b"http"
        self.started = 0.0
        self.request_id = "test-1"
        self.added: list[bytes] = []

    def add_response_headers(self, lines: bytes) -> None:
        """
        Record C{lines}, which must be whole CRLF-terminated header lines.
        """
        if not lines.endswith(b"\r\n") or lines.startswith(b"\r\n"):
            raise AssertionError(f"not header lines: {lines!r}")
        self.added.append(lines)

    def observe(self, observer: IResponseObserver) -> None:
        """
        Not used by the rate limit filter.
        """
        raise AssertionError("the rate limit filter observes no response")

    def rewrite_upstream_request(
        self, remove: Iterable[bytes] = (), add: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """
        Not used by the rate limit filter.
        """
        raise AssertionError("the rate limit filter rewrites no request")

    def read_body(self, limit: int) -> Deferred[bytes | None]:
        """
        Not used by the rate limit filter.
        """
        raise AssertionError("the rate limit filter reads no body")


@implementer(IRateLimiter)
class ScriptedLimiter:
    """
    A limiter that records the keys it is asked about and answers with the
    next of the answers it was given.

    @ivar keys: the keys checked, in order.
    """

    def __init__(self, *answers: RateLimitDecision | Deferred[RateLimitDecision]) -> None:
        """
        @param answers: what successive checks return.
        """
        self._answers = list(answers)
        self.keys: list[str] = []

    def start(self) -> None:
        """
        Nothing to start.
        """

    def check(self, key: str) -> RateLimitDecision | Deferred[RateLimitDecision]:
        """
        Record C{key} and give the next answer.
        """
        self.keys.append(key)
        return self._answers.pop(0)

    def close(self) -> None:
        """
        Nothing to close.
        """


ALLOWED = RateLimitDecision(True, 5, 3, 29.2, 0.0)
DENIED = RateLimitDecision(False, 5, 0, 29.2, 12.5)


class RateLimitFilterTests(SynchronousTestCase):
    """
    Tests for what L{RateLimitFilter} answers.
    """

    def setUp(self) -> None:
        """
        Fresh counters.
        """
        self.stats = Stats()

    def test_provides_interface(self) -> None:
        """
        The filter provides L{IRequestFilter}, is named C{ratelimit} and fails open.
        """
        limit = RateLimitFilter(ScriptedLimiter(), self.stats)
        self.assertTrue(verifyObject(IRequestFilter, limit))
        self.assertEqual((limit.name, limit.fail_open), ("ratelimit", True))

    def test_allowed_passes(self) -> None:
        """
        An allowed request passes (C{None}), keyed on the client IP, with no
        header added and nothing counted.
        """
        limiter = ScriptedLimiter(ALLOWED)
        exchange = FakeExchange(client_ip="2001:db8::7")
        self.assertIsNone(RateLimitFilter(limiter, self.stats).on_request(exchange))
        self.assertEqual(limiter.keys, ["2001:db8::7"])
        self.assertEqual(exchange.added, [])
        self.assertEqual(self.stats.rate_limited, 0)

    def test_allowed_with_headers(self) -> None:
        """
        With headers on, an allowed request passes and the three
        C{RateLimit} lines are added to its response, the reset rounded up.
        """
        exchange = FakeExchange()
        limit = RateLimitFilter(ScriptedLimiter(ALLOWED), self.stats, headers=True)
        self.assertIsNone(limit.on_request(exchange))
        self.assertEqual(
            exchange.added,
            [b"RateLimit-Limit: 5\r\nRateLimit-Remaining: 3\r\nRateLimit-Reset: 30\r\n"],
        )

    def test_denied_answers_429(self) -> None:
        """
        A denied request is answered 429 with C{Retry-After} rounded up and
        the usual message, and counted.
        """
        exchange = FakeExchange()
        answer = RateLimitFilter(ScriptedLimiter(DENIED), self.stats).on_request(exchange)
        assert isinstance(answer, Answer)
        self.assertEqual(answer.status, 429)
        self.assertEqual(tuple(answer.fields), (TEXT, (b"Retry-After", b"13")))
        self.assertEqual(answer.body, DENIED_BODY)
        self.assertIsNone(answer.reason)
        self.assertEqual(self.stats.rate_limited, 1)
        self.assertEqual(exchange.added, [])

    def test_denied_with_headers(self) -> None:
        """
        With headers on, the 429 also carries the C{RateLimit} fields, with
        nothing remaining; nothing is added through the exchange.
        """
        exchange = FakeExchange()
        # Remaining is 0 on a 429 whatever the limiter says.
        denied = DENIED._replace(remaining=2)
        limit = RateLimitFilter(ScriptedLimiter(denied), self.stats, headers=True)
        answer = limit.on_request(exchange)
        assert isinstance(answer, Answer)
        self.assertEqual(
            tuple(answer.fields),
            (
                TEXT,
                (b"Retry-After", b"13"),
                (b"RateLimit-Limit", b"5"),
                (b"RateLimit-Remaining", b"0"),
                (b"RateLimit-Reset", b"30"),
            ),
        )
        self.assertEqual(exchange.added, [])

    def test_retry_after_rounding(self) -> None:
        """
        C{Retry-After} is the retry delay rounded up to whole seconds, and at
        least 1.
        """
        cases = [(0.0, b"1"), (0.2, b"1"), (1.0, b"1"), (1.0001, b"2"), (59.5, b"60")]
        limiter = ScriptedLimiter(
            *(RateLimitDecision(False, 5, 0, 60.0, delay) for delay, _ in cases)
        )
        limit = RateLimitFilter(limiter, self.stats)
        for _, expected in cases:
            answer = limit.on_request(FakeExchange())
            assert isinstance(answer, Answer)
            self.assertEqual(answer.fields[1], (b"Retry-After", expected))
        self.assertEqual(self.stats.rate_limited, len(cases))

    def test_memory_limiter_answers_synchronously(self) -> None:
        """
        With the in-memory limiter, C{limit} requests pass and the next is
        answered 429 at once, without a L{Deferred}.
        """
        clock = Clock()
        clock.advance(30)
        limit = RateLimitFilter(MemoryRateLimiter(clock, 2, 60, "fixed"), self.stats)
        results = [limit.on_request(FakeExchange()) for _ in range(3)]
        self.assertEqual(results[:2], [None, None])
        answer = results[2]
        self.assertIs(type(answer), Answer)
        assert isinstance(answer, Answer)
        self.assertEqual(tuple(answer.fields), (TEXT, (b"Retry-After", b"30")))
        self.assertIsNone(limit.on_request(FakeExchange(client_ip="192.0.2.2")))
        self.assertEqual(self.stats.rate_limited, 1)


class DeferredDecisionTests(SynchronousTestCase):
    """
    Tests for L{RateLimitFilter} with a limiter that answers later.
    """

    def setUp(self) -> None:
        """
        Fresh counters.
        """
        self.stats = Stats()

    def test_allowed_later(self) -> None:
        """
        The filter waits for the limiter; once it allows, the request passes
        and the headers are added then, not before.
        """
        pending: Deferred[RateLimitDecision] = Deferred()
        exchange = FakeExchange()
        limit = RateLimitFilter(ScriptedLimiter(pending), self.stats, headers=True)
        result = limit.on_request(exchange)
        assert isinstance(result, Deferred)
        self.assertNoResult(result)
        self.assertEqual(exchange.added, [])
        pending.callback(ALLOWED)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(
            exchange.added,
            [b"RateLimit-Limit: 5\r\nRateLimit-Remaining: 3\r\nRateLimit-Reset: 30\r\n"],
        )

    def test_denied_later(self) -> None:
        """
        Once the limiter denies, the filter's L{Deferred} fires with the 429
        answer, and the denial is counted then.
        """
        pending: Deferred[RateLimitDecision] = Deferred()
        result = RateLimitFilter(ScriptedLimiter(pending), self.stats).on_request(FakeExchange())
        assert isinstance(result, Deferred)
        self.assertEqual(self.stats.rate_limited, 0)
        pending.callback(DENIED)
        answer = self.successResultOf(result)
        assert isinstance(answer, Answer)
        self.assertEqual((answer.status, answer.body), (429, DENIED_BODY))
        self.assertEqual(tuple(answer.fields), (TEXT, (b"Retry-After", b"13")))
        self.assertEqual(self.stats.rate_limited, 1)

    def test_limiter_failure_passes_through(self) -> None:
        """
        A limiter whose L{Deferred} fails makes the filter's fail the same
        way, so that the exchange applies C{fail_open}; nothing is counted.
        """
        pending: Deferred[RateLimitDecision] = Deferred()
        exchange = FakeExchange()
        limit = RateLimitFilter(ScriptedLimiter(pending), self.stats, headers=True)
        result = limit.on_request(exchange)
        assert isinstance(result, Deferred)
        pending.errback(ValueError("the limiter broke"))
        self.failureResultOf(result, ValueError)
        self.assertEqual((self.stats.rate_limited, exchange.added), (0, []))

    def test_cancel_reaches_limiter(self) -> None:
        """
        Cancelling the filter's L{Deferred} (the client went away) cancels
        the limiter's.
        """
        pending: Deferred[RateLimitDecision] = Deferred()
        result = RateLimitFilter(ScriptedLimiter(pending), self.stats).on_request(FakeExchange())
        assert isinstance(result, Deferred)
        result.cancel()
        self.failureResultOf(pending, CancelledError)
        self.assertEqual(self.stats.rate_limited, 0)

    def test_unconnected_redis_fails_closed(self) -> None:
        """
        With a Redis limiter that is not connected and fails closed, the
        filter answers 429 with C{Retry-After: 1}.
        """
        limiter = RedisRateLimiter(
            MemoryReactorClock(), "127.0.0.1", 6390, 0, 5, 60, "fixed", on_error="deny"
        )
        self.addCleanup(lambda: self.successResultOf(limiter.close()))
        result = RateLimitFilter(limiter, self.stats).on_request(FakeExchange())
        assert isinstance(result, Deferred)
        answer = self.successResultOf(result)
        assert isinstance(answer, Answer)
        self.assertEqual(answer.status, 429)
        self.assertEqual(tuple(answer.fields), (TEXT, (b"Retry-After", b"1")))
        self.assertEqual((self.stats.rate_limited, limiter.errors), (1, 1))


class ClientKeyTests(SynchronousTestCase):
    """
    Tests for the key L{RateLimitFilter} asks the limiter about.
    """

    def key(self, peer: str, *fields: bytes, trusted: Sequence[str] = ("10.20.0.0/16",)) -> str:
        """
        The key checked for a request from C{peer} with header lines C{fields}.
        """
        limiter = ScriptedLimiter(ALLOWED)
        limit = RateLimitFilter(limiter, Stats(), parse_trusted_networks(trusted))
        self.assertIsNone(limit.on_request(FakeExchange(request(*fields), client_ip=peer)))
        [key] = limiter.keys
        return key

    def test_untrusted_peer(self) -> None:
        """
        A peer outside the trusted networks is the client, whatever its
        C{X-Forwarded-For} says.
        """
        self.assertEqual(self.key("203.0.113.5", b"X-Forwarded-For: 1.1.1.1"), "203.0.113.5")

    def test_no_trusted_networks(self) -> None:
        """
        Without trusted networks, C{X-Forwarded-For} is ignored even from a
        proxy's address.
        """
        self.assertEqual(
            self.key("10.20.0.7", b"X-Forwarded-For: 198.51.100.1", trusted=()), "10.20.0.7"
        )

    def test_trusted_peer_without_header(self) -> None:
        """
        A trusted peer that forwards nothing is the client.
        """
        self.assertEqual(self.key("10.20.0.7"), "10.20.0.7")

    def test_trusted_peer_forwards(self) -> None:
        """
        Behind a trusted peer, the rightmost untrusted address is the client:
        spoofed entries on the left are ignored, trusted hops are skipped.
        """
        cases = [
            (b"X-Forwarded-For: 198.51.100.1", "198.51.100.1"),
            (b"X-Forwarded-For: 6.6.6.6, 198.51.100.1", "198.51.100.1"),
            (b"x-forwarded-for:198.51.100.1 , 10.20.0.9", "198.51.100.1"),
            (b"X-Forwarded-For: [2001:db8::1]:443", "2001:db8::1"),
        ]
        for field, expected in cases:
            self.assertEqual(self.key("10.20.0.7", field), expected, field)

    def test_malformed_entry_stops_walk(self) -> None:
        """
        A malformed entry makes the last trusted hop the client.
        """
        self.assertEqual(self.key("10.20.0.7", b"X-Forwarded-For: unknown"), "10.20.0.7")
        self.assertEqual(
            self.key("10.20.0.7", b"X-Forwarded-For: 198.51.100.1, unknown, 10.20.0.9"),
            "10.20.0.9",
        )

    def test_several_headers_are_one_list(self) -> None:
        """
        Several C{X-Forwarded-For} headers are read as one list, in order.
        """
        self.assertEqual(
            self.key(
                "10.20.0.7",
                b"X-Forwarded-For: 6.6.6.6",
                b"Accept: */*",
                b"X-Forwarded-For: 198.51.100.1, 10.20.0.9",
            ),
            "198.51.100.1",
        )
        self.assertEqual(
            self.key("10.20.0.7", b"X-Forwarded-For: 198.51.100.1", b"X-Forwarded-For: 10.20.0.9"),
            "198.51.100.1",
        )

    def test_forwarded_for(self) -> None:
        """
        L{forwarded_for} joins the values of every C{X-Forwarded-For} field
        with C{", "}, and gives C{None} without one.
        """
        self.assertIsNone(forwarded_for(request(b"Accept: */*")))
        self.assertEqual(
            forwarded_for(
                request(b"X-Forwarded-For: 1.1.1.1 ", b"Accept: */*", b"X-FORWARDED-FOR: 2.2.2.2")
            ),
            b"1.1.1.1, 2.2.2.2",
        )
