# -*- test-case-name: tests.test_workers_worker -*-
"""
A worker process's first steps, before it builds its balancer: install the
reactor the master runs on (L{install_reactor}), and log as the master does,
each event marked with the worker's pid (L{make_observer},
L{worker_observer}).

L{balancebeam.workers.worker.main} takes them.
"""

from __future__ import annotations

import importlib
import sys

from twisted.logger import ILogObserver, LogEvent, textFileLogObserver
from zope.interface import provider

from balancebeam.workers.spec import WorkerSpec


def install_reactor(module: str | None) -> None:
    """
    Install the reactor the master runs on: C{module}'s C{install()}
    (C{twisted.internet.epollreactor}, C{balancebeam.twisted_internals}, ...),
    or leave Twisted's default when C{module} is C{None} or has none.
    """
    if module is None:
        return
    installer = getattr(importlib.import_module(module), "install", None)
    if installer is not None:
        installer()


def worker_observer(base: ILogObserver, pid: int, mark_system: bool) -> ILogObserver:
    """
    Wrap a log observer so that every event says which worker logged it:
    a C{worker} field with the pid (which a JSON observer writes out) and,
    with C{mark_system}, C{worker PID} at the start of the C{[system]} part
    of Twisted's text lines.
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        event = dict(event)
        event.setdefault("worker", pid)
        if mark_system:
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                level_name = level.name if level is not None else "-"
                system = f"{event.get('log_namespace', '-')}#{level_name}"
            event["log_system"] = f"worker {pid} {system}"
        base(event)

    return observe


def make_observer(spec: WorkerSpec, pid: int) -> ILogObserver:
    """
    The observer a worker logs to: what twistd's C{--logger} names, or
    Twisted's text lines on C{--logfile} (appended, never rotated) or on
    standard output; marked with the worker's pid (L{worker_observer}).
    """
    if spec.logger is not None:
        from twisted.python.reflect import namedAny

        return worker_observer(namedAny(spec.logger)(), pid, False)
    if spec.logfile is not None:
        stream = open(spec.logfile, "a", encoding="utf-8")  # noqa: SIM115 (the process's life)
        return worker_observer(textFileLogObserver(stream), pid, True)
    return worker_observer(textFileLogObserver(sys.stdout), pid, True)
