"""
The explicit states of the relay's objects, and the deadline each state names.

Every state that can wait names the timeout that bounds the wait, and the
activity that refreshes it. The relay reads the table built by
L{deadline_table} when it enters a state and on each piece of activity in it,
so a stream that keeps moving is never cut, and a wait that nothing ends is
always ended (a stalled download, an idle tunnel).

States are C{IntEnum} members: they compare and index as plain integers on
the hot path.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Final

from balancebeam.config import Timeouts

#: Reasons for not reading from a client, as bits of one mask: the upstream
#: is not taking the request body; pipelined bytes wait for the current
#: response; request body bytes wait for an upstream connection; the client
#: is not reading the responses already answered.
PAUSE_UPSTREAM_FULL: Final = 1
PAUSE_PIPELINE: Final = 2
PAUSE_WAITING: Final = 4
PAUSE_CLIENT_FULL: Final = 8


class ClientState(IntEnum):
    """
    A client connection (L{balancebeam.relay.client.ClientConnection}).

    @cvar IDLE: between requests, no byte of the next head yet; deadline
        C{client_idle}, from the end of the last response.
    @cvar HEAD: part of a request head received; deadline C{client_header},
        from its first byte, never refreshed (a slow-headers client is cut).
    @cvar BUSY: an exchange owns the connection; the exchange's state names
        the deadline.
    @cvar TUNNEL: after C{101 Switching Protocols}: bytes go straight to the
        exchange's tunnel (deadline: L{ExchangeState.TUNNEL}).
    @cvar CLOSED: gone or going; no deadline.
    """

    IDLE = 0
    HEAD = 1
    BUSY = 2
    TUNNEL = 3
    CLOSED = 4


class ExchangeState(IntEnum):
    """
    One request's life (L{balancebeam.relay.exchange.Exchange}).

    @cvar FILTERING: a request filter is deciding (a Redis round trip);
        deadline C{upstream}.
    @cvar CONNECTING: waiting for a connection to an upstream (connect
        attempts, failover, the per-upstream queue); deadline C{upstream}.
    @cvar SENDING: the request is being sent and its body is still coming
        from the client; deadline C{client_body}, refreshed by every piece.
    @cvar SEND_BLOCKED: the upstream is not taking the request body (its
        send buffer is full); deadline C{upstream}, refreshed when it drains,
        and at the deadline when its TCP acknowledged bytes since (it reads,
        slowly).
    @cvar WAITING: the whole request is sent, the response head is awaited;
        deadline C{upstream}, refreshed by interim (1xx) responses.
    @cvar RECEIVING: the response body is being relayed; deadline
        C{upstream}, refreshed by every read from the upstream.
    @cvar RECEIVE_BLOCKED: the client is not reading the response (its send
        buffer is full, so the upstream is paused); deadline C{client_idle},
        refreshed when the client reads again, and at the deadline when its
        TCP acknowledged bytes since (it reads, slowly).
    @cvar TUNNEL: after C{101}: raw bytes both ways; deadline C{tunnel_idle},
        refreshed by a byte in either direction.
    @cvar DISCARDING: answered by the balancer before the request body was
        complete; the rest of the body is read and dropped; deadline
        C{client_body}, refreshed by every piece.
    @cvar SUBSTITUTING: a response observer answered in place of the
        upstream's response, whose body is read and dropped; deadline
        C{upstream}, refreshed by every read.
    @cvar DONE: over; no deadline.
    """

    FILTERING = 0
    CONNECTING = 1
    SENDING = 2
    SEND_BLOCKED = 3
    WAITING = 4
    RECEIVING = 5
    RECEIVE_BLOCKED = 6
    TUNNEL = 7
    DISCARDING = 8
    SUBSTITUTING = 9
    DONE = 10


#: The timeout each exchange state names (an attribute of L{Timeouts}), or
#: C{None} for none.
EXCHANGE_DEADLINES: Final[dict[ExchangeState, str | None]] = {
    ExchangeState.FILTERING: "upstream",
    ExchangeState.CONNECTING: "upstream",
    ExchangeState.SENDING: "client_body",
    ExchangeState.SEND_BLOCKED: "upstream",
    ExchangeState.WAITING: "upstream",
    ExchangeState.RECEIVING: "upstream",
    ExchangeState.RECEIVE_BLOCKED: "client_idle",
    ExchangeState.TUNNEL: "tunnel_idle",
    ExchangeState.DISCARDING: "client_body",
    ExchangeState.SUBSTITUTING: "upstream",
    ExchangeState.DONE: None,
}


def deadline_table(timeouts: Timeouts) -> tuple[float, ...]:
    """
    The seconds each L{ExchangeState} allows, indexed by the state's value
    (C{inf} where a state has no deadline).
    """
    return tuple(
        math.inf if name is None else float(getattr(timeouts, name))
        for _, name in sorted(EXCHANGE_DEADLINES.items())
    )


class UpstreamConnectionState(IntEnum):
    """
    A connection to an upstream (L{balancebeam.relay.upstream.UpstreamConnection}).

    Its waits are bounded by others: in L{IDLE} by the pool's idle timeout
    (swept on the pool's clock), in the others by the deadline of the
    exchange that owns it.

    @cvar IDLE: no request in flight (in the pool, or just checked out);
        any byte or close retires it.
    @cvar HEAD: a request was sent; waiting for the response head.
    @cvar BODY: relaying the response body.
    @cvar TUNNEL: after a C{101}, relaying raw bytes both ways.
    @cvar DONE: the response is complete, not yet taken back by the pool.
    @cvar CLOSING: we dropped the connection; nothing more is read.
    @cvar CLOSED: the connection is gone.
    """

    IDLE = 0
    HEAD = 1
    BODY = 2
    TUNNEL = 3
    DONE = 4
    CLOSING = 5
    CLOSED = 6
