"""
The deadline timer: one coarse periodic check that enforces every client
connection's deadline, so that no request schedules or cancels a timer of
its own.

Each connection (and each exchange through it) keeps one number, the clock
time its current state's deadline passes (see L{balancebeam.relay.states});
activity moves it forward. The timer looks at every number a few times per
shortest timeout and calls C{deadline_passed()} on those in the past.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from balancebeam.config import Timeouts
from balancebeam.relay.client import ClientConnection
from balancebeam.relay.detached import DetachedClient
from balancebeam.relay.factory import RelayFactory


def resolution_for(timeouts: Timeouts) -> float:
    """
    How often to check: a tenth of the shortest timeout, between 10 ms and
    1 s, so a deadline is acted on at most 10% late (or 1 s).
    """
    shortest = min(
        timeouts.client_header,
        timeouts.client_idle,
        timeouts.client_body,
        timeouts.upstream,
        timeouts.tunnel_idle,
    )
    return max(0.01, min(1.0, shortest / 10))


class DeadlineTimer(Service):
    """
    Enforces the deadlines of every connection of some relay factories.
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too

    def __init__(
        self, clock: IReactorTime, factories: Sequence[RelayFactory], resolution: float
    ) -> None:
        """
        @param resolution: seconds between two checks.
        """
        self._factories = tuple(factories)
        self._resolution = resolution
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._clock = clock

    def startService(self) -> None:
        """
        Start checking, one resolution from now.
        """
        super().startService()
        self._loop.start(self._resolution, now=False)

    def stopService(self) -> None:
        """
        Stop checking.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        """
        Act on every deadline that has passed. An error met on one
        connection is logged and that connection is dropped; the others are
        still checked.
        """
        now = self._clock.seconds()
        for factory in self._factories:
            due: list[ClientConnection | DetachedClient] = [
                c for c in factory.connections if c.deadline <= now
            ]
            if factory.detached:
                due += [d for d in factory.detached if d.deadline <= now]
            for holder in due:
                try:
                    holder.deadline_passed()
                    holder.flush()
                except Exception:
                    self.log.failure(
                        "deadline handling failed for {client}", client=holder.client_ip
                    )
                    holder.abort()
