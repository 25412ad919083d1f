"""
The relay's own CPU cost per request, without sockets or a reactor.

Drives one client connection and one pooled upstream connection in memory:
a request in, the response back, N times, and prints microseconds per
request next to a fixed pure-Python yardstick, so that runs on a noisy
machine can be compared by their ratio. Kernel and reactor costs are not
included: this measures only what balancebeam's code adds.

    PYTHONPATH=. python3 bench/hotpath.py [--requests N] [--rate-limit]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Iterable

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from balancebeam.config import UpstreamSpec
from balancebeam.pool import UpstreamPool
from balancebeam.ratelimit.filter import RateLimitFilter
from balancebeam.ratelimit.memory import MemoryRateLimiter
from balancebeam.registry import UpstreamRegistry
from balancebeam.relay.client import ClientConnection
from balancebeam.relay.factory import RelayFactory
from balancebeam.relay.upstream import UpstreamConnection
from balancebeam.routing import Dispatcher
from balancebeam.stats import Stats
from balancebeam.strategies import build_strategy

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1100\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 04:48:15 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 100\r\n"
    b"Last-Modified: Thu, 26 Nov 2026 04:45:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6565a7c0-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100
)


class NullTransport:
    """
    The least a protocol needs from a transport; writes are dropped.
    """

    disconnecting = False
    connected = True

    def __init__(self, peer: IPv4Address) -> None:
        self._peer = peer

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Iterable[bytes]) -> None:
        pass

    def loseConnection(self) -> None:
        raise AssertionError("the benchmark connection closed")

    abortConnection = loseConnection

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--rate-limit", action="store_true", help="a never-hit memory limit")
    arguments = parser.parse_args()

    clock = Clock()
    spec = UpstreamSpec("127.0.0.1", 8081)
    registry = UpstreamRegistry([spec], clock)
    pool = UpstreamPool(clock, lambda _: None)  # type: ignore[arg-type,return-value]  # never connects: the connection is planted below
    stats = Stats()
    filters = []
    if arguments.rate_limit:
        filters.append(RateLimitFilter(MemoryRateLimiter(clock, 10**9, 60.0), stats))
    import random

    dispatcher = Dispatcher(
        registry, build_strategy("random", random.Random(1)), pool, stats, clock
    )
    factory = RelayFactory(clock, dispatcher, stats, filters=filters)
    upstream = UpstreamConnection(registry.upstreams[0], pool)
    upstream.makeConnection(NullTransport(IPv4Address("TCP", "127.0.0.1", 8081)))
    pool._connections.add(upstream)
    pool._open[registry.upstreams[0]] = 1
    pool.checkin(upstream)
    client = factory.buildProtocol(None)
    assert isinstance(client, ClientConnection)
    client.makeConnection(NullTransport(IPv4Address("TCP", "127.0.0.1", 40000)))

    def one_request() -> None:
        client.dataReceived(REQUEST)
        upstream.dataReceived(RESPONSE)

    one_request()
    assert pool.idle_count(registry.upstreams[0]) == 1, "the upstream connection was not reused"
    # Alternate short batches of both, and keep the fastest of each, so that
    # a busy moment on a shared machine spoils neither figure.
    batch = 1000
    per_request = yardstick = float("inf")
    for _ in range(max(1, arguments.requests // batch)):
        per_request = min(per_request, timeit.timeit(one_request, number=batch) / batch)
        yardstick = min(
            yardstick, timeit.timeit(lambda: sum(range(100)), number=batch * 10) / (batch * 10)
        )
    print(
        f"{per_request * 1e6:.2f} us/request in balancebeam code; "
        f"yardstick {yardstick * 1e6:.2f} us; ratio {per_request / yardstick:.2f}"
    )


if __name__ == "__main__":
    main()
