# -*- test-case-name: tests.test_workers_notify -*-
"""
What the master of C{--workers N} tells systemd (C{sd_notify}, through the
single process's L{Notifier}), so that a C{Type=notify} unit works with
workers as it does with one process:

  - C{READY=1} once the first generation's workers are all ready (never
    before: C{systemctl start} returns when the balancer serves);
  - C{RELOADING=1} with C{MONOTONIC_USEC=} when a reload starts, then
    C{READY=1} once no generation is starting and no reload waits
    (committed, rolled back or refused; C{STATUS=} says which): a reload
    deferred while a generation starts is part of the same C{RELOADING=1}
    ... C{READY=1};
  - C{STOPPING=1} when the master starts stopping, and nothing after it;
  - C{WATCHDOG=1} every half C{WATCHDOG_USEC}, from the master's reactor
    only (L{balancebeam.systemd.WatchdogService}).

L{MasterNotifications} keeps the protocol's order (which message may
follow which); L{balancebeam.workers.master.Master} decides when the
master is ready, reloading or stopping. The workers never notify: the
master starts them without C{NOTIFY_SOCKET} and the watchdog's variables
(L{balancebeam.workers.launch.without_systemd}).
"""

from __future__ import annotations

from typing import Literal

from twisted.internet.interfaces import IReactorTime

from balancebeam.systemd import Notifier, WatchdogService

State = Literal["starting", "ready", "reloading", "stopping"]


class MasterNotifications:
    """
    The master's C{sd_notify} messages, in an order systemd accepts.

    Set L{notifier} and L{watchdog_interval} before L{start} (as
    L{make_master_service <balancebeam.workers.master.make_master_service>}
    does from the environment); the default notifier sends nothing.

    @ivar notifier: where the messages go.
    @ivar watchdog_interval: seconds between two C{WATCHDOG=1}, or C{None}.
    @ivar state: what systemd was last told:
        - C{starting}: nothing yet (before the first C{READY=1});
        - C{ready}: C{READY=1};
        - C{reloading}: C{RELOADING=1}, and no C{READY=1} since;
        - C{stopping}: C{STOPPING=1}; nothing more is sent.
    """

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: runs the watchdog.
        """
        self.notifier = Notifier(None)
        self.watchdog_interval: float | None = None
        self.state: State = "starting"
        self._clock = clock
        self._watchdog: WatchdogService | None = None

    def start(self) -> None:
        """
        Start feeding the watchdog (when the unit has one).
        """
        if self.watchdog_interval is not None and self._watchdog is None:
            self._watchdog = WatchdogService(self.notifier, self._clock, self.watchdog_interval)
            self._watchdog.startService()

    def ready(self, status: str) -> bool:
        """
        C{READY=1} with C{status}: the master serves (first start), or a
        reload is over. Sent only while starting or reloading (systemd
        needs one per start or reload, and no other).

        @return: whether C{READY=1} was due.
        """
        if self.state not in ("starting", "reloading"):
            return False
        self.state = "ready"
        self.notifier.ready(status)
        return True

    def reloading(self, status: str) -> None:
        """
        A reload starts: C{RELOADING=1} (stamped) when the master was
        ready; only C{STATUS=} while it starts or already reloads (the
        C{READY=1} to come ends both).
        """
        if self.state == "ready":
            self.state = "reloading"
            self.notifier.reloading(status)
        else:
            self.status(status)

    def status(self, status: str) -> None:
        """
        C{STATUS=} alone, unless stopping.
        """
        if self.state != "stopping":
            self.notifier.status(status)

    def stopping(self, status: str) -> None:
        """
        C{STOPPING=1}, once; stop feeding the watchdog (systemd does not
        watch a stopping unit).
        """
        if self.state == "stopping":
            return
        self.state = "stopping"
        self.notifier.stopping(status)
        if self._watchdog is not None:
            self._watchdog.stopService()
            self._watchdog = None
