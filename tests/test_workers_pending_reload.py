"""
Tests for L{balancebeam.workers.pending_reload}: a reload asked for while a
generation of workers is starting runs once that start is over, on the
configuration read then, once however often it was asked.
"""

from __future__ import annotations

import signal

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.workers.master import READY_TIMEOUT
from tests.test_workers_master import BASE, UPSTREAMS, MasterScenario, log_events, logged

RUNNING = "generation {generation} {outcome}: running the deferred reload"
C_UPSTREAM = "127.0.0.1:8083"
D_UPSTREAM = "127.0.0.1:8084"


def upstreams_of(scenario: MasterScenario, generation: int) -> list[object]:
    """
    The upstreams the workers of C{generation} were started with.
    """
    return [
        w.spec.values["upstream"]
        for w in scenario.launcher.launched
        if w.spec.generation == generation
    ]


def generations(scenario: MasterScenario) -> list[int]:
    """
    The generation of every worker started, in order.
    """
    return [w.spec.generation for w in scenario.launcher.launched]


class PendingReloadTests(SynchronousTestCase):
    """
    SIGHUP (L{Master.reload_from_signal}) while a generation starts.
    """

    def test_deferred_until_ready_then_reads_the_configuration(self) -> None:
        """
        A SIGHUP while generation 2 starts starts nothing then; once
        generation 2 is ready, generation 3 starts with the configuration
        as it is at that moment, and takes over.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        scenario.start()
        scenario.next_values = {**BASE, "upstream": [C_UPSTREAM]}
        scenario.master.reload_from_signal()
        scenario.next_values = {**BASE, "upstream": [D_UPSTREAM]}
        scenario.master.reload_from_signal()
        self.assertEqual(generations(scenario), [1, 1, 2, 2])
        [deferred] = logged(events, "reload asked while generation {generation} is starting")
        self.assertEqual((deferred["generation"], deferred["log_level"].name), (2, "info"))
        self.assertIn("deferred until it is ready or fails", deferred["log_format"])
        self.assertEqual(deferred["log_namespace"], "balancebeam.workers.master.Master")
        scenario.next_values = {**BASE, "upstream": UPSTREAMS + [D_UPSTREAM]}
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        [running] = logged(events, RUNNING)
        self.assertEqual(
            (running["generation"], running["outcome"], running["log_level"].name),
            (2, "is ready", "info"),
        )
        self.assertEqual(generations(scenario), [1, 1, 2, 2])
        scenario.reactor.advance(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2, 3, 3])
        self.assertEqual(upstreams_of(scenario, 3), [UPSTREAMS + [D_UPSTREAM]] * 2)
        for worker in scenario.launcher.launched[4:]:
            worker.ready()
        snapshot = scenario.master.snapshot()
        self.assertEqual(snapshot.generation, 3)
        self.assertEqual(snapshot.counters["reloads"], 2)
        self.assertEqual(snapshot.counters["reloads_failed"], 0)

    def test_several_asks_make_one_reload(self) -> None:
        """
        Three reloads asked while a generation starts make one generation
        more, and each asker learns how that one reload went.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        scenario.start()
        first = scenario.master.reload()
        asked = [scenario.master.reload() for _ in range(3)]
        asks = logged(events, "reload asked while generation {generation} is starting")
        self.assertEqual([e.get("asks") for e in asks], [None, 2, 3])
        for waiting in asked:
            self.assertNoResult(waiting)
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        self.assertTrue(self.successResultOf(first))
        scenario.reactor.advance(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2, 3, 3])
        for waiting in asked:
            self.assertNoResult(waiting)
        for worker in scenario.launcher.launched[4:]:
            worker.ready()
        self.assertEqual([self.successResultOf(w) for w in asked], [True, True, True])
        scenario.reactor.advance(READY_TIMEOUT * 2)
        self.assertEqual(len(scenario.launcher.launched), 6)
        self.assertEqual(scenario.master.snapshot().counters["reloads"], 2)

    def test_runs_after_a_failed_generation(self) -> None:
        """
        When the starting generation fails and is rolled back, the reload
        asked meanwhile runs then, on the configuration read then (the
        operator's fix).
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        old = scenario.start()
        failing = scenario.master.reload()
        scenario.master.reload_from_signal()
        scenario.next_values = {**BASE, "upstream": [C_UPSTREAM]}
        scenario.launcher.launched[2].exit(1)
        self.assertFalse(self.successResultOf(failing))
        [running] = logged(events, RUNNING)
        self.assertEqual((running["generation"], running["outcome"]), (2, "failed"))
        scenario.reactor.advance(0)
        self.assertEqual(upstreams_of(scenario, 3), [[C_UPSTREAM]] * 2)
        for worker in scenario.launcher.launched[4:]:
            worker.ready()
        self.assertEqual(scenario.master.snapshot().generation, 3)
        self.assertEqual([w.process.signals for w in old], [["TERM"], ["TERM"]])

    def test_failing_again_runs_once(self) -> None:
        """
        A deferred reload whose generation fails the same way is tried
        once, not again and again: the next try waits for the next SIGHUP.
        """
        scenario = MasterScenario(self)
        old = scenario.start()
        reads = []

        def read() -> dict[str, object]:
            reads.append(1)
            return dict(scenario.values)

        scenario.master._reload_values = read
        scenario.master.reload_from_signal()
        scenario.master.reload_from_signal()
        scenario.master.reload_from_signal()
        scenario.launcher.launched[2].exit(1)
        scenario.reactor.advance(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2, 3, 3])
        scenario.launcher.launched[4].exit(1)
        for _ in range(10):
            scenario.advance(READY_TIMEOUT)
            for worker in scenario.launcher.live():
                if worker.spec.generation > 1:
                    worker.exit(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2, 3, 3])
        self.assertEqual(len(reads), 2)
        self.assertEqual(scenario.master.snapshot().counters["reloads_failed"], 2)
        self.assertEqual([w.process.signals for w in old], [[], []])
        scenario.master.reload_from_signal()
        self.assertEqual(generations(scenario)[-2:], [4, 4])

    def test_failing_at_once_runs_once(self) -> None:
        """
        A deferred reload whose workers cannot even be started fails once
        and is not tried again.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.reload()
        waiting = scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        scenario.launcher.fail = OSError(11, "Resource temporarily unavailable")
        scenario.reactor.advance(0)
        self.assertFalse(self.successResultOf(waiting))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        scenario.reactor.advance(READY_TIMEOUT * 2)
        self.assertEqual(generations(scenario), [1, 1, 2, 2])
        self.assertEqual(scenario.master.snapshot().generation, 2)

    def test_refused_configuration_runs_once(self) -> None:
        """
        A deferred reload whose configuration is bad is refused once, and
        the generation that just started serves on.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.reload()
        waiting = scenario.master.reload()
        scenario.next_values = {**BASE, "strategy": "fastest"}
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        scenario.reactor.advance(0)
        self.assertFalse(self.successResultOf(waiting))
        scenario.reactor.advance(READY_TIMEOUT * 2)
        self.assertEqual(len(logged(events, "reload refused")), 1)
        self.assertEqual(generations(scenario), [1, 1, 2, 2])
        self.assertEqual(scenario.master.snapshot().generation, 2)

    def test_reload_before_its_turn_stands_for_it(self) -> None:
        """
        A reload asked after the start is over but before the deferred one
        has run reads the configuration itself; the deferred one does not
        run as well.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.reload()
        waiting = scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        direct = scenario.master.reload()
        scenario.reactor.advance(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2, 3, 3])
        for worker in scenario.launcher.launched[4:]:
            worker.ready()
        self.assertTrue(self.successResultOf(direct))
        self.assertTrue(self.successResultOf(waiting))
        scenario.reactor.advance(READY_TIMEOUT * 2)
        self.assertEqual(len(scenario.launcher.launched), 6)

    def test_asked_again_while_the_deferred_one_starts(self) -> None:
        """
        A reload asked while the deferred reload's own generation starts is
        deferred in turn, and runs after it.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.reload()
        scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        scenario.reactor.advance(0)
        again = scenario.master.reload()
        scenario.next_values = {**BASE, "upstream": [C_UPSTREAM]}
        for worker in scenario.launcher.launched[4:]:
            worker.ready()
        scenario.reactor.advance(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2, 3, 3, 4, 4])
        self.assertEqual(upstreams_of(scenario, 4), [[C_UPSTREAM]] * 2)
        for worker in scenario.launcher.launched[6:]:
            worker.ready()
        self.assertTrue(self.successResultOf(again))
        self.assertEqual(scenario.master.snapshot().generation, 4)

    def test_dropped_when_stopping(self) -> None:
        """
        Stopping the master while a reload is deferred drops it: it never
        runs, and its asker gets C{False}.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.reload()
        waiting = scenario.master.reload()
        stopped = scenario.master.stopService()
        self.assertFalse(self.successResultOf(waiting))
        self.assertEqual(len(logged(events, "the reload deferred while generation")), 1)
        for worker in scenario.launcher.live():
            worker.exit(0)
        scenario.reactor.advance(READY_TIMEOUT)
        self.successResultOf(stopped)
        self.assertEqual(generations(scenario), [1, 1, 2, 2])

    def test_dropped_when_stopping_before_its_turn(self) -> None:
        """
        Stopping between the end of the start and the deferred reload's
        turn drops it too.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.reload()
        waiting = scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        scenario.master.stopService()
        self.assertFalse(self.successResultOf(waiting))
        scenario.reactor.advance(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2])

    def test_old_generation_still_supervised(self) -> None:
        """
        While a reload is deferred, a crash in the serving generation is
        still replaced in that generation.
        """
        scenario = MasterScenario(self)
        old = scenario.start()
        scenario.master.reload()
        scenario.master.reload()
        old[0].exit(None, signal.SIGKILL)
        scenario.reactor.advance(0)
        self.assertEqual(generations(scenario), [1, 1, 2, 2, 1])
