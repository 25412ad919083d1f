"""
The HTTP health probe: one short-lived connection per probe that sends a
C{GET} and reads only the response's status line.

L{HTTPProbe} is what L{balancebeam.health.HealthChecker} calls once per
upstream and round. It never borrows a pooled client connection: a probe must
prove that a fresh connection is accepted and answered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import IntEnum

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from balancebeam.config import UpstreamSpec
from balancebeam.config_values import parse_health_check_path
from balancebeam.registry import UpstreamState

USER_AGENT = "balancebeam-health-check"

MAX_STATUS_LINE = 1024
"""
Bytes allowed in a status line, including its line ending. A peer that sends
more without a line ending fails the probe.
"""

MAX_INTERIM_HEAD = 8192
"""
Bytes allowed in the header block of one interim (1xx) response, which the
probe skips while it waits for the final status line.
"""

_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] ([1-9][0-9][0-9])(?: [^\r\n]*)?")


class ProbeFailed(Exception):
    """
    The upstream's answer was not an HTTP status line: it closed the
    connection first, sent a malformed line, or sent too much.

    @ivar reason: a short description for logs, such as C{"malformed status line"}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _abort(transport: ITransport) -> None:
    """
    Close C{transport} at once, without waiting for buffered data, when it
    can (TCP and TLS transports can); otherwise close it normally.
    """
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class ProbeState(IntEnum):
    """
    The states of one probe. Its only deadline is the probe timeout, which
    the health checker applies to the whole probe (L{Deferred.addTimeout}).

    @cvar CONNECTING: waiting for the connection.
    @cvar STATUS: request written; reading a status line.
    @cvar INTERIM: skipping the header block of an interim (1xx) response.
    @cvar DONE: the result is known, or the probe was cancelled.
    """

    CONNECTING = 0
    STATUS = 1
    INTERIM = 2
    DONE = 3


class _StatusLineReader(Protocol):
    """
    Sends one request and fires L{finished} with the status code of the
    first final (non-1xx) response, then aborts the connection.

    @ivar finished: fires with the status code, or fails with L{ProbeFailed}
        or the connection failure. Cancelling it cancels the connection
        attempt or aborts the connection.
    @ivar _state: a L{ProbeState}:
        - C{CONNECTING}: waiting for the connection (set by
          L{watch_connect}).
        - C{STATUS}: request written; reading a status line.
        - C{INTERIM}: skipping the header block of a 1xx response.
        - C{DONE}: L{finished} has fired or is being cancelled; every
          further event is ignored.
    """

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._state = ProbeState.CONNECTING
        self._buffer = b""
        self._interim_size = 0
        self._connecting: Deferred[IProtocol] | None = None
        self.finished: Deferred[int] = Deferred(self._cancel)

    def watch_connect(self, connecting: Deferred[IProtocol]) -> None:
        """
        Follow the connection attempt so that its failure fails the probe and
        a cancellation can stop it.
        """
        self._connecting = connecting
        connecting.addErrback(self._connect_failed)

    def connectionMade(self) -> None:
        """
        Send the request, or abort if the probe was cancelled meanwhile.
        """
        assert self.transport is not None
        if self._state == ProbeState.DONE:
            _abort(self.transport)
            return
        self._state = ProbeState.STATUS
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer C{data} and act on each complete line, failing the probe when
        a line outgrows its limit (L{MAX_STATUS_LINE}, L{MAX_INTERIM_HEAD}).
        """
        if self._state == ProbeState.DONE:
            return
        self._buffer += data
        while self._state == ProbeState.STATUS or self._state == ProbeState.INTERIM:
            if self._state == ProbeState.STATUS:
                what, limit, used = "status line", MAX_STATUS_LINE, 0
            else:
                what, limit, used = "interim response head", MAX_INTERIM_HEAD, self._interim_size
            remaining = limit - used
            end = self._buffer.find(b"\n", 0, remaining)
            if end == -1:
                if len(self._buffer) >= remaining:
                    self._fail(ProbeFailed(f"{what} longer than {limit} bytes"))
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if self._state == ProbeState.STATUS:
                self._status_line(line.removesuffix(b"\r"))
            else:
                self._interim_size += end + 1
                if line in (b"", b"\r"):
                    self._state = ProbeState.STATUS

    def _status_line(self, line: bytes) -> None:
        """
        Parse one status line: skip interim responses, finish on a final one.
        """
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            self._fail(ProbeFailed("malformed status line"))
            return
        status = int(match.group(1))
        if 100 <= status < 200 and status != 101:
            self._state = ProbeState.INTERIM
            self._interim_size = 0
            return
        self._state = ProbeState.DONE
        assert self.transport is not None
        _abort(self.transport)
        self.finished.callback(status)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        Fail the probe if the connection closed before a final status line.
        """
        if self._state != ProbeState.DONE:
            self._state = ProbeState.DONE
            self.finished.errback(Failure(ProbeFailed("connection closed before the status line")))

    def _fail(self, error: Exception) -> None:
        """
        Fail the probe with C{error} and close the connection.
        """
        self._state = ProbeState.DONE
        if self.transport is not None:
            _abort(self.transport)
        self.finished.errback(Failure(error))

    def _connect_failed(self, failure: Failure) -> None:
        """
        Fail the probe with the connection failure, unless it was cancelled.
        """
        if self._state != ProbeState.DONE:
            self._state = ProbeState.DONE
            self.finished.errback(failure)

    def _cancel(self, finished: Deferred[int]) -> None:
        """
        Stop the connection attempt or abort the connection; L{finished} then
        fails with C{CancelledError}.
        """
        state, self._state = self._state, ProbeState.DONE
        if state == ProbeState.DONE:
            return
        if self.transport is not None:
            _abort(self.transport)
        elif self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()


class _ProbeFactory(Factory):
    """
    Hands out one prepared L{_StatusLineReader}, quietly: a noisy factory
    would log two info lines per probe.
    """

    noisy = False

    def __init__(self, reader: _StatusLineReader) -> None:
        self._reader = reader

    def buildProtocol(self, addr: IAddress | None) -> _StatusLineReader:
        """
        Return the reader for the one connection this factory makes.
        """
        return self._reader


class HTTPProbe:
    """
    Probes an upstream with C{GET <path>} on a connection of its own.

    Calling the probe returns a L{Deferred} that fires with the integer
    status code as soon as the status line has arrived (interim 1xx
    responses are skipped), after which the connection is aborted. It fails
    with L{ProbeFailed} when the connection closes first or the status line
    is malformed or too long, and with the connection error (such as
    C{ConnectionRefusedError}) when the connection attempt fails. Cancelling
    it (which is how timeouts work) cancels the connection attempt or aborts
    the connection; nothing is left open.

    @ivar path: the request target sent to every upstream.
    """

    def __init__(
        self,
        connect: Callable[[UpstreamSpec], IStreamClientEndpoint],
        path: str,
    ) -> None:
        """
        @param connect: builds the endpoint for one upstream; called once per probe.
        @param path: the request target, such as C{"/"} or C{"/healthz?full=1"}.
        @raise ValueError: when C{path} is not one the request line can
            carry (L{balancebeam.config_values.parse_health_check_path}, which
            validated C{--active-health-check-path}).
        """
        self._connect = connect
        self.path = parse_health_check_path(path)

    def request_for(self, upstream: UpstreamState) -> bytes:
        """
        The exact request bytes sent to C{upstream}.
        """
        return (
            f"GET {self.path} HTTP/1.1\r\n"
            f"Host: {upstream.name}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Connection: close\r\n"
            "\r\n"
        ).encode("ascii")

    def probe(self, upstream: UpstreamState) -> Deferred[int]:
        """
        Probe C{upstream} once. The instance itself is callable the same way,
        so it can be handed to L{balancebeam.health.HealthChecker} directly.

        @return: a cancellable L{Deferred} firing with the status code.
        """
        reader = _StatusLineReader(self.request_for(upstream))
        endpoint = self._connect(upstream.spec)
        connecting = endpoint.connect(_ProbeFactory(reader))
        reader.watch_connect(connecting)
        return reader.finished

    __call__ = probe
