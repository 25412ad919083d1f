"""
Tests for L{balancebeam.workers.master} and L{balancebeam.workers.health}:
the master supervising fake worker processes on a memory reactor.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam import tap
from balancebeam.demo import DemoUpstreamsService
from balancebeam.service import BalancerService
from balancebeam.workers.control import DOWN, HEALTH, REPORT, STATS
from balancebeam.workers.master import (
    KILL_GRACE,
    READY_TIMEOUT,
    RESTART_BASE,
    RESTART_CAP,
    STABLE_AFTER,
    Master,
    add_counters,
    describe_exit,
    make_master_service,
    restart_delay,
    twistd_log_options,
    watch_reload_signal,
    worker_values,
)
from balancebeam.workers.sockets import ListenFailed
from balancebeam.workers.supervision import SILENCE_TIMEOUT
from tests.test_tap import PortAssigningReactor, parse
from tests.test_workers_fakes import (
    FakeBinder,
    FakeLauncher,
    FakeProbe,
    Launched,
)

UPSTREAMS = ["127.0.0.1:8081", "127.0.0.1:8082"]

BASE: Mapping[str, object] = {
    "upstream": UPSTREAMS,
    "workers": "2",
    "bind": "127.0.0.1:1100",
    "active-health-check-interval": "0",
    "passive-retry-interval": "5",
    "shutdown-timeout": "10",
}


class MasterScenario:
    """
    A master on a memory reactor, its fake launcher, binder and probe.

    @cvar environment: the workers' environment.
    """

    environment: Mapping[str, str] = {"PATH": "/usr/bin"}

    def __init__(self, test: SynchronousTestCase, **values: object) -> None:
        self.reactor = MemoryReactorClock()
        self.launcher = FakeLauncher()
        self.binder = FakeBinder()
        self.probe = FakeProbe()
        self.values: dict[str, object] = {**BASE, **values}
        self.next_values: dict[str, object] | None = None
        self.master = Master(
            self.values,
            self.reactor,
            launch=self.launcher,
            python="/usr/bin/python3",
            reactor_module="twisted.internet.epollreactor",
            logger="balancebeam.observers.json_stdout",
            environment=self.environment,
            probe=self.probe,
            open_listener=self.binder,
            reload_values=lambda: self.next_values or self.values,
        )
        test.addCleanup(self.cleanup)

    def start(self, ready: bool = True) -> list[Launched]:
        """
        Start the master; with C{ready}, every worker says it is ready.
        """
        self.master.privilegedStartService()
        self.master.startService()
        if ready:
            for worker in self.launcher.launched:
                worker.ready()
        return list(self.launcher.launched)

    def advance(self, seconds: float) -> None:
        """
        Move the clock by C{seconds}, a second at a time, every ready worker
        reporting each second as real workers do (a silent one is taken for
        stuck after L{SILENCE_TIMEOUT}).
        """
        while seconds > 0:
            step = min(1.0, seconds)
            self.reactor.advance(step)
            seconds -= step
            ready = {w.pid for w in self.master.workers() if w.state == "ready"}
            for worker in self.launcher.live():
                if worker.pid in ready:
                    worker.send({"type": STATS})

    def cleanup(self) -> None:
        """
        Release the seat table and its descriptor if the test did not stop.
        """
        if self.master.table is not None:
            self.master._close_sockets()


def logged(events: Any, start: str) -> list[Any]:
    """
    The events whose format starts with C{start}.
    """
    return [e for e in events if e["log_format"].startswith(start)]


def log_events(test: SynchronousTestCase) -> Any:
    """
    Collect log events for the rest of C{test}.
    """
    # Twisted annotates trial's TestCase, but the method only calls addCleanup.
    return EventLoggingObserver.createWithCleanup(
        test, globalLogPublisher  # type: ignore[arg-type]
    )


class HelperTests(SynchronousTestCase):
    """
    The master's small functions.
    """

    def test_restart_delay(self) -> None:
        """
        The first replacement is at once, then 0.5 s doubling up to the cap.
        """
        self.assertEqual(
            [restart_delay(n) for n in range(1, 10)],
            [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, RESTART_CAP, RESTART_CAP],
        )

    def test_add_counters(self) -> None:
        """
        Integers are summed, nested dictionaries too; booleans and lists are
        not counters.
        """
        total: dict[str, Any] = {"requests": 2, "responses": {"2xx": 1}}
        add_counters(
            total,
            {"requests": 3, "responses": {"2xx": 4, "5xx": 1}, "up": ["a"], "flag": True},
        )
        self.assertEqual(total, {"requests": 5, "responses": {"2xx": 5, "5xx": 1}})

    def test_describe_exit(self) -> None:
        """
        Exits are described by status or by signal name.
        """
        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(
            describe_exit(Failure(ProcessTerminated(3, None))), "exited with status 3"
        )
        self.assertEqual(
            describe_exit(Failure(ProcessTerminated(None, signal.SIGKILL))),
            "was killed by signal SIGKILL",
        )

    def test_twistd_log_options(self) -> None:
        """
        twistd's logger and log file are found before the plugin name only.
        """
        self.assertEqual(
            twistd_log_options(
                ["twistd", "-n", "--logger=a.b", "-l", "/var/log/bb.log", "balancebeam"]
            ),
            ("a.b", "/var/log/bb.log"),
        )
        self.assertEqual(
            twistd_log_options(["twistd", "--logger", "x.y", "--logfile=-", "balancebeam"]),
            ("x.y", None),
        )
        self.assertEqual(
            twistd_log_options(["twistd", "-n", "balancebeam", "--logger=no"]), (None, None)
        )
        self.assertEqual(
            twistd_log_options(["twistd", "-lbb.log", "balancebeam"]), (None, "bb.log")
        )

    def test_worker_values(self) -> None:
        """
        Workers get every option but the listeners, the process model and
        C{--demo}; the master's demo upstreams become plain upstreams.
        """
        values = {
            "upstream": ["a:1"],
            "bind": "x:1",
            "listen": ["tcp:2"],
            "workers": "4",
            "reuse-port": True,
            "demo": True,
            "strategy": "p2c",
        }
        self.assertEqual(
            worker_values(values, ["127.0.0.1:9"]),
            {"upstream": ["a:1", "127.0.0.1:9"], "strategy": "p2c"},
        )
        self.assertEqual(values["upstream"], ["a:1"])


class StartTests(SynchronousTestCase):
    """
    Starting: the sockets are bound, then each worker is started with them.
    """

    def test_needs_several_workers(self) -> None:
        """
        A master of one worker is a mistake.
        """
        self.assertRaises(ValueError, Master, {**BASE, "workers": "1"}, MemoryReactorClock())

    def test_sockets_listen_with_backlog(self) -> None:
        """
        The sockets the master binds listen with C{--listen-backlog} (511 by
        default), unless an endpoint gives its own; the specs keep the
        endpoints as configured.
        """
        for values, expected in (
            ({}, 511),
            ({"listen-backlog": "2048"}, 2048),
        ):
            scenario = MasterScenario(
                self, listen=["tcp:1101:interface=127.0.0.1:backlog=64"], **values
            )
            scenario.start(ready=False)
            self.assertEqual(
                [(s.spec.description, s.spec.backlog) for s in scenario.binder.opened],
                [
                    ("tcp:1100:interface=127.0.0.1", expected),
                    ("tcp:1101:interface=127.0.0.1:backlog=64", 64),
                ],
            )

    def test_workers_started_with_sockets_and_pipes(self) -> None:
        """
        Each worker runs the worker module on the given interpreter, with
        two control pipes, the seat table and the listening socket as
        descriptors, and a spec naming them and carrying its options.
        """
        scenario = MasterScenario(self)
        launched = scenario.start(ready=False)
        self.assertEqual(len(launched), 2)
        [listener] = scenario.binder.opened
        table_fd = scenario.master._table_fd
        for slot, worker in enumerate(launched):
            self.assertEqual(
                worker.args[:4],
                ["/usr/bin/python3", "-m", "balancebeam.workers.worker", "--spec"],
            )
            self.assertEqual(
                worker.child_fds, {0: "w", 1: 1, 2: 2, 3: "r", 4: table_fd, 5: listener.fileno()}
            )
            spec = worker.spec
            self.assertEqual(
                (spec.slot, spec.generation, spec.seat, spec.seat_fd), (slot, 1, slot, 4)
            )
            self.assertEqual(
                [(x.fd, x.description) for x in spec.listeners],
                [(5, "tcp:1100:interface=127.0.0.1")],
            )
            self.assertEqual(spec.reactor, "twisted.internet.epollreactor")
            self.assertEqual(spec.logger, "balancebeam.observers.json_stdout")
            self.assertNotIn("bind", spec.values)
            self.assertNotIn("workers", spec.values)
            self.assertEqual(spec.values["upstream"], UPSTREAMS)
            self.assertEqual(worker.env, {"PATH": "/usr/bin"})

    def test_health_sent_first(self) -> None:
        """
        Each worker is sent the upstreams' state as soon as it starts.
        """
        scenario = MasterScenario(self)
        for worker in scenario.start(ready=False):
            [message] = worker.received()
            self.assertEqual(
                message,
                {
                    "type": HEALTH,
                    "upstreams": {name: [True, "configured"] for name in UPSTREAMS},
                },
            )

    def test_listening_logged(self) -> None:
        """
        The master logs the address it listens on for its workers.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        scenario.start()
        [event] = logged(events, "Listening for requests on")
        self.assertEqual((event["address"], event["count"]), ("127.0.0.1:1100", 2))

    def test_bind_failure(self) -> None:
        """
        A socket that cannot be bound fails the start, naming the endpoint.
        """
        scenario = MasterScenario(self)
        scenario.binder.fail = OSError(98, "Address already in use")
        error = self.assertRaises(ListenFailed, scenario.master.privilegedStartService)
        self.assertEqual(
            str(error),
            "cannot listen on tcp:1100:interface=127.0.0.1: Couldn't listen on"
            " 127.0.0.1:1100: [Errno 98] Address already in use.",
        )
        self.assertIsNone(scenario.master.table)

    def test_bind_failure_exits_under_twistd(self) -> None:
        """
        Under twistd the failure is one line and exit status 1.
        """
        master = Master(
            BASE,
            MemoryReactorClock(),
            launch=FakeLauncher(),
            open_listener=FakeBinder(),
            exit_on_listen_failure=True,
        )
        binder = FakeBinder()
        binder.fail = OSError(98, "Address already in use")
        master._open_listener = binder
        error = self.assertRaises(SystemExit, master.privilegedStartService)
        self.assertEqual(
            error.code,
            "balancebeam: cannot listen on tcp:1100:interface=127.0.0.1: Couldn't listen on"
            " 127.0.0.1:1100: [Errno 98] Address already in use.",
        )

    def test_reuse_port_socket_per_slot(self) -> None:
        """
        With C{--reuse-port} each slot gets a socket of its own, all on the
        port the first one got (here from port 0), and there is no seat table.
        """
        scenario = MasterScenario(self, **{"reuse-port": True, "workers": "3"})
        del scenario.values["bind"]
        scenario.values["listen"] = ["tcp:0:interface=127.0.0.1"]
        scenario.master = Master(
            scenario.values,
            scenario.reactor,
            launch=scenario.launcher,
            open_listener=scenario.binder,
            environment={},
        )
        launched = scenario.start(ready=False)
        self.assertEqual(len(scenario.binder.opened), 3)
        self.assertEqual({s.getsockname()[1] for s in scenario.binder.opened}, {1100})
        self.assertIsNone(scenario.master.table)
        for worker, listener in zip(launched, scenario.binder.opened):
            self.assertIsNone(worker.spec.seat_fd)
            self.assertEqual(worker.child_fds[4], listener.fileno())

    def test_unix_socket_refused(self) -> None:
        """
        Sharing a unix socket is refused when the configuration is built.
        """
        self.assertRaises(
            ValueError, Master, {**BASE, "listen": ["unix:/tmp/bb.sock"]}, MemoryReactorClock()
        )

    def test_ready(self) -> None:
        """
        A worker that says it is ready is listed ready, with its pid.
        """
        scenario = MasterScenario(self)
        launched = scenario.start(ready=False)
        launched[1].ready()
        states = [(w.pid, w.slot, w.state) for w in scenario.master.snapshot().workers]
        self.assertEqual(
            states, [(launched[0].pid, 0, "starting"), (launched[1].pid, 1, "ready")]
        )

    def test_stuck_worker_killed(self) -> None:
        """
        A ready worker that reports nothing for L{SILENCE_TIMEOUT} seconds
        (its event loop stuck) is killed and replaced; one that reports
        every second lives on.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        launched = scenario.start()
        for _ in range(int(SILENCE_TIMEOUT) * 3):
            scenario.reactor.advance(1)
            launched[0].stats(0)
        self.assertEqual(launched[0].process.signals, [])
        self.assertEqual(launched[1].process.signals, ["KILL"])
        self.assertEqual(len(logged(events, "worker {slot} of generation {generation} (pid {pid})"
                                            " sent nothing")), 1)
        launched[1].exit(None, signal.SIGKILL)
        scenario.advance(RESTART_BASE)
        self.assertEqual(len(scenario.launcher.launched), 3)

    def test_not_ready_killed(self) -> None:
        """
        A worker not ready within L{READY_TIMEOUT} seconds is killed, then
        replaced.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        launched = scenario.start(ready=False)
        launched[0].ready()
        scenario.advance(READY_TIMEOUT - 0.1)
        self.assertEqual(launched[1].process.signals, [])
        scenario.advance(0.1)
        self.assertEqual(launched[1].process.signals, ["KILL"])
        self.assertEqual(launched[0].process.signals, [])
        self.assertEqual(len(logged(events, "worker {slot} (pid {pid}) is not ready")), 1)
        launched[1].exit(None, signal.SIGKILL)
        scenario.reactor.advance(0)
        self.assertEqual(len(scenario.launcher.launched), 3)


class CrashTests(SynchronousTestCase):
    """
    A worker that dies unasked is replaced, at once, or later in a crash loop.
    """

    def test_replaced_at_once(self) -> None:
        """
        A worker killed with SIGKILL is replaced in the same slot without
        delay, and its exit is logged with the signal.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        launched = scenario.start()
        scenario.reactor.advance(STABLE_AFTER + 1)
        launched[0].exit(None, signal.SIGKILL)
        scenario.reactor.advance(0)
        replacement = scenario.launcher.launched[-1]
        self.assertEqual(len(scenario.launcher.launched), 3)
        self.assertEqual((replacement.spec.slot, replacement.spec.generation), (0, 1))
        [event] = logged(events, "worker {slot} of generation {generation} (pid {pid}) {status}")
        self.assertEqual(
            (event["pid"], event["status"], event["log_level"].name),
            (launched[0].pid, "was killed by signal SIGKILL", "warn"),
        )
        self.assertEqual(scenario.master.snapshot().counters["worker_crashes"], 1)
        self.assertEqual(replacement.received_of(HEALTH)[0]["type"], HEALTH)

    def test_crash_loop_backs_off(self) -> None:
        """
        Workers that die soon after starting are replaced after 0, 0.5,
        1 and 2 seconds; the delay is logged.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        worker = scenario.start(ready=False)[0]
        for delay in (0.0, 0.5, 1.0, 2.0):
            before = len(scenario.launcher.launched)
            worker.exit(1)
            if delay:
                scenario.reactor.advance(delay - 0.01)
                self.assertEqual(len(scenario.launcher.launched), before, delay)
                scenario.reactor.advance(0.01)
            else:
                scenario.reactor.advance(0)
            self.assertEqual(len(scenario.launcher.launched), before + 1, delay)
            worker = scenario.launcher.launched[-1]
            self.assertEqual(worker.spec.slot, 0)
        self.assertEqual(len(logged(events, "worker {slot} of generation {generation} died")), 3)

    def test_stable_worker_resets_the_streak(self) -> None:
        """
        A worker that ran L{STABLE_AFTER} seconds before it died is replaced
        at once, even after a crash loop.
        """
        scenario = MasterScenario(self)
        launched = scenario.start(ready=False)
        launched[0].exit(1)
        scenario.reactor.advance(0)
        scenario.launcher.launched[-1].exit(1)
        scenario.reactor.advance(0.5)
        third = scenario.launcher.launched[-1]
        third.ready()
        scenario.reactor.advance(STABLE_AFTER)
        third.exit(1)
        scenario.reactor.advance(0)
        self.assertEqual(len(scenario.launcher.launched), 5)

    def test_no_free_seat(self) -> None:
        """
        When every seat of the table is taken (workers still draining), the
        worker is tried again later instead of failing the master.
        """
        scenario = MasterScenario(self)
        launched = scenario.start()
        table = scenario.master.table
        assert table is not None
        launched[0].exit(None, signal.SIGKILL)
        taken = []
        while True:
            try:
                taken.append(table.claim())
            except RuntimeError:
                break
        scenario.reactor.advance(0)
        self.assertEqual(len(scenario.launcher.launched), 2)
        table.release(taken[0])
        scenario.reactor.advance(0.5)
        self.assertEqual(len(scenario.launcher.launched), 3)

    def test_launch_failure_retried(self) -> None:
        """
        A worker that cannot even be started is tried again later.
        """
        scenario = MasterScenario(self)
        launched = scenario.start()
        scenario.launcher.fail = OSError(24, "Too many open files")
        launched[1].exit(None, signal.SIGKILL)
        scenario.reactor.advance(0)
        self.assertEqual(len(scenario.launcher.launched), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        scenario.reactor.advance(0.5)
        self.assertEqual(len(scenario.launcher.launched), 3)


class CounterTests(SynchronousTestCase):
    """
    L{Master.snapshot} sums the workers' counters; no sum ever goes down.
    """

    def test_sums(self) -> None:
        """
        Counters, nested ones included, are summed over the workers, and
        each worker is listed with its own requests and connections.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        first.stats(5, connections=2, responses={"2xx": 5}, refused_per_client=1)
        second.stats(7, connections=3, responses={"2xx": 6, "5xx": 1}, refused_per_client=2)
        snapshot = scenario.master.snapshot()
        self.assertEqual(snapshot.counters["requests"], 12)
        self.assertEqual(snapshot.counters["refused_per_client"], 3)
        self.assertEqual(snapshot.counters["responses"], {"2xx": 11, "5xx": 1})
        self.assertEqual(
            [(w.pid, w.requests, w.connections) for w in snapshot.workers],
            [(first.pid, 5, 2), (second.pid, 7, 3)],
        )
        self.assertEqual(snapshot.generation, 1)
        self.assertEqual(snapshot.upstreams_up, tuple(UPSTREAMS))

    def test_never_backwards_when_replaced(self) -> None:
        """
        When a worker dies, its last counters stay in the sums, and its
        replacement's add to them.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        first.stats(5)
        second.stats(7)
        before = scenario.master.snapshot().counters["requests"]
        first.exit(None, signal.SIGKILL)
        scenario.reactor.advance(0)
        self.assertEqual(scenario.master.snapshot().counters["requests"], before)
        replacement = scenario.launcher.launched[-1]
        replacement.ready()
        replacement.stats(1)
        self.assertEqual(scenario.master.snapshot().counters["requests"], before + 1)
        self.assertEqual(len(scenario.master.snapshot().workers), 2)

    def test_collect_asks_for_fresh_counters(self) -> None:
        """
        L{Master.collect} sends a report request to every ready worker and
        fires once each has answered with that serial.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        collected = scenario.master.collect()
        [request] = first.received_of(REPORT)
        self.assertEqual(second.received_of(REPORT), [request])
        first.stats(3, serial=request["serial"])
        self.assertNoResult(collected)
        second.stats(4, serial=request["serial"])
        self.assertEqual(self.successResultOf(collected).counters["requests"], 7)

    def test_collect_times_out(self) -> None:
        """
        A worker that does not answer holds L{Master.collect} up for the
        timeout only.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        collected = scenario.master.collect(timeout=1.0)
        first.stats(3, serial=first.received_of(REPORT)[0]["serial"])
        second.stats(2)
        scenario.reactor.advance(0.9)
        self.assertNoResult(collected)
        scenario.reactor.advance(0.1)
        self.assertEqual(self.successResultOf(collected).counters["requests"], 5)

    def test_collect_worker_gone(self) -> None:
        """
        A worker that exits while asked counts as having answered.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        collected = scenario.master.collect()
        first.stats(3, serial=1)
        second.exit(None, signal.SIGKILL)
        self.assertEqual(self.successResultOf(collected).counters["requests"], 3)


class SharedHealthTests(SynchronousTestCase):
    """
    The master keeps the upstreams' state for all workers.
    """

    def test_passive_failure_reaches_every_worker(self) -> None:
        """
        A connect failure one worker reports takes the upstream down in
        every worker: each is sent the new state, with the reason.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        first.send({"type": DOWN, "upstream": UPSTREAMS[0], "reason": "connect failed: refused"})
        for worker in (first, second):
            state = worker.received_of(HEALTH)[-1]["upstreams"]
            self.assertEqual(
                state[UPSTREAMS[0]], [False, f"worker {first.pid}: connect failed: refused"]
            )
            self.assertEqual(state[UPSTREAMS[1]][0], True)
        self.assertEqual(scenario.master.snapshot().upstreams_down, (UPSTREAMS[0],))

    def test_passive_retry_by_master(self) -> None:
        """
        With active checks off, the master puts the upstream back after
        C{--passive-retry-interval}, in every worker.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        first.send({"type": DOWN, "upstream": UPSTREAMS[0], "reason": "refused"})
        scenario.reactor.advance(4.9)
        self.assertFalse(second.received_of(HEALTH)[-1]["upstreams"][UPSTREAMS[0]][0])
        scenario.reactor.advance(0.1)
        self.assertEqual(
            second.received_of(HEALTH)[-1]["upstreams"][UPSTREAMS[0]],
            [True, "passive retry interval elapsed"],
        )

    def test_repeated_failure_reported_once(self) -> None:
        """
        Reports about an upstream already down change nothing and send nothing.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        first.send({"type": DOWN, "upstream": UPSTREAMS[0], "reason": "refused"})
        second.send({"type": DOWN, "upstream": UPSTREAMS[0], "reason": "refused"})
        self.assertEqual(len(first.received_of(HEALTH)), 2)

    def test_unknown_upstream_ignored(self) -> None:
        """
        A report about an upstream the master does not know changes nothing.
        """
        scenario = MasterScenario(self)
        first, _ = scenario.start()
        first.send({"type": DOWN, "upstream": "10.9.9.9:1", "reason": "refused"})
        self.assertEqual(len(first.received_of(HEALTH)), 1)

    def test_probes_once_per_interval_whatever_the_workers(self) -> None:
        """
        With active checks on, the master alone probes: one probe per
        upstream per interval, with 4 workers as with 2.
        """
        for workers in ("2", "4"):
            scenario = MasterScenario(
                self, **{"workers": workers, "active-health-check-interval": "1"}
            )
            scenario.start()
            for _ in range(3):
                scenario.reactor.advance(1)
                scenario.probe.answer_all(200)
            names = [name for name, _ in scenario.probe.calls]
            self.assertEqual(sorted(names), sorted(UPSTREAMS * 3), workers)
            self.assertEqual(scenario.master.snapshot().counters["health_probes_sent"], 6)
            scenario.master.stopService()
            for worker in scenario.launcher.live():
                worker.exit(0)

    def test_probe_verdict_reaches_workers(self) -> None:
        """
        Upstreams the probes find dead are taken down in every worker, with
        the probe's reason, within the interval that decided it.
        """
        scenario = MasterScenario(
            self, **{"active-health-check-interval": "1", "health-check-fall": "1"}
        )
        first, second = scenario.start()
        scenario.reactor.advance(1)
        for name, probe in scenario.probe.calls:
            probe.callback(500 if name == UPSTREAMS[1] else 200)
        for worker in (first, second):
            self.assertEqual(
                worker.received_of(HEALTH)[-1]["upstreams"][UPSTREAMS[1]],
                [False, "health check: status 500"],
            )


class ReloadTests(SynchronousTestCase):
    """
    L{Master.reload}: a new generation, then the old one drains.
    """

    def test_new_generation_before_old_stops(self) -> None:
        """
        The old workers are asked to stop only once every new worker is
        ready; their exit is not a crash.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        old = scenario.start()
        reloaded = scenario.master.reload()
        new = scenario.launcher.launched[2:]
        self.assertEqual([w.spec.generation for w in new], [2, 2])
        self.assertEqual([w.spec.seat for w in new], [2, 3])
        new[0].ready()
        self.assertEqual([w.process.signals for w in old], [[], []])
        self.assertNoResult(reloaded)
        new[1].ready()
        self.assertTrue(self.successResultOf(reloaded))
        self.assertEqual([w.process.signals for w in old], [["TERM"], ["TERM"]])
        for worker in old:
            worker.exit(0)
        scenario.reactor.advance(1)
        self.assertEqual(len(scenario.launcher.launched), 4)
        self.assertEqual(scenario.master.snapshot().generation, 2)
        self.assertEqual(scenario.master.snapshot().counters["worker_crashes"], 0)
        self.assertEqual(scenario.master.snapshot().counters["reloads"], 1)
        self.assertEqual(len(logged(events, "generation {generation} has stopped")), 1)

    def test_stragglers_killed(self) -> None:
        """
        An old worker still draining after C{--shutdown-timeout} (and
        L{KILL_GRACE}) is killed.
        """
        scenario = MasterScenario(self)
        old = scenario.start()
        scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        old[0].exit(0)
        scenario.reactor.advance(10 + KILL_GRACE - 0.1)
        self.assertEqual(old[1].process.signals, ["TERM"])
        scenario.reactor.advance(0.1)
        self.assertEqual(old[1].process.signals, ["TERM", "KILL"])

    def test_counters_survive_reload(self) -> None:
        """
        The old generation's counters stay in the sums once it is gone.
        """
        scenario = MasterScenario(self)
        old = scenario.start()
        old[0].stats(10)
        old[1].stats(20)
        scenario.master.reload()
        new = scenario.launcher.launched[2:]
        for worker in new:
            worker.ready()
        for worker in old:
            worker.stats(11 if worker is old[0] else 21, final=True)
            worker.exit(0)
        new[0].stats(1)
        self.assertEqual(scenario.master.snapshot().counters["requests"], 33)

    def test_failed_new_worker_keeps_old_generation(self) -> None:
        """
        A new worker that exits before it is ready ends the reload: the new
        workers are stopped and the old ones serve on, untouched.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        old = scenario.start()
        reloaded = scenario.master.reload()
        new = scenario.launcher.launched[2:]
        new[0].ready()
        new[1].exit(1)
        self.assertFalse(self.successResultOf(reloaded))
        self.assertEqual(new[0].process.signals, ["TERM"])
        self.assertEqual([w.process.signals for w in old], [[], []])
        new[0].exit(0)
        scenario.reactor.advance(1)
        self.assertEqual(len(scenario.launcher.launched), 4)
        self.assertEqual(scenario.master.snapshot().generation, 1)
        self.assertEqual(scenario.master.snapshot().counters["reloads_failed"], 1)
        self.assertEqual(len(logged(events, "reload failed")), 1)

    def test_bad_values_refused(self) -> None:
        """
        A reload whose configuration is bad starts nothing.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.next_values = {**BASE, "strategy": "fastest"}
        self.assertFalse(self.successResultOf(scenario.master.reload()))
        self.assertEqual(len(scenario.launcher.launched), 2)

    def test_listener_change_refused(self) -> None:
        """
        Changing the listeners needs a restart: the reload is refused.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        scenario.start()
        scenario.next_values = {**BASE, "bind": "127.0.0.1:1101"}
        self.assertFalse(self.successResultOf(scenario.master.reload()))
        self.assertEqual(len(scenario.launcher.launched), 2)
        [event] = logged(events, "reload refused")
        self.assertEqual(event["problem"], "changing the listeners needs a restart")

    def test_listen_backlog_change_refused(self) -> None:
        """
        Changing C{--listen-backlog} needs a restart (the sockets are
        listening): the reload is refused.
        """
        events = log_events(self)
        scenario = MasterScenario(self)
        scenario.start()
        scenario.next_values = {**BASE, "listen-backlog": "4096"}
        self.assertFalse(self.successResultOf(scenario.master.reload()))
        self.assertEqual(len(scenario.launcher.launched), 2)
        [event] = logged(events, "reload refused")
        self.assertEqual(event["problem"], "changing --listen-backlog needs a restart")

    def test_new_worker_not_started(self) -> None:
        """
        A new worker that cannot even be started ends the reload, and the
        next reload gets a generation number of its own.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.launcher.fail = OSError(11, "Resource temporarily unavailable")
        self.assertFalse(self.successResultOf(scenario.master.reload()))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(scenario.launcher.launched), 2)
        scenario.master.reload()
        self.assertEqual([w.spec.generation for w in scenario.launcher.launched[2:]], [3, 3])

    def test_reload_during_reload_deferred(self) -> None:
        """
        A second reload while a generation starts waits for that start to
        be over (L{tests.test_workers_pending_reload}).
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.reload()
        self.assertNoResult(scenario.master.reload())
        self.assertEqual(len(scenario.launcher.launched), 4)

    def test_new_configuration(self) -> None:
        """
        The new generation gets the new values: more workers, another
        upstream, whose health the new workers follow.
        """
        scenario = MasterScenario(self)
        old = scenario.start()
        scenario.next_values = {
            **BASE,
            "workers": "3",
            "upstream": UPSTREAMS + ["127.0.0.1:8083"],
        }
        reloaded = scenario.master.reload()
        new = scenario.launcher.launched[2:]
        self.assertEqual(len(new), 3)
        self.assertEqual(new[0].spec.values["upstream"], UPSTREAMS + ["127.0.0.1:8083"])
        self.assertEqual(len(new[0].received_of(HEALTH)[0]["upstreams"]), 3)
        for worker in new:
            worker.ready()
        self.assertTrue(self.successResultOf(reloaded))
        new[0].send({"type": DOWN, "upstream": "127.0.0.1:8083", "reason": "refused"})
        self.assertFalse(new[2].received_of(HEALTH)[-1]["upstreams"]["127.0.0.1:8083"][0])
        self.assertEqual(len(old[0].received_of(HEALTH)), 1)
        self.assertEqual(scenario.master.snapshot().upstreams_down, ("127.0.0.1:8083",))

    def test_old_crash_during_reload_replaced(self) -> None:
        """
        Until the new generation is ready, the old one is still supervised.
        """
        scenario = MasterScenario(self)
        old = scenario.start()
        scenario.master.reload()
        old[0].exit(None, signal.SIGKILL)
        scenario.reactor.advance(0)
        self.assertEqual(scenario.launcher.launched[-1].spec.generation, 1)


class StopTests(SynchronousTestCase):
    """
    Stopping the master drains every worker.
    """

    def test_drains_then_stops(self) -> None:
        """
        Every worker is asked to stop and the master closes its listening
        sockets at once (so that, once the draining workers have closed
        theirs, new connections are refused rather than queued for nobody);
        the master's stop finishes once all have exited, then the seat
        table closes.
        """
        scenario = MasterScenario(self)
        launched = scenario.start()
        stopped = scenario.master.stopService()
        self.assertEqual([w.process.signals for w in launched], [["TERM"], ["TERM"]])
        self.assertTrue(scenario.binder.opened)
        self.assertTrue(all(s.closed for s in scenario.binder.opened))
        self.assertIsNotNone(scenario.master.table)
        launched[0].exit(0)
        self.assertNoResult(stopped)
        launched[1].exit(0)
        self.successResultOf(stopped)
        self.assertTrue(all(s.closed for s in scenario.binder.opened))
        self.assertIsNone(scenario.master.table)

    def test_no_replacement_while_stopping(self) -> None:
        """
        A worker dying while the master stops is not replaced.
        """
        scenario = MasterScenario(self)
        launched = scenario.start()
        stopped = scenario.master.stopService()
        launched[0].exit(None, signal.SIGKILL)
        launched[1].exit(0)
        scenario.reactor.advance(60)
        self.successResultOf(stopped)
        self.assertEqual(len(scenario.launcher.launched), 2)

    def test_stragglers_killed(self) -> None:
        """
        Workers still running after C{--shutdown-timeout} and L{KILL_GRACE}
        are killed.
        """
        scenario = MasterScenario(self, **{"shutdown-timeout": "3"})
        launched = scenario.start()
        stopped = scenario.master.stopService()
        scenario.reactor.advance(3 + KILL_GRACE)
        self.assertEqual([w.process.signals for w in launched], [["TERM", "KILL"]] * 2)
        for worker in launched:
            worker.exit(None, signal.SIGKILL)
        self.successResultOf(stopped)

    def test_pending_restart_cancelled(self) -> None:
        """
        A replacement waiting out its back-off is not started once stopping.
        """
        scenario = MasterScenario(self)
        launched = scenario.start(ready=False)
        launched[0].exit(1)
        scenario.reactor.advance(0)
        scenario.launcher.launched[-1].exit(1)
        stopped = scenario.master.stopService()
        launched[1].exit(0)
        self.successResultOf(stopped)
        scenario.reactor.advance(60)
        self.assertEqual(len(scenario.launcher.launched), 3)

    def test_stop_during_reload(self) -> None:
        """
        Stopping during a reload stops both generations; the reload fails.
        """
        scenario = MasterScenario(self)
        old = scenario.start()
        reloaded = scenario.master.reload()
        stopped = scenario.master.stopService()
        self.assertFalse(self.successResultOf(reloaded))
        for worker in scenario.launcher.launched:
            self.assertEqual(worker.process.signals, ["TERM"])
            worker.exit(0)
        self.successResultOf(stopped)
        self.assertEqual(len(old), 2)


class MakeServiceTests(SynchronousTestCase):
    """
    C{twistd balancebeam --workers N} builds a master.
    """

    def test_workers_make_a_master(self) -> None:
        """
        With C{--workers 2} the service is a L{Master} whose workers get the
        option values, twistd's logger and this reactor's module; SIGHUP is
        watched once the reactor runs.
        """
        reactor = PortAssigningReactor()
        options = parse("-u", "127.0.0.1:8081", "--workers", "2", "--strategy", "p2c")
        service = make_master_service(
            options.config_values(),
            reactor,
            argv=["twistd", "--logger=balancebeam.observers.json_stdout", "balancebeam"],
        )
        assert isinstance(service, Master)
        self.assertEqual(service.config.workers, 2)
        self.assertEqual(service._logger, "balancebeam.observers.json_stdout")
        self.assertEqual(service._reactor_module, type(reactor).__module__)
        self.assertEqual(
            [hook[0] for hook in reactor.whenRunningHooks], [watch_reload_signal]
        )

    def test_tap_branches_on_workers(self) -> None:
        """
        L{tap.makeService} returns a master for C{--workers 2}, and the
        balancer itself for one process.
        """
        self.assertIsInstance(
            tap.makeService(
                parse("-u", "127.0.0.1:8081", "--workers", "2"), PortAssigningReactor()
            ),
            Master,
        )
        self.assertIsInstance(
            tap.makeService(parse("-u", "127.0.0.1:8081"), PortAssigningReactor()),
            BalancerService,
        )

    def test_demo(self) -> None:
        """
        With C{--demo}, the master runs the demo upstreams (listening at
        once) and its workers are given them as upstreams.
        """
        reactor = PortAssigningReactor()
        service = tap.makeService(parse("--demo", "--workers", "2"), reactor)
        assert isinstance(service, MultiService)
        demo, master = list(service)
        self.assertIsInstance(demo, DemoUpstreamsService)
        assert isinstance(master, Master)
        generation = master._new_generation(2, master._values)
        self.assertEqual(
            generation.values["upstream"],
            ["127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:40003"],
        )
        self.assertNotIn("demo", generation.values)
