"""
The client side of an exchange whose client has gone (L{DetachedClient}).

When a client leaves in the middle of a response that a response observer
still wants (a cache entry other requests wait for), the exchange goes on
reading the upstream with this stand-in as its client: what it writes is
dropped, and its deadline is enforced by the relay's deadline timer like a
connection's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from zope.interface import implementer

from balancebeam.relay.interfaces import IClientSide

if TYPE_CHECKING:
    from balancebeam.interfaces import IExchange
    from balancebeam.relay.exchange_events import ExchangeEvents


@implementer(IClientSide)
class DetachedClient:
    """
    Stands in for a client that went away.

    @ivar exchange: the exchange it serves until that exchange ends.
    """

    writes_paused = False

    def __init__(self, watched: set[DetachedClient], client_ip: str, scheme: bytes) -> None:
        """
        @param watched: the set whose members' deadlines the relay's timer
            enforces; this stand-in is in it while it serves an exchange.
        """
        self.client_ip = client_ip
        self.scheme = scheme
        self.deadline = math.inf
        self.exchange: ExchangeEvents | None = None
        self._watched = watched

    def adopt(self, exchange: ExchangeEvents) -> None:
        """
        Serve C{exchange} from now on; its deadlines are watched.
        """
        self.exchange = exchange
        self._watched.add(self)

    def write(self, data: bytes) -> None:
        """Nobody reads it: drop it."""

    def flush(self) -> None:
        """Nothing to send."""

    def pause_reading(self, reason: int) -> None:
        """There is no client to read."""

    def resume_reading(self, reason: int) -> None:
        """There is no client to read."""

    def start_tunnel(self) -> None:
        """Never asked: an upgrade is never continued without its client."""

    def exchange_done(self, exchange: IExchange, keep_alive: bool) -> None:
        """
        The response is complete: forget this stand-in.
        """
        self._forget()

    def abort(self) -> None:
        """
        The response failed: forget this stand-in.
        """
        self._forget()

    def close(self) -> None:
        """
        Nothing to close: forget this stand-in.
        """
        self._forget()

    def deadline_passed(self) -> None:
        """
        Act on the exchange's deadline.
        """
        exchange = self.exchange
        if exchange is not None:
            exchange.deadline_passed()

    def _forget(self) -> None:
        self.exchange = None
        self.deadline = math.inf
        self._watched.discard(self)
