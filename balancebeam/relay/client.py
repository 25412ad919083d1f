"""
The client-facing side: one L{BalancerProtocol} per client connection, built
by a L{BalancerFactory} that carries the shared policy objects.

The protocol reads a request head, asks the rate limiter and the strategy,
checks out an upstream connection from the pool and relays bytes both ways
with flow control. Requests on one connection are served one at a time, in
order; pipelined requests wait, unparsed and bounded, in the read buffer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Final, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam.clientip import client_key
from balancebeam.config import Limits, Timeouts
from balancebeam.errors import BalancerError
from balancebeam.http1.framing import (
    LAST_CHUNK,
    BodyReader,
    chunk,
)
from balancebeam.http1.heads import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    HEAD_END,
    HTTPError,
    RequestHead,
    ResponseHead,
    check_partial_request_head,
    parse_request_head,
)
from balancebeam.http1.rewrite import (
    error_response,
    request_head_for_upstream,
    response_head_for_client,
)
from balancebeam.interfaces import IBalancingStrategy, IRateLimiter, RateLimitDecision
from balancebeam.pool import SAFE_REUSE_AGE, UpstreamPool
from balancebeam.registry import UpstreamRegistry, UpstreamState
from balancebeam.relay.transport import StreamTransport, enable_no_delay
from balancebeam.relay.upstream import UpstreamConnection
from balancebeam.stats import Stats
from balancebeam.twisted_internals import send_now

#: Request body bytes held while no upstream connection is ready yet.
MAX_PENDING_BODY: Final = 64 * 1024
#: Request body bytes kept so an idempotent request can be replayed.
MAX_REPLAY_BODY: Final = 64 * 1024
#: A body answered early (429, 503, ...) is read and dropped up to this size;
#: beyond it the connection is closed instead.
MAX_DISCARD_BODY: Final = 1024 * 1024

# Reasons for not reading from the client, as bits.
_PAUSE_UPSTREAM_FULL: Final = 1
_PAUSE_PIPELINE: Final = 2
_PAUSE_WAITING: Final = 4

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class BalancerFactory(Factory):
    """
    Builds client protocols and carries what they share: the registry, the
    strategy, the pool, the rate limiter, limits, timeouts and stats.

    It also runs one coarse timer that enforces every connection's deadline,
    so no request schedules or cancels a timer of its own.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        registry: UpstreamRegistry,
        strategy: IBalancingStrategy,
        pool: UpstreamPool,
        stats: Stats,
        timeouts: Timeouts = Timeouts(),
        limits: Limits = Limits(),
        rate_limiter: IRateLimiter | None = None,
        trusted_proxies: Sequence[IPv4Network | IPv6Network] = (),
        rate_limit_headers: bool = False,
        access_log: bool = False,
        retry_after: int = 5,
        max_connections: int = 0,
    ) -> None:
        self.clock = clock
        self.registry = registry
        self.strategy = strategy
        self.pool = pool
        self.stats = stats
        self.timeouts = timeouts
        self.limits = limits
        self.rate_limiter = rate_limiter
        self.trusted_proxies = tuple(trusted_proxies)
        self.rate_limit_headers = rate_limit_headers
        self.access_log = access_log
        self.retry_after = retry_after
        self.max_connections = max_connections
        self.connections: set[BalancerProtocol] = set()
        self.draining = False
        self._drained: Deferred[None] | None = None
        self._drain_deadline: IDelayedCall | None = None
        self._deadline_check = LoopingCall(self.check_deadlines)
        self._deadline_check.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """
        A protocol for one client connection, or one that answers 503 and
        closes when C{max_connections} are already open.
        """
        if self.max_connections and len(self.connections) >= self.max_connections:
            self.stats.refused_connections += 1
            return _OverCapacity(self.retry_after)
        return BalancerProtocol(self)

    def start_timers(self) -> None:
        """
        Start enforcing deadlines, with a resolution fine enough for the
        shortest configured timeout.
        """
        shortest = min(
            self.timeouts.client_header,
            self.timeouts.client_idle,
            self.timeouts.client_body,
            self.timeouts.upstream,
        )
        self._deadline_check.start(max(0.01, min(1.0, shortest / 10)), now=False)

    def stop_timers(self) -> None:
        """
        Stop enforcing deadlines.
        """
        if self._deadline_check.running:
            self._deadline_check.stop()

    def drain(self, grace: float) -> Deferred[None]:
        """
        Close idle client connections now, let requests in progress finish
        (their connections close afterwards), and abort whatever is left
        after C{grace} seconds.

        @return: fires once every client connection has closed.
        """
        self.draining = True
        for protocol in list(self.connections):
            protocol.drain()
        if not self.connections:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drained = drained
        self._drain_deadline = self.clock.callLater(grace, self._abort_remaining)
        return drained

    def _abort_remaining(self) -> None:
        self._drain_deadline = None
        for protocol in list(self.connections):
            self.log.warn(
                "aborting connection from {client} still busy at shutdown",
                client=protocol.client_ip,
            )
            protocol.abort()

    def connection_closed(self, protocol: BalancerProtocol) -> None:
        """
        Forget a client connection; finish draining after the last one.
        """
        self.connections.discard(protocol)
        if self.draining and not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            if self._drain_deadline is not None and self._drain_deadline.active():
                self._drain_deadline.cancel()
            drained.callback(None)

    def check_deadlines(self) -> None:
        """
        Act on every connection whose deadline has passed.
        """
        now = self.clock.seconds()
        for protocol in [p for p in self.connections if p.deadline <= now]:
            try:
                protocol.deadline_passed()
                protocol.flush()
            except Exception:
                self.log.failure(
                    "deadline handling failed for {client}", client=protocol.client_ip
                )
                protocol.abort()


@implementer(IPushProducer, IHalfCloseableProtocol)
class BalancerProtocol(Protocol):
    """
    One client connection.

    It is registered as the streaming producer of its own transport: when
    the client reads slowly, the upstream connection's reads are paused.

    @ivar deadline: clock time at which L{deadline_passed} acts (C{inf} for none).
    @ivar client_ip: the TCP peer's address.
    @ivar _state: one of:
        - C{"head"}: reading a request head (or idle between requests);
        - C{"limit"}: waiting for the rate limiter's answer;
        - C{"connect"}: waiting for an upstream connection;
        - C{"relay"}: request sent or being sent, response awaited or relayed;
        - C{"discard"}: reading and dropping the body of a request answered early;
        - C{"tunnel"}: after a 101, raw bytes both ways;
        - C{"closed"}: the connection is gone or going.
    """

    log = Logger()
    _stream: StreamTransport

    def __init__(self, factory: BalancerFactory) -> None:
        self.factory = factory
        self.deadline = math.inf
        self.client_ip = "-"
        self._state = "head"
        self._buffer = b""
        self._paused = 0
        self._writes_paused = False
        self._head_started: float | None = None
        self._head_checked = 0
        self._request: RequestHead | None = None
        self._request_reader: BodyReader | None = None
        self._request_done = False
        self._request_started = 0.0
        self._upstream_head = b""
        self._upstream: UpstreamState | None = None
        self._connection: UpstreamConnection | None = None
        self._connecting: Deferred[UpstreamConnection] | None = None
        self._limiting: Deferred[RateLimitDecision] | None = None
        self._tried: list[UpstreamState] = []
        self._reused_retry = False
        self._pending_body: list[bytes] = []
        self._pending_size = 0
        self._replay: list[bytes] | None = []
        self._replay_size = 0
        self._continue_sent = False
        self._response: ResponseHead | None = None
        self._response_chunked = False
        self._keep_alive = True
        self._rate_headers: bytes = b""
        self._last_upstream = "-"
        self._tunnelling = False
        self._out: list[bytes] = []
        self._client_eof = False

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
        self.factory.connections.add(self)
        self.deadline = self.factory.clock.seconds() + self.factory.timeouts.client_idle

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Free everything this client held.
        """
        self._tunnelling = self._state == "tunnel"
        self._state = "closed"
        self.deadline = math.inf
        self.factory.connection_closed(self)
        # A pending rate-limit answer fires within the limiter's own timeout
        # and is then ignored: limiters' Deferreds are not ours to cancel.
        self._limiting = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        connection = self._connection
        if connection is not None:
            self._connection = None
            if self._tunnelling:
                connection.finish_tunnel()
            else:
                connection.close()
        self._release_upstream()

    def drain(self) -> None:
        """
        The balancer is stopping: close now if idle, else after the current
        response.
        """
        self._keep_alive = False
        if self._state == "head" and self._request is None and not self._buffer:
            self._close_after_write()
        elif self._state == "tunnel":
            self._stream.loseConnection()

    def readConnectionLost(self) -> None:
        """
        The client finished sending (a half-close): answer the requests it
        sent completely, then close; drop a request it left incomplete.
        """
        self._client_eof = True
        state = self._state
        if state == "closed" or state == "tunnel":
            if state == "tunnel" and self._connection is not None:
                # Pass the half-close on; the upstream may still answer.
                stream = self._connection.stream
                getattr(stream, "loseWriteConnection", stream.loseConnection)()
            return
        reader = self._request_reader
        if self._request is not None and reader is not None and not reader.done:
            self.abort()
            return
        if self._request is None:
            self._process()
            if self._request is None and self._state == "head":
                self._close_after_write()
        self.flush()

    def writeConnectionLost(self) -> None:
        """
        Our sending side is closed; nothing more to do.
        """

    def abort(self) -> None:
        """
        Drop the client connection at once (used when a response cannot be
        completed honestly).
        """
        self._out.clear()
        if self._state != "closed":
            self._state = "closed"
            self._stream.abortConnection()

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

    # Reading from the client

    def dataReceived(self, data: bytes) -> None:
        """
        Feed client bytes to whatever the current state needs.
        """
        state = self._state
        if state == "tunnel":
            if self._connection is not None:
                send_now(self._connection.stream, data)
            return
        if state == "closed":
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
        """
        while self._buffer and self._state != "closed":
            reader = self._request_reader
            if reader is not None and not reader.done:
                self._feed_body(reader)
                continue
            if self._state == "head":
                if not self._read_head():
                    return
                continue
            if self._state == "tunnel":
                data, self._buffer = self._buffer, b""
                self.dataReceived(data)
                return
            # A request is in progress and its body is complete: these bytes
            # are a pipelined request, read only once the response is done.
            if len(self._buffer) > self.factory.limits.max_head_size:
                self._pause(_PAUSE_PIPELINE)
            return

    def _feed_body(self, reader: BodyReader) -> None:
        try:
            consumed = reader.feed(self._buffer)
        except HTTPError as error:
            self._client_error(error)
            return
        self._buffer = self._buffer[consumed:] if consumed < len(self._buffer) else b""
        if self._state != "discard":
            self.deadline = self.factory.clock.seconds() + self.factory.timeouts.client_body
        if reader.done:
            self._request_body_complete()

    def _read_head(self) -> bool:
        """
        Parse a request head if a whole one is buffered.

        @return: whether a request was started.
        """
        buffer = self._buffer
        if buffer[:2] == b"\r\n":
            # RFC 9112 section 2.2: ignore empty lines before a request line.
            buffer = self._buffer = buffer.lstrip(b"\r\n")
            if not buffer:
                return False
        limits = self.factory.limits
        end = buffer.find(HEAD_END, 0, limits.max_head_size + 4)
        now = self.factory.clock.seconds()
        if end == -1:
            if len(buffer) > limits.max_head_size:
                self._client_error(HTTPError(431, "request head too large"))
                return False
            try:
                check_partial_request_head(buffer, self._head_checked)
            except HTTPError as error:
                self._client_error(error)
                return False
            self._head_checked = len(buffer)
            if self._head_started is None:
                self._head_started = now
                self.deadline = now + self.factory.timeouts.client_header
            return False
        head = buffer[:end]
        self._buffer = buffer[end + 4 :]
        self._head_started = None
        self._head_checked = 0
        try:
            request = parse_request_head(head, limits.max_header_count)
        except HTTPError as error:
            self._client_error(error)
            return False
        self._start_request(request, now)
        return True

    # Requests

    def _start_request(self, request: RequestHead, now: float) -> None:
        factory = self.factory
        factory.stats.requests += 1
        self._request = request
        self._request_started = now
        self._keep_alive = request.keep_alive and not factory.draining
        self._tried = []
        self._reused_retry = False
        self._pending_body = []
        self._pending_size = 0
        self._replay = []
        self._replay_size = 0
        self._continue_sent = False
        self._response = None
        self._rate_headers = b""
        self._request_done = request.body_kind == BODY_NONE
        self._request_reader = None
        max_body = factory.limits.max_body_size
        if (
            max_body is not None
            and request.body_kind == BODY_LENGTH
            and request.content_length > max_body
        ):
            self._client_error(HTTPError(413, f"request body larger than {max_body} bytes"))
            return
        if not self._request_done:
            self._request_reader = BodyReader(
                request.body_kind, request.content_length, self._request_body_data
            )
        self.deadline = now + factory.timeouts.upstream
        limiter = factory.rate_limiter
        if limiter is None:
            self._choose_upstream()
            return
        if factory.trusted_proxies:
            key = client_key(self.client_ip, self._forwarded_for(request), factory.trusted_proxies)
        else:
            key = self.client_ip
        decision = limiter.check(key)
        # Deferred's metaclass is ABCMeta, whose isinstance is slow: test the
        # in-memory limiter's answer first.
        if type(decision) is RateLimitDecision:
            self._rate_limit_decided(decision)
        else:
            assert isinstance(decision, Deferred)
            self._state = "limit"
            self._pause(_PAUSE_WAITING)
            self._limiting = decision
            decision.addCallbacks(self._rate_limit_answered, self._rate_limit_failed)

    def _rate_limit_answered(self, decision: RateLimitDecision) -> None:
        if self._state != "limit":
            return
        self._limiting = None
        self._resume(_PAUSE_WAITING)
        self._rate_limit_decided(decision)
        self.flush()

    def _rate_limit_failed(self, reason: Failure) -> None:
        if reason.check(CancelledError) or self._state != "limit":
            return
        # Limiters apply their own failure policy and never fail; if one
        # does, serve the request rather than hang it.
        self.log.failure("rate limiter failed; allowing the request", reason)
        self._rate_limit_answered(RateLimitDecision(True, 0, 0, 0.0, 0.0))

    def _forwarded_for(self, request: RequestHead) -> bytes | None:
        values = [value for name, value, _ in request.fields if name == b"x-forwarded-for"]
        return b", ".join(values) if values else None

    def _rate_limit_decided(self, decision: RateLimitDecision) -> None:
        if self.factory.rate_limit_headers:
            self._rate_headers = (
                b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n"
                % (decision.limit, decision.remaining, math.ceil(decision.reset_after))
            )
        if not decision.allowed:
            self.factory.stats.rate_limited += 1
            extra = [("Retry-After", str(max(1, math.ceil(decision.retry_after))))]
            if self.factory.rate_limit_headers:
                extra += [
                    ("RateLimit-Limit", str(decision.limit)),
                    ("RateLimit-Remaining", "0"),
                    ("RateLimit-Reset", str(math.ceil(decision.reset_after))),
                ]
            self._answer_early(429, "too many requests from this client", tuple(extra))
        else:
            self._choose_upstream()

    def _choose_upstream(self) -> None:
        """
        Pick a live upstream not tried yet for this request and get a
        connection to it. This is the one place that decides what happens
        when no upstream can take the request: 503 (with C{Retry-After}) if
        every upstream is down, 502 if the ones tried have all failed.
        """
        registry = self.factory.registry
        live = registry.live()
        candidates = [u for u in live if u not in self._tried] if self._tried else live
        if not candidates:
            if not live and not self._tried:
                self.factory.stats.no_upstream += 1
                self._answer_early(
                    503,
                    "no upstream server is available",
                    (("Retry-After", str(self.factory.retry_after)),),
                )
            else:
                self._answer_early(502, "every upstream server tried has failed")
            return
        upstream = self.factory.strategy.choose(candidates)
        self._set_upstream(upstream)
        request = self._request
        assert request is not None
        max_idle_age = None if self._replayable() else SAFE_REUSE_AGE
        self._state = "connect"
        connection = self.factory.pool.checkout(upstream, max_idle_age)
        if type(connection) is UpstreamConnection:
            self._connected(connection)
        else:
            assert isinstance(connection, Deferred)
            self._connecting = connection
            connection.addCallbacks(
                self._connected, self._connect_failed, errbackArgs=(upstream,)
            )

    def _replayable(self) -> bool:
        request = self._request
        assert request is not None
        return request.idempotent and self._replay is not None

    def _connected(self, connection: UpstreamConnection) -> None:
        if self._state != "connect":
            self.factory.pool.checkin(connection)
            return
        self._connecting = None
        request = self._request
        assert request is not None and self._upstream is not None
        self._state = "relay"
        self._connection = connection
        if self._writes_paused and connection.stream is not None:
            connection.stream.pauseProducing()
        if not self._upstream_head:
            self._upstream_head = request_head_for_upstream(
                request, self.client_ip, self._upstream.name
            )
        pending = self._pending_body
        if self._replay:
            # A retry: the body bytes sent on the failed attempt go first.
            pending = self._replay + pending
            self._replay = []
            self._replay_size = 0
        self._pending_body = []
        self._pending_size = 0
        parts = [self._upstream_head]
        for piece in pending:
            parts += self._frame_body_piece(piece)
        if self._request_done and request.body_kind == BODY_CHUNKED:
            parts.append(LAST_CHUNK)
        connection.send_request(self, request.method, b"".join(parts))
        if request.expect_continue and not self._continue_sent and not self._request_done:
            self._continue_sent = True
            self._out.append(CONTINUE)
        self._resume(_PAUSE_WAITING)
        timeouts = self.factory.timeouts
        self.deadline = self.factory.clock.seconds() + (
            timeouts.upstream if self._request_done else timeouts.client_body
        )
        if self._buffer and self._state == "relay":
            self._process()
        self.flush()

    def _connect_failed(self, reason: Failure, upstream: UpstreamState) -> None:
        if self._state != "connect" or reason.check(CancelledError):
            return
        self._connecting = None
        self._release_upstream()
        error = reason.value
        if isinstance(error, BalancerError):
            self._answer_early(error.status, error.reason)
            self.flush()
            return
        # Any other failure to connect (refused, timed out, unresolvable)
        # is a passive health check failure: fail over.
        self.factory.registry.mark_down(upstream, f"connect failed: {reason.getErrorMessage()}")
        self.factory.stats.connect_failures += 1
        self.log.warn(
            "connecting to {upstream} failed for {method} {path}: {reason}",
            upstream=upstream.name,
            method=self._method_text(),
            path=self._path_text(),
            reason=reason.getErrorMessage(),
        )
        self._tried.append(upstream)
        self._choose_upstream()
        self.flush()

    # Request body

    def _request_body_data(self, piece: bytes) -> None:
        if self._state == "discard":
            return
        max_body = self.factory.limits.max_body_size
        reader = self._request_reader
        if max_body is not None and reader is not None and reader.received > max_body:
            raise HTTPError(413, f"request body larger than {max_body} bytes")
        if self._connection is not None and self._state == "relay":
            self._send_body_piece(piece)
            return
        self._pending_body.append(piece)
        self._pending_size += len(piece)
        if self._pending_size > MAX_PENDING_BODY:
            self._pause(_PAUSE_WAITING)

    def _send_body_piece(self, piece: bytes) -> None:
        connection = self._connection
        assert connection is not None
        framed = self._frame_body_piece(piece)
        send_now(connection.stream, framed[0] if len(framed) == 1 else b"".join(framed))

    def _frame_body_piece(self, piece: bytes) -> list[bytes]:
        """
        Frame a piece of request body for the upstream hop, keeping a copy
        while the request is small enough to be replayed.
        """
        request = self._request
        assert request is not None
        if self._replay is not None:
            self._replay_size += len(piece)
            if self._replay_size > MAX_REPLAY_BODY:
                self._replay = None
            else:
                self._replay.append(piece)
        if request.body_kind == BODY_CHUNKED:
            return chunk(piece)
        return [piece]

    def _send_body_end(self) -> None:
        request = self._request
        connection = self._connection
        if request is not None and request.body_kind == BODY_CHUNKED and connection is not None:
            send_now(connection.stream, LAST_CHUNK)

    def _request_body_complete(self) -> None:
        self._request_done = True
        if self._state == "discard":
            self._state = "head"
            self._finish_exchange()
            return
        if self._connection is not None and self._state == "relay":
            self._send_body_end()
            if self._response is None:
                self.deadline = self.factory.clock.seconds() + self.factory.timeouts.upstream

    # Response relay (called by UpstreamConnection)

    def upstream_informational(self, response: ResponseHead) -> None:
        """
        Relay a 1xx (other than 100, which the balancer answers itself) to
        HTTP/1.1 clients.
        """
        request = self._request
        if response.status == 100 or request is None or request.minor == 0:
            return
        self._out.append(response_head_for_client(response, request.minor, True, False))

    def upstream_head(self, connection: UpstreamConnection, response: ResponseHead) -> None:
        """
        Send the response head to the client, re-framed for the client's hop.
        """
        request = self._request
        assert request is not None
        if response.status == 101:
            if request.upgrade is None:
                self._upstream_failure(connection, HTTPError(502, "unexpected 101 from upstream"))
                return
            self._response = response
            connection.start_tunnel()
            self._state = "tunnel"
            self.deadline = math.inf
            self._out.append(response_head_for_client(response, request.minor, True, False))
            self._resume(_PAUSE_PIPELINE | _PAUSE_WAITING)
            if self._buffer:
                data, self._buffer = self._buffer, b""
                self.dataReceived(data)
            return
        self._response = response
        self.factory.stats.count_status(response.status)
        keep_alive = self._keep_alive and self._request_done
        chunked = False
        if response.body_kind in (BODY_CHUNKED, BODY_UNTIL_CLOSE):
            if request.minor >= 1:
                chunked = True
            else:
                keep_alive = False
        self._keep_alive = keep_alive
        self._response_chunked = chunked
        head = response_head_for_client(response, request.minor, keep_alive, chunked)
        if self._rate_headers:
            head = head[:-2] + self._rate_headers + b"\r\n"
        self._out.append(head)
        self.deadline = self.factory.clock.seconds() + self.factory.timeouts.upstream

    def upstream_data(self, data: bytes) -> None:
        """
        Relay a piece of response body (or tunnel bytes).
        """
        if self._response_chunked and self._state != "tunnel":
            self._out += chunk(data)
        else:
            self._out.append(data)

    def upstream_complete(self, connection: UpstreamConnection) -> None:
        """
        The response is complete: end the client's framing, return the
        upstream connection, and go on to the next request.
        """
        if self._response_chunked:
            self._out.append(LAST_CHUNK)
        self._connection = None
        if not self._request_done:
            # The upstream answered before reading the whole request body:
            # neither connection is in a known state any more.
            connection.reusable = False
            self._keep_alive = False
        self.factory.pool.checkin(connection)
        self._finish_exchange()

    def upstream_failed(
        self, connection: UpstreamConnection, error: HTTPError | None, received_any: bool
    ) -> None:
        """
        The upstream connection failed before the response was complete.
        """
        self._upstream_failure(connection, error, received_any)

    def _upstream_failure(
        self, connection: UpstreamConnection, error: HTTPError | None, received_any: bool = True
    ) -> None:
        self._connection = None
        connection.close()
        if self._state == "closed":
            return
        upstream = self._upstream
        name = upstream.name if upstream is not None else "-"
        if self._state == "tunnel":
            self._release_upstream()
            self._close_after_write()
            return
        self.factory.stats.upstream_failures += 1
        if self._response is not None:
            self.log.warn(
                "upstream {upstream} failed mid-response to {method} {path}; aborting the client",
                upstream=name,
                method=self._method_text(),
                path=self._path_text(),
            )
            self._release_upstream()
            self.abort()
            return
        reason = error.reason if error is not None else "connection closed before a response"
        self.log.warn(
            "upstream {upstream} failed {method} {path}: {reason}",
            upstream=name,
            method=self._method_text(),
            path=self._path_text(),
            reason=reason,
        )
        reused = connection.requests > 1
        self._release_upstream()
        if not received_any and self._replayable() and self._request_done:
            if reused and not self._reused_retry:
                # The keep-alive race: the upstream closed an idle connection
                # as we reused it. Retry once on a fresh connection.
                self._reused_retry = True
                self.factory.stats.reuse_retries += 1
            elif upstream is not None:
                self._tried.append(upstream)
            self.factory.stats.retries += 1
            self._choose_upstream()
            return
        self._answer_early(502, "the upstream server failed to answer")

    # Flow control

    def pause_request_body(self) -> None:
        """
        The upstream's send buffer is full: stop reading the client.
        """
        self._pause(_PAUSE_UPSTREAM_FULL)

    def resume_request_body(self) -> None:
        """
        The upstream's send buffer drained: read the client again.
        """
        self._resume(_PAUSE_UPSTREAM_FULL)

    def _pause(self, reason: int) -> None:
        if not self._paused:
            self._stream.pauseProducing()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self._state != "closed":
            self._stream.resumeProducing()

    def pauseProducing(self) -> None:
        """
        The client's receive side is full: stop reading the upstream.
        """
        self._writes_paused = True
        connection = self._connection
        if connection is not None and connection.stream is not None:
            connection.stream.pauseProducing()
        if self._state == "relay":
            self.deadline = self.factory.clock.seconds() + self.factory.timeouts.client_idle

    def resumeProducing(self) -> None:
        """
        The client caught up: read the upstream again.
        """
        self._writes_paused = False
        connection = self._connection
        if connection is not None and connection.stream is not None:
            connection.stream.resumeProducing()
        if self._state == "relay":
            self.deadline = self.factory.clock.seconds() + self.factory.timeouts.upstream

    def stopProducing(self) -> None:
        """
        The client transport is going away; L{connectionLost} frees the rest.
        """

    # Deadlines

    def deadline_passed(self) -> None:
        """
        Act on a passed deadline according to the state.
        """
        state = self._state
        self.deadline = math.inf
        if state == "head":
            if self._head_started is not None or self._buffer:
                self._client_error(HTTPError(408, "request head not received in time"))
            else:
                self._stream.loseConnection()
                self._state = "closed"
            return
        if state == "discard":
            self.abort()
            return
        if state in ("relay", "connect", "limit") and self._response is None:
            if not self._request_done and state == "relay":
                self._client_error(HTTPError(408, "request body not received in time"))
                return
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()
            upstream = self._upstream
            self.log.warn(
                "upstream {upstream} timed out on {method} {path}",
                upstream=upstream.name if upstream is not None else "-",
                method=self._method_text(),
                path=self._path_text(),
            )
            self.factory.stats.upstream_timeouts += 1
            if self._connecting is not None:
                connecting, self._connecting = self._connecting, None
                connecting.cancel()
            # A pending rate-limit answer is ignored (see _rate_limit_answered).
            self._limiting = None
            self._release_upstream()
            self._answer_early(504, "the upstream server did not answer in time")
            return
        if state == "relay":
            self.log.warn(
                "response to {method} {path} stalled; aborting",
                method=self._method_text(),
                path=self._path_text(),
            )
            self.abort()

    # Ending requests

    def _answer_early(
        self, status: int, message: str, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """
        Answer the current request with a balancer-generated response, before
        any upstream response was relayed, and keep the connection when the
        request body can be skipped.
        """
        request = self._request
        assert request is not None
        self._state = "discard"
        self._resume(_PAUSE_WAITING | _PAUSE_UPSTREAM_FULL)
        if self._upstream is not None:
            self._release_upstream()
        keep_alive = self._keep_alive
        reader = self._request_reader
        if not self._request_done:
            too_big = reader is not None and (
                request.body_kind == BODY_CHUNKED or request.content_length > MAX_DISCARD_BODY
            )
            if too_big or (request.expect_continue and not self._continue_sent):
                keep_alive = False
        self._keep_alive = keep_alive
        self.factory.stats.count_status(status)
        self._log_request(status)
        self._out.append(error_response(status, message, keep_alive, extra))
        if not keep_alive:
            self._close_after_write()
            return
        self._response = None
        self.deadline = self.factory.clock.seconds() + self.factory.timeouts.client_body
        if self._request_done:
            self._state = "head"
            self._finish_exchange(logged=True)

    def _client_error(self, error: HTTPError) -> None:
        """
        Answer a malformed or over-limit request and close the connection.
        """
        self.factory.stats.client_errors += 1
        if self._state == "closed":
            return
        if self._response is not None:
            self.abort()
            return
        self.log.info(
            "bad request from {client}: {status} {reason}",
            client=self.client_ip,
            status=error.status,
            reason=error.reason,
        )
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        self._release_upstream()
        self.factory.stats.count_status(error.status)
        self._out.append(error_response(error.status, error.reason, False))
        self._close_after_write()

    def _close_after_write(self) -> None:
        self._state = "closed"
        self._buffer = b""
        self.deadline = math.inf
        self.flush()
        self._stream.loseConnection()

    def _finish_exchange(self, logged: bool = False) -> None:
        if not logged and self._response is not None:
            self._log_request(self._response.status)
        self._release_upstream()
        self._request = None
        self._request_reader = None
        self._response = None
        self._response_chunked = False
        self._upstream_head = b""
        self._pending_body = []
        self._replay = []
        if self._state == "closed":
            return
        if not self._keep_alive or (self._client_eof and not self._buffer):
            self._close_after_write()
            return
        self._state = "head"
        self.deadline = self.factory.clock.seconds() + self.factory.timeouts.client_idle
        self._resume(_PAUSE_PIPELINE | _PAUSE_WAITING | _PAUSE_UPSTREAM_FULL)
        if self._buffer:
            self._process()
        if self._client_eof and self._state == "head" and self._request is None:
            # Whatever is left can never become a request.
            self._close_after_write()

    def _set_upstream(self, upstream: UpstreamState) -> None:
        self._upstream = upstream
        upstream.in_flight += 1

    def _release_upstream(self) -> None:
        upstream = self._upstream
        if upstream is not None:
            upstream.in_flight -= 1
            self._upstream = None
            self._upstream_head = b""
            self._last_upstream = upstream.name

    def _log_request(self, status: int) -> None:
        if not self.factory.access_log:
            return
        upstream = self._upstream.name if self._upstream is not None else getattr(
            self, "_last_upstream", "-"
        )
        self.log.info(
            '{client} "{method} {path}" {status} upstream={upstream} {latency_ms:.1f}ms',
            client=self.client_ip,
            method=self._method_text(),
            path=self._path_text(),
            status=status,
            upstream=upstream,
            latency_ms=(self.factory.clock.seconds() - self._request_started) * 1000,
        )

    def _method_text(self) -> str:
        request = self._request
        return request.method.decode("latin-1") if request is not None else "-"

    def _path_text(self) -> str:
        request = self._request
        return request.target.decode("latin-1") if request is not None else "-"


class _OverCapacity(Protocol):
    """
    Answers 503 to a connection beyond the connection limit, and closes it.
    """

    def __init__(self, retry_after: int) -> None:
        self._retry_after = retry_after

    def connectionMade(self) -> None:
        """
        Answer and close at once, without reading the request.
        """
        transport = cast(StreamTransport, self.transport)
        transport.write(
            error_response(
                503,
                "too many client connections",
                False,
                (("Retry-After", str(self._retry_after)),),
            )
        )
        transport.loseConnection()
