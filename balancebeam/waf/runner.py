"""
Where inspections run, so that the reactor keeps relaying while the firewall works.

An inspection of one request by the Core Rule Set costs about a millisecond
of CPU, or several for a form post. L{ThreadedRunner} runs inspections in a
thread pool of its own; it is used with bindings that let go of the GIL
(L{IInspector.releases_gil <balancebeam.waf.engine.IInspector.releases_gil>}),
so the reactor thread runs on while they work. L{TurnTakingRunner} is for a
binding that holds the GIL (a thread would stall the reactor just the same,
for as long): it runs inspections on the reactor thread, one per reactor
turn, so that between any two of them the reactor handles the I/O and the
timers that are due. Either way, no connection waits on the firewall for
longer than one inspection unless its own request is being inspected.

Both refuse work past C{max_queued} waiting inspections (L{RunnerBusy}), so a
flood cannot queue unbounded work and held request bodies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

T = TypeVar("T")


class RunnerBusy(Exception):
    """
    Too many inspections are waiting already; this one was not started.
    """


class IInspectionRunner(Interface):
    """
    Runs blocking inspections away from the connections that do not need them.
    """

    def run(work: Callable[[], T]) -> Deferred[T]:
        """
        Call C{work} once, later, and fire the result with what it returns
        (or with its exception); fails at once with L{RunnerBusy} when
        too many calls are waiting. Called on the reactor thread.
        """

    def stop() -> None:
        """
        Start no more work; what is running finishes.
        """


class ThreadPoolLike(Protocol):
    """
    The part of L{twisted.python.threadpool.ThreadPool} a L{ThreadedRunner} uses.
    """

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        """
        Run C{func} in a thread, then call C{onResult(success, result)} there.
        """


@implementer(IInspectionRunner)
class ThreadedRunner:
    """
    Runs inspections in a thread pool (for engines that release the GIL).

    @ivar queued: the inspections handed to the pool and not finished yet.
    """

    def __init__(
        self, reactor: IReactorFromThreads, pool: ThreadPoolLike, max_queued: int = 256
    ) -> None:
        """
        @param reactor: where results are delivered (C{callFromThread}).
        @param pool: a started thread pool; the caller owns its life.
        @param max_queued: the most inspections waiting or running at once.
        """
        self._reactor = reactor
        self._pool = pool
        self._max_queued = max_queued
        self._stopped = False
        self.queued = 0

    def run(self, work: Callable[[], T]) -> Deferred[T]:
        """
        See L{IInspectionRunner.run}.
        """
        if self._stopped:
            return fail(RunnerBusy("the firewall is stopping"))
        if self.queued >= self._max_queued:
            return fail(RunnerBusy(f"{self.queued} inspections are waiting already"))
        # Set when the result is cancelled (the request's client left, its
        # deadline passed): the work is skipped if it has not started yet.
        cancelled: list[bool] = []
        result: Deferred[T] = Deferred(lambda _: cancelled.append(True))
        self.queued += 1

        def guarded() -> T:
            # Runs in the worker thread: a cancelled inspection, or one
            # waiting when the firewall stops, is not run.
            if cancelled or self._stopped:
                raise CancelledError()
            return work()

        def finished(success: bool, value: Any) -> None:
            # Runs in the worker thread.
            self._reactor.callFromThread(self._deliver, result, success, value)

        self._pool.callInThreadWithCallback(finished, guarded)
        return result

    def _deliver(self, result: Deferred[T], success: bool, value: Any) -> None:
        self.queued -= 1
        if result.called:
            return  # cancelled
        if success:
            result.callback(value)
        else:
            result.errback(value)

    def stop(self) -> None:
        """
        See L{IInspectionRunner.stop}; the inspections still waiting are
        not run (each fails with L{CancelledError}), so stopping the pool
        waits only for those running.
        """
        self._stopped = True


@implementer(IInspectionRunner)
class TurnTakingRunner:
    """
    Runs inspections on the reactor thread, one per reactor turn (for engines
    that hold the GIL).

    @ivar queued: the inspections waiting for their turn.
    """

    def __init__(self, clock: IReactorTime, max_queued: int = 256) -> None:
        """
        @param clock: schedules each turn (C{callLater(0, ...)}).
        @param max_queued: the most inspections waiting at once.
        """
        self._clock = clock
        self._max_queued = max_queued
        self._waiting: deque[tuple[Callable[[], Any], Deferred[Any]]] = deque()
        self._turn: IDelayedCall | None = None
        self._stopped = False

    @property
    def queued(self) -> int:
        """
        The inspections waiting for their turn.
        """
        return len(self._waiting)

    def run(self, work: Callable[[], T]) -> Deferred[T]:
        """
        See L{IInspectionRunner.run}. The work never runs inside this call;
        cancelling the result before its turn drops the work.
        """
        if self._stopped:
            return fail(RunnerBusy("the firewall is stopping"))
        if len(self._waiting) >= self._max_queued:
            return fail(RunnerBusy(f"{len(self._waiting)} inspections are waiting already"))
        entry: tuple[Callable[[], Any], Deferred[Any]]

        def cancel(result: Deferred[T]) -> None:
            # The request went away: its inspection will not run.
            if entry in self._waiting:
                self._waiting.remove(entry)

        result: Deferred[T] = Deferred(cancel)
        entry = (work, result)
        self._waiting.append(entry)
        if self._turn is None:
            self._turn = self._clock.callLater(0, self._take_turn)
        return result

    def _take_turn(self) -> None:
        """
        Run the first waiting inspection, then let the reactor go round
        before the next.
        """
        self._turn = None
        if not self._waiting:
            return
        work, result = self._waiting.popleft()
        if self._waiting:
            self._turn = self._clock.callLater(0, self._take_turn)
        try:
            value = work()
        except BaseException:
            result.errback(Failure())
        else:
            result.callback(value)

    def stop(self) -> None:
        """
        See L{IInspectionRunner.stop}; waiting inspections fail with L{RunnerBusy}.
        """
        self._stopped = True
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        while self._waiting:
            _, result = self._waiting.popleft()
            result.errback(Failure(RunnerBusy("the firewall is stopping")))
