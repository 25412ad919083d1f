# -*- test-case-name: tests.test_workers_master -*-
"""
How the master starts a worker process
(C{python -m balancebeam.workers.worker --spec JSON}): the descriptors it
is given (L{CONTROL_IN}, L{CONTROL_OUT}, then the seat table and the
listening sockets from L{FIRST_SHARED_FD} on), how often it reports
(L{STATS_INTERVAL}), the option values it builds its balancer from
(L{worker_values}), its environment (L{worker_environment},
L{without_systemd}), how it logs
(L{twistd_log_options}), and the call that starts it (L{WorkerLauncher},
L{spawn_launcher}).

The spec itself is L{balancebeam.workers.spec.WorkerSpec}; the master
fills it in (L{balancebeam.workers.master.Master}).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol

import balancebeam

STATS_INTERVAL = 1.0
"""Seconds between two reports of a worker's counters."""

CONTROL_IN = 0
"""The worker's descriptor the master writes to (its standard input)."""

CONTROL_OUT = 3
"""The worker's descriptor the master reads."""

FIRST_SHARED_FD = 4
"""The first worker descriptor given to the seat table and the sockets."""

SYSTEMD_ENVIRONMENT = (
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)
"""
systemd's variables meant for the master only: socket activation's (the
master hands the sockets over itself), and C{sd_notify}'s and the
watchdog's (the master alone notifies: a worker's C{READY=1} would be
ignored under C{NotifyAccess=main} and logged by systemd as a warning, or,
under C{NotifyAccess=all}, would say ready before the master is).
"""


def twistd_log_options(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """
    Find twistd's C{--logger} and C{--logfile} (C{-l}) in its command line,
    before the plugin name, so that workers log the same way.

    @return: the logger's name and the log file's path, each C{None} when
        not given (a log file of C{-} means standard output).
    """
    logger: str | None = None
    logfile: str | None = None
    index = 1
    while index < len(argv):
        token = argv[index]
        if token == "balancebeam" or not token.startswith("-"):
            break
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token.startswith("--logger="):
            logger = token.split("=", 1)[1]
        elif token == "--logger" and following is not None:
            logger, index = following, index + 1
        elif token.startswith("--logfile="):
            logfile = token.split("=", 1)[1]
        elif token in ("--logfile", "-l") and following is not None:
            logfile, index = following, index + 1
        elif token.startswith("-l") and not token.startswith("--"):
            logfile = token[2:]
        index += 1
    if logfile in ("", "-"):
        logfile = None
    return logger or None, logfile


class WorkerLauncher(Protocol):
    """
    Starts a worker process (C{reactor.spawnProcess} in production).
    """

    def __call__(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str],
        child_fds: dict[int, int | str],
    ) -> IProcessTransport:
        """
        Start C{executable} with C{args} and C{env}, descriptors as
        C{child_fds} says (C{"w"}: a pipe we write, C{"r"}: a pipe we
        read, a number: that descriptor of ours), connected to C{protocol}.
        """


def spawn_launcher(reactor: Any) -> WorkerLauncher:
    """
    A L{WorkerLauncher} on C{reactor.spawnProcess}.
    """

    def launch(
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str],
        child_fds: dict[int, int | str],
    ) -> IProcessTransport:
        transport: IProcessTransport = reactor.spawnProcess(
            protocol, executable, args, env=env, childFDs=child_fds
        )
        return transport

    return launch


_WORKER_ONLY = ("bind", "listen", "workers", "reuse-port", "demo")
"""Options the master applies and its workers are not given."""

def worker_values(
    values: Mapping[str, object], extra_upstreams: Sequence[str] = ()
) -> dict[str, object]:
    """
    The option values a worker builds its balancer from: the master's,
    without the listeners, the process model and C{--demo}, and with the
    demo upstreams the master started as plain C{--upstream}s.
    """
    result = {k: v for k, v in values.items() if k not in _WORKER_ONLY}
    if extra_upstreams:
        upstreams = result.get("upstream", [])
        listed = list(upstreams) if isinstance(upstreams, (list, tuple)) else []
        result["upstream"] = listed + list(extra_upstreams)
    return result


def without_systemd(environment: Mapping[str, str]) -> dict[str, str]:
    """
    C{environment} without the variables systemd meant for the master
    (L{SYSTEMD_ENVIRONMENT}).
    """
    return {k: v for k, v in environment.items() if k not in SYSTEMD_ENVIRONMENT}


def worker_environment() -> dict[str, str]:
    """
    The workers' environment: ours without systemd's variables
    (L{without_systemd}), with the directory this balancebeam was imported
    from first on C{PYTHONPATH} (so a worker runs the master's code, from
    its path).
    """
    environment = without_systemd(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(balancebeam.__file__)))
    paths = [root] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment
