"""
Tests for L{balancebeam.ratelimit.memory} and L{balancebeam.ratelimit.build}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from balancebeam.interfaces import IRateLimiter, RateLimitDecision
from balancebeam.ratelimit.build import build_rate_limiter
from balancebeam.ratelimit.memory import MemoryRateLimiter, sliding_retry_after


def _allowed(limiter: MemoryRateLimiter, key: str, count: int) -> int:
    """
    Make C{count} requests for C{key} and return how many were allowed.
    """
    return sum(limiter.check(key).allowed for _ in range(count))


class FixedWindowTests(SynchronousTestCase):
    """
    Tests for the fixed window algorithm of L{MemoryRateLimiter}.
    """

    def setUp(self) -> None:
        """
        A limiter of 10 requests per 60 s on a clock at 0.
        """
        self.clock = Clock()
        self.limiter = MemoryRateLimiter(self.clock, 10, 60, "fixed")

    def test_provides_interface(self) -> None:
        """
        L{MemoryRateLimiter} provides L{IRateLimiter}.
        """
        self.assertTrue(verifyObject(IRateLimiter, self.limiter))

    def test_exactly_limit_in_fresh_window(self) -> None:
        """
        A fresh window lets exactly C{limit} requests through, counting
        C{remaining} down to 0, and denies the next one until the window ends.
        """
        self.clock.advance(15)
        remaining = [self.limiter.check("a").remaining for _ in range(10)]
        self.assertEqual(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
        self.assertEqual(
            self.limiter.check("a"),
            RateLimitDecision(
                allowed=False, limit=10, remaining=0, reset_after=45.0, retry_after=45.0
            ),
        )

    def test_allowed_decision_fields(self) -> None:
        """
        An allowed decision carries the limit, the time left in the window
        and no retry delay.
        """
        self.clock.advance(20.5)
        self.assertEqual(
            self.limiter.check("a"),
            RateLimitDecision(
                allowed=True, limit=10, remaining=9, reset_after=39.5, retry_after=0.0
            ),
        )

    def test_boundary_burst_allows_twice_the_limit(self) -> None:
        """
        With fixed windows, C{limit} requests just before a boundary and
        C{limit} more just after it all pass: 2N in one second.
        """
        self.clock.advance(59.5)
        self.assertEqual(_allowed(self.limiter, "a", 12), 10)
        self.clock.advance(0.5)
        self.assertEqual(_allowed(self.limiter, "a", 12), 10)

    def test_retry_after_is_exact(self) -> None:
        """
        A denied client is allowed again exactly C{retry_after} seconds later.
        """
        self.clock.advance(100)
        _allowed(self.limiter, "a", 10)
        retry_after = self.limiter.check("a").retry_after
        self.assertEqual(retry_after, 20.0)
        self.clock.advance(19.999)
        self.assertFalse(self.limiter.check("a").allowed)
        self.clock.advance(0.001)
        self.assertTrue(self.limiter.check("a").allowed)

    def test_keys_are_independent(self) -> None:
        """
        One key at its limit does not affect another.
        """
        _allowed(self.limiter, "a", 10)
        self.assertFalse(self.limiter.check("a").allowed)
        self.assertEqual(self.limiter.check("b").remaining, 9)

    def test_windows_aligned_on_clock(self) -> None:
        """
        Windows start at multiples of the window length, wherever the clock starts.
        """
        self.clock.advance(1000.25)
        self.assertEqual(self.limiter.check("a").reset_after, 19.75)


class SlidingWindowTests(SynchronousTestCase):
    """
    Tests for the sliding-window counter of L{MemoryRateLimiter}.
    """

    def setUp(self) -> None:
        """
        A limiter of 10 requests per 60 s on a clock at 0.
        """
        self.clock = Clock()
        self.limiter = MemoryRateLimiter(self.clock, 10, 60, "sliding")

    def test_exactly_limit_in_fresh_window(self) -> None:
        """
        With no previous window, exactly C{limit} requests pass.
        """
        remaining = [self.limiter.check("a").remaining for _ in range(10)]
        self.assertEqual(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
        self.assertFalse(self.limiter.check("a").allowed)

    def test_boundary_burst_does_not_double(self) -> None:
        """
        C{limit} requests just before a boundary still count just after it:
        nothing more passes at the start of the next window.
        """
        self.clock.advance(59.5)
        self.assertEqual(_allowed(self.limiter, "a", 12), 10)
        self.clock.advance(0.5)
        self.assertEqual(_allowed(self.limiter, "a", 12), 0)

    def test_retry_after_solves_weighted_estimate(self) -> None:
        """
        At the start of a window after a full one, a request is allowed once
        the previous count's weight has dropped by one request: after 6 s of 60.
        """
        self.clock.advance(59)
        _allowed(self.limiter, "a", 10)
        self.clock.advance(1)
        decision = self.limiter.check("a")
        self.assertEqual(
            decision,
            RateLimitDecision(
                allowed=False, limit=10, remaining=0, reset_after=60.0, retry_after=6.0
            ),
        )
        self.clock.advance(5.999)
        self.assertFalse(self.limiter.check("a").allowed)
        self.clock.advance(0.001)
        self.assertTrue(self.limiter.check("a").allowed)

    def test_half_window_allows_half_the_previous(self) -> None:
        """
        Halfway through a window after a full one, the previous window weighs
        5 requests, so 5 pass; the next one waits until the estimate drops to 9.
        """
        self.clock.advance(30)
        _allowed(self.limiter, "a", 10)
        self.clock.advance(60)
        remaining = [self.limiter.check("a").remaining for _ in range(5)]
        self.assertEqual(remaining, [4, 3, 2, 1, 0])
        denied = self.limiter.check("a")
        self.assertFalse(denied.allowed)
        self.assertEqual(denied.retry_after, 6.0)
        self.assertEqual(denied.reset_after, 30.0)
        self.clock.advance(6)
        self.assertTrue(self.limiter.check("a").allowed)

    def test_retry_after_into_next_window(self) -> None:
        """
        When the current window alone is full, the wait runs to the next
        window plus the time for the full count's weight to drop by one.
        """
        _allowed(self.limiter, "a", 10)
        self.assertEqual(self.limiter.check("a").retry_after, 66.0)
        self.clock.advance(65.999)
        self.assertFalse(self.limiter.check("a").allowed)
        self.clock.advance(0.001)
        self.assertTrue(self.limiter.check("a").allowed)

    def test_denied_requests_do_not_count(self) -> None:
        """
        A client retrying while limited is let through at the same time as
        one that waited quietly.
        """
        _allowed(self.limiter, "a", 10)
        for _ in range(50):
            self.clock.advance(1)
            self.assertFalse(self.limiter.check("a").allowed)
        self.clock.advance(16)
        self.assertTrue(self.limiter.check("a").allowed)

    def test_fractional_remaining(self) -> None:
        """
        C{remaining} is the whole number of further requests that would pass now.
        """
        self.clock.advance(60)
        _allowed(self.limiter, "a", 10)
        self.clock.advance(60 + 33)
        # The previous window weighs 10 * 27 / 60 = 4.5 requests.
        first = self.limiter.check("a")
        self.assertEqual(first.remaining, 4)
        self.assertEqual(_allowed(self.limiter, "a", 10), 4)

    def test_limit_of_one(self) -> None:
        """
        With a limit of 1, the request after an allowed one waits for the
        rest of the window and all of the next (the previous count weighs
        until the next window is over).
        """
        limiter = MemoryRateLimiter(self.clock, 1, 60, "sliding")
        self.clock.advance(10)
        self.assertTrue(limiter.check("a").allowed)
        self.assertEqual(limiter.check("a").retry_after, 110.0)
        self.clock.advance(110)
        self.assertTrue(limiter.check("a").allowed)

    def test_retry_after_function(self) -> None:
        """
        L{sliding_retry_after} solves for the weighted previous count within
        the window and for the next window when the current one is full.
        """
        self.assertEqual(sliding_retry_after(10, 60.0, 0.0, 0, 10), 6.0)
        self.assertEqual(sliding_retry_after(10, 60.0, 30.0, 5, 10), 6.0)
        self.assertEqual(sliding_retry_after(10, 60.0, 0.0, 10, 0), 66.0)
        self.assertEqual(sliding_retry_after(10, 60.0, 0.0, 9, 10), 60.0)


class WorkedExampleTests(SynchronousTestCase):
    """
    The worked example of C{doc/rate-limiting.md}, replayed with both algorithms.
    """

    def replay(self, algorithm: str) -> list[list[tuple[bool, int, float]]]:
        """
        Send the example's requests and return, for each row, the
        C{(allowed, remaining, retry_after)} of each request.
        """
        clock = Clock()
        limiter = MemoryRateLimiter(clock, 10, 60, algorithm)
        rows: list[list[tuple[bool, int, float]]] = []
        for at, count in ((59, 10), (59, 1), (60, 10), (66, 1), (90, 5), (120, 12)):
            clock.advance(at - clock.seconds())
            decisions = [limiter.check("client") for _ in range(count)]
            rows.append([(d.allowed, d.remaining, d.retry_after) for d in decisions])
        return rows

    def test_fixed(self) -> None:
        """
        Fixed windows let 20 requests through around the boundary.
        """
        rows = self.replay("fixed")
        self.assertEqual(rows[0], [(True, n, 0.0) for n in range(9, -1, -1)])
        self.assertEqual(rows[1], [(False, 0, 1.0)])
        self.assertEqual(rows[2], [(True, n, 0.0) for n in range(9, -1, -1)])
        self.assertEqual(rows[3], [(False, 0, 54.0)])
        self.assertEqual(rows[4], [(False, 0, 30.0)] * 5)
        self.assertEqual(
            rows[5], [(True, n, 0.0) for n in range(9, -1, -1)] + [(False, 0, 60.0)] * 2
        )

    def test_sliding(self) -> None:
        """
        The sliding window counter refuses the burst after the boundary and
        gives the table's C{Retry-After} values.
        """
        rows = self.replay("sliding")
        self.assertEqual(rows[0], [(True, n, 0.0) for n in range(9, -1, -1)])
        self.assertEqual(rows[1], [(False, 0, 7.0)])
        self.assertEqual(rows[2], [(False, 0, 6.0)] * 10)
        self.assertEqual(rows[3], [(True, 0, 0.0)])
        self.assertEqual(rows[4], [(True, n, 0.0) for n in (3, 2, 1, 0)] + [(False, 0, 6.0)])
        self.assertEqual([allowed for allowed, _, _ in rows[5]], [True] * 5 + [False] * 7)


class MemoryBoundTests(SynchronousTestCase):
    """
    Tests for the expiry and the cap of L{MemoryRateLimiter}'s entries.
    """

    def setUp(self) -> None:
        """
        A clock at 0.
        """
        self.clock = Clock()

    def test_sliding_entries_expire_after_two_windows(self) -> None:
        """
        A sliding window entry lives while its window is the current or the
        previous one, and is dropped by a later check once both are over.
        """
        limiter = MemoryRateLimiter(self.clock, 10, 60, "sliding")
        limiter.check("idle")
        self.clock.advance(119.9)
        limiter.check("other")
        self.assertEqual(len(limiter), 2)
        self.clock.advance(0.1)
        limiter.check("other")
        self.assertEqual(len(limiter), 1)
        self.assertEqual(limiter.expirations, 1)

    def test_fixed_entries_expire_after_one_window(self) -> None:
        """
        A fixed window entry is dropped once its window is over.
        """
        limiter = MemoryRateLimiter(self.clock, 10, 60, "fixed")
        limiter.check("idle")
        self.clock.advance(60)
        limiter.check("other")
        self.assertEqual(len(limiter), 1)

    def test_expiry_keeps_counts_of_active_keys(self) -> None:
        """
        Expiry drops idle keys only: a key used in the previous window keeps
        its weight in the sliding estimate.
        """
        limiter = MemoryRateLimiter(self.clock, 10, 60, "sliding")
        limiter.check("idle")
        self.clock.advance(70)
        _allowed(limiter, "busy", 10)
        self.clock.advance(50)
        # At 120 s, "busy"'s previous window weighs its full 10 requests.
        self.assertFalse(limiter.check("busy").allowed)
        self.assertEqual(len(limiter), 1)

    def test_expiry_work_per_check_is_bounded(self) -> None:
        """
        One check drops at most 32 dead entries; later checks go on, and
        L{MemoryRateLimiter.purge} drops the rest at once.
        """
        limiter = MemoryRateLimiter(self.clock, 10, 60, "fixed")
        for number in range(100):
            limiter.check(f"idle{number}")
        self.clock.advance(60)
        limiter.check("new")
        self.assertEqual(len(limiter), 100 - 32 + 1)
        limiter.check("new")
        self.assertEqual(len(limiter), 100 - 64 + 1)
        self.assertEqual(limiter.purge(), 36)
        self.assertEqual(len(limiter), 1)

    def test_cap_evicts_least_recently_used(self) -> None:
        """
        Beyond C{max_keys}, the least recently seen key is evicted; a key
        seen recently keeps its count.
        """
        limiter = MemoryRateLimiter(self.clock, 2, 60, "sliding", max_keys=3)
        _allowed(limiter, "a", 2)
        _allowed(limiter, "b", 2)
        _allowed(limiter, "c", 2)
        self.assertFalse(limiter.check("a").allowed)
        limiter.check("d")
        self.assertEqual(len(limiter), 3)
        self.assertEqual(limiter.evictions, 1)
        self.assertFalse(limiter.check("a").allowed)
        self.assertFalse(limiter.check("c").allowed)

    def test_evicted_key_starts_fresh(self) -> None:
        """
        An evicted client gets a fresh count: the cap errs towards allowing.
        """
        limiter = MemoryRateLimiter(self.clock, 2, 60, "sliding", max_keys=1)
        _allowed(limiter, "a", 2)
        self.assertFalse(limiter.check("a").allowed)
        limiter.check("b")
        self.assertEqual(limiter.check("a").remaining, 1)

    def test_one_million_keys_stay_under_cap(self) -> None:
        """
        A million distinct keys in one window never hold more than C{max_keys}
        entries.
        """
        limiter = MemoryRateLimiter(self.clock, 10, 60, "sliding", max_keys=1000)
        high = 0
        for number in range(1_000_000):
            limiter.check(str(number))
            if number % 4096 == 0:
                high = max(high, len(limiter))
        self.assertEqual(len(limiter), 1000)
        self.assertEqual(high, 1000)
        self.assertEqual(limiter.evictions, 999_000)

    def test_start_does_nothing(self) -> None:
        """
        C{start} schedules nothing and keeps the counts taken before it.
        """
        limiter = MemoryRateLimiter(self.clock, 2, 60)
        limiter.check("a")
        limiter.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(limiter.check("a").remaining, 0)
        self.assertFalse(limiter.check("a").allowed)

    def test_close_forgets_everything(self) -> None:
        """
        C{close} drops every entry.
        """
        limiter = MemoryRateLimiter(self.clock, 10, 60)
        limiter.check("a")
        limiter.close()
        self.assertEqual(len(limiter), 0)


class ValidationTests(SynchronousTestCase):
    """
    Tests for the parameter checks of L{MemoryRateLimiter} and
    L{build_rate_limiter}.
    """

    def test_bad_parameters(self) -> None:
        """
        A limit below 1, a window that is not positive and finite, an unknown
        algorithm and a cap below 1 are refused.
        """
        clock = Clock()
        self.assertRaises(ValueError, MemoryRateLimiter, clock, 0, 60)
        self.assertRaises(ValueError, MemoryRateLimiter, clock, 5, 0)
        self.assertRaises(ValueError, MemoryRateLimiter, clock, 5, float("inf"))
        self.assertRaises(ValueError, MemoryRateLimiter, clock, 5, float("nan"))
        self.assertRaises(ValueError, MemoryRateLimiter, clock, 5, 60, "leaky")
        self.assertRaises(ValueError, MemoryRateLimiter, clock, 5, 60, "fixed", 0)

    def test_build_off(self) -> None:
        """
        A limit of 0 means no limiter at all.
        """
        self.assertIsNone(
            build_rate_limiter(Clock(), "memory", 0, 60, "sliding", 0.05, "allow", 10)
        )

    def test_build_memory(self) -> None:
        """
        The memory backend builds a L{MemoryRateLimiter} with the given
        parameters.
        """
        clock = Clock()
        limiter = build_rate_limiter(clock, "memory", 3, 60, "fixed", 0.05, "allow", 2)
        assert isinstance(limiter, MemoryRateLimiter)
        self.assertEqual([limiter.check("a").allowed for _ in range(4)], [True] * 3 + [False])
        limiter.check("b")
        limiter.check("c")
        self.assertEqual(len(limiter), 2)

    def test_build_refuses_bad_values(self) -> None:
        """
        Unknown backends, malformed Redis URLs and unknown error policies are refused.
        """
        clock = Clock()
        for backend in ("disk", "redis://", "redis://h:port/0", "http://h:1/0"):
            self.assertRaises(
                ValueError,
                build_rate_limiter,
                clock,
                backend,
                5,
                60,
                "sliding",
                0.05,
                "allow",
                10,
            )
        self.assertRaises(
            ValueError, build_rate_limiter, clock, "memory", 5, 60, "sliding", 0.05, "maybe", 10
        )
