"""
What the client side and the clock do to an exchange (L{ExchangeEvents}):
flow control from the client, tunnel bytes, a half-close, the drain, the
client leaving (and a fill going on without it), and the deadline of the
current state passing. The request's own flow is in
L{balancebeam.relay.exchange}; its state and endings in
L{balancebeam.relay.exchange_core}.
"""

from __future__ import annotations

from typing import Final

from balancebeam.http1.heads import HTTPError
from balancebeam.relay.detached import DetachedClient
from balancebeam.relay.exchange_core import ExchangeCore
from balancebeam.relay.states import ExchangeState

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


class ExchangeEvents(ExchangeCore):
    """
    The events that reach an exchange from its client side and the clock.
    """

    __slots__ = ()

    # Events from the client side

    def client_write_paused(self) -> None:
        """
        The client's receive side is full: stop reading the upstream.
        """
        connection = self.connection
        if connection is not None:
            connection.stream.pauseProducing()
        if self.state == _RECEIVING:
            self._enter(_RECEIVE_BLOCKED)
            self._progress = self.relay.progress(self.client)

    def client_write_resumed(self) -> None:
        """
        The client caught up: read the upstream again.
        """
        connection = self.connection
        if connection is not None:
            connection.stream.resumeProducing()
        if self.state == _RECEIVE_BLOCKED:
            self._enter(_RECEIVING)

    def tunnel_data(self, data: bytes) -> None:
        """
        Client bytes for the other end of the tunnel.
        """
        connection = self.connection
        if connection is not None:
            connection.send(data)
        self._touch()

    def client_half_closed(self) -> None:
        """
        The client finished sending, inside a tunnel: pass it on.
        """
        if self.connection is not None and self.state == _TUNNEL:
            self.connection.half_close()

    def drain(self) -> None:
        """
        The balancer is stopping: no further request on this connection,
        and a tunnel is closed now.
        """
        self.keep_alive = False
        if self.state == _TUNNEL:
            self.client.close()

    def client_gone(self) -> None:
        """
        The client connection is gone: stop everything done on its behalf,
        unless an observer wants the rest of the response anyway.
        """
        state = self.state
        if state == _DONE:
            return
        observers = self._observers
        if (
            observers is not None
            and self.request_done
            and _CONNECTING <= state <= _RECEIVE_BLOCKED
            and any([observer.continue_without_client() for observer in observers])
        ):
            self._detach()
            return
        if state == _TUNNEL:
            connection, self.connection = self.connection, None
            if connection is not None:
                connection.finish_tunnel()
        elif state <= _RECEIVE_BLOCKED:
            self._log_incomplete("the client went away")
        self._stop("the client went away")
        self.state = _DONE

    def deadline_passed(self) -> None:
        """
        Act on the deadline of the current state.

        @raise HTTPError: 408 when the client stopped sending the request
            body (the client connection answers it and closes).
        """
        state = self.state
        if (state == _RECEIVE_BLOCKED or state == _SEND_BLOCKED) and self._peer_reads():
            self._touch()
            return
        if state == _SENDING:
            raise HTTPError(408, "request body not received in time")
        if state <= _WAITING:
            self.log.warn(
                "upstream {upstream} timed out on {method} {path}",
                upstream=self.upstream.name if self.upstream is not None else self.last_upstream,
                method=self.method_text,
                path=self.path_text,
            )
            self.relay.stats.upstream_timeouts += 1
            if self.upstream is not None:
                self.upstream.timeouts += 1
            self._fail(504, "the upstream server did not answer in time")
        elif state == _RECEIVING or state == _RECEIVE_BLOCKED:
            stalled = "the upstream stalled"
            if state == _RECEIVE_BLOCKED:
                stalled = "the client stopped reading"
            self.log.warn(
                "response to {method} {path} cut: {reason}",
                method=self.method_text,
                path=self.path_text,
                reason=stalled,
            )
            self._abort(stalled)
        elif state == _SUBSTITUTING and self._resend == 1:
            self._resend = 2
            self.relay.stats.upstream_timeouts += 1
            self._fail(504, "the upstream server did not answer in time")
        elif state == _TUNNEL or state == _SUBSTITUTING:
            if state == _TUNNEL:
                self.log.info(
                    "closing the tunnel of {method} {path}: idle for {seconds} s",
                    method=self.method_text,
                    path=self.path_text,
                    seconds=self.relay.timeouts.tunnel_idle,
                )
                self.keep_alive = False
            connection, self.connection = self.connection, None
            if connection is not None:
                connection.close()
            self._finish()
        elif state == _DISCARDING:
            self.state = _DONE
            self.client.abort()

    def _peer_reads(self) -> bool:
        """
        Whether the side this exchange is blocked on (the client when it
        is not reading the response, the upstream when it is not taking the
        request body) acknowledged bytes since the exchange blocked or last
        asked: it reads, slowly, and is not cut for it.
        """
        peer: object = self.client if self.state == _RECEIVE_BLOCKED else self.connection
        if peer is None:
            return False
        before = self._progress
        self._progress = acked = self.relay.progress(peer)
        return before >= 0 and acked > before

    def abandon(self) -> bool:
        """
        The client connection answers an error of its own (a malformed or
        too slow body): stop everything.

        @return: whether part of a response was sent already, in which case
            the client must be cut rather than answered.
        """
        started = self.response is not None or (
            self.state == _SUBSTITUTING and self._resend != 1
        )
        self._stop("the request was malformed or too slow")
        self.state = _DONE
        return started

    def _detach(self) -> None:
        """
        Go on with the request for the observers, without a client: still
        connecting, waiting for the head, or reading the body.
        """
        detached = DetachedClient(self.relay.detached, self.client.client_ip, self.client.scheme)
        detached.adopt(self)
        self.client = detached
        self.keep_alive = False
        connection = self.connection
        if connection is not None:
            connection.stream.resumeProducing()
        self._enter(_RECEIVING if self.state == _RECEIVE_BLOCKED else self.state)
