"""
What an exchange holds, and how it answers and ends (L{ExchangeCore}).

The flow of a request through an exchange is in
L{balancebeam.relay.exchange}; this module holds the per-request state it
works on (in C{__slots__}, one assignment each per request), what request
filters may do to it (L{IExchange}), and the endings every path shares:
answering with a response made by the balancer, finishing, cutting the
client, and stopping the work done upstream.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Final

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import classImplements

from balancebeam.filters import Answer, text_answer
from balancebeam.http1.framing import BodyReader
from balancebeam.http1.heads import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    CRLF,
    IDEMPOTENT_METHODS,
    RequestHead,
    ResponseHead,
)
from balancebeam.http1.rewrite import render_response
from balancebeam.interfaces import IExchange, IResponseObserver
from balancebeam.relay.body import RequestBody
from balancebeam.relay.interfaces import IClientSide
from balancebeam.relay.states import PAUSE_WAITING, ExchangeState
from balancebeam.stats import DURATION_BOUNDS

if TYPE_CHECKING:
    from balancebeam.registry import UpstreamState
    from balancebeam.relay.settings import RelaySettings
    from balancebeam.relay.upstream import UpstreamConnection

#: A body answered early (429, 503, ...) is read and dropped up to this size;
#: beyond it the connection is closed instead.
MAX_DISCARD_BODY: Final = 1024 * 1024

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

_FILTERING: Final = ExchangeState.FILTERING
_RECEIVING: Final = ExchangeState.RECEIVING
_RECEIVE_BLOCKED: Final = ExchangeState.RECEIVE_BLOCKED
_DISCARDING: Final = ExchangeState.DISCARDING
_DONE: Final = ExchangeState.DONE


class ExchangeCore:
    """
    The state of one request, and the endings its flow shares.

    @ivar request: the parsed request head.
    @ivar client: where the response goes (L{IClientSide}).
    @ivar client_ip: the client's address (L{IExchange.client_ip}).
    @ivar relay: the settings this exchange started with (L{RelaySettings}).
    @ivar started: clock time the head was parsed.
    @ivar number: the request's number in this process (its id).
    @ivar state: an L{ExchangeState}, naming the deadline that applies.
    @ivar keep_alive: whether the client connection may carry another request.
    @ivar request_done: whether the whole request body has been received.
    @ivar reader: the body reader while the request body is incomplete.
    @ivar body: the request body's upstream-bound state, or C{None} for none.
    @ivar upstream: the upstream assigned now, or C{None}.
    @ivar last_upstream: the name of the last upstream assigned, for logs.
    @ivar connection: the upstream connection carrying the request, or C{None}.
    @ivar connecting: the dispatcher's pending connection, or C{None}.
    @ivar tried: the upstreams that failed this request, or C{None}.
    @ivar reused_retry: whether the one retry after a keep-alive race was used.
    @ivar response: the upstream response head being relayed, or C{None}.
    @ivar _resend: C{0}; C{1} once an observer asked for the request to be
        sent again instead of the response being dropped (L{IResendable});
        C{2} once it was sent again (only once).
    @ivar _progress: the bytes the blocked side's peer had acknowledged when
        the exchange last blocked on it or last checked (C{-1}: unknown).
    """

    __slots__ = (
        "request",
        "client",
        "client_ip",
        "relay",
        "started",
        "number",
        "state",
        "keep_alive",
        "request_done",
        "reader",
        "body",
        "upstream",
        "last_upstream",
        "connection",
        "connecting",
        "tried",
        "reused_retry",
        "response",
        "_chunked",
        "_extra",
        "_observers",
        "_filtering",
        "_upstream_head",
        "_rewrite",
        "_resend",
        "_progress",
    )

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too

    def __init__(
        self,
        client: IClientSide,
        relay: RelaySettings,
        request: RequestHead,
        started: float,
        number: int,
    ) -> None:
        self.request = request
        self.client = client
        self.client_ip = client.client_ip
        self.relay = relay
        self.started = started
        self.number = number
        self.state = _FILTERING
        self.keep_alive = request.keep_alive
        kind = request.body_kind
        if kind == BODY_NONE:
            self.request_done = True
            self.reader: BodyReader | None = None
            self.body: RequestBody | None = None
        else:
            self.request_done = False
            self.reader = BodyReader(kind, request.content_length, self._body_piece)
            self.body = RequestBody(kind == BODY_CHUNKED, request.idempotent)
        self.upstream: UpstreamState | None = None
        self.last_upstream = "-"
        self.connection: UpstreamConnection | None = None
        self.connecting: Deferred[UpstreamConnection] | None = None
        self.tried: list[UpstreamState] | None = None
        self.reused_retry = False
        self.response: ResponseHead | None = None
        self._chunked = False
        self._extra = b""
        self._observers: list[IResponseObserver] | None = None
        self._filtering: Deferred[Answer | None] | None = None
        self._upstream_head: bytes | None = None
        self._rewrite: tuple[frozenset[bytes], bytes] | None = None
        self._resend = 0
        self._progress = -1

    def __repr__(self) -> str:
        return f"<Exchange {self.request_id} {self.method_text} {self.path_text} {self.state!r}>"

    # What filters, the dispatcher and logs read

    @property
    def scheme(self) -> bytes:
        """
        C{b"http"} or C{b"https"} (L{IExchange.scheme}).
        """
        return self.client.scheme

    @property
    def request_id(self) -> str:
        """
        The process's tag and the request's number in this process, in
        hexadecimal (C{9b1e07c2-3f}; see L{Stats.request_id_prefix
        <balancebeam.stats.Stats.request_id_prefix>}).
        """
        return f"{self.relay.stats.request_id_prefix}{self.number:x}"

    @property
    def method_text(self) -> str:
        """
        The method, for logs.
        """
        return self.request.method.decode("latin-1")

    @property
    def path_text(self) -> str:
        """
        The request target, for logs.
        """
        return self.request.target.decode("latin-1")

    @property
    def replayable(self) -> bool:
        """
        Whether the request may be sent again: idempotent, with its body (if
        any) still held in full.
        """
        body = self.body
        if body is not None:
            return body.replayable
        request = self.request
        return request.method in IDEMPOTENT_METHODS or request.idempotent

    def add_tried(self, upstream: UpstreamState) -> None:
        """
        Remember that C{upstream} failed this request.
        """
        if self.tried is None:
            self.tried = [upstream]
        else:
            self.tried.append(upstream)

    # IExchange: what request filters may do

    def add_response_headers(self, lines: bytes) -> None:
        """
        Add header lines (each ending with CRLF) to the response sent.
        """
        self._extra += lines

    def observe(self, observer: IResponseObserver) -> None:
        """
        Let C{observer} see the upstream response.
        """
        if self._observers is None:
            self._observers = [observer]
        else:
            self._observers.append(observer)

    def rewrite_upstream_request(
        self, remove: Iterable[bytes] = (), add: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """
        Drop the fields named in C{remove} from the head sent upstream (the
        client's, and those added by earlier calls) and append the fields
        of C{add}.
        """
        removed, added = self._rewrite or (frozenset(), b"")
        names = frozenset(name.lower() for name in remove)
        if added and names:
            added = b"".join(
                line + CRLF
                for line in added.split(CRLF)
                if line and line.split(b":", 1)[0].lower() not in names
            )
        removed = removed | names
        added += b"".join(name + b": " + value + CRLF for name, value in add)
        self._rewrite = (removed, added)
        self._upstream_head = None

    def read_body(self, limit: int) -> Deferred[bytes | None]:
        """
        Hold the request body until it is complete (L{IExchange.read_body}).
        """
        body = self.body
        if body is None:
            return succeed(b"")
        request = self.request
        announced = request.content_length if request.body_kind == BODY_LENGTH else None
        waiting = body.wait_whole(limit, announced)
        if not waiting.called:
            if request.expect_continue and not body.continue_sent:
                body.continue_sent = True
                self.client.write(CONTINUE)
            self.client.resume_reading(PAUSE_WAITING)
        return waiting

    def _body_piece(self, piece: bytes) -> None:
        """
        A piece of the request body, de-chunked (the flow's business: see
        L{balancebeam.relay.exchange.Exchange}).
        """
        raise NotImplementedError

    # Answers

    def answer(self, answer: Answer) -> None:
        """
        Answer with a response made by the balancer (a filter's answer);
        nothing of an upstream response was sent.
        """
        self._observers_failed("the balancer answered the request")
        self._stop_upstream()
        self._send_answer(answer)

    def _fail(self, status: int, message: str, fields: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """
        Answer C{status}: no upstream response will come. An observer may
        have a response to send instead (a stale one, on error).
        """
        answer = None
        observers = self._observers
        if observers is not None:
            self._observers = None
            for observer in observers:
                substitute = observer.response_failed(message)
                if answer is None and substitute is not None:
                    answer = substitute
        self._stop_upstream()
        self._send_answer(answer if answer is not None else text_answer(status, message, fields))

    def _send_answer(self, answer: Answer) -> None:
        self._write_answer(answer)
        if not self.keep_alive or self.request_done:
            self._finish(logged=True)
        else:
            self._enter(_DISCARDING)

    def _write_answer(self, answer: Answer) -> None:
        """
        Write C{answer}, keeping the connection only when the rest of the
        request body can be skipped.
        """
        request = self.request
        keep_alive = self.keep_alive
        body = self.body
        if body is not None and not self.request_done:
            too_big = body.chunked or request.content_length > MAX_DISCARD_BODY
            if too_big or (request.expect_continue and not body.continue_sent):
                keep_alive = False
        self.keep_alive = keep_alive
        status = answer.status
        self.relay.stats.count_status(status)
        self._log(status)
        head_only = request.method == b"HEAD"
        self.client.write(
            render_response(
                status, answer.reason, answer.fields, answer.body, keep_alive, head_only,
                self._extra, self.relay.date.line(),
            )
        )

    # Endings

    def _finish(self, logged: bool = False) -> None:
        """
        The exchange is over: log it, free the upstream, let the client
        connection go on.
        """
        if self.state == _DONE:
            return
        response = self.response
        relay = self.relay
        if relay.access_log and not logged and response is not None and response.status != 101:
            self._log(response.status)
        if response is None or response.status != 101:
            # Stats.count_duration, inlined: this runs once per request.
            stats = relay.stats
            elapsed = relay.clock.seconds() - self.started
            stats.durations[bisect_left(DURATION_BOUNDS, elapsed)] += 1
            stats.duration_sum += elapsed
        relay.dispatcher.release(self)
        self.state = _DONE
        self.client.exchange_done(self, self.keep_alive)

    def _abort(self, reason: str) -> None:
        """
        Cut the client: a response was started and cannot be completed.
        """
        if self.state == _RECEIVING or self.state == _RECEIVE_BLOCKED:
            self._log_incomplete(reason)
        self._stop(reason)
        self.state = _DONE
        self.client.abort()

    def _stop(self, reason: str) -> None:
        """
        Tell the observers no response will complete; stop all work on the
        upstream side.
        """
        self._observers_failed(reason)
        self._stop_upstream()
        if self.body is not None:
            self.body.cancel_wait()

    def _stop_upstream(self) -> None:
        filtering = self._filtering
        if filtering is not None:
            self._filtering = None
            filtering.cancel()
        connecting = self.connecting
        if connecting is not None:
            self.connecting = None
            connecting.cancel()
        connection = self.connection
        if connection is not None:
            self.connection = None
            connection.close()
        self.relay.dispatcher.release(self)

    def _observers_failed(self, reason: str) -> None:
        observers = self._observers
        if observers is not None:
            self._observers = None
            for observer in observers:
                observer.response_failed(reason)

    # Deadlines and logs

    def _enter(self, state: ExchangeState) -> None:
        """
        Enter C{state} and start its deadline.
        """
        self.state = state
        relay = self.relay
        self.client.deadline = relay.clock.seconds() + relay.deadlines[state]

    def _touch(self) -> None:
        """
        Activity in the current state: its deadline starts again.
        """
        relay = self.relay
        self.client.deadline = relay.clock.seconds() + relay.deadlines[self.state]

    def _log_incomplete(self, reason: str) -> None:
        """
        A request ends without a whole response (cut mid-body, or its
        client went away): count its duration, and log it with the status
        begun, or C{499} (nginx's "client closed request") when none was.
        """
        relay = self.relay
        stats = relay.stats
        elapsed = relay.clock.seconds() - self.started
        stats.durations[bisect_left(DURATION_BOUNDS, elapsed)] += 1
        stats.duration_sum += elapsed
        response = self.response
        self._log(response.status if response is not None else 499, reason)

    def log_client_error(self, status: int, started: bool) -> None:
        """
        Log this request in the access log once the client connection has
        answered C{status} for an error of the client's own (a body too
        large or too slow), or, when a response had C{started}, cut it
        (logged as any response cut, L{_log_incomplete}).
        """
        if started:
            self._log_incomplete("the request was malformed or too slow")
        else:
            self._log(status)

    def _log(self, status: int, incomplete: str = "") -> None:
        relay = self.relay
        if not relay.access_log:
            return
        upstream = self.upstream.name if self.upstream is not None else self.last_upstream
        self.log.info(
            '{client} "{method} {path}" {status} upstream={upstream} {latency_ms:.1f}ms'
            "{incomplete_note}",
            client=self.client.client_ip,
            method=self.method_text,
            path=log_safe(self.request.target),
            status=status,
            upstream=upstream,
            latency_ms=(relay.clock.seconds() - self.started) * 1000,
            request_id=self.request_id,
            incomplete=incomplete or None,
            incomplete_note=f" incomplete: {incomplete}" if incomplete else "",
        )


_LOG_UNSAFE: Final = re.compile(rb"[^\x21\x23-\x5b\x5d-\x7e]")
"""Bytes a request target shows escaped in the access log: all but printable
ASCII, and the quote and backslash that would let a target forge a line."""


def log_safe(raw: bytes) -> str:
    """
    C{raw} for a log line: printable ASCII as is, every other byte (and
    C{"} and C{\\}) as C{\\xHH}, as nginx writes its access log.
    """
    if _LOG_UNSAFE.search(raw) is None:
        return raw.decode("ascii")
    return _LOG_UNSAFE.sub(_escape_byte, raw).decode("ascii")


def _escape_byte(match: re.Match[bytes]) -> bytes:
    return b"\\x%02x" % match.group()[0]


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(ExchangeCore, IExchange)

