"""
Shared fakes for the deterministic tests: the whole request path in memory,
on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam.config import Limits, Timeouts, UpstreamSpec
from balancebeam.interfaces import IBalancingStrategy, IRateLimiter, IRequestFilter
from balancebeam.pool import UpstreamPool
from balancebeam.ratelimit.filter import RateLimitFilter
from balancebeam.registry import UpstreamRegistry, UpstreamState
from balancebeam.relay.client import ClientConnection
from balancebeam.relay.deadlines import DeadlineTimer, resolution_for
from balancebeam.relay.factory import RelayFactory
from balancebeam.routing import Dispatcher
from balancebeam.stats import Stats


@implementer(IBalancingStrategy)
class FirstStrategy:
    """
    Always picks the first candidate, so tests know where a request goes.
    """

    def choose(self, candidates: Sequence[UpstreamState]) -> UpstreamState:
        """
        The first candidate.
        """
        return candidates[0]


class Harness:
    """
    A relay factory, dispatcher, pool and deadline timer wired to a memory
    reactor, with helpers to connect clients and to accept or refuse
    upstream connections.
    """

    def __init__(
        self,
        upstream_count: int = 2,
        timeouts: Timeouts = Timeouts(),
        limits: Limits = Limits(),
        rate_limiter: IRateLimiter | None = None,
        rate_limit_headers: bool = False,
        passive_retry_interval: float | None = None,
        filters: Sequence[IRequestFilter] = (),
        **pool_options: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.specs = [UpstreamSpec("127.0.0.1", 8081 + i) for i in range(upstream_count)]
        self.registry = UpstreamRegistry(self.specs, self.reactor)
        self.pool = UpstreamPool(self.reactor, self.endpoint, **pool_options)
        self.registry.add_observer(self.pool.upstream_changed)
        self.stats = Stats()
        self.dispatcher = Dispatcher(
            self.registry,
            FirstStrategy(),
            self.pool,
            self.stats,
            self.reactor,
            passive_retry_interval=passive_retry_interval,
        )
        chain = list(filters)
        if rate_limiter is not None:
            chain.insert(0, RateLimitFilter(rate_limiter, self.stats, (), rate_limit_headers))
        self.factory = RelayFactory(
            self.reactor, self.dispatcher, self.stats, timeouts, limits, chain
        )
        self.timer = DeadlineTimer(self.reactor, [self.factory], resolution_for(timeouts))
        self.timer.startService()
        self.pool.start(self.registry.upstreams)
        self._accepted = 0

    def endpoint(self, spec: UpstreamSpec) -> IStreamClientEndpoint:
        """
        A TCP endpoint on the memory reactor.
        """
        return TCP4ClientEndpoint(self.reactor, spec.host, spec.port, timeout=5)

    def client(self, port: int = 40000) -> tuple[ClientConnection, StringTransport]:
        """
        A connected client protocol and its transport.
        """
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        assert isinstance(protocol, ClientConnection)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        protocol.makeConnection(transport)
        return protocol, transport

    def pending_connects(self) -> int:
        """
        Upstream connection attempts not yet accepted, refused or cancelled.
        """
        self._skip_cancelled()
        return len(self.reactor.tcpClients) - self._accepted

    def _skip_cancelled(self) -> None:
        """
        Pass over attempts the balancer cancelled: they never connect.
        """
        connectors = self.reactor.connectors
        while self._accepted < len(connectors) and connectors[self._accepted].stoppedConnecting:
            self._accepted += 1

    def accept(self) -> tuple[IProtocol, StringTransport, int]:
        """
        Accept the oldest pending upstream connection attempt.

        @return: the protocol, its transport and the upstream port it targets.
        """
        self._skip_cancelled()
        host, port, factory, _, _ = self.reactor.tcpClients[self._accepted]
        connector = self.reactor.connectors[self._accepted]
        self._accepted += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        del connector
        return protocol, transport, port

    def refuse(self) -> int:
        """
        Fail the oldest pending upstream connection attempt with "refused".

        @return: the upstream port it targeted.
        """
        self._skip_cancelled()
        _, port, factory, _, _ = self.reactor.tcpClients[self._accepted]
        connector = self.reactor.connectors[self._accepted]
        self._accepted += 1
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        return port


def response(body: bytes = b"hello", status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    """
    A simple upstream response with a Content-Length body.
    """
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def unused_port() -> int:
    """
    A loopback TCP port that nothing listens on (bound, then released).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def wait_until(
    reactor: Any, condition: Callable[[], bool], what: str, timeout: float = 10.0
) -> None:
    """
    Poll C{condition} every 10 ms on a running reactor until it holds.

    @raise AssertionError: naming C{what} when it does not hold within
        C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)
