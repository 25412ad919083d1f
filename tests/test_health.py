"""
Tests for L{balancebeam.health.checker}.

A L{FakeProbe} hands each probe's L{Deferred} to the test, which fires it
(or lets it hang) and moves a L{Clock} across round and timeout boundaries.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.config import UpstreamSpec
from balancebeam.health.checker import HealthChecker, ProbeResult, describe_failure
from balancebeam.health.probe import ProbeFailed
from balancebeam.registry import UpstreamRegistry, UpstreamState

A = "127.0.0.1:8081"
B = "127.0.0.1:8082"
INTERVAL = 10.0
TIMEOUT = 2.0


class FakeProbe:
    """
    A probe that records each call and hands the test its L{Deferred}.

    @ivar calls: C{(upstream name, Deferred)} per probe, in call order.
    @ivar cancelled: names of upstreams whose probe was cancelled, in order.
    @ivar raise_for: names for which the probe raises C{RuntimeError}
        instead of returning a L{Deferred}.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[int]]] = []
        self.cancelled: list[str] = []
        self.raise_for: set[str] = set()

    def __call__(self, upstream: UpstreamState) -> Deferred[int]:
        """
        Start a probe of C{upstream}; it stays pending until the test fires it.
        """
        if not isinstance(upstream, UpstreamState):
            raise TypeError(f"expected an UpstreamState, got {upstream!r}")
        if upstream.name in self.raise_for:
            raise RuntimeError(f"probe of {upstream.name} is broken")
        name = upstream.name

        def cancel(_: Deferred[int]) -> None:
            self.cancelled.append(name)

        probe: Deferred[int] = Deferred(cancel)
        self.calls.append((name, probe))
        return probe

    def pending(self, name: str) -> Deferred[int]:
        """
        The one unfired probe of C{name}; fails the test if there is not exactly one.
        """
        found = [d for n, d in self.calls if n == name and not d.called]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} pending probes of {name}, expected 1")
        return found[0]

    def answer(self, **results: int | Exception) -> None:
        """
        Fire the pending probe of each upstream: C{a=200} fires upstream A's
        probe with status 200, C{b=ConnectionRefusedError()} fails B's.
        """
        names = {"a": A, "b": B}
        for key, result in results.items():
            probe = self.pending(names[key])
            if isinstance(result, Exception):
                probe.errback(Failure(result))
            else:
                probe.callback(result)


class HealthCheckerTests(SynchronousTestCase):
    """
    Tests for L{HealthChecker}.
    """

    def setUp(self) -> None:
        """
        Two upstreams, a fake probe, a clock and a log observer.
        """
        self.clock = Clock()
        self.registry = UpstreamRegistry(
            [UpstreamSpec("127.0.0.1", 8081), UpstreamSpec("127.0.0.1", 8082)], self.clock
        )
        upstream_a = self.registry.get(A)
        upstream_b = self.registry.get(B)
        assert upstream_a is not None and upstream_b is not None
        self.a = upstream_a
        self.b = upstream_b
        self.probe = FakeProbe()
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        self.events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )

    def start(self, rise: int = 2, fall: int = 2, timeout: float = TIMEOUT) -> HealthChecker:
        """
        Build and start a checker on the test's registry, clock and probe.
        """
        checker = HealthChecker(
            self.registry,
            self.clock,
            self.probe,
            interval=INTERVAL,
            timeout=timeout,
            rise=rise,
            fall=fall,
        )
        checker.startService()
        self.addCleanup(lambda: checker.running and checker.stopService())
        return checker

    def next_round(self) -> None:
        """
        Advance the clock to the next round boundary.
        """
        self.clock.advance(INTERVAL)

    def warnings(self) -> list[str]:
        """
        The formatted warn-level events logged so far.
        """
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def events_at(self, level: LogLevel) -> list[LogEvent]:
        """
        The events logged so far at C{level}.
        """
        return [e for e in self.events if e["log_level"] == level]

    def test_first_round_one_interval_after_start(self) -> None:
        """
        Nothing is probed at start; the first round probes every upstream one interval later.
        """
        self.start()
        self.assertEqual(self.probe.calls, [])
        self.clock.advance(INTERVAL - 0.1)
        self.assertEqual(self.probe.calls, [])
        self.clock.advance(0.1)
        self.assertEqual([name for name, _ in self.probe.calls], [A, B])

    def test_fall_marks_live_upstream_down(self) -> None:
        """
        Two consecutive 500s mark an alive upstream down, with the reason in one warn line.
        """
        self.start()
        self.next_round()
        self.probe.answer(a=500, b=200)
        self.assertTrue(self.a.alive)
        self.assertEqual(self.warnings(), [])
        self.next_round()
        self.probe.answer(a=500, b=200)
        self.assertFalse(self.a.alive)
        self.assertTrue(self.b.alive)
        self.assertEqual(self.registry.live(), [self.b])
        self.assertEqual(
            self.warnings(),
            ["upstream 127.0.0.1:8081 is now down: status 500 (2 consecutive failures)"],
        )

    def test_rise_marks_dead_upstream_up(self) -> None:
        """
        Two consecutive 200s revive an upstream the probes took down, logged once.
        """
        self.start()
        for _ in range(2):
            self.next_round()
            self.probe.answer(a=503, b=200)
        self.assertFalse(self.a.alive)
        self.next_round()
        self.probe.answer(a=200, b=200)
        self.assertFalse(self.a.alive)
        self.next_round()
        self.probe.answer(a=200, b=200)
        self.assertTrue(self.a.alive)
        self.assertEqual(
            self.warnings(),
            [
                "upstream 127.0.0.1:8081 is now down: status 503 (2 consecutive failures)",
                "upstream 127.0.0.1:8081 is now up: status 200 (2 consecutive successes)",
            ],
        )

    def test_state_change_logged_once(self) -> None:
        """
        Further failures of a dead upstream log nothing more at warn or info.
        """
        checker = self.start()
        for _ in range(6):
            self.next_round()
            self.probe.answer(a=500, b=200)
        self.assertEqual(len(self.warnings()), 1)
        self.assertEqual(
            [e["log_format"] for e in self.events_at(LogLevel.info)],
            [
                "active health checks every {interval} s, timeout {timeout} s,"
                " rise {rise}, fall {fall}"
            ],
        )
        self.assertEqual(checker.probes_sent, 12)
        self.assertEqual(checker.probes_failed, 6)

    def test_non_200_is_failure(self) -> None:
        """
        A 204 or a redirect is unhealthy: only 200 counts as success.
        """
        checker = self.start()
        self.next_round()
        self.probe.answer(a=204, b=301)
        self.assertEqual(
            checker.last_results,
            {
                A: ProbeResult(healthy=False, reason="status 204", at=INTERVAL),
                B: ProbeResult(healthy=False, reason="status 301", at=INTERVAL),
            },
        )
        self.next_round()
        self.probe.answer(a=204, b=301)
        self.assertEqual(self.registry.live(), [])

    def test_flapping_alive_upstream_stays_up(self) -> None:
        """
        Alternating failures and successes never take a live upstream down.
        """
        self.start()
        for status in [500, 200, 500, 200, 500, 200, 500]:
            self.next_round()
            self.probe.answer(a=status, b=200)
            self.assertTrue(self.a.alive)
        self.assertEqual(self.warnings(), [])

    def test_flapping_dead_upstream_stays_down(self) -> None:
        """
        Alternating successes and failures never revive a dead upstream.
        """
        self.start()
        for _ in range(2):
            self.next_round()
            self.probe.answer(a=500, b=200)
        for status in [200, 500, 200, 500, 200, 500]:
            self.next_round()
            self.probe.answer(a=status, b=200)
            self.assertFalse(self.a.alive)
        self.assertEqual(len(self.warnings()), 1)

    def test_custom_rise_and_fall(self) -> None:
        """
        C{fall=3} needs three failures and C{rise=1} a single success.
        """
        self.start(rise=1, fall=3)
        for expected in [True, True, False]:
            self.next_round()
            self.probe.answer(a=500, b=200)
            self.assertEqual(self.a.alive, expected)
        self.next_round()
        self.probe.answer(a=200, b=200)
        self.assertTrue(self.a.alive)
        self.assertEqual(
            self.warnings(),
            [
                "upstream 127.0.0.1:8081 is now down: status 500 (3 consecutive failures)",
                "upstream 127.0.0.1:8081 is now up: status 200 (1 consecutive success)",
            ],
        )

    def test_probe_timeout_is_failure(self) -> None:
        """
        A probe with no answer is cancelled after the timeout and counts as a failure.
        """
        checker = self.start()
        self.next_round()
        self.probe.answer(b=200)
        self.clock.advance(TIMEOUT - 0.5)
        self.assertEqual(self.probe.cancelled, [])
        self.clock.advance(0.5)
        self.assertEqual(self.probe.cancelled, [A])
        self.assertEqual(
            checker.last_results[A],
            ProbeResult(healthy=False, reason="timed out after 2.0 s", at=INTERVAL + TIMEOUT),
        )
        self.next_round()
        self.probe.answer(b=200)
        self.clock.advance(TIMEOUT)
        self.assertFalse(self.a.alive)
        self.assertEqual(
            self.warnings(),
            [
                "upstream 127.0.0.1:8081 is now down:"
                " timed out after 2.0 s (2 consecutive failures)"
            ],
        )

    def test_answered_probe_leaves_no_timer(self) -> None:
        """
        Answering a probe cancels its timeout, leaving only the next round scheduled.
        """
        self.start()
        self.next_round()
        self.probe.answer(a=200, b=200)
        calls = self.clock.getDelayedCalls()
        self.assertEqual([c.getTime() for c in calls], [2 * INTERVAL])

    def test_connection_refused_reason(self) -> None:
        """
        A refused connection is a failure with a short reason.
        """
        self.start()
        for _ in range(2):
            self.next_round()
            self.probe.answer(a=ConnectionRefusedError(), b=200)
        self.assertEqual(
            self.warnings(),
            ["upstream 127.0.0.1:8081 is now down: connection refused (2 consecutive failures)"],
        )

    def test_probe_that_raises(self) -> None:
        """
        A probe callable that raises fails only that upstream and the loop keeps running.
        """
        checker = self.start()
        self.probe.raise_for.add(A)
        self.next_round()
        self.probe.answer(b=200)
        self.next_round()
        self.probe.answer(b=200)
        self.assertFalse(self.a.alive)
        self.assertTrue(self.b.alive)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(
            checker.last_results[A].reason, "RuntimeError: probe of 127.0.0.1:8081 is broken"
        )
        self.probe.raise_for.clear()
        for _ in range(2):
            self.next_round()
            self.probe.answer(a=200, b=200)
        self.assertTrue(self.a.alive)
        self.assertEqual(checker.probes_sent, 8)

    def test_rounds_never_overlap(self) -> None:
        """
        A slow probe delays the next round until the next boundary after it finishes.
        """
        self.start(timeout=25.0)
        self.next_round()
        self.probe.answer(b=200)
        self.clock.advance(INTERVAL * 1.5)
        self.assertEqual(len(self.probe.calls), 2)
        self.probe.answer(a=200)
        self.assertEqual(len(self.probe.calls), 2)
        self.clock.advance(INTERVAL * 0.5 - 0.1)
        self.assertEqual(len(self.probe.calls), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.probe.calls), 4)
        self.assertEqual(self.clock.seconds(), 3 * INTERVAL)

    def test_revive_after_passive_failure(self) -> None:
        """
        An upstream the relay marked down is revived by two successful rounds.
        """
        self.start()
        self.next_round()
        self.probe.answer(a=200, b=200)
        self.registry.mark_down(self.a, "connection refused")
        self.next_round()
        self.probe.answer(a=200, b=200)
        self.assertFalse(self.a.alive)
        self.next_round()
        self.probe.answer(a=200, b=200)
        self.assertTrue(self.a.alive)
        self.assertEqual(
            self.warnings(),
            [
                "upstream 127.0.0.1:8081 is now down: connection refused",
                "upstream 127.0.0.1:8081 is now up: status 200 (2 consecutive successes)",
            ],
        )

    def test_passive_failure_restarts_failure_streak(self) -> None:
        """
        After a passive down and a probe revival, one probe failure does not take it down.
        """
        self.start()
        self.next_round()
        self.probe.answer(a=500, b=200)
        self.registry.mark_down(self.a, "connection refused")
        for _ in range(2):
            self.next_round()
            self.probe.answer(a=200, b=200)
        self.assertTrue(self.a.alive)
        self.next_round()
        self.probe.answer(a=500, b=200)
        self.assertTrue(self.a.alive)

    def test_stop_cancels_in_flight_probes(self) -> None:
        """
        Stopping mid-round cancels the pending probes, records nothing and leaves no timers.
        """
        checker = self.start()
        self.next_round()
        self.probe.answer(b=200)
        stopped = checker.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.probe.cancelled, [A])
        self.assertEqual(checker.probes_failed, 0)
        self.assertNotIn(A, checker.last_results)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5 * INTERVAL)
        self.assertEqual(len(self.probe.calls), 2)

    def test_stop_between_rounds(self) -> None:
        """
        Stopping between rounds fires at once and no further round runs.
        """
        checker = self.start()
        self.next_round()
        self.probe.answer(a=200, b=200)
        self.assertIsNone(self.successResultOf(checker.stopService()))
        self.assertFalse(checker.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5 * INTERVAL)
        self.assertEqual(len(self.probe.calls), 2)

    def test_restart_after_stop(self) -> None:
        """
        A stopped checker can be started again and waits one interval for its first round.
        """
        checker = self.start()
        self.successResultOf(checker.stopService())
        checker.startService()
        self.clock.advance(INTERVAL)
        self.assertEqual([name for name, _ in self.probe.calls], [A, B])

    def test_invalid_parameters(self) -> None:
        """
        A zero interval, a zero timeout or a rise of 0 are rejected.
        """
        cases = [(0.0, 1.0, 2), (-1.0, 1.0, 2), (1.0, 0.0, 2), (1.0, 1.0, 0)]
        for interval, timeout, rise in cases:
            self.assertRaises(
                ValueError,
                HealthChecker,
                self.registry,
                self.clock,
                self.probe,
                interval=interval,
                timeout=timeout,
                rise=rise,
            )


class DescribeFailureTests(SynchronousTestCase):
    """
    Tests for L{describe_failure}.
    """

    def test_reasons(self) -> None:
        """
        Known failures get short reasons and unknown ones their type and message.
        """
        cases: list[tuple[Exception, str]] = [
            (TimeoutError(1.5, "Deferred"), "timed out after 1.5 s"),
            (ConnectionRefusedError(), "connection refused"),
            (ProbeFailed("malformed status line"), "malformed status line"),
            (CancelledError(), "CancelledError: "),
            (ValueError("boom"), "ValueError: boom"),
        ]
        for exception, reason in cases:
            self.assertEqual(describe_failure(Failure(exception), 1.5), reason)
