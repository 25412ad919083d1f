"""
An opt-in reactor for throughput: Twisted's epoll reactor without the
legacy per-event log context.

Twisted's epoll reactor wraps every readiness event in
C{twisted.python.log.callWithLogger}, which asks the transport for its log
prefix and pushes and pops a context dictionary, so that old-style
C{log.msg} calls made during the event carry a C{system} prefix. A relay
handles two such events per request, and the wrapping costs about a tenth
of its CPU time. balancebeam logs through C{twisted.logger}, whose events
carry their own namespace, so nothing is lost but that prefix.

Exceptions raised while handling an event are still caught, logged and
turned into a disconnection by Twisted's own C{_doReadOrWrite}.

Select it with twistd's own option: C{twistd --reactor=balancebeam-epoll -n
balancebeam ...} (see L{twisted.plugins.balancebeam_plugin}).
"""

from __future__ import annotations

import errno

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor


class LeanEPollReactor(EPollReactor):
    """
    L{EPollReactor} dispatching readiness events without a log context.
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for events and dispatch each one directly (compare
        L{EPollReactor.doPoll}, which this mirrors).
        """
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> None:
    """
    Install L{LeanEPollReactor} as the global reactor.
    """
    installReactor(LeanEPollReactor())
