"""
Tests for L{balancebeam.workers.worker}: a worker's balancer, its control
channel and its shared listeners, on a memory reactor.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from balancebeam.service import BalancerService
from balancebeam.workers.control import (
    DOWN,
    HEALTH,
    READY,
    REPORT,
    STATS,
    Message,
    MessageDecoder,
    encode,
)
from balancebeam.workers.worker import (
    SETTLE,
    STOP_GRACE,
    ControlProtocol,
    ListenerFd,
    SharedListenerService,
    Worker,
    WorkerSpec,
    install_reactor,
    parse_arguments,
    worker_observer,
)

UPSTREAMS = ["127.0.0.1:8081", "127.0.0.1:8082"]

VALUES: Mapping[str, object] = {
    "upstream": UPSTREAMS,
    "active-health-check-interval": "10",
    "shutdown-timeout": "5",
}


class FakeStdio:
    """
    The pipes of C{StandardIO} as the control protocol sees them.

    @ivar written: what the worker wrote to the master.
    @ivar write_closed: whether the worker closed its pipe to the master.
    """

    def __init__(self) -> None:
        self.written = b""
        self.write_closed = False

    def write(self, data: bytes) -> None:
        """
        Write to the master.
        """
        if self.write_closed:
            raise AssertionError("write after loseWriteConnection")
        self.written += data

    def loseWriteConnection(self) -> None:  # noqa: N802
        """
        Close the pipe to the master once written.
        """
        self.write_closed = True


class WorkerScenario:
    """
    A worker built from L{VALUES} on a memory reactor, connected to a fake
    master.
    """

    def __init__(
        self, listeners: tuple[ListenerFd, ...] = (), values: Mapping[str, object] | None = None
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.spec = WorkerSpec(values={**VALUES, **(values or {})}, listeners=listeners, slot=1)
        self.worker = Worker(self.spec, self.reactor, pid=4321)
        self.worker.build()
        self.stdio = FakeStdio()
        self.control = ControlProtocol(self.worker)
        self.control.makeConnection(self.stdio)
        self.worker.connect(self.control)

    @property
    def service(self) -> BalancerService:
        """
        The worker's balancer.
        """
        service: BalancerService = self.worker.service
        return service

    def send(self, message: Mapping[str, object]) -> None:
        """
        The master sends a message.
        """
        self.control.dataReceived(encode(message))

    def health(self, **down: str) -> None:
        """
        The master sends the upstreams' state: those named (by port) down.
        """
        upstreams = {}
        for name in UPSTREAMS:
            reason = down.get("u" + name.rsplit(":", 1)[1])
            upstreams[name] = [reason is None, reason or "up"]
        self.send({"type": HEALTH, "upstreams": upstreams})

    def received(self, kind: str | None = None) -> list[Message]:
        """
        What the worker sent the master (of one type).
        """
        messages = MessageDecoder().feed(self.stdio.written)
        return [m for m in messages if kind is None or m["type"] == kind]


class WorkerSpecTests(SynchronousTestCase):
    """
    L{WorkerSpec} travels as JSON on the worker's command line.
    """

    def test_round_trip(self) -> None:
        """
        A spec read back from its JSON equals the original.
        """
        spec = WorkerSpec(
            values={"upstream": ["a:1"], "access-log": True},
            listeners=(
                ListenerFd(5, socket.AF_INET6, "tcp6:80", tls=False),
                ListenerFd(6, socket.AF_INET, "tcp:443:interface=127.0.0.1", https=True),
            ),
            slot=2,
            generation=3,
            seat=7,
            seat_fd=4,
            reactor="twisted.internet.pollreactor",
            logger="balancebeam.observers.json_stdout",
            logfile="/var/log/bb.log",
        )
        self.assertEqual(WorkerSpec.from_json(spec.to_json()), spec)
        self.assertEqual(parse_arguments(["--spec", spec.to_json()]), spec)
        self.assertEqual(
            [(x.tls, x.https) for x in WorkerSpec.from_json(spec.to_json()).listeners],
            [(False, False), (False, True)],
        )

    def test_bad_spec(self) -> None:
        """
        JSON that is not a spec is refused with a usage error.
        """
        self.assertRaises(ValueError, WorkerSpec.from_json, json.dumps({"values": {}}))
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            self.assertRaises(SystemExit, parse_arguments, ["--spec", "{}"])
            self.assertRaises(SystemExit, parse_arguments, [])
        self.assertIn("not a worker spec", errors.getvalue())
        self.assertIn("--spec", errors.getvalue())

    def test_install_reactor_none(self) -> None:
        """
        Without a reactor module, or with one that has no installer, nothing
        is installed.
        """
        install_reactor(None)
        install_reactor("json")


class ObserverTests(SynchronousTestCase):
    """
    L{worker_observer} marks each log event with the worker's pid.
    """

    def test_text_lines_name_the_worker(self) -> None:
        """
        Twisted's text lines start their system part with the worker's pid.
        """
        output = io.StringIO()
        observe = worker_observer(textFileLogObserver(output), 4321, True)
        observe(
            {
                "log_format": "upstream {upstream} down",
                "upstream": "a:1",
                "log_namespace": "balancebeam.registry",
                "log_level": LogLevel.warn,
                "log_time": 0.0,
            }
        )
        self.assertIn(
            "[worker 4321 balancebeam.registry#warn] upstream a:1 down", output.getvalue()
        )

    def test_field_added(self) -> None:
        """
        Every event gets a C{worker} field (which JSON observers write out),
        without changing the event other observers see.
        """
        seen: list[Any] = []

        @provider(ILogObserver)
        def record(event: Any) -> None:
            seen.append(event)

        observe = worker_observer(record, 99, False)
        event = {"log_format": "x", "log_level": LogLevel.info}
        observe(event)
        self.assertEqual(seen[0]["worker"], 99)
        self.assertNotIn("log_system", seen[0])
        self.assertNotIn("worker", event)


class WorkerTests(SynchronousTestCase):
    """
    L{Worker}: built without health checks of its own, serves once it knows
    the upstreams' state, reports to the master, drains on stop.
    """

    def test_health_left_to_master(self) -> None:
        """
        The worker's balancer has no active health checker, and an upstream
        it marks down stays down until the master says otherwise.
        """
        scenario = WorkerScenario(values={"active-health-check-interval": "0"})
        scenario.health()
        self.assertIsNone(scenario.service.health)
        upstream = scenario.service.registry.upstreams[0]
        scenario.service.dispatcher.mark_down(upstream, "connect failed: refused")
        scenario.reactor.advance(60)
        self.assertEqual(len(scenario.service.dispatcher.live()), 1)
        self.assertFalse(upstream.alive)

    def test_waits_for_the_upstreams_state(self) -> None:
        """
        Nothing starts before the master's first health message; then the
        state is applied, the balancer starts and the master is told.
        """
        scenario = WorkerScenario()
        self.assertFalse(scenario.service.running)
        self.assertEqual(scenario.received(), [])
        scenario.health(u8082="health check: status 500")
        self.assertTrue(scenario.service.running)
        self.assertEqual(scenario.received(READY), [{"type": READY, "pid": 4321}])
        self.assertEqual(
            [u.alive for u in scenario.service.registry.upstreams], [True, False]
        )

    def test_state_changes_applied(self) -> None:
        """
        Later health messages bring upstreams up and down; unknown names
        are ignored.
        """
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        scenario = WorkerScenario()
        scenario.health(u8082="x")
        scenario.health(u8081="worker 7: connect failed")
        scenario.send(
            {"type": HEALTH, "upstreams": {"10.0.0.1:1": [False, "?"], UPSTREAMS[1]: [True, "ok"]}}
        )
        self.assertEqual(
            [u.alive for u in scenario.service.registry.upstreams], [False, True]
        )
        reasons = [e["reason"] for e in events if "is now down" in e.get("log_format", "")]
        self.assertIn("worker 7: connect failed (from the master)", reasons)
        self.assertEqual(scenario.received(DOWN), [])

    def test_passive_failure_reported(self) -> None:
        """
        A connect failure here is sent to the master, once.
        """
        scenario = WorkerScenario()
        scenario.health()
        upstream = scenario.service.registry.upstreams[1]
        scenario.service.dispatcher.mark_down(upstream, "connect failed: refused")
        scenario.service.dispatcher.mark_down(upstream, "connect failed: refused")
        self.assertEqual(
            scenario.received(DOWN),
            [{"type": DOWN, "upstream": UPSTREAMS[1], "reason": "connect failed: refused"}],
        )

    def test_counters_every_interval(self) -> None:
        """
        The counters are sent every second, and at once when asked, quoting
        the request's serial.
        """
        scenario = WorkerScenario()
        scenario.health()
        scenario.service.stats.requests = 5
        scenario.reactor.advance(1)
        [stats] = scenario.received(STATS)
        self.assertEqual(
            (stats["requests"], stats["connections"], stats["serial"], stats["final"]),
            (5, 0, 0, False),
        )
        self.assertEqual(stats["counters"]["requests"], 5)
        self.assertNotIn("upstreams_up", stats["counters"])
        scenario.send({"type": REPORT, "serial": 9})
        self.assertEqual(scenario.received(STATS)[-1]["serial"], 9)

    def test_master_gone(self) -> None:
        """
        When the master's pipe closes, the worker stops its reactor (which
        drains and exits).
        """
        scenario = WorkerScenario()
        scenario.health()
        scenario.control.readConnectionLost()
        self.assertTrue(scenario.reactor.hasStopped)

    def test_stop_drains_then_reports(self) -> None:
        """
        Stopping stops the balancer, sends the final counters, then closes
        the pipe to the master; the stop finishes once it is closed.
        """
        scenario = WorkerScenario()
        scenario.health()
        scenario.service.stats.requests = 3
        stopped = scenario.worker.stop()
        self.assertFalse(scenario.service.running)
        self.assertNoResult(stopped)
        [final] = [m for m in scenario.received(STATS) if m["final"]]
        self.assertEqual(final["requests"], 3)
        self.assertTrue(scenario.stdio.write_closed)
        scenario.control.writeConnectionLost()
        self.successResultOf(stopped)

    def test_stop_gives_up_on_a_stuck_pipe(self) -> None:
        """
        A pipe that never finishes closing holds the stop for two seconds.
        """
        scenario = WorkerScenario()
        scenario.health()
        stopped = scenario.worker.stop()
        scenario.reactor.advance(1.9)
        self.assertNoResult(stopped)
        scenario.reactor.advance(0.1)
        self.successResultOf(stopped)

    def test_stuck_drain_does_not_keep_the_worker(self) -> None:
        """
        A drain that never finishes (a connection whose close never
        completes) is given up after C{--shutdown-timeout} and L{STOP_GRACE}
        seconds: the worker reports and stops anyway.
        """
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        scenario = WorkerScenario()
        scenario.health()
        stuck: Deferred[None] = Deferred()
        scenario.service.factory.drain = lambda grace: stuck  # type: ignore[method-assign]
        stopped = scenario.worker.stop()
        scenario.reactor.advance(5 + STOP_GRACE - 0.1)
        self.assertEqual([m for m in scenario.received(STATS) if m["final"]], [])
        scenario.reactor.advance(0.1)
        self.assertEqual(len([m for m in scenario.received(STATS) if m["final"]]), 1)
        scenario.control.writeConnectionLost()
        self.successResultOf(stopped)
        self.assertEqual(len([e for e in events if "exiting anyway" in e["log_format"]]), 1)

    def test_stop_before_serving(self) -> None:
        """
        A worker stopped before it served stops at once, sending nothing.
        """
        scenario = WorkerScenario()
        self.successResultOf(scenario.worker.stop())
        self.assertEqual(scenario.received(), [])


class SharedListenerTests(SynchronousTestCase):
    """
    L{SharedListenerService}: the worker's side of a shared socket.
    """

    def test_reuse_port_adopts_the_socket(self) -> None:
        """
        Without a seat table (C{--reuse-port}), the socket is adopted with
        C{adoptStreamPort} for the balancer's factory and the inherited
        descriptor closed; stopping lets connections settle before the drain.
        """
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, write_end)
        scenario = WorkerScenario(listeners=(ListenerFd(read_end, socket.AF_INET, "tcp:80"),))
        scenario.health()
        [(fd, family, factory)] = scenario.reactor.adoptedPorts
        self.assertEqual(
            (fd, family, factory), (read_end, socket.AF_INET, scenario.service.factory)
        )
        self.assertRaises(OSError, os.fstat, read_end)
        [listener] = [s for s in scenario.service if isinstance(s, SharedListenerService)]
        stopped = listener.stopService()
        scenario.reactor.advance(SETTLE - 0.01)
        self.assertNoResult(stopped)
        scenario.reactor.advance(0.01)
        self.successResultOf(stopped)
