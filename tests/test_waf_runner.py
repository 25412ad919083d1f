"""
Where inspections run: other connections are never held up by more than one
inspection, and inspections in threads do not hold up the reactor at all.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from balancebeam.config import WafConfig
from balancebeam.waf import rules
from balancebeam.waf.build import build_waf
from balancebeam.waf.engine import IInspector, InspectedRequest, Verdict
from balancebeam.waf.filter import WafFilter
from balancebeam.waf.runner import RunnerBusy, ThreadedRunner, TurnTakingRunner
from tests.test_waf_fakes import FakeExchange, FakeInspector, real_inspector, request_head


class FakeThreadPool:
    """
    Holds the work given to it until the test runs it, as a worker thread would.
    """

    def __init__(self) -> None:
        self.work: list[tuple[Callable[[bool, Any], object], Callable[[], Any]]] = []

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        """
        Keep C{func} for L{run_one}.
        """
        assert onResult is not None
        self.work.append((onResult, lambda: func(*args, **kw)))

    def run_one(self) -> None:
        """
        Run the oldest work and report its result, as the worker thread does.
        """
        on_result, func = self.work.pop(0)
        try:
            value = func()
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, value)


class FakeThreadsReactor:
    """
    Collects C{callFromThread} calls until the test runs them on "the reactor".
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:
        """
        Keep the call.
        """
        self.calls.append((f, args))

    def run_calls(self) -> None:
        """
        Run the calls collected so far.
        """
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class TurnTakingRunnerTests(SynchronousTestCase):
    """
    Inspections on the reactor thread, one per reactor turn.
    """

    def test_work_never_runs_inside_run(self) -> None:
        """
        C{run} only queues; the work runs on a later turn.
        """
        clock = Clock()
        runner = TurnTakingRunner(clock)
        calls: list[int] = []

        def work() -> int:
            calls.append(1)
            return 7

        result = runner.run(work)
        self.assertEqual(calls, [])
        self.assertNoResult(result)
        clock.advance(0)
        self.assertEqual(self.successResultOf(result), 7)

    def test_other_work_runs_between_inspections(self) -> None:
        """
        With three inspections queued, another connection's ready work runs
        after each one: never two inspections in a row while it waits.
        """
        clock = Clock()
        runner = TurnTakingRunner(clock)
        trace: list[str] = []
        def inspection(n: int) -> Callable[[], None]:
            return lambda: trace.append(f"inspect {n}")

        results = [runner.run(inspection(n)) for n in range(3)]

        def other_connection(remaining: int) -> None:
            trace.append("relay")
            if remaining > 1:
                clock.callLater(0, other_connection, remaining - 1)

        clock.callLater(0, other_connection, 3)
        clock.advance(0)
        self.assertEqual(
            trace, ["inspect 0", "relay", "inspect 1", "relay", "inspect 2", "relay"]
        )
        for result in results:
            self.successResultOf(result)

    def test_filter_under_load_takes_turns(self) -> None:
        """
        Ten requests through the filter with an engine costing 1 ms each: a
        connection that is not inspected waits at most one inspection (1 ms
        of engine time) for each of its turns.
        """
        clock = Clock()
        engine_time = [0.0]

        @implementer(IInspector)
        class CostlyInspector(FakeInspector):
            def inspect(self, request: InspectedRequest) -> Verdict:
                engine_time[0] += 0.001
                return super().inspect(request)

        waf = WafFilter(CostlyInspector(), TurnTakingRunner(clock), "block", 1024)
        results = [
            waf.on_request(FakeExchange(request_head(), request_id=f"r{n}")) for n in range(10)
        ]
        waits: list[float] = []
        last = [engine_time[0]]

        def other_connection(remaining: int) -> None:
            waits.append(engine_time[0] - last[0])
            last[0] = engine_time[0]
            if remaining > 1:
                clock.callLater(0, other_connection, remaining - 1)

        clock.callLater(0, other_connection, 12)
        clock.advance(0)
        self.assertEqual(len(waits), 12)
        self.assertLessEqual(max(waits), 0.001 + 1e-9)
        self.assertAlmostEqual(engine_time[0], 0.010)
        self.assertEqual([self.successResultOf(r) for r in results], [None] * 10)

    def test_queue_limit(self) -> None:
        """
        Past C{max_queued} waiting inspections, C{run} fails with L{RunnerBusy}.
        """
        clock = Clock()
        runner = TurnTakingRunner(clock, max_queued=2)
        first, second = runner.run(lambda: 1), runner.run(lambda: 2)
        self.failureResultOf(runner.run(lambda: 3), RunnerBusy)
        clock.advance(0)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (1, 2))
        self.assertEqual(runner.queued, 0)

    def test_cancelled_work_does_not_run(self) -> None:
        """
        Work whose result is cancelled before its turn (the client went away) never runs.
        """
        clock = Clock()
        runner = TurnTakingRunner(clock)
        ran: list[str] = []
        first = runner.run(lambda: ran.append("first"))
        second = runner.run(lambda: ran.append("second"))
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        clock.advance(0)
        self.assertEqual(ran, ["second"])
        self.successResultOf(second)
        only = runner.run(lambda: ran.append("only"))
        only.cancel()
        self.failureResultOf(only, defer.CancelledError)
        clock.advance(0)
        self.assertEqual((ran, runner.queued, clock.getDelayedCalls()), (["second"], 0, []))

    def test_exception_fails_the_result(self) -> None:
        """
        An exception of the work fails its result and the next work still runs.
        """
        clock = Clock()
        runner = TurnTakingRunner(clock)

        def boom() -> int:
            raise ValueError("engine")

        bad, good = runner.run(boom), runner.run(lambda: 5)
        clock.advance(0)
        self.failureResultOf(bad, ValueError)
        self.assertEqual(self.successResultOf(good), 5)

    def test_stop_fails_waiting_work(self) -> None:
        """
        After C{stop}, waiting work fails with L{RunnerBusy} and none runs; new work is refused.
        """
        clock = Clock()
        runner = TurnTakingRunner(clock)
        ran: list[int] = []
        waiting = runner.run(lambda: ran.append(1))
        runner.stop()
        clock.advance(0)
        self.failureResultOf(waiting, RunnerBusy)
        self.failureResultOf(runner.run(lambda: 2), RunnerBusy)
        self.assertEqual((ran, clock.getDelayedCalls()), ([], []))


class ThreadedRunnerTests(SynchronousTestCase):
    """
    Inspections in a thread pool; results come back through C{callFromThread}.
    """

    def test_work_goes_to_the_pool(self) -> None:
        """
        The work runs only in the pool, and its result reaches the Deferred
        only through the reactor's C{callFromThread}.
        """
        fake_reactor, pool = FakeThreadsReactor(), FakeThreadPool()
        runner = ThreadedRunner(fake_reactor, pool)  # type: ignore[arg-type]
        result = runner.run(lambda: 42)
        self.assertEqual((len(pool.work), runner.queued), (1, 1))
        pool.run_one()
        self.assertNoResult(result)
        fake_reactor.run_calls()
        self.assertEqual(self.successResultOf(result), 42)
        self.assertEqual(runner.queued, 0)

    def test_busy_engine_does_not_hold_up_other_requests(self) -> None:
        """
        While one inspection occupies the pool, the filter still takes the
        next request at once (it never inspects on the reactor thread), and
        each answer arrives when its own inspection ends.
        """
        fake_reactor, pool = FakeThreadsReactor(), FakeThreadPool()
        inspector = FakeInspector(Verdict(403, (942100,), 5))
        waf = WafFilter(inspector, ThreadedRunner(fake_reactor, pool), "block", 1024)  # type: ignore[arg-type]
        first = waf.on_request(FakeExchange(request_head(), request_id="a"))
        second = waf.on_request(FakeExchange(request_head(), request_id="b"))
        self.assertEqual((len(pool.work), inspector.seen), (2, []))
        pool.run_one()
        fake_reactor.run_calls()
        self.assertEqual(getattr(self.successResultOf(first), "status", None), 403)
        self.assertNoResult(second)
        pool.run_one()
        fake_reactor.run_calls()
        self.assertEqual(getattr(self.successResultOf(second), "status", None), 403)

    def test_exception_is_delivered(self) -> None:
        """
        An exception in the worker fails the result on the reactor thread.
        """
        fake_reactor, pool = FakeThreadsReactor(), FakeThreadPool()
        runner = ThreadedRunner(fake_reactor, pool)  # type: ignore[arg-type]

        def boom() -> int:
            raise KeyError("x")

        result = runner.run(boom)
        pool.run_one()
        fake_reactor.run_calls()
        self.failureResultOf(result, KeyError)

    def test_queue_limit_and_stop(self) -> None:
        """
        Past C{max_queued} unfinished inspections, and after C{stop}, work is refused.
        """
        fake_reactor, pool = FakeThreadsReactor(), FakeThreadPool()
        runner = ThreadedRunner(fake_reactor, pool, max_queued=1)  # type: ignore[arg-type]
        runner.run(lambda: 1)
        self.failureResultOf(runner.run(lambda: 2), RunnerBusy)
        pool.run_one()
        fake_reactor.run_calls()
        runner.stop()
        self.failureResultOf(runner.run(lambda: 3), RunnerBusy)
        self.assertEqual(pool.work, [])


    def test_cancelled_work_is_skipped(self) -> None:
        """
        Cancelling a queued inspection (its client left, its deadline
        passed) fails it at once, and the pool skips its work; the slot is
        held until then.
        """
        fake_reactor, pool = FakeThreadsReactor(), FakeThreadPool()
        runner = ThreadedRunner(fake_reactor, pool)  # type: ignore[arg-type]
        ran: list[int] = []
        result = runner.run(lambda: ran.append(1))
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(runner.queued, 1)
        pool.run_one()
        fake_reactor.run_calls()
        self.assertEqual((ran, runner.queued), ([], 0))

    def test_stop_skips_waiting_work(self) -> None:
        """
        After C{stop}, inspections still waiting in the pool are not run
        (stopping the pool then waits only for those running): each fails
        with L{CancelledError}.
        """
        fake_reactor, pool = FakeThreadsReactor(), FakeThreadPool()
        runner = ThreadedRunner(fake_reactor, pool)  # type: ignore[arg-type]
        ran: list[int] = []
        waiting = [runner.run(lambda: ran.append(1)) for _ in range(3)]
        runner.stop()
        while pool.work:
            pool.run_one()
        fake_reactor.run_calls()
        self.assertEqual(ran, [])
        for result in waiting:
            self.failureResultOf(result, CancelledError)

    def test_cancelled_filter_logs_no_engine_failure(self) -> None:
        """
        A request given up while its inspection waits is not reported as an
        engine failure (no critical log, no 500 counted).
        """
        fake_reactor, pool = FakeThreadsReactor(), FakeThreadPool()
        inspector = FakeInspector(Verdict(None, (), 0))
        waf = WafFilter(inspector, ThreadedRunner(fake_reactor, pool), "block", 1024)  # type: ignore[arg-type]
        decision = waf.on_request(FakeExchange(request_head(), request_id="a"))
        decision.cancel()
        self.failureResultOf(decision, CancelledError)
        pool.run_one()
        fake_reactor.run_calls()
        self.assertEqual(inspector.seen, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(waf.counters.engine_errors, 0)


@implementer(IInspector)
class GateInspector:
    """
    An engine whose inspection blocks its thread until the test opens the gate.
    """

    name = "gate"
    releases_gil = True

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.threads: list[int] = []

    def inspect(self, request: InspectedRequest) -> Verdict:
        """
        Wait for the gate (at most a minute), then pass.
        """
        self.threads.append(threading.get_ident())
        self.entered.set()
        if not self.gate.wait(60):
            raise AssertionError("the gate was never opened")
        return Verdict(None)

    def close(self) -> None:
        """
        Nothing to free.
        """


class Echo(protocol.Protocol):
    """
    Sends back what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        """
        Echo C{data}.
        """
        assert self.transport is not None
        self.transport.write(data)


class EchoClient(protocol.Protocol):
    """
    Sends one message and fires C{echoed} with the echo.
    """

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.received = b""
        self.echoed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        """
        Send the message.
        """
        assert self.transport is not None
        self.transport.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        """
        Fire C{echoed} once the whole message is back.
        """
        self.received += data
        if len(self.received) >= len(self.message):
            self.echoed.callback(self.received)


class RealThreadTests(TestCase):
    """
    A real thread pool and a real reactor: no timing, only events.
    """

    async def test_reactor_serves_while_inspection_blocks(self) -> None:
        """
        While an inspection is stuck in a worker thread, the reactor still
        accepts a TCP connection and echoes its data; then the inspection ends.
        """
        inspector = GateInspector()
        service = build_waf(reactor, WafConfig(mode="block"), inspector=inspector)
        service.startService()
        self.addCleanup(service.stopService)
        self.addCleanup(inspector.gate.set)
        decision = service.filter.on_request(FakeExchange(request_head()))
        deadline = reactor.seconds() + 60
        while not inspector.entered.is_set():
            self.assertLess(reactor.seconds(), deadline, "the inspection never started")
            await task.deferLater(reactor, 0.01)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo)
        )
        self.addCleanup(port.stopListening)
        client = EchoClient(b"not inspected" * 100)
        connected = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        self.addCleanup(connected.transport.loseConnection)
        self.assertEqual(await client.echoed, b"not inspected" * 100)
        self.assertFalse(decision.called)
        inspector.gate.set()
        self.assertIsNone(await decision)
        self.assertNotIn(threading.get_ident(), inspector.threads)

    async def test_real_engine_in_threads(self) -> None:
        """
        The real engine in the thread pool blocks a SQL injection and passes a
        clean request, inspected off the reactor thread.
        """
        inspector = real_inspector(self)
        threads: list[int] = []

        @implementer(IInspector)
        class Recording:
            name = "recording"
            releases_gil = True

            def inspect(self, request: InspectedRequest) -> Verdict:
                threads.append(threading.get_ident())
                return inspector.inspect(request)

            def close(self) -> None:
                pass

        service = build_waf(reactor, WafConfig(mode="block"), inspector=Recording())
        service.startService()
        self.addCleanup(service.stopService)
        bad = FakeExchange(request_head("GET", "/?id=1%27%20OR%20%271%27%3D%271"))
        good = FakeExchange(request_head("GET", "/index.html"))
        answers = await defer.gatherResults(
            [service.filter.on_request(bad), service.filter.on_request(good)]
        )
        self.assertEqual([getattr(a, "status", None) for a in answers], [403, None])
        self.assertEqual(len(threads), 2)
        self.assertNotIn(threading.get_ident(), threads)


class ConcurrencyTests(SynchronousTestCase):
    """
    The cffi engine is safe to call from several threads at once.
    """

    def test_two_threads_agree_with_one(self) -> None:
        """
        Two threads inspecting a mix of attacks and clean requests 100 times
        each get the same verdicts as one thread.
        """
        inspector = real_inspector(self)
        targets = ["/", "/?q=%3Cscript%3Ealert(1)%3C/script%3E", "/a?id=1%27%20OR%201=1--",
                   "/download?file=../../etc/passwd", "/api/v1/items?page=2"]
        requests = [
            InspectedRequest(f"r{i}", "192.0.2.1", "GET", t, "1.1",
                             [(b"Host", b"example.com"), (b"User-Agent", b"Mozilla/5.0"),
                              (b"Accept", b"*/*")], b"")
            for i, t in enumerate(targets)
        ]
        expected = [inspector.inspect(r) for r in requests]
        results: dict[int, list[Verdict]] = {0: [], 1: []}
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                for n in range(100):
                    results[index].append(inspector.inspect(requests[n % len(requests)]))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        for index in (0, 1):
            self.assertEqual(
                results[index], [expected[n % len(requests)] for n in range(100)]
            )


def lets_other_threads_run(engine: IInspector) -> bool:
    """
    Whether another thread gets the GIL while C{engine} inspects.

    With the switch interval at 1000 s a thread gives up the GIL only by
    blocking or in C code that releases it. The main thread blocks until the
    worker starts, and the worker goes straight into the inspection (of a
    2 KiB form, a few ms): the main thread can see it unfinished only if the
    engine lets go of the GIL (and the main thread is scheduled in time,
    which a loaded machine may delay: callers try several times).
    """
    body = b"message=" + b"hello+world+" * 170
    request = InspectedRequest(
        "g", "192.0.2.1", "POST", "/contact", "1.1",
        [(b"Host", b"example.com"), (b"Content-Type", b"application/x-www-form-urlencoded"),
         (b"Content-Length", str(len(body)).encode())],
        body,
    )
    entered = threading.Event()
    done = [False]

    def work() -> None:
        entered.set()
        engine.inspect(request)
        done[0] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        entered.wait()
        unfinished = not done[0]
    finally:
        sys.setswitchinterval(old)
    worker.join()
    return unfinished


class GilTests(SynchronousTestCase):
    """
    Whether each binding lets the reactor thread run while it inspects,
    which decides between a thread pool and taking turns.
    """

    def test_cffi_binding_releases_the_gil(self) -> None:
        """
        The cffi binding lets another thread run during an inspection, as it
        declares (seen at least once in 20 tries, to allow for a loaded machine).
        """
        inspector = real_inspector(self)
        self.assertTrue(inspector.releases_gil)
        self.assertTrue(any(lets_other_threads_run(inspector) for _ in range(20)))

    def test_wheel_binding_holds_the_gil(self) -> None:
        """
        The PyPI wheel keeps the GIL for the whole of every inspection, as it declares.
        """
        files = tuple(f for f in _system_crs() if "REQUEST-910" not in f)
        inspector = real_inspector(self, binding="wheel", rules=files)
        self.assertFalse(inspector.releases_gil)
        self.assertEqual([lets_other_threads_run(inspector) for _ in range(5)], [False] * 5)


def _system_crs() -> list[str]:
    """
    The system CRS files, or a file that does not exist when there is none
    (so that L{real_inspector} explains what to install).
    """
    try:
        return rules.system_crs_files()
    except ValueError:
        return ["/nonexistent/crs-setup.conf"]


class BuildTests(SynchronousTestCase):
    """
    L{build_waf} picks where inspections run from the binding.
    """

    def test_gil_releasing_binding_gets_threads(self) -> None:
        """
        A binding that releases the GIL runs in a thread pool of its own.
        """
        service = build_waf(Clock(), WafConfig(mode="block", threads=3),
                            inspector=FakeInspector(releases_gil=True))
        self.assertIsInstance(service.runner, ThreadedRunner)
        self.assertEqual(service._pool.max if service._pool else None, 3)  # noqa: SLF001

    def test_gil_holding_binding_takes_turns(self) -> None:
        """
        A binding that holds the GIL takes turns on the reactor thread, and
        stopping the service closes the engine.
        """
        inspector = FakeInspector(releases_gil=False)
        service = build_waf(Clock(), WafConfig(mode="detect"), inspector=inspector)
        self.assertIsInstance(service.runner, TurnTakingRunner)
        service.startService()
        service.stopService()
        self.assertTrue(inspector.closed)
