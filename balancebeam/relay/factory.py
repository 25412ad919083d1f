"""
The factory of client connections (L{RelayFactory}): one per listener kind
(plain HTTP, HTTPS), carrying what every connection shares (the current
L{RelaySettings}, the stats, the connection cap) and draining them all when
the balancer stops; and L{_OverCapacity}, the answer to a connection over
the cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from balancebeam.config import Limits, Timeouts
from balancebeam.http1.rewrite import error_response
from balancebeam.interfaces import IRequestFilter
from balancebeam.relay.client import ClientConnection
from balancebeam.relay.detached import DetachedClient
from balancebeam.relay.settings import RelaySettings
from balancebeam.relay.transport import StreamTransport
from balancebeam.routing import Dispatcher
from balancebeam.stats import Stats


class RelayFactory(Factory):
    """
    Builds client connections for one listener and carries what they
    share: the dispatcher, the request filters, limits, timeouts and stats.

    @ivar settings: what new exchanges use (L{RelaySettings}); a reload
        replaces it whole (L{reconfigure}), and exchanges in flight keep
        the settings they started with.
    @ivar connections: the open client connections.
    @ivar detached: stand-ins for clients gone while an observer still wants
        their response (see L{DetachedClient}); their deadlines are enforced
        like the connections'.
    @ivar draining: whether the balancer is stopping.
    @ivar cap_group: the factories whose connections count against
        C{max_connections} together (this one, and those of the other
        listeners of the same balancer: see L{share_connection_cap}).
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        dispatcher: Dispatcher,
        stats: Stats,
        timeouts: Timeouts = Timeouts(),
        limits: Limits = Limits(),
        filters: Sequence[IRequestFilter] = (),
        *,
        scheme: bytes = b"http",
        access_log: bool = False,
        retry_after: int = 5,
        max_connections: int = 0,
    ) -> None:
        """
        @param filters: the request filters, asked in this order.
        @param scheme: how clients reach this listener, for
            C{X-Forwarded-Proto} and the filters.
        @param retry_after: the C{Retry-After} of the 503 answered to
            connections over C{max_connections}.
        @param max_connections: the most client connections open at once,
            or 0 for no limit.
        """
        self.clock = clock
        self.stats = stats
        self.scheme = scheme
        self.retry_after = retry_after
        self.max_connections = max_connections
        self.detached: set[DetachedClient] = set()
        self.settings = RelaySettings(
            clock, dispatcher, stats, timeouts, limits, filters, access_log, self.detached
        )
        self.connections: set[ClientConnection] = set()
        self.cap_group: list[RelayFactory] = [self]
        self.draining = False
        self._drained: Deferred[None] | None = None
        self._drain_deadline: IDelayedCall | None = None

    def reconfigure(
        self,
        dispatcher: Dispatcher,
        timeouts: Timeouts,
        limits: Limits,
        filters: Sequence[IRequestFilter],
        access_log: bool,
    ) -> None:
        """
        Use new settings for the requests that start from now on.
        """
        self.settings = RelaySettings(
            self.clock, dispatcher, self.stats, timeouts, limits, filters, access_log,
            self.detached,
        )

    def share_connection_cap(self, other: RelayFactory) -> None:
        """
        Count C{other}'s connections and this one's against one
        C{max_connections} (for listeners of one balancer that build
        connections with different factories, such as plain HTTP and HTTPS).
        """
        group = self.cap_group
        for factory in other.cap_group:
            if factory not in group:
                group.append(factory)
        for factory in group:
            factory.cap_group = group

    def open_connections(self) -> int:
        """
        The client connections open now that count against C{max_connections}.
        """
        group = self.cap_group
        if len(group) == 1:
            return len(self.connections)
        return sum(len(factory.connections) for factory in group)

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """
        A protocol for one client connection, or one that answers 503 and
        closes when C{max_connections} are already open (on this factory and
        those it shares its cap with).
        """
        self.stats.client_connections += 1
        if self.max_connections and self.open_connections() >= self.max_connections:
            self.stats.refused_connections += 1
            return _OverCapacity(self.retry_after, self.settings.date.line())
        return ClientConnection(self)

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

    def connection_closed(self, protocol: ClientConnection) -> None:
        """
        Forget a client connection; finish draining after the last one.
        """
        self.connections.discard(protocol)
        if self.draining and not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            if self._drain_deadline is not None and self._drain_deadline.active():
                self._drain_deadline.cancel()
            drained.callback(None)


class _OverCapacity(Protocol):
    """
    Answers 503 to a connection beyond the connection limit, and closes it.
    """

    def __init__(self, retry_after: int, date: bytes) -> None:
        self._retry_after = retry_after
        self._date = date

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
                self._date,
            )
        )
        transport.loseConnection()
