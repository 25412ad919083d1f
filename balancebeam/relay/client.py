"""
The client-facing side: one L{ClientConnection} per client connection, built
by a L{RelayFactory <balancebeam.relay.factory.RelayFactory>} that carries
what every connection shares.

A client connection reads and validates request heads, holds pipelined
requests (bounded, unparsed) until the current one is answered, handles
half-closes and draining, applies flow control on the client side and
enforces the idle and head deadlines. Each parsed head becomes an
L{Exchange}, which owns everything about that one request; the connection
only feeds it the request's bytes and sends what it writes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Final, cast

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements

from balancebeam.clientip import client_key
from balancebeam.http1.heads import (
    HEAD_END,
    HTTPError,
    check_partial_request_head,
    parse_request_head,
)
from balancebeam.http1.rewrite import error_response
from balancebeam.interfaces import IExchange
from balancebeam.relay.exchange import Exchange
from balancebeam.relay.interfaces import IClientSide
from balancebeam.relay.states import (
    PAUSE_CLIENT_FULL,
    PAUSE_PIPELINE,
    PAUSE_UPSTREAM_FULL,
    PAUSE_WAITING,
    ClientState,
)
from balancebeam.relay.transport import StreamTransport, close_when_sent, enable_no_delay
from balancebeam.twisted_internals import send_now

if TYPE_CHECKING:
    from balancebeam.relay.factory import RelayFactory

_IDLE: Final = ClientState.IDLE
_HEAD: Final = ClientState.HEAD
_BUSY: Final = ClientState.BUSY
_TUNNEL: Final = ClientState.TUNNEL
_CLOSED: Final = ClientState.CLOSED


class ClientConnection(Protocol):
    """
    One client connection.

    It is registered as the streaming producer of its own transport: when
    the client reads slowly, the upstream connection's reads are paused.

    @ivar deadline: clock time at which L{deadline_passed} acts (C{inf} for
        none). The connection sets it in L{ClientState.IDLE} and
        L{ClientState.HEAD}; the exchange sets it while it owns the
        connection.
    @ivar client_ip: the TCP peer's address in normal form.
    @ivar cap_key: the client address this connection counts against in
        C{max_connections_per_client}
        (L{balancebeam.relay.factory.RelayFactory.per_client}), or
        C{None} when it is not counted.
    @ivar scheme: C{b"http"} or C{b"https"}.
    @ivar exchange: the request being served, or C{None} between requests.
    @ivar writes_paused: whether the client's send buffer is full.
    @ivar state: a L{ClientState}:
        - C{IDLE}: waiting for a request (deadline C{client_idle});
        - C{HEAD}: part of a head received (deadline C{client_header});
        - C{BUSY}: an exchange owns the connection (its deadline);
        - C{TUNNEL}: after a 101, bytes go to the exchange's tunnel;
        - C{CLOSED}: gone or going.
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too
    _stream: StreamTransport

    def __init__(self, factory: RelayFactory) -> None:
        self.factory = factory
        self.deadline = math.inf
        self.client_ip = "-"
        self.cap_key: str | None = None
        self.scheme = factory.scheme
        self.state = _IDLE
        self.exchange: Exchange | None = None
        self.writes_paused = False
        self._buffer = b""
        self._paused = 0
        self._head_checked = 0
        self._out: list[bytes] = []
        self._client_eof = False
        self._processing = False
        self._lost = False

    # Connection lifecycle

    def connectionMade(self) -> None:
        """
        Register for flow control and start the idle deadline.
        """
        transport = self._stream = cast(StreamTransport, self.transport)
        peer = transport.getPeer()
        # Normal form (IPv4-mapped IPv6 as IPv4), for X-Forwarded-For, logs
        # and the rate-limiting key; IPv4 hosts are already in that form.
        host = getattr(peer, "host", "-")
        self.client_ip = client_key(host, None, ()) if ":" in host else host
        transport.registerProducer(self, True)
        enable_no_delay(transport)
        factory = self.factory
        factory.connections.add(self)
        if self.cap_key is not None:
            factory.count_client(self.cap_key)
        timeouts = factory.settings.timeouts
        wait = timeouts.client_idle
        if INegotiated.providedBy(transport):
            # The TLS handshake comes first: it gets the head's time, so a
            # client stalling in it is not held for the idle timeout.
            wait = min(wait, timeouts.client_header)
        self.deadline = factory.clock.seconds() + wait

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: the connection waits for its first
        request for the idle timeout, as a plain one does.
        """
        if self.state == _IDLE and not self._buffer:
            factory = self.factory
            self.deadline = factory.clock.seconds() + factory.settings.timeouts.client_idle

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Free everything this client held.
        """
        self._lost = True
        self.state = _CLOSED
        self.deadline = math.inf
        self.factory.connection_closed(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.client_gone()

    def drain(self) -> None:
        """
        The balancer is stopping: close now if idle, else after the current
        response.
        """
        exchange = self.exchange
        if exchange is not None:
            exchange.drain()
        elif self.state == _IDLE and not self._buffer:
            self.close()

    def readConnectionLost(self) -> None:
        """
        The client finished sending (a half-close): answer the requests it
        sent completely, then close; drop a request it left incomplete.
        """
        self._client_eof = True
        state = self.state
        if state == _CLOSED:
            return
        exchange = self.exchange
        if state == _TUNNEL:
            if exchange is not None:
                exchange.client_half_closed()
            return
        if exchange is not None:
            if exchange.reader is not None:
                self.abort()
            return
        self._process()
        self.flush()

    def writeConnectionLost(self) -> None:
        """
        Our sending side is closed; nothing more to do.
        """

    # IClientSide: what the exchange drives

    def write(self, data: bytes) -> None:
        """
        Queue C{data} for the client; L{flush} sends it.
        """
        self._out.append(data)

    def flush(self) -> None:
        """
        Send everything written to the client during this reactor turn, in
        one system call when the socket takes it.
        """
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            send_now(self._stream, data)

    def pause_reading(self, reason: int) -> None:
        """
        Stop reading the client for C{reason}.
        """
        if not self._paused:
            self._stream.pauseProducing()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        """
        Clear C{reason}; read again when no reason is left.
        """
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.state != _CLOSED:
            self._stream.resumeProducing()

    def start_tunnel(self) -> None:
        """
        The exchange became a tunnel: bytes already buffered, and every
        further byte, go to it.
        """
        self.state = _TUNNEL
        self.resume_reading(PAUSE_PIPELINE | PAUSE_WAITING)
        if self._buffer:
            data, self._buffer = self._buffer, b""
            exchange = self.exchange
            if exchange is not None:
                exchange.tunnel_data(data)

    def exchange_done(self, exchange: IExchange, keep_alive: bool) -> None:
        """
        The exchange is over: go on with the next request, or close.
        """
        if self.exchange is exchange:
            self.exchange = None
        if self.state == _CLOSED:
            return
        if not keep_alive:
            self.close()
            return
        self.state = _IDLE
        factory = self.factory
        self.deadline = factory.clock.seconds() + factory.settings.timeouts.client_idle
        if self._paused:
            self.resume_reading(PAUSE_PIPELINE | PAUSE_WAITING | PAUSE_UPSTREAM_FULL)
        if self._buffer or self._client_eof:
            self._process()

    def abort(self) -> None:
        """
        Drop the client connection at once (used when a response cannot be
        completed honestly, and by the drain's deadline): also a connection
        already closing whose close never completes (a client that stops
        reading, a TLS peer that never ends the shutdown).
        """
        self._out.clear()
        if not self._lost:
            self.state = _CLOSED
            self._stream.abortConnection()

    def close(self) -> None:
        """
        Send what is queued, then close.
        """
        self.state = _CLOSED
        self._buffer = b""
        self.deadline = math.inf
        self.flush()
        close_when_sent(self._stream)

    # Reading from the client

    def dataReceived(self, data: bytes) -> None:
        """
        Feed client bytes to whatever the current state needs.
        """
        state = self.state
        if state == _TUNNEL:
            exchange = self.exchange
            if exchange is not None:
                exchange.tunnel_data(data)
            return
        if state == _CLOSED:
            return
        if self._buffer:
            self._buffer += data
        else:
            self._buffer = data
        self._process()
        self.flush()

    def _process(self) -> None:
        """
        Make progress on buffered client bytes: parse a head, feed a body, or
        hold pipelined bytes (pausing when they exceed the head limit).

        Not re-entrant: when an exchange ends while its bytes are being fed
        (a body completes, a filter answers at once), the loop already
        running goes on with the bytes that follow, so the buffer is only
        ever advanced here, and a long pipeline does not recurse.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while self._buffer and self.state != _CLOSED:
                exchange = self.exchange
                if exchange is None:
                    if self._out:
                        # A pipelined request after one answered at once (a
                        # 429, a cache hit): send that answer first, so that
                        # a client not reading its answers is not answered
                        # without bound, but stops being read.
                        self.flush()
                    if self.writes_paused:
                        self.pause_reading(PAUSE_CLIENT_FULL)
                        break
                    if not self._read_head():
                        break
                    continue
                if exchange.reader is not None:
                    buffer = self._buffer
                    try:
                        consumed = exchange.body_received(buffer)
                    except HTTPError as error:
                        self._client_error(error)
                        break
                    if self._buffer is buffer:
                        self._buffer = buffer[consumed:] if consumed < len(buffer) else b""
                    continue
                if self.state == _TUNNEL:
                    data, self._buffer = self._buffer, b""
                    exchange.tunnel_data(data)
                    break
                # A request is in progress and its body is complete: these
                # bytes are a pipelined request, read once the response is done.
                if len(self._buffer) > self.factory.settings.limits.max_head_size:
                    self.pause_reading(PAUSE_PIPELINE)
                break
        finally:
            self._processing = False
        if self._client_eof and self.exchange is None and self.state != _CLOSED:
            # Whatever is left can never become a request.
            self.close()

    def _read_head(self) -> bool:
        """
        Parse a request head if a whole one is buffered, and start its exchange.

        @return: whether a request was started.
        """
        buffer = self._buffer
        if buffer[:2] == b"\r\n":
            # RFC 9112 section 2.2: ignore empty lines before a request line.
            buffer = self._buffer = buffer.lstrip(b"\r\n")
            if not buffer:
                return False
        factory = self.factory
        settings = factory.settings
        limits = settings.limits
        end = buffer.find(HEAD_END, 0, limits.max_head_size + 4)
        now = factory.clock.seconds()
        if end == -1:
            if len(buffer) > limits.max_head_size:
                if buffer.find(b"\r\n", 0, limits.max_head_size) == -1:
                    # The request line alone is too long (RFC 9110 section 15.5.15).
                    self._client_error(HTTPError(414, "request target too long"))
                else:
                    self._client_error(HTTPError(431, "request head too large"))
                return False
            try:
                check_partial_request_head(buffer, self._head_checked)
            except HTTPError as error:
                self._client_error(error)
                return False
            self._head_checked = len(buffer)
            if self.state == _IDLE:
                self.state = _HEAD
                self.deadline = now + factory.settings.timeouts.client_header
            return False
        self._buffer = buffer[end + 4 :]
        self._head_checked = 0
        try:
            request = parse_request_head(buffer[:end], limits.max_header_count)
        except HTTPError as error:
            self._client_error(error)
            return False
        stats = factory.stats
        stats.requests += 1
        exchange = self.exchange = Exchange(self, settings, request, now, stats.requests)
        if factory.draining:
            exchange.keep_alive = False
        self.state = _BUSY
        try:
            exchange.start()
        except HTTPError as error:
            self._client_error(error)
        return True

    def _client_error(self, error: HTTPError) -> None:
        """
        Answer a malformed, over-limit or too slow request and close.
        """
        factory = self.factory
        factory.stats.client_errors += 1
        if self.state == _CLOSED:
            return
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            started = exchange.abandon()
            exchange.log_client_error(error.status, started)
            if started:
                self.abort()
                return
        elif factory.settings.access_log:
            # No head was parsed: the access log still gets its line.
            Exchange.log.info(
                '{client} "- -" {status} upstream=- -',
                client=self.client_ip,
                method="-",
                path="-",
                status=error.status,
                upstream="-",
                latency_ms=None,
                request_id=None,
            )
        self.log.info(
            "bad request from {client}: {status} {reason}",
            client=self.client_ip,
            status=error.status,
            reason=error.reason,
        )
        factory.stats.count_status(error.status)
        self._out.append(
            error_response(error.status, error.reason, False, date=factory.settings.date.line())
        )
        self.close()

    # IPushProducer: the client's receive side

    def pauseProducing(self) -> None:
        """
        The client's receive side is full: stop reading the upstream.
        """
        self.writes_paused = True
        exchange = self.exchange
        if exchange is not None:
            exchange.client_write_paused()

    def resumeProducing(self) -> None:
        """
        The client caught up: read the upstream again.
        """
        self.writes_paused = False
        exchange = self.exchange
        if exchange is not None:
            exchange.client_write_resumed()
        elif self._paused & PAUSE_CLIENT_FULL:
            self.resume_reading(PAUSE_CLIENT_FULL)
            if self._buffer:
                self._process()

    def stopProducing(self) -> None:
        """
        The client transport is going away; L{connectionLost} frees the rest.
        """

    # Deadlines

    def deadline_passed(self) -> None:
        """
        Act on a passed deadline according to the state.
        """
        state = self.state
        self.deadline = math.inf
        if state == _IDLE:
            if self.writes_paused:
                # Answers the client has not read for the idle timeout: a
                # graceful close would wait for it for ever.
                self.abort()
            else:
                self.close()
        elif state == _HEAD:
            self._client_error(HTTPError(408, "request head not received in time"))
        elif state == _BUSY or state == _TUNNEL:
            exchange = self.exchange
            if exchange is None:
                return
            try:
                exchange.deadline_passed()
            except HTTPError as error:
                self._client_error(error)


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(
    ClientConnection, IPushProducer, IHalfCloseableProtocol, IHandshakeListener, IClientSide
)
