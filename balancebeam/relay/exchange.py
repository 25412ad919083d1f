"""
One request's life: the L{Exchange}.

An exchange is made when a request head has been parsed and dropped when its
response is complete, so nothing is reset by hand between requests. It holds
what belongs to one request: the head, the body (L{RequestBody}), the
upstreams tried, the response being relayed, and the state that names the
current deadline (L{balancebeam.relay.states.ExchangeState}).

Its life, in order:
  1. the request filters are asked (L{balancebeam.relay.filtering.FilterChain}); one
     may answer, or attach response observers;
  2. the dispatcher (L{balancebeam.routing.Dispatcher}) finds a connection;
  3. the request goes upstream, its body streamed as it arrives;
  4. the response comes back through L{IResponseSink}, re-framed for the
     client and shown to the observers as it passes;
  5. the exchange tells its client side it is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from twisted.internet.defer import Deferred
from zope.interface import classImplements

from balancebeam.cache.interfaces import IResendable
from balancebeam.filters import Answer
from balancebeam.http1.framing import LAST_CHUNK, BodyReader, forwardable_trailers, last_chunk
from balancebeam.http1.heads import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_UNTIL_CLOSE,
    CRLF,
    HTTPError,
    ResponseHead,
)
from balancebeam.http1.rewrite import (
    request_head_for_upstream,
    response_head_for_client,
)
from balancebeam.relay.exchange_core import CONTINUE
from balancebeam.relay.exchange_events import ExchangeEvents
from balancebeam.relay.interfaces import IResponseSink
from balancebeam.relay.states import PAUSE_UPSTREAM_FULL, PAUSE_WAITING, ExchangeState

if TYPE_CHECKING:
    from balancebeam.relay.upstream import UpstreamConnection

#: Request body bytes held while no upstream connection is ready yet.
MAX_PENDING_BODY: Final = 64 * 1024

_FILTERING: Final = ExchangeState.FILTERING
_CONNECTING: Final = ExchangeState.CONNECTING
_SENDING: Final = ExchangeState.SENDING
_SEND_BLOCKED: Final = ExchangeState.SEND_BLOCKED
_WAITING: Final = ExchangeState.WAITING
_RECEIVING: Final = ExchangeState.RECEIVING
_RECEIVE_BLOCKED: Final = ExchangeState.RECEIVE_BLOCKED
_TUNNEL: Final = ExchangeState.TUNNEL
_DISCARDING: Final = ExchangeState.DISCARDING
_SUBSTITUTING: Final = ExchangeState.SUBSTITUTING
_DONE: Final = ExchangeState.DONE


class Exchange(ExchangeEvents):
    """
    One request, from its parsed head to the end of its response: the flow
    through filters, dispatch, the request body and the upstream's answer.
    The state it works on, and its endings, are L{ExchangeCore}'s; what the
    client side and the clock do to it, L{ExchangeEvents}'.
    """

    __slots__ = ()

    # From the filters to an upstream

    def start(self) -> None:
        """
        Ask the filters, then dispatch.

        @raise HTTPError: 413 when the announced body is over the limit (the
            client connection answers it and closes).
        """
        request = self.request
        max_body = self.relay.limits.max_body_size
        if (
            max_body is not None
            and request.body_kind == BODY_LENGTH
            and request.content_length > max_body
        ):
            raise HTTPError(413, f"request body larger than {max_body} bytes")
        filters = self.relay.filters
        if filters is not None:
            filters.run(self)
        else:
            self.filters_passed()

    def wait_for_filter(self, deciding: Deferred[Answer | None]) -> None:
        """
        A filter decides later: wait for C{deciding}, within the deadline.
        """
        self._filtering = deciding
        self._enter(_FILTERING)

    def filter_settled(self, deciding: Deferred[Answer | None]) -> bool:
        """
        A filter's decision arrived: whether the exchange still waits for it.
        """
        if self._filtering is not deciding or self.state != _FILTERING:
            return False
        self._filtering = None
        return True

    def filters_passed(self) -> None:
        """
        Every filter let the request pass: find it an upstream.
        """
        self.state = _CONNECTING
        self.relay.dispatcher.dispatch(self)
        if self.state == _CONNECTING and self.connecting is not None:
            self._touch()

    def connected(self, connection: UpstreamConnection) -> bool:
        """
        The dispatcher found a connection: send the head and the body so far.

        @return: whether the connection was taken (else the caller gives it back).
        """
        if self.state != _CONNECTING:
            return False
        upstream = self.upstream
        assert upstream is not None
        request = self.request
        client = self.client
        self.connection = connection
        head = self._upstream_head
        if head is None:
            removed, added = self._rewrite or (frozenset(), b"")
            head = self._upstream_head = request_head_for_upstream(
                request, client.client_ip, upstream.name, client.scheme, removed, added
            )
        body = self.body
        done = self.request_done
        # _enter, inlined: once per request.
        state = self.state = _WAITING if done else _SENDING
        relay = self.relay
        client.deadline = relay.clock.seconds() + relay.deadlines[state]
        if body is None:
            connection.send_request(self, request.method, head)
            return True
        connection.send_request(self, request.method, head + body.release())
        if request.expect_continue and not body.continue_sent and not done:
            body.continue_sent = True
            client.write(CONTINUE)
        client.resume_reading(PAUSE_WAITING)
        if client.writes_paused:
            connection.stream.pauseProducing()
        return True

    def send_again(self, remove: Sequence[bytes]) -> bool:
        """
        From an observer's C{response_head}: drop this response and send the
        request again, without the fields named in C{remove} (L{IResendable}).
        """
        if (
            self.state != _WAITING
            or self._resend
            or not self.request_done
            or not self.replayable
        ):
            return False
        self.rewrite_upstream_request(remove)
        self._resend = 1
        return True

    def _send_now(self) -> None:
        """
        The response an observer dropped is over (or failed): send the
        request again, to whichever upstream the dispatcher picks.
        """
        self._resend = 2
        self.relay.dispatcher.release(self)
        self.filters_passed()

    def dispatch_failed(
        self, status: int, message: str, fields: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """
        No upstream can take the request (503, 502), or the queue for one
        timed out: answer with C{status}.
        """
        self._fail(status, message, fields)

    def flush(self) -> None:
        """
        Send what was written to the client.
        """
        self.client.flush()

    # The request body

    def body_received(self, data: bytes) -> int:
        """
        Feed client bytes to the request body reader.

        @return: how many bytes of C{data} belonged to the body.
        @raise HTTPError: on bad framing or a body over the size limit.
        """
        reader = self.reader
        assert reader is not None
        consumed = reader.feed(data)
        if reader.done:
            self._body_complete(reader)
        return consumed

    def _body_piece(self, piece: bytes) -> None:
        state = self.state
        if state == _DISCARDING:
            self._touch()
            return
        max_body = self.relay.limits.max_body_size
        reader = self.reader
        if max_body is not None and reader is not None and reader.received > max_body:
            raise HTTPError(413, f"request body larger than {max_body} bytes")
        body = self.body
        assert body is not None
        connection = self.connection
        if connection is not None:
            connection.send(body.frame(piece))
            if state == _SENDING:
                self._touch()
            return
        held = body.hold(piece)
        if held > MAX_PENDING_BODY and held > body.hold_limit:
            self.client.pause_reading(PAUSE_WAITING)

    def _body_complete(self, reader: BodyReader) -> None:
        self.reader = None
        self.request_done = True
        body = self.body
        assert body is not None
        body.finished(reader.trailers)
        state = self.state
        if state == _DISCARDING:
            self._finish()
            return
        connection = self.connection
        if connection is not None:
            if body.chunked:
                connection.send(body.end())
            if state == _SENDING or state == _SEND_BLOCKED:
                self._enter(_WAITING)

    # IResponseSink: the upstream's answer

    def upstream_informational(self, response: ResponseHead) -> None:
        """
        Relay a 1xx (other than 100, which the balancer answers itself) to
        HTTP/1.1 clients.
        """
        if self.state == _WAITING:
            self._touch()
        if response.status != 100 and self.request.minor >= 1:
            self.client.write(
                response_head_for_client(response, self.request.minor, True, False)
            )
            self.relay.stats.by_class[1] += 1
            upstream = self.upstream
            if upstream is not None:
                upstream.responses[1] += 1

    def upstream_head(self, connection: UpstreamConnection, response: ResponseHead) -> None:
        """
        Send the response head to the client, re-framed for the client's hop
        (or become a tunnel after a 101).
        """
        request = self.request
        client = self.client
        if response.status == 101:
            self._switch_protocols(connection, response)
            return
        observers = self._observers
        if observers is not None:
            for observer in observers:
                answer = observer.response_head(response)
                if answer is not None:
                    observers.remove(observer)
                    self._observers_failed("the response was replaced")
                    self._enter(_SUBSTITUTING)
                    self._write_answer(answer)
                    return
                if self._resend == 1:
                    # The observer asked for the request to be sent again
                    # (send_again): drop this response, then send it.
                    self._enter(_SUBSTITUTING)
                    return
        self.response = response
        # A parsed status has three digits, the first not 0 (Stats.count_status
        # inlined: once per request).
        status_class = response.status // 100
        self.relay.stats.by_class[status_class] += 1
        upstream = self.upstream
        if upstream is not None:
            upstream.responses[status_class] += 1
        keep_alive = self.keep_alive and self.request_done
        chunked = False
        kind = response.body_kind
        if kind == BODY_CHUNKED or kind == BODY_UNTIL_CLOSE:
            if request.minor >= 1:
                chunked = True
            else:
                keep_alive = False
        self.keep_alive = keep_alive
        self._chunked = chunked
        relay = self.relay
        head = response_head_for_client(
            response, request.minor, keep_alive, chunked,
            b"" if response.has_date else relay.date.line(),
        )
        if self._extra:
            head = head[:-2] + self._extra + CRLF
        # _enter, inlined: once per request.
        state = self.state = _RECEIVE_BLOCKED if client.writes_paused else _RECEIVING
        client.deadline = relay.clock.seconds() + relay.deadlines[state]
        client.write(head)

    def _switch_protocols(self, connection: UpstreamConnection, response: ResponseHead) -> None:
        if self.request.upgrade is None:
            connection.close()
            self.upstream_failed(connection, HTTPError(502, "unexpected 101"), True)
            return
        self._observers_failed("the connection switched protocols")
        self.response = response
        connection.start_tunnel()
        self.relay.stats.count_status(101)
        self._log(101)
        self._enter(_TUNNEL)
        self.client.write(response_head_for_client(response, self.request.minor, True, False))
        self.client.start_tunnel()

    def upstream_data(self, data: bytes) -> None:
        """
        Relay a piece of response body (or tunnel bytes).
        """
        state = self.state
        if state == _RECEIVING or state == _RECEIVE_BLOCKED:
            observers = self._observers
            if observers is not None:
                for observer in observers:
                    observer.response_body(data)
            client = self.client
            if self._chunked:
                client.write(b"%x\r\n" % len(data))
                client.write(data)
                client.write(CRLF)
            else:
                client.write(data)
            if state == _RECEIVING:
                # _touch, inlined: once per piece of body.
                relay = self.relay
                client.deadline = relay.clock.seconds() + relay.deadlines[state]
        elif state == _TUNNEL:
            self.client.write(data)
            self._touch()
        elif state == _SUBSTITUTING:
            self._touch()

    def upstream_complete(self, connection: UpstreamConnection, trailers: bytes) -> None:
        """
        The response is complete: end the client's framing, give the
        connection back, and let the client connection go on.
        """
        self.connection = None
        if self.state != _SUBSTITUTING:
            if self._chunked:
                self.client.write(
                    last_chunk(forwardable_trailers(trailers)) if trailers else LAST_CHUNK
                )
            observers = self._observers
            if observers is not None:
                self._observers = None
                for observer in observers:
                    observer.response_complete()
            if not self.request_done:
                # The upstream answered before reading the whole request
                # body: neither connection is in a known state any more.
                connection.reusable = False
                self.keep_alive = False
        self.relay.dispatcher.checkin(connection)
        if self._resend == 1:
            self._send_now()
            return
        self._finish()

    def upstream_failed(
        self, connection: UpstreamConnection, error: HTTPError | None, received_any: bool
    ) -> None:
        """
        The upstream connection failed before the response was complete:
        send the request again, answer 502, or cut the client when part of a
        response was sent already.
        """
        self.connection = None
        connection.close()
        state = self.state
        if state == _DONE:
            return
        if state == _SUBSTITUTING and self._resend == 1:
            # The response being dropped failed: the request goes again anyway.
            self._send_now()
            return
        if state == _TUNNEL or state == _SUBSTITUTING:
            self.keep_alive = self.keep_alive and state == _SUBSTITUTING
            self._finish()
            return
        relay = self.relay
        relay.stats.upstream_failures += 1
        if self.upstream is not None:
            self.upstream.response_errors += 1
        name = self.upstream.name if self.upstream is not None else self.last_upstream
        if self.response is not None:
            self.log.warn(
                "upstream {upstream} failed mid-response to {method} {path}; aborting the client",
                upstream=name,
                method=self.method_text,
                path=self.path_text,
            )
            self._abort("the upstream failed mid-response")
            return
        self.log.warn(
            "upstream {upstream} failed {method} {path}: {reason}",
            upstream=name,
            method=self.method_text,
            path=self.path_text,
            reason=error.reason if error is not None else "connection closed before a response",
        )
        if relay.dispatcher.upstream_failed(self, connection, received_any):
            self.filters_passed()
            return
        self._fail(502, "the upstream server failed to answer")

    def pause_request_body(self) -> None:
        """
        The upstream is not taking the request body: stop reading the client.
        """
        self.client.pause_reading(PAUSE_UPSTREAM_FULL)
        if self.state == _SENDING:
            self._enter(_SEND_BLOCKED)
            if self.connection is not None:
                self._progress = self.relay.progress(self.connection)

    def resume_request_body(self) -> None:
        """
        The upstream takes the request body again.
        """
        self.client.resume_reading(PAUSE_UPSTREAM_FULL)
        if self.state == _SEND_BLOCKED:
            self._enter(_SENDING)


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(Exchange, IResponseSink, IResendable)
