"""
The two places where balancebeam relies on Twisted internals for speed:
L{send_now}, which writes straight to a TCP socket when Twisted's buffer is
empty, and L{LeanEPollReactor}, an opt-in reactor.

L{send_now}: see its docstring.

L{LeanEPollReactor}: an opt-in reactor for throughput: Twisted's epoll reactor without the
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

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor

from balancebeam.relay.transport import StreamTransport


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


_DIRECT_TYPES = (tcp.Server, tcp.Client)


def send_now(transport: StreamTransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it to the socket at once when
    nothing is queued before it.

    Twisted's C{write} queues data until the reactor's next turn, which costs
    two C{epoll_ctl} calls and a loop iteration per response. When the
    transport is a plain TCP connection with an empty send buffer, this sends
    directly with C{socket.send}; whatever the kernel does not take (and every
    other case: TLS, test transports, a transport already holding data or
    closing) goes through C{transport.write}, so ordering, flow control and
    error handling stay Twisted's.
    """
    if (
        type(transport) in _DIRECT_TYPES
        and not transport.dataBuffer  # type: ignore[attr-defined]  # tcp.Connection internals, checked by type above
        and not transport._tempDataLen  # type: ignore[attr-defined]  # idem
        and transport.connected  # type: ignore[attr-defined]  # idem
        and not transport.disconnecting  # type: ignore[attr-defined]  # idem
        and not transport._writeDisconnected  # type: ignore[attr-defined]  # idem
    ):
        try:
            sent = transport.socket.send(data)  # type: ignore[attr-defined]  # idem
        except OSError:
            # EAGAIN, or an error that the queued write will meet and report.
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    transport.write(data)
