"""
The places where the relay relies on Twisted's private internals, for
speed, each pinned to the Twisted versions it was checked against and with a
public-API fallback on any other version:

  - L{send_now}, which writes straight to a TCP socket when Twisted's send
    buffer is empty (the relay calls it for every head and body it forwards);
    on an unchecked version it is a plain C{transport.write};
  - L{LeanEPollReactor}, the opt-in C{balancebeam-epoll} reactor
    (C{twistd --reactor=balancebeam-epoll -n balancebeam ...}, registered in
    L{twisted.plugins.balancebeam_plugin}); on an unchecked version that
    reactor name installs Twisted's stock C{EPollReactor} and logs one info
    line saying so.

(The TLS layer's fast path, L{balancebeam.tls.fast}, relies on Twisted's
and pyOpenSSL's internals in the same way, with its own version pins, and
the same switch.)

Both decisions are taken once, at import, from C{twisted.__version__} and the
environment variable C{BALANCEBEAM_TWISTED_INTERNALS}: set to C{off}, it
forces both fallbacks (an escape hatch, and a way to measure what the fast
paths are worth). Any other value, or none, leaves the decision to the
version check.

What was checked, for every version listed in L{SEND_NOW_CHECKED_VERSIONS}
and L{LEAN_REACTOR_CHECKED_VERSIONS} (the released wheels, compared with
docstrings, comments and type annotations stripped): C{tcp.Server} and
C{tcp.Client} derive from C{tcp.Connection}, whose C{__init__} sets
C{socket}; C{abstract.FileDescriptor} keeps queued data in C{dataBuffer}
(being written, from C{offset}) and C{_tempDataBuffer}/C{_tempDataLen}
(appended to by C{write}), and C{write}, C{loseConnection}, C{doWrite} and
C{connectionLost} use C{connected}, C{disconnecting} and
C{_writeDisconnected} with the same meaning; C{EPollReactor.doPoll} and
C{_PollLikeMixin._doReadOrWrite} are the code L{LeanEPollReactor.doPoll}
mirrors. The only differences between those versions in these parts do not
change behaviour (C{setblocking(0)} against C{setblocking(False)}, a
C{memoryview} slice instead of C{lazyByteSlice} in C{writeSomeData}, a
shortcut in C{doWrite} when C{dataBuffer} is drained). A test fails when
the installed Twisted is not listed, so that an upgrade forces a re-check.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

import twisted
from balancebeam.relay.transport import StreamTransport

log = Logger()

_ClassT = TypeVar("_ClassT", bound=type)


def _python_class(cls: _ClassT) -> _ClassT:
    """
    Return C{cls} unchanged. mypyc compiles a class with a decorator it does
    not know as a Python class (its methods still compiled), which a
    subclass of Twisted's reactor must be: as a native class it fails at
    construction.
    """
    return cls

TWISTED_VERSION: str = twisted.__version__
"""
The Twisted version this process runs on, as read at import.
"""

SWITCH_VARIABLE = "BALANCEBEAM_TWISTED_INTERNALS"
"""
The environment variable that, set to C{off}, forces the public-API
fallbacks whatever the Twisted version.
"""

SEND_NOW_CHECKED_VERSIONS: tuple[str, ...] = (
    "24.7.0",
    "24.10.0",
    "24.11.0",
    "25.5.0",
    "26.4.0",
    "26.10.0",
)
"""
The Twisted releases whose C{tcp.Connection} write path L{send_direct} was
checked against (24.7 is the oldest C{setup.cfg} allows on Python 3.9, 26.4
the newest Twisted for Python 3.9, 26.10 the one for CPython 3.10+).
"""

LEAN_REACTOR_CHECKED_VERSIONS: tuple[str, ...] = (
    "24.7.0",
    "24.10.0",
    "24.11.0",
    "25.5.0",
    "26.4.0",
    "26.10.0",
)
"""
The Twisted releases whose C{EPollReactor.doPoll} and C{_doReadOrWrite}
L{LeanEPollReactor} was checked against (C{epollreactor.py} is identical in
all of them).
"""


def fallback_reason(
    checked: tuple[str, ...],
    version: str,
    environ: Mapping[str, str],
    library: str = "Twisted",
) -> str | None:
    """
    Decide whether a fast path may be used.

    @param checked: the versions of C{library} the fast path was checked
        against.
    @param version: the running C{library}'s version string.
    @param environ: the process environment (for L{SWITCH_VARIABLE}).
    @param library: whose versions these are, for the reason.
    @return: C{None} when the fast path may be used, else why not, as a
        phrase for a log line.
    """
    if environ.get(SWITCH_VARIABLE, "").strip().lower() == "off":
        return f"{SWITCH_VARIABLE}=off"
    if version not in checked:
        return (
            f"{library} {version} is not among the versions it was checked against "
            f"({', '.join(checked)})"
        )
    return None


# ----------------------------------------------------------------- send_now

_DIRECT_TYPES = (tcp.Server, tcp.Client)


def send_direct(transport: StreamTransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it to the socket at once when
    nothing is queued before it. Only for the Twisted versions in
    L{SEND_NOW_CHECKED_VERSIONS}: it reads C{tcp.Connection}'s private
    fields.

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


def write_plain(transport: StreamTransport, data: bytes) -> None:
    """
    The public-API fallback of L{send_now}: C{transport.write(data)}.
    """
    transport.write(data)


def choose_send(
    version: str, environ: Mapping[str, str]
) -> Callable[[StreamTransport, bytes], None]:
    """
    Pick the implementation of L{send_now} for a Twisted version and an
    environment.

    @return: L{send_direct} when allowed (see L{fallback_reason}), else
        L{write_plain}.
    """
    if fallback_reason(SEND_NOW_CHECKED_VERSIONS, version, environ) is None:
        return send_direct
    return write_plain


SEND_NOW_FALLBACK: str | None = fallback_reason(
    SEND_NOW_CHECKED_VERSIONS, TWISTED_VERSION, os.environ
)
"""
Why L{send_now} is the plain C{write} in this process, or C{None} when it
sends directly.
"""

send_now: Callable[[StreamTransport, bytes], None] = choose_send(TWISTED_VERSION, os.environ)
"""
Write C{data} to C{transport} (C{send_now(transport, data)}): L{send_direct}
on the checked Twisted versions, L{write_plain} otherwise or with
C{BALANCEBEAM_TWISTED_INTERNALS=off}. Chosen once, at import, so that the
relay's hot path pays no dispatch.
"""

if SEND_NOW_FALLBACK is not None:
    log.info(
        "send_now falls back to transport.write: {reason}", reason=SEND_NOW_FALLBACK
    )


# ----------------------------------------------------------------- the lean reactor


@_python_class
class LeanEPollReactor(EPollReactor):
    """
    L{EPollReactor} dispatching readiness events without a log context.

    Twisted's epoll reactor wraps every readiness event in
    C{twisted.python.log.callWithLogger}, which asks the transport for its
    log prefix and pushes and pops a context dictionary, so that old-style
    C{log.msg} calls made during the event carry a C{system} prefix. A relay
    handles two such events per request. balancebeam logs through
    C{twisted.logger}, whose events carry their own namespace, so nothing is
    lost but that prefix. Exceptions raised while handling an event are
    still caught, logged and turned into a disconnection by Twisted's own
    C{_doReadOrWrite}.

    Only for the Twisted versions in L{LEAN_REACTOR_CHECKED_VERSIONS}.
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

    def doIteration(self, timeout: float | None) -> None:
        """
        One reactor iteration: L{doPoll} (a method rather than C{doIteration =
        doPoll}, which a class compiled with mypyc cannot hold).
        """
        self.doPoll(timeout)


LEAN_REACTOR_FALLBACK: str | None = fallback_reason(
    LEAN_REACTOR_CHECKED_VERSIONS, TWISTED_VERSION, os.environ
)
"""
Why C{balancebeam-epoll} installs Twisted's stock epoll reactor in this
process, or C{None} when it installs L{LeanEPollReactor}.
"""


def build_reactor(fallback: str | None) -> EPollReactor:
    """
    Build the reactor that C{balancebeam-epoll} installs.

    @param fallback: why the stock reactor must be used (see
        L{fallback_reason}), or C{None}.
    @return: a L{LeanEPollReactor} when C{fallback} is C{None}; else
        Twisted's L{EPollReactor}, after logging one info line with the
        reason.
    """
    if fallback is None:
        return LeanEPollReactor()
    log.info(
        "reactor balancebeam-epoll: {reason}; installing Twisted's stock epoll reactor",
        reason=fallback,
    )
    return EPollReactor()


def install() -> None:
    """
    Install the C{balancebeam-epoll} reactor as the global reactor (called by
    twistd's C{--reactor} option): L{LeanEPollReactor}, or Twisted's stock
    L{EPollReactor} when L{LEAN_REACTOR_FALLBACK} says why not.
    """
    installReactor(build_reactor(LEAN_REACTOR_FALLBACK))
