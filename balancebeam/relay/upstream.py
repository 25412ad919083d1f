"""
The upstream-facing protocol: one connection to one backend server.

An L{UpstreamConnection} carries one request at a time for its I{owner} (the
exchange, an L{IResponseSink}), parses the response incrementally and reports
the head, each piece of body and the end to the owner. Between requests it
sits idle in the L{balancebeam.pool.UpstreamPool}. It only moves bytes and
reports events: what to do about them is the owner's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import INegotiated, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import classImplements

from balancebeam.http1.framing import BodyReader
from balancebeam.http1.heads import (
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    HEAD_END,
    HTTPError,
    has_bare_lf,
    parse_response_head,
)
from balancebeam.relay.interfaces import IResponseSink
from balancebeam.relay.states import UpstreamConnectionState
from balancebeam.relay.transport import StreamTransport, close_when_sent, enable_no_delay
from balancebeam.twisted_internals import send_now

if TYPE_CHECKING:
    from balancebeam.registry import UpstreamState

MAX_RESPONSE_HEAD: Final = 64 * 1024

MAX_INTERIM_RESPONSES: Final = 32
"""The most 1xx responses one request may get before its final one (then 502)."""

_IDLE: Final = UpstreamConnectionState.IDLE
_HEAD: Final = UpstreamConnectionState.HEAD
_BODY: Final = UpstreamConnectionState.BODY
_TUNNEL: Final = UpstreamConnectionState.TUNNEL
_DONE: Final = UpstreamConnectionState.DONE
_CLOSING: Final = UpstreamConnectionState.CLOSING
_CLOSED: Final = UpstreamConnectionState.CLOSED


class ConnectionListener(TypingProtocol):
    """
    What the pool learns from an L{UpstreamConnection}.
    """

    def connection_closed(self, connection: UpstreamConnection) -> None:
        """The connection is gone (either side closed it)."""


class UpstreamConnection(Protocol):
    """
    One HTTP/1.1 connection to an upstream.

    It is registered as the streaming producer of its own transport, so a
    full send buffer pauses the owner's client (a slow upstream slows the
    client's upload), and the owner pauses this transport when the client
    reads slowly.

    @ivar upstream: the upstream this connection goes to.
    @ivar stream: the transport, once connected.
    @ivar owner: the exchange whose request is in flight, or C{None} when idle.
    @ivar requests: how many requests this connection has carried.
    @ivar reusable: whether it may carry another request once the current
        response is complete.
    @ivar received_any: whether any byte of the current response arrived.
    @ivar idle_since: clock time it went idle (set by the pool).
    @ivar keep_alive_timeout: the upstream's C{Keep-Alive: timeout=N}, if sent.
    @ivar state: an L{UpstreamConnectionState}.
    """

    stream: StreamTransport

    def __init__(self, upstream: UpstreamState, listener: ConnectionListener) -> None:
        self.upstream = upstream
        self.owner: IResponseSink | None = None
        self.requests = 0
        self.reusable = True
        self.received_any = False
        self.idle_since = 0.0
        self.keep_alive_timeout: float | None = None
        self.state = _IDLE
        self._listener = listener
        self._method = b"GET"
        self._buffer = b""
        self._scanned = 0
        self._reader: BodyReader | None = None
        self._interim = 0

    def connectionMade(self) -> None:
        """
        Register as the transport's producer for flow control.
        """
        self.stream = cast(StreamTransport, self.transport)
        self.stream.registerProducer(self, True)
        enable_no_delay(self.stream)

    def send_request(self, owner: IResponseSink, method: bytes, head: bytes) -> None:
        """
        Start a request: from now on response events go to C{owner}.

        @param head: the request head, and whatever body is ready, as sent.
        """
        self.owner = owner
        self._method = method
        self.state = _HEAD
        self._buffer = b""
        self._scanned = 0
        self._reader = None
        self._interim = 0
        self.received_any = False
        self.requests += 1
        send_now(self.stream, head)

    def send(self, data: bytes) -> None:
        """
        Send more request body (or tunnel bytes).
        """
        send_now(self.stream, data)

    def release(self) -> None:
        """
        Forget the owner: the connection is idle again (used by the pool).
        """
        self.owner = None
        self.state = _IDLE

    def close(self) -> None:
        """
        Drop the connection at once, without reporting to any owner.
        """
        self.owner = None
        self.reusable = False
        if self.state < _CLOSING and self.transport is not None:
            self.state = _CLOSING
            self.stream.abortConnection()

    def finish_tunnel(self) -> None:
        """
        The client closed its side of a tunnel: close ours once our send
        buffer has drained.
        """
        self.owner = None
        if self.state != _CLOSED and self.transport is not None:
            close_when_sent(self.stream)

    def half_close(self) -> None:
        """
        Pass a client's half-close on through a tunnel: the upstream may
        still answer.
        """
        stream = self.stream
        # A TLS transport has no half-close of its own (Twisted's TLS wrapper
        # would pass loseWriteConnection to the TCP transport below it, under
        # the TLS records): close the whole connection instead.
        lose_write = None
        if not INegotiated.providedBy(stream):
            lose_write = getattr(stream, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            close_when_sent(stream)

    def start_tunnel(self) -> None:
        """
        After a 101, relay everything the upstream sends to the owner raw.
        """
        self.state = _TUNNEL
        self.reusable = False

    def dataReceived(self, data: bytes) -> None:
        """
        Parse response bytes, report them to the owner, and let the owner
        send what it wrote to its client.
        """
        owner = self.owner
        self._received(data)
        if owner is not None:
            owner.flush()

    def _received(self, data: bytes) -> None:
        state = self.state
        if state == _BODY:
            reader = self._reader
            assert reader is not None
            try:
                consumed = reader.feed(data)
            except HTTPError as error:
                self._fail(error)
                return
            if reader.done:
                if consumed != len(data):
                    self.reusable = False
                self._complete(reader.trailers)
            return
        if state == _TUNNEL:
            if self.owner is not None:
                self.owner.upstream_data(data)
            return
        if state >= _CLOSING:
            return
        if state != _HEAD:
            # Bytes on an idle connection: the upstream is confused; retire it.
            self.close()
            return
        self.received_any = True
        self._buffer += data
        self._parse_heads()

    def _parse_heads(self) -> None:
        while self.state == _HEAD:
            buffer = self._buffer
            # Only the bytes not yet looked at (a head arriving in pieces is
            # scanned once in all, not once per piece).
            scanned = self._scanned
            end = buffer.find(HEAD_END, max(scanned - 3, 0))
            if end == -1:
                if len(buffer) > MAX_RESPONSE_HEAD:
                    self._fail(HTTPError(502, "response head from upstream too large"))
                elif has_bare_lf(buffer, max(scanned - 1, 0)):
                    # The head would never end with CRLF CRLF: answer now
                    # rather than at the timeout.
                    self._fail(HTTPError(502, "bare LF in the response head from upstream"))
                self._scanned = len(buffer)
                return
            self._scanned = 0
            head, self._buffer = buffer[:end], buffer[end + 4 :]
            try:
                response = parse_response_head(head, self._method)
            except HTTPError as error:
                self._fail(error)
                return
            owner = self.owner
            assert owner is not None
            if 100 <= response.status < 200 and response.status != 101:
                self._interim += 1
                if self._interim > MAX_INTERIM_RESPONSES:
                    self._fail(HTTPError(502, "too many interim (1xx) responses from upstream"))
                    return
                owner.upstream_informational(response)
                continue
            if response.keep_alive_timeout is not None:
                self.keep_alive_timeout = response.keep_alive_timeout
            if not response.reusable:
                self.reusable = False
            self.state = _BODY
            owner.upstream_head(self, response)
            rest, self._buffer = self._buffer, b""
            if self.state == _TUNNEL:
                if rest and self.owner is not None:
                    self.owner.upstream_data(rest)
                return
            if self.state != _BODY or self.owner is None:
                return
            kind = response.body_kind
            length = response.content_length
            if kind == BODY_NONE or (kind == BODY_LENGTH and len(rest) >= length):
                # The common case: the whole body came with the head.
                if len(rest) > length:
                    self.reusable = False
                    rest = rest[:length]
                if rest:
                    self.owner.upstream_data(rest)
                if self.state == _BODY:
                    self._complete(b"")
                return
            self._reader = BodyReader(kind, length, self.owner.upstream_data, 502)
            if rest:
                self._received(rest)

    def _complete(self, trailers: bytes) -> None:
        owner = self.owner
        self.state = _DONE
        self._reader = None
        # A paused transport must not go back to the pool paused.
        self.stream.resumeProducing()
        if owner is not None:
            owner.upstream_complete(self, trailers)

    def _fail(self, error: HTTPError | None) -> None:
        owner = self.owner
        self.reusable = False
        self.owner = None
        if self.state != _CLOSED:
            self.state = _CLOSING
            self.stream.abortConnection()
        if owner is not None:
            owner.upstream_failed(self, error, self.received_any)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Finish an until-close body, or report the failure to the owner.
        """
        state = self.state
        reader = self._reader
        owner = self.owner
        self.reusable = False
        if state == _BODY and reader is not None and reader.kind == BODY_UNTIL_CLOSE:
            self.state = _CLOSED
            self._reader = None
            if owner is not None:
                owner.upstream_complete(self, b"")
        elif state == _HEAD or state == _BODY or state == _TUNNEL:
            self.owner = None
            self.state = _CLOSED
            if owner is not None:
                owner.upstream_failed(self, None, self.received_any)
        self.state = _CLOSED
        self._listener.connection_closed(self)
        if owner is not None:
            owner.flush()

    # IPushProducer: the upstream's send buffer is full or drained.

    def pauseProducing(self) -> None:
        """
        Our send buffer to the upstream is full: pause the client's upload.
        """
        if self.owner is not None:
            self.owner.pause_request_body()

    def resumeProducing(self) -> None:
        """
        Our send buffer to the upstream has drained.
        """
        if self.owner is not None:
            self.owner.resume_request_body()

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} does the work.
        """


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(UpstreamConnection, IPushProducer)
