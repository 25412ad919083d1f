# -*- test-case-name: tests.test_workers_pending_reload -*-
"""
A reload asked for while a generation of workers is starting
(L{PendingReload}): the master cannot start a second generation beside the
one starting, so it remembers that one more reload is due and runs it once
that start is over, whether the generation became ready or was rolled back.

  - Several asks while one generation starts make B{one} reload: it reads
    the configuration when it runs, so the last edit of the file wins (as
    with nginx and HAProxy, where the last reload wins).
  - It runs B{once}: a deferred reload whose generation fails again is not
    tried again until the next ask (no retry loop).
  - A reload asked for after the start is over, before the deferred one
    had its turn, reads the configuration itself and stands for it
    (L{PendingReload.take}).

L{balancebeam.workers.master.Master} asks, and says when a start is over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

Values = Mapping[str, object]


class PendingReload:
    """
    At most one reload waiting for the starting generation.

    @ivar asks: how many reloads were asked for since the last one ran
        (0: none is pending).
    @ivar log: the master's log, where the deferral and the run are told.
    """

    def __init__(self, clock: IReactorTime, log: Logger) -> None:
        """
        @param clock: schedules the deferred reload (on the reactor's next
            turn, never from inside the code that ended the start).
        @param log: where to say what happens to it (the master's log).
        """
        self._clock = clock
        self.log = log
        self._reload: Callable[[Values | None], Deferred[bool]] | None = None
        self.asks = 0
        self._generation = 0
        self._values: Values | None = None
        self._waiting: list[Deferred[bool]] = []
        self._call: IDelayedCall | None = None

    def ask(self, generation: int, values: Values | None) -> Deferred[bool]:
        """
        Remember a reload asked for while C{generation} starts; the asks
        before it and this one make one reload.

        @param values: the option values to reload with, or C{None} to read
            the configuration when the reload runs. The last ask's values win.
        @return: fires with whether the reload, once run, took over
            (C{False} when dropped).
        """
        self.asks += 1
        self._values = values
        if self.asks == 1:
            self._generation = generation
            self.log.info(
                "reload asked while generation {generation} is starting: deferred until"
                " it is ready or fails",
                generation=generation,
            )
        else:
            self.log.info(
                "reload asked while generation {generation} is starting: joins the one"
                " already deferred (reloads asked: {asks})",
                generation=generation,
                asks=self.asks,
            )
        waiting: Deferred[bool] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def start_over(
        self,
        generation: int,
        outcome: str,
        reload: Callable[[Values | None], Deferred[bool]],
    ) -> None:
        """
        The start of C{generation} is over: run the pending reload, if any,
        on the reactor's next turn.

        @param outcome: how it ended, for the log (C{"is ready"},
            C{"failed"}).
        @param reload: starts a reload (L{Master.reload
            <balancebeam.workers.master.Master.reload>}): with C{None}, on
            the configuration read at that moment.
        """
        if not self.asks or self._call is not None:
            return
        self._reload = reload
        self.log.info(
            "generation {generation} {outcome}: running the deferred reload (reloads"
            " asked while it started: {asks}), on the configuration as it is now",
            generation=generation,
            outcome=outcome,
            asks=self.asks,
        )
        self._call = self._clock.callLater(0, self._run)

    def take(self) -> list[Deferred[bool]]:
        """
        Clear the pending reload (a reload is starting that stands for it).

        @return: the Deferreds its asks are waiting on, for the caller to fire.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._reload = None
        waiting, self._waiting = self._waiting, []
        self.asks = 0
        self._values = None
        return waiting

    def drop(self, why: str) -> None:
        """
        Give the pending reload up (the master is stopping): its asks get
        C{False}.
        """
        if not self.asks:
            return
        self.log.info(
            "the reload deferred while generation {generation} started is dropped: {why}",
            generation=self._generation,
            why=why,
        )
        for waiting in self.take():
            waiting.callback(False)

    def _run(self) -> None:
        self._call = None
        reload, self._reload = self._reload, None
        values = self._values
        waiting = self.take()
        done: Deferred[bool] = succeed(False)
        if reload is not None:
            try:
                done = reload(values)
            except Exception:
                self.log.failure("running the deferred reload failed")
        relay(done, waiting)


def relay(source: Deferred[bool], waiting: list[Deferred[bool]]) -> Deferred[bool]:
    """
    Fire each of C{waiting} with C{source}'s result once it has one.

    @return: C{source}, with its result unchanged.
    """

    def fire(result: bool) -> bool:
        for each in waiting:
            each.callback(result)
        return result

    if waiting:
        source.addCallback(fire)
    return source
