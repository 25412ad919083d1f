# -*- test-case-name: tests.test_systemd -*-
"""
systemd integration: the C{sd_notify} protocol, and the watchdog.

A service of C{Type=notify} tells systemd how it is doing by sending
datagrams of C{KEY=VALUE} lines to the C{AF_UNIX} socket named in
C{NOTIFY_SOCKET} (see C{sd_notify(3)}). balancebeam sends:

  - C{READY=1} (and a C{STATUS=} line) once every listener is up;
  - C{RELOADING=1} with C{MONOTONIC_USEC=} when a reload starts, then
    C{READY=1} when it is over (C{Type=notify-reload} semantics, which
    C{Type=notify} accepts too);
  - C{STOPPING=1} when it starts draining;
  - C{WATCHDOG=1} every half C{WATCHDOG_USEC} when the unit sets
    C{WatchdogSec=} (L{WatchdogService});
  - C{STATUS=} lines with a one-line summary.

Without C{NOTIFY_SOCKET} (not under systemd) L{Notifier.from_environment}
returns a notifier that sends nothing.

With C{--workers N} the master sends the same messages through the same
L{Notifier} (L{balancebeam.workers.notify}), and its workers none.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def monotonic_usec() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds, as systemd's C{MONOTONIC_USEC=}
    wants it (systemd compares it with its own monotonic clock, so this is
    not the reactor's clock).
    """
    return time.monotonic_ns() // 1000


class Notifier:
    """
    Sends C{sd_notify} messages to one socket.

    Sending never raises: a notification that cannot be sent is logged once
    at warn, and the balancer goes on.

    @ivar address: the socket's path (an abstract one starts with C{"\\0"}),
        or C{None} when there is none (then nothing is sent).
    @ivar sent: every message sent, for tests and the status page.
    """

    log = Logger()

    def __init__(self, address: str | None, monotonic: Callable[[], int] = monotonic_usec) -> None:
        self.address = address
        self._monotonic = monotonic
        self._socket: socket.socket | None = None
        self._warned = False
        self.sent = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """
        The notifier for C{NOTIFY_SOCKET} (C{@name} is an abstract socket).
        """
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        return cls(address)

    @property
    def enabled(self) -> bool:
        """
        Whether there is a socket to notify.
        """
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """
        Send one message made of C{lines} (C{KEY=VALUE} each).

        @return: whether it was sent.
        """
        if self.address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                self.log.warn(
                    "cannot notify systemd at {address}: {reason}",
                    address=self.address.replace("\0", "@"),
                    reason=e.strerror or str(e),
                )
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        """
        C{READY=1}: every listener is up (or a reload is over).
        """
        return self.notify("READY=1", f"STATUS={status}")

    def reloading(self, status: str = "reloading the configuration") -> bool:
        """
        C{RELOADING=1}, stamped with the monotonic clock as systemd requires.
        """
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={self._monotonic()}", f"STATUS={status}"
        )

    def stopping(self, status: str = "draining") -> bool:
        """
        C{STOPPING=1}: the balancer started draining.
        """
        return self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        """
        C{WATCHDOG=1}: the reactor still runs.
        """
        return self.notify("WATCHDOG=1")

    def status(self, status: str) -> bool:
        """
        C{STATUS=}: a one-line summary for C{systemctl status}.
        """
        return self.notify(f"STATUS={status}")

    def close(self) -> None:
        """
        Close the socket.
        """
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """
    How often to send C{WATCHDOG=1}: half of C{WATCHDOG_USEC}, in seconds.

    @return: C{None} when the watchdog is off: no C{WATCHDOG_USEC}, a bad
        value, or a C{WATCHDOG_PID} naming another process.
    """
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2_000_000


class SystemdService(Service):
    """
    Tells systemd when the balancer is ready and when it stops, and feeds
    its watchdog.

    @ivar notifier: where notifications go; a L{Notifier} without an address
        (the default) sends nothing. Set it, and L{watchdog_interval}, before
        the service starts (C{makeService} reads them from the environment).
    @ivar watchdog_interval: seconds between two C{WATCHDOG=1}, or C{None}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        ready: Callable[[], Deferred[str]],
        summary: Callable[[], str],
    ) -> None:
        """
        @param ready: fires with a status line once every listener is up.
        @param summary: a one-line status, for C{STOPPING=1}.
        """
        self.setName("systemd")
        self.notifier = Notifier(None)
        self.watchdog_interval: float | None = None
        self._clock = clock
        self._ready = ready
        self._summary = summary
        self._watchdog: WatchdogService | None = None

    def startService(self) -> None:
        """
        Send C{READY=1} once every listener is up, and start the watchdog.
        """
        super().startService()
        self._ready().addCallback(self.notifier.ready).addErrback(
            lambda failure: Logger().failure("telling systemd READY=1 failed", failure)
        )
        if self.watchdog_interval is not None:
            self._watchdog = WatchdogService(self.notifier, self._clock, self.watchdog_interval)
            self._watchdog.startService()

    def stopService(self) -> None:
        """
        Send C{STOPPING=1}; stop the watchdog.
        """
        super().stopService()
        if self.notifier.enabled:
            self.notifier.stopping(f"draining; {self._summary()}")
        if self._watchdog is not None:
            self._watchdog.stopService()
            self._watchdog = None


class WatchdogService(Service):
    """
    Sends C{WATCHDOG=1} every C{interval} seconds on the injected clock,
    the first one at start: as long as the reactor runs, systemd's watchdog
    is fed; a hung reactor stops feeding it, and systemd restarts the unit.
    """

    def __init__(self, notifier: Notifier, clock: IReactorTime, interval: float) -> None:
        self.setName("systemd watchdog")
        self._notifier = notifier
        self.interval = interval
        self._loop = LoopingCall(notifier.watchdog)
        self._loop.clock = clock

    def startService(self) -> None:
        """
        Start feeding the watchdog.
        """
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        """
        Stop feeding it.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()
