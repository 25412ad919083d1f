# -*- test-case-name: tests.test_workers_master -*-
"""
The master's side of the worker processes: L{WorkerProcess}, the process
protocol of one worker (its pipes, its signals, its state and last
counters); L{Generation}, the workers started from one configuration; and
L{WorkerStatus}, one worker as the admin's C{/status} shows it.

A L{WorkerProcess} passes what it hears on to its master through
L{WorkerEvents} (L{balancebeam.workers.master.Master} provides it), so this
module does not import the master.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from balancebeam.config import BalancerConfig
from balancebeam.workers.control import Message, MessageDecoder, encode
from balancebeam.workers.health import SharedHealth
from balancebeam.workers.launch import CONTROL_IN, CONTROL_OUT


@dataclass(frozen=True)
class WorkerStatus:
    """
    One worker, as the admin's C{/status} shows it.

    @ivar pid: its process id.
    @ivar slot: its place in its generation (0 to N-1).
    @ivar generation: 1 for the first workers, one more per reload.
    @ivar started: clock time it was started.
    @ivar state: C{starting}, C{ready} or C{stopping}.
    @ivar requests: requests it has parsed (as of its last report).
    @ivar connections: client connections it holds (as of its last report).
    """

    pid: int
    slot: int
    generation: int
    started: float
    state: str
    requests: int
    connections: int


class WorkerEvents(Protocol):
    """
    What a L{WorkerProcess} tells its master
    (L{balancebeam.workers.master.Master}).
    """

    def message_received(self, worker: WorkerProcess, message: Message) -> None:
        """
        Act on one message from C{worker}.
        """

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        C{worker}'s process ended and its pipes are closed.
        """


class WorkerProcess(ProcessProtocol):
    """
    The master's side of one worker process.

    @ivar state: C{starting} (until it says it is ready), C{ready},
        C{stopping} (asked to stop) or C{gone}.
    @ivar counters: its counters as of its last report.
    @ivar gauges: what it held as of its last report (requests in flight,
        connections, each upstream's state; not kept once it exits).
    @ivar stop_requested: whether the master asked it to stop (so its exit
        is no crash).
    """

    def __init__(self, master: WorkerEvents, generation: Generation, slot: int, seat: int) -> None:
        self.master = master
        self.generation = generation
        self.slot = slot
        self.seat = seat
        self.pid = 0
        self.started = 0.0
        self.ready_at: float | None = None
        self.state = "starting"
        self.counters: dict[str, Any] = {}
        self.gauges: dict[str, Any] = {}
        self.requests = 0
        self.connections = 0
        self.serial = 0
        self.stop_requested = False
        self.timer: IDelayedCall | None = None
        self._decoder = MessageDecoder()

    def connectionMade(self) -> None:
        """
        The process started: note its pid.
        """
        self.pid = getattr(self.transport, "pid", None) or 0

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        """
        Messages from the worker arrive on its descriptor L{CONTROL_OUT}.
        """
        if childFD != CONTROL_OUT:
            return
        for message in self._decoder.feed(data):
            self.master.message_received(self, message)

    def processEnded(self, reason: Failure) -> None:
        """
        The process exited and its pipes are closed.
        """
        self.master.worker_ended(self, reason)

    def send(self, message: Mapping[str, object]) -> None:
        """
        Send one message to the worker, unless it is gone.
        """
        if self.state != "gone" and self.transport is not None:
            try:
                self.transport.writeToChild(CONTROL_IN, encode(message))
            except (KeyError, OSError):
                pass

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"TERM"}, C{"KILL"}) unless the process is gone.
        """
        if self.state == "gone" or self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    def cancel_timer(self) -> None:
        """
        Cancel the pending ready or kill deadline.
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def status(self) -> WorkerStatus:
        """
        This worker for C{/status}.
        """
        return WorkerStatus(
            self.pid,
            self.slot,
            self.generation.number,
            self.started,
            self.state,
            self.requests,
            self.connections,
        )


class Generation:
    """
    The workers started from one configuration.

    @ivar number: 1, then one more per reload.
    @ivar config: the configuration its workers build.
    @ivar values: the option values its workers are given.
    @ivar health: the upstreams' state its workers follow.
    @ivar workers: the live worker of each slot, or C{None}.
    @ivar streaks: each slot's count of quick deaths in a row.
    @ivar restarts: each slot's pending replacement.
    """

    def __init__(
        self,
        number: int,
        config: BalancerConfig,
        values: Mapping[str, object],
        health: SharedHealth,
    ) -> None:
        self.number = number
        self.config = config
        self.values = dict(values)
        self.health = health
        count = config.workers
        self.workers: list[WorkerProcess | None] = [None] * count
        self.streaks = [0] * count
        self.restarts: list[IDelayedCall | None] = [None] * count

    def live(self) -> list[WorkerProcess]:
        """
        Its workers that have not exited.
        """
        return [w for w in self.workers if w is not None]

    def cancel_restarts(self) -> None:
        """
        Forget the pending replacements.
        """
        for index, restart in enumerate(self.restarts):
            if restart is not None and restart.active():
                restart.cancel()
            self.restarts[index] = None
