# -*- test-case-name: tests.test_workers_master -*-
"""
The master's rules for supervising worker processes: how long a new worker
has to become ready (L{READY_TIMEOUT}) and a stopping one to exit
(L{KILL_GRACE}); when an exit counts as part of a crash loop
(L{STABLE_AFTER}) and how long to wait before the next replacement then
(L{restart_delay}); and how an exit reads in the logs (L{describe_exit}).

L{balancebeam.workers.master.Master} applies them.
"""

from __future__ import annotations

import signal

from twisted.internet.error import ProcessDone
from twisted.python.failure import Failure

KILL_GRACE = 2.0
"""
Seconds after C{--shutdown-timeout} before a draining worker is killed: the
worker aborts what is left at C{--shutdown-timeout} itself, and needs a
moment to exit after that.
"""

READY_TIMEOUT = 60.0
"""Seconds a new worker has to become ready before it is killed."""

SILENCE_TIMEOUT = 10.0
"""
Seconds a ready worker may go without reporting (it reports every second)
before the master takes its event loop for stuck, kills it and starts
another: a worker in an endless loop, or stopped (C{SIGSTOP}), would
otherwise starve its connections for good.
"""

STABLE_AFTER = 10.0
"""Seconds a worker must have run for its exit not to count as a crash loop."""

RESTART_BASE = 0.5
"""The delay before the second replacement in a crash loop, doubled each time."""

RESTART_CAP = 30.0
"""The longest delay between two replacements in a crash loop."""


def restart_delay(streak: int) -> float:
    """
    How long to wait before replacing a worker that exited unasked.

    @param streak: how many workers of this slot in a row died within
        L{STABLE_AFTER} seconds of starting, this one included (1 for a
        worker that had run longer).
    @return: 0 for the first, then L{RESTART_BASE} doubled each time, at
        most L{RESTART_CAP}.
    """
    if streak <= 1:
        return 0.0
    return float(min(RESTART_CAP, RESTART_BASE * 2 ** (streak - 2)))


def describe_exit(reason: Failure) -> str:
    """
    How a process ended, for logs: C{exited with status 3}, C{was killed by
    signal SIGKILL}.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = str(signal_number)
        return f"was killed by signal {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"
