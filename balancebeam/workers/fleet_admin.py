# -*- test-case-name: tests.test_workers_admin -*-
"""
What the master's admin changes in every worker: the upstreams' admin
states (drain, disable, enable) and cache purges.

L{FleetAdmin} keeps the admin states the master's admin set, sends them to
every live worker after each change (L{ADMIN}) and to each worker that
starts (so a replacement, or a new generation, applies them too), and fans
a purge out to the ready workers (L{PURGE}), adding up their answers
(L{PURGED}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from balancebeam.registry import DISABLED, DRAINING, ENABLED
from balancebeam.workers.control import ADMIN, PURGE, Message

SETTABLE: tuple[str, ...] = (ENABLED, DRAINING, DISABLED)
"""The admin states the master's admin may set."""

PURGE_TIMEOUT = 5.0
"""Seconds a purge waits for the workers' answers."""


class AdminWorker(Protocol):
    """
    A live worker as L{FleetAdmin} reaches it
    (L{balancebeam.workers.processes.AdminWorker}).
    """

    pid: int
    state: str

    def send(self, message: Mapping[str, object]) -> None:
        """
        Send one message to the worker.
        """


@dataclass
class _Purge:
    """
    One purge waiting for its workers' answers.
    """

    serial: int
    waiting: set[int]
    done: Deferred[int]
    timer: IDelayedCall
    purged: int = 0
    errors: list[str] = field(default_factory=list)


class PurgeFailed(Exception):
    """
    A worker could not purge (its answer says why).
    """


class FleetAdmin:
    """
    The admin states and purges of one master, for all its workers.

    @ivar states: the admin state set for each upstream (by name), only
        those the admin changed.
    """

    log = Logger()

    def __init__(
        self,
        workers: Callable[[], Sequence[AdminWorker]],
        clock: Any,
        purge_timeout: float = PURGE_TIMEOUT,
        changed: Callable[[str, str], None] = lambda name, state: None,
    ) -> None:
        """
        @param workers: the live workers, now.
        @param clock: C{IReactorTime}, for the purge timeout.
        @param changed: called with an upstream's name and its new state
            after each change (the master's own health follows it).
        """
        self._workers = workers
        self._changed = changed
        self._clock = clock
        self._purge_timeout = purge_timeout
        self.states: dict[str, str] = {}
        self._serial = 0
        self._purges: list[_Purge] = []

    def message(self) -> Message | None:
        """
        The L{ADMIN} message of every state set, or C{None} when none is.
        """
        if not self.states:
            return None
        return {"type": ADMIN, "upstreams": dict(self.states)}

    def state_of(self, name: str) -> str:
        """
        The admin state of the upstream C{name} (L{ENABLED} unless set).
        """
        return self.states.get(name, ENABLED)

    def set_state(self, name: str, state: str) -> bool:
        """
        Set the admin state of the upstream C{name} and send every state to
        every live worker.

        @return: whether the state changed.
        @raise ValueError: for a state not in L{SETTABLE}.
        """
        if state not in SETTABLE:
            raise ValueError(f"unknown admin state {state!r}")
        changed = self.state_of(name) != state
        self.states[name] = state
        if changed:
            self.log.warn(
                "upstream {upstream} is now {state} in every worker (asked on the admin)",
                upstream=name,
                state=state,
            )
            self._changed(name, state)
        message = self.message()
        assert message is not None
        for worker in self._workers():
            worker.send(message)
        return changed

    def started(self, worker: AdminWorker) -> None:
        """
        C{worker} has just started: give it the states set.
        """
        message = self.message()
        if message is not None:
            worker.send(message)

    # Purging

    def purge(self, url: str) -> Deferred[int]:
        """
        Ask every ready worker to purge C{url} from its cache.

        @return: fires with the sum of the responses they removed, once all
            have answered or exited, or after the timeout with the answers
            so far; fails with L{PurgeFailed} when a worker could not purge.
        """
        self._serial += 1
        serial = self._serial
        asked = [w for w in self._workers() if w.state in ("ready", "stopping")]
        for worker in asked:
            worker.send({"type": PURGE, "url": url, "serial": serial})
        done: Deferred[int] = Deferred()
        timer = self._clock.callLater(self._purge_timeout, self._timed_out, serial)
        self._purges.append(_Purge(serial, {w.pid for w in asked}, done, timer))
        self._check()
        return done

    def purged(self, worker: AdminWorker, message: Message) -> None:
        """
        A worker's L{PURGED} answer.
        """
        serial = message.get("serial")
        for purge in self._purges:
            if purge.serial == serial and worker.pid in purge.waiting:
                purge.waiting.discard(worker.pid)
                count = message.get("purged")
                if isinstance(count, int) and not isinstance(count, bool):
                    purge.purged += count
                error = message.get("error")
                if error is not None:
                    purge.errors.append(f"worker {worker.pid}: {error}")
        self._check()

    def worker_gone(self, worker: AdminWorker) -> None:
        """
        C{worker} exited: no purge waits for it any more.
        """
        for purge in self._purges:
            purge.waiting.discard(worker.pid)
        self._check()

    def _check(self) -> None:
        for purge in [p for p in self._purges if not p.waiting]:
            self._finish(purge)

    def _timed_out(self, serial: int) -> None:
        for purge in [p for p in self._purges if p.serial == serial]:
            self.log.warn(
                "purge {serial}: no answer from {count} worker(s) in time",
                serial=serial,
                count=len(purge.waiting),
            )
            self._finish(purge)

    def _finish(self, purge: _Purge) -> None:
        self._purges.remove(purge)
        if purge.timer.active():
            purge.timer.cancel()
        if purge.errors:
            purge.done.errback(PurgeFailed("; ".join(purge.errors)))
        else:
            purge.done.callback(purge.purged)
