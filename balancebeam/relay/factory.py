"""
The factory of client connections (L{RelayFactory}): one per listener kind
(plain HTTP, HTTPS), carrying what every connection shares (the current
L{RelaySettings}, the stats, the connection caps) and draining them all when
the balancer stops; and L{_OverCapacity}, the answer to a connection over
a cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from balancebeam.clientip import client_key
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
        C{max_connections} and C{max_connections_per_client} together (this
        one, and those of the other listeners of the same balancer: see
        L{share_connection_cap}).
    @ivar max_connections: the most client connections open at once, or 0
        for no limit.
    @ivar max_connections_per_client: the most client connections open at
        once from one client address, or 0 for no limit; set it with
        L{limit_connections_per_client}.
    @ivar per_client: the connections open from each client address, while
        C{max_connections_per_client} is on (or was, for connections opened
        then); an address leaves it when its last connection closes. Shared
        by the factories of C{cap_group}.
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
        max_connections_per_client: int = 0,
    ) -> None:
        """
        @param filters: the request filters, asked in this order.
        @param scheme: how clients reach this listener, for
            C{X-Forwarded-Proto} and the filters.
        @param retry_after: the C{Retry-After} of the 503 answered to
            connections over C{max_connections}.
        @param max_connections: the most client connections open at once,
            or 0 for no limit.
        @param max_connections_per_client: the most client connections
            open at once from one client address, or 0 for no limit.
        """
        self.clock = clock
        self.stats = stats
        self.scheme = scheme
        self.retry_after = retry_after
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.per_client: dict[str, int] = {}
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
        C{max_connections} and one C{max_connections_per_client} (for
        listeners of one balancer that build connections with different
        factories, such as plain HTTP and HTTPS).
        """
        group = self.cap_group
        for factory in other.cap_group:
            if factory not in group:
                group.append(factory)
        per_client = self.per_client
        for factory in group:
            if factory.per_client is not per_client:
                for key, count in factory.per_client.items():
                    per_client[key] = per_client.get(key, 0) + count
        for factory in group:
            factory.cap_group = group
            factory.per_client = per_client

    def limit_connections_per_client(self, most: int) -> None:
        """
        Set C{max_connections_per_client} for the connections from now on
        (a reload). When the limit goes on, the connections already open
        (on this factory and those it shares its cap with) are counted, so
        that a client holding many gets no new one until it is under the
        limit; none is closed.
        """
        self.max_connections_per_client = most
        if not most:
            return
        per_client = self.per_client
        for factory in self.cap_group:
            for protocol in factory.connections:
                if protocol.cap_key is None and protocol.transport is not None:
                    key = peer_key(protocol.transport.getPeer())
                    if key is not None:
                        protocol.cap_key = key
                        per_client[key] = per_client.get(key, 0) + 1

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
        closes when C{max_connections} are already open, or
        C{max_connections_per_client} from the client's address (on this
        factory and those it shares its cap with). A connection from an
        address that is not an IP address (a unix socket) has no per-client
        limit.
        """
        self.stats.client_connections += 1
        if self.max_connections and self.open_connections() >= self.max_connections:
            self.stats.refused_connections += 1
            return _OverCapacity(
                self.retry_after, "too many client connections", self.settings.date.line()
            )
        if self.max_connections_per_client:
            key = peer_key(addr)
            if key is not None:
                if self.per_client.get(key, 0) >= self.max_connections_per_client:
                    self.stats.refused_per_client += 1
                    return _OverCapacity(
                        self.retry_after,
                        "too many connections from your address",
                        self.settings.date.line(),
                    )
                protocol = ClientConnection(self)
                protocol.cap_key = key
                return protocol
        return ClientConnection(self)

    def count_client(self, key: str) -> None:
        """
        Count a connection from the client address C{key} (its protocol's
        C{cap_key}): called once it is made.
        """
        per_client = self.per_client
        per_client[key] = per_client.get(key, 0) + 1

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
        key = protocol.cap_key
        if key is not None:
            protocol.cap_key = None
            per_client = self.per_client
            left = per_client.get(key, 0) - 1
            if left > 0:
                per_client[key] = left
            else:
                per_client.pop(key, None)
        if self.draining and not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            if self._drain_deadline is not None and self._drain_deadline.active():
                self._drain_deadline.cancel()
            drained.callback(None)


def peer_key(addr: IAddress | None) -> str | None:
    """
    The key of a client address in L{RelayFactory.per_client}: the IP
    address in the normal form of L{ClientConnection.client_ip}
    (IPv4-mapped IPv6 addresses as IPv4), or C{None} when C{addr} is not
    an IP address.
    """
    if isinstance(addr, IPv4Address):
        return addr.host
    if isinstance(addr, IPv6Address):
        return client_key(addr.host, None, ())
    return None


class _OverCapacity(Protocol):
    """
    Answers 503 to a connection beyond a connection limit, and closes it.
    """

    def __init__(self, retry_after: int, reason: str, date: bytes) -> None:
        """
        @param reason: the answer's text.
        @param date: its C{Date} line.
        """
        self._retry_after = retry_after
        self._reason = reason
        self._date = date

    def connectionMade(self) -> None:
        """
        Answer and close at once, without reading the request.
        """
        transport = cast(StreamTransport, self.transport)
        transport.write(
            error_response(
                503,
                self._reason,
                False,
                (("Retry-After", str(self._retry_after)),),
                self._date,
            )
        )
        transport.loseConnection()
