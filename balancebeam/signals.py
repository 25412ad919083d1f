"""
A second stop signal during a drain is harmless.

Supervisors and C{timeout} often send SIGTERM more than once (to the whole
process group, or again after a while). Twisted's handler logs
C{Received SIGTERM, shutting down.} each time and asks the reactor to stop
again, which, once it is already stopping, raises C{ReactorNotRunning} and
logs a critical traceback. L{guard_stop_signals} wraps the reactor's own
SIGTERM and SIGINT handlers: the first signal still goes to Twisted (so the
drain starts and the exit status reflects the signal), every later one only
logs one info line.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

SignalHandler = Callable[[int, "FrameType | None"], Any]


class _StopSignalGuard:
    """
    Passes the first stop signal to Twisted's handler and swallows the rest.

    @ivar stopping: whether the balancer is already stopping.
    """

    def __init__(self, original: SignalHandler) -> None:
        self._original = original
        self.stopping = False

    def __call__(self, number: int, frame: FrameType | None) -> None:
        """
        Handle one SIGTERM or SIGINT.
        """
        if self.stopping:
            log.info(
                "Received {signal} again while stopping; already draining",
                signal=signal.Signals(number).name,
            )
            return
        self.stopping = True
        self._original(number, frame)

    def shutting_down(self) -> None:
        """
        The reactor is stopping for another reason: later signals are repeats.
        """
        self.stopping = True


def guard_stop_signals(reactor: Any) -> list[_StopSignalGuard]:
    """
    Replace the reactor's SIGTERM and SIGINT handlers by guards around them.

    Call it once the reactor runs (C{reactor.callWhenRunning}), after
    Twisted installed its handlers. A signal whose handler is not the
    reactor's (Twisted started with C{handleSignals=False}, or someone
    else's handler) is left alone.

    @return: the guards installed.
    """
    guards = []
    for number, name in ((signal.SIGTERM, "sigTerm"), (signal.SIGINT, "sigInt")):
        original = getattr(reactor, name, None)
        if original is None or signal.getsignal(number) != original:
            continue
        guard = _StopSignalGuard(original)
        signal.signal(number, guard)
        reactor.addSystemEventTrigger("before", "shutdown", guard.shutting_down)
        guards.append(guard)
    return guards
