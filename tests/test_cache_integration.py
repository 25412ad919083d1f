"""
The response cache in a real balancer over loopback: a L{BalancerService}
with C{cache=CacheConfig(...)} in front of L{Origin}, a small upstream whose
answers each test scripts per path (C{Cache-Control}, C{ETag}, C{Vary}, held
responses, truncated bodies) and which counts what reaches it.

Waits poll a condition with a deadline (L{IntegrationTestCase.eventually});
nothing sleeps a fixed time.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IListeningPort, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from balancebeam.config import CacheConfig
from balancebeam.service import BalancerService
from tests.helpers import unused_port
from tests.test_integration import HOST, IntegrationTestCase, build_request
from tests.test_twistd import REPO_ROOT, TWISTD, TwistdProcess
from tests.upstreams import RawClient, RawResponse, connect_client

reactor: Any = _global_reactor

CACHE = CacheConfig(size=8 * 1024 * 1024)
"""The cache of most tests: 8 MiB, the default object size and lock timeout."""


@dataclass
class OriginRequest:
    """
    One request as the origin received it.

    @ivar method: the method.
    @ivar target: the request target.
    @ivar headers: C{(name, value)} pairs in order.
    @ivar body: the body (requests with C{Content-Length} only).
    """

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """
        The first value of field C{name} (any case), or C{None}.
        """
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Reply:
    """
    What the origin writes for one request.

    @ivar raw: the response bytes, head and body (or the first part of them).
    @ivar close: close the connection after writing them.
    @ivar more: fires with the rest of the response, written when it does.
    """

    raw: bytes
    close: bool = False
    more: Deferred[Reply] | None = None


Handler = Callable[[OriginRequest], Union[Reply, "Deferred[Reply]"]]
"""Answers one request at once, or later (a held response)."""


def reply(
    status: bytes = b"200 OK",
    fields: Sequence[bytes] = (),
    body: bytes = b"",
    length: int | None = None,
    method: bytes = b"GET",
    close: bool = False,
) -> Reply:
    """
    A response with C{Content-Length: length} (the body's length by
    default; a bodiless status gets none) and C{body} (none for C{HEAD}).
    """
    lines = [b"HTTP/1.1 " + status, *fields]
    code = int(status.split()[0])
    if code not in (204, 304):
        lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return Reply(head + (b"" if method == b"HEAD" else body), close)


class _OriginProtocol(Protocol):
    """
    Parses requests (a head, then a C{Content-Length} body) one at a time and
    writes the handler's reply for each.
    """

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.buffer = b""
        self.busy = False

    def connectionMade(self) -> None:
        """
        Count the connection.
        """
        self.origin.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Forget the connection and count the loss.
        """
        self.origin.connections.discard(self)
        self.origin.lost += 1

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer, and answer the next request once it is whole.
        """
        self.buffer += data
        self._next()

    def _next(self) -> None:
        if self.busy:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end == -1:
            return
        lines = self.buffer[:end].split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip()))
        request = OriginRequest(method, target, headers)
        length = int(request.header(b"content-length") or b"0")
        if len(self.buffer) < end + 4 + length:
            return
        request.body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        self.origin.requests.append(request)
        self.busy = True
        path = target.split(b"?", 1)[0]
        handler = self.origin.routes.get(path)
        if handler is None:
            result: Reply | Deferred[Reply] = reply(b"404 Not Found", body=b"no route\n")
        else:
            result = handler(request)
        if isinstance(result, Reply):
            result = succeed(result)
        result.addCallback(self._write)

    def _write(self, answer: Reply) -> None:
        transport: ITransport | None = self.transport
        if transport is None or not self.origin.listening:
            return
        transport.write(answer.raw)
        if answer.more is not None:
            answer.more.addCallback(self._write)
            return
        self.busy = False
        if answer.close:
            transport.loseConnection()
            return
        self._next()


class Origin(Factory):
    """
    A scripted HTTP/1.1 origin on 127.0.0.1: one handler per path, every
    request recorded.

    @ivar routes: the handler of each path (without the query).
    @ivar requests: every request received, in order.
    @ivar connections: the open connections.
    @ivar lost: how many connections have closed.
    """

    noisy = False

    def __init__(self) -> None:
        self.routes: dict[bytes, Handler] = {}
        self.requests: list[OriginRequest] = []
        self.connections: set[_OriginProtocol] = set()
        self.lost = 0
        self.listening = False
        self._port: IListeningPort | None = None

    def buildProtocol(self, addr: IAddress | None) -> _OriginProtocol:
        """
        A protocol for one connection from the balancer.
        """
        return _OriginProtocol(self)

    def start(self) -> None:
        """
        Listen on a free loopback port.
        """
        self._port = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.listening = True

    @property
    def address(self) -> str:
        """
        C{127.0.0.1:PORT}.
        """
        assert self._port is not None
        address = self._port.getHost()
        assert isinstance(address, IPv4Address)
        return f"127.0.0.1:{address.port}"

    def count(self, target: bytes) -> int:
        """
        How many requests for C{target} (path and query) arrived.
        """
        return sum(1 for request in self.requests if request.target == target)

    async def stop(self) -> None:
        """
        Stop listening and cut every connection.
        """
        self.listening = False
        if self._port is not None:
            port, self._port = self._port, None
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        for protocol in list(self.connections):
            transport: Any = protocol.transport
            transport.abortConnection()


class Held:
    """
    Replies held until the test releases them: one L{Deferred} per request.

    @ivar pending: the replies not yet released, in arrival order.
    """

    def __init__(self, answer: Callable[[OriginRequest], Reply]) -> None:
        self._answer = answer
        self.pending: list[tuple[OriginRequest, Deferred[Reply]]] = []

    def __call__(self, request: OriginRequest) -> Deferred[Reply]:
        held: Deferred[Reply] = Deferred()
        self.pending.append((request, held))
        return held

    def release(self) -> None:
        """
        Send every held reply.
        """
        pending, self.pending = self.pending, []
        for request, held in pending:
            held.callback(self._answer(request))


def cache_status(response: RawResponse) -> bytes:
    """
    The response's C{Cache-Status} value (it must have one).
    """
    value = response.header(b"cache-status")
    assert value is not None, response.headers
    return value


class CacheIntegrationTests(IntegrationTestCase):
    """
    The cache's behaviour through a real balancer, over loopback.
    """

    def start_origin(self) -> Origin:
        """
        Start an L{Origin}, stopped when the test ends.
        """
        origin = Origin()
        origin.start()
        self.addCleanup(origin.stop)
        return origin

    def start_cached(self, origin: Origin, cache: CacheConfig = CACHE, **options: Any) -> Any:
        """
        Start a balancer with a cache in front of C{origin}.
        """
        service: BalancerService = self.start_balancer([origin.address], cache=cache, **options)
        assert service.cache is not None
        return service.cache

    async def get(
        self, target: bytes = b"/", headers: Sequence[tuple[bytes, bytes]] = (),
        method: bytes = b"GET",
    ) -> RawResponse:
        """
        One request on a fresh connection; its response.
        """
        return await self.fetch(build_request(method, target, [HOST, *headers]), method)

    async def send(self, target: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> RawClient:
        """
        Send a GET on a fresh connection without waiting for its response.
        """
        client = await self.connect()
        client.send(build_request(b"GET", target, [HOST, *headers]), b"GET")
        return client

    async def test_coalescing(self) -> None:
        """
        Five concurrent requests for one URL send one request upstream; the
        four that waited are answered from the stored response with
        C{collapsed} in their C{Cache-Status}.
        """
        origin = self.start_origin()
        body = b"the one and only fetch\n"
        held = Held(lambda _: reply(fields=[b"Cache-Control: max-age=60"], body=body))
        origin.routes[b"/popular"] = held
        cache = self.start_cached(origin)
        leader = await self.send(b"/popular")
        await self.eventually(lambda: len(held.pending) == 1, message="no request upstream")
        followers = [await self.send(b"/popular") for _ in range(4)]
        await self.eventually(lambda: cache.counters.collapsed == 4, message="nobody waited")
        held.release()
        for client in [leader, *followers]:
            await client.wait_responses(1)
        responses = [client.responses[0] for client in [leader, *followers]]
        self.assertEqual([r.status for r in responses], [200] * 5)
        self.assertEqual({r.body for r in responses}, {body})
        self.assertEqual(origin.count(b"/popular"), 1)
        self.assertRegex(
            cache_status(responses[0]), rb"^balancebeam; fwd=uri-miss; fwd-status=200; stored"
        )
        for response in responses[1:]:
            self.assertRegex(
                cache_status(response),
                rb"^balancebeam; fwd=uri-miss; fwd-status=200; collapsed; ttl=(5\d|60)$",
            )
        self.assertEqual((cache.counters.stored, cache.counters.misses), (1, 1))

    async def test_304_revalidation(self) -> None:
        """
        A stale response with an C{ETag} is revalidated with
        C{If-None-Match}; the origin's C{304} refreshes it and the client
        gets the stored 200; the refreshed response is then a plain hit.
        """
        origin = self.start_origin()
        body = b"version one of the document\n"

        def document(request: OriginRequest) -> Reply:
            if request.header(b"if-none-match") == b'"v1"':
                return reply(b"304 Not Modified", [b'ETag: "v1"', b"Cache-Control: max-age=60"])
            return reply(fields=[b'ETag: "v1"', b"Cache-Control: max-age=0"], body=body)

        origin.routes[b"/doc"] = document
        cache = self.start_cached(origin)
        first = await self.get(b"/doc")
        second = await self.get(b"/doc")
        third = await self.get(b"/doc")
        self.assertEqual([r.status for r in (first, second, third)], [200, 200, 200])
        self.assertEqual([r.body for r in (first, second, third)], [body] * 3)
        self.assertEqual(len(origin.requests), 2)
        self.assertIsNone(origin.requests[0].header(b"if-none-match"))
        self.assertEqual(origin.requests[1].header(b"if-none-match"), b'"v1"')
        self.assertRegex(cache_status(second), rb"^balancebeam; fwd=stale; fwd-status=304; ttl=")
        self.assertRegex(cache_status(third), rb"^balancebeam; hit; ttl=(5\d|60)$")
        self.assertEqual(second.header(b"etag"), b'"v1"')
        self.assertEqual(cache.counters.revalidated, 1)

    async def test_304_naming_another_etag(self) -> None:
        """
        A C{304} whose C{ETag} is not the stored one updates nothing: the
        balancer asks again without validators and the client gets that 200,
        which is stored in place of the old response.
        """
        origin = self.start_origin()

        def moved_on(request: OriginRequest) -> Reply:
            if request.header(b"if-none-match") is not None:
                return reply(b"304 Not Modified", [b'ETag: "v2"'])
            if len(origin.requests) == 1:
                return reply(fields=[b'ETag: "v1"', b"Cache-Control: max-age=0"], body=b"one\n")
            return reply(fields=[b'ETag: "v2"', b"Cache-Control: max-age=60"], body=b"two\n")

        origin.routes[b"/moved"] = moved_on
        cache = self.start_cached(origin)
        first = await self.get(b"/moved")
        second = await self.get(b"/moved")
        third = await self.get(b"/moved")
        self.assertEqual([(r.status, r.body) for r in (first, second, third)],
                         [(200, b"one\n"), (200, b"two\n"), (200, b"two\n")])
        self.assertEqual([r.header(b"if-none-match") for r in origin.requests],
                         [None, b'"v1"', None])
        self.assertRegex(cache_status(second), rb"^balancebeam; fwd=stale; fwd-status=200; stored")
        self.assertRegex(cache_status(third), rb"^balancebeam; hit; ttl=")
        self.assertEqual((cache.counters.revalidated, cache.counters.stored), (0, 2))

    async def test_vary_variants(self) -> None:
        """
        A response with C{Vary: Accept-Encoding} is stored once per
        encoding (gzip and br held at once), and a request whose
        C{Accept-Encoding} is repeated or differently spaced hits the
        variant its normalised value names.
        """
        origin = self.start_origin()

        def encoded(request: OriginRequest) -> Reply:
            encoding = request.header(b"accept-encoding") or b"identity"
            return reply(
                fields=[b"Cache-Control: max-age=60", b"Vary: Accept-Encoding"],
                body=b"encoded as " + encoding + b"\n",
            )

        origin.routes[b"/v"] = encoded
        cache = self.start_cached(origin)
        gzip = await self.get(b"/v", [(b"Accept-Encoding", b"gzip")])
        br = await self.get(b"/v", [(b"Accept-Encoding", b"br")])
        both = await self.get(b"/v", [(b"Accept-Encoding", b"gzip, br")])
        self.assertEqual(len(origin.requests), 3)
        self.assertRegex(cache_status(gzip), rb"fwd=uri-miss; fwd-status=200; stored")
        self.assertRegex(cache_status(br), rb"fwd=vary-miss; fwd-status=200; stored")
        self.assertRegex(cache_status(both), rb"fwd=vary-miss; fwd-status=200; stored")
        again = [
            await self.get(b"/v", [(b"Accept-Encoding", b"gzip")]),
            await self.get(b"/v", [(b"Accept-Encoding", b"br")]),
            await self.get(b"/v", [(b"Accept-Encoding", b"gzip"), (b"Accept-Encoding", b"br")]),
            await self.get(b"/v", [(b"Accept-Encoding", b"  GZIP ,   br ")]),
            await self.get(b"/v", [(b"accept-encoding", b"gzip,br")]),
        ]
        self.assertEqual(len(origin.requests), 3)
        self.assertEqual(
            [r.body for r in again],
            [b"encoded as gzip\n", b"encoded as br\n"] + [b"encoded as gzip, br\n"] * 3,
        )
        for response in again:
            self.assertRegex(cache_status(response), rb"^balancebeam; hit; ttl=")
        self.assertEqual((cache.counters.stored, cache.counters.hits), (3, 5))

    async def test_stale_if_error_with_upstream_stopped(self) -> None:
        """
        With the origin stopped, a stale response within C{stale-if-error}
        is served instead of the balancer's error.
        """
        origin = self.start_origin()
        body = b"still here when the origin is gone\n"
        origin.routes[b"/resilient"] = lambda _: reply(
            fields=[b"Cache-Control: max-age=0, stale-if-error=300"], body=body
        )
        cache = self.start_cached(origin)
        first = await self.get(b"/resilient")
        self.assertEqual((first.status, cache.counters.stored), (200, 1))
        await origin.stop()
        await self.eventually(lambda: not origin.connections, message="origin still connected")
        second = await self.get(b"/resilient")
        self.assertEqual((second.status, second.body), (200, body))
        self.assertRegex(cache_status(second), rb"^balancebeam; fwd=stale; ttl=-?\d+; "
                                               rb"detail=stale-if-error$")
        self.assertRegex(second.header(b"age") or b"", rb"^\d+$")
        self.assertEqual(cache.counters.stale, 1)
        unknown = await self.get(b"/never-stored")
        self.assertIn(unknown.status, (502, 503))

    async def test_stale_while_revalidate(self) -> None:
        """
        Within C{stale-while-revalidate}, a stale response is served at once
        to every request while exactly one background revalidation is in
        flight; once its C{304} arrives, the response is fresh again.
        """
        origin = self.start_origin()
        body = b"served stale while it is checked\n"

        def answer(request: OriginRequest) -> Reply:
            if request.header(b"if-none-match") == b'"s1"':
                return reply(b"304 Not Modified", [b'ETag: "s1"', b"Cache-Control: max-age=60"])
            return reply(
                fields=[b'ETag: "s1"', b"Cache-Control: max-age=0, stale-while-revalidate=300"],
                body=body,
            )

        held = Held(answer)
        origin.routes[b"/swr"] = held
        cache = self.start_cached(origin)
        first_client = await self.send(b"/swr")
        await self.eventually(lambda: len(held.pending) == 1)
        held.release()
        await first_client.wait_responses(1)
        stale = [await self.get(b"/swr") for _ in range(3)]
        self.assertEqual([(r.status, r.body) for r in stale], [(200, body)] * 3)
        for response in stale:
            self.assertRegex(cache_status(response), rb"^balancebeam; hit; ttl=-?\d+$")
        await self.eventually(lambda: len(held.pending) == 1, message="no background request")
        self.assertEqual(len(origin.requests), 2)
        [(revalidation, _)] = held.pending
        self.assertEqual(revalidation.header(b"if-none-match"), b'"s1"')
        held.release()
        await self.eventually(lambda: cache.counters.revalidated == 1)
        fresh = await self.get(b"/swr")
        self.assertRegex(cache_status(fresh), rb"^balancebeam; hit; ttl=(5\d|60)$")
        self.assertEqual(len(origin.requests), 2)
        self.assertEqual(cache.counters.stale, 3)

    async def test_filling_client_leaves_while_others_wait(self) -> None:
        """
        When the client whose request fills an entry disconnects in the
        middle of the body while others wait for it, the rest is still read
        and stored, and those waiting are served from it.
        """
        origin = self.start_origin()
        body = os.urandom(300 * 1024)
        rest: Deferred[Reply] = Deferred()
        head = reply(fields=[b"Cache-Control: max-age=60"], body=body).raw
        split = len(head) - len(body) + 1000
        held = Held(lambda _: Reply(head[:split], more=rest))
        origin.routes[b"/big"] = held
        cache = self.start_cached(origin)
        leader = await self.send(b"/big")
        await self.eventually(lambda: len(held.pending) == 1)
        waiting = [await self.send(b"/big") for _ in range(2)]
        await self.eventually(lambda: cache.counters.collapsed == 2)
        held.release()
        await self.eventually(
            lambda: leader._current is not None and len(leader._current.body) == 1000,
            message="the first part of the body never reached the client",
        )
        assert leader.transport is not None
        leader.transport.abortConnection()  # type: ignore[attr-defined]  # a TCP transport
        await leader.closed
        rest.callback(Reply(head[split:]))
        for client in waiting:
            await client.wait_responses(1)
        self.assertEqual([c.responses[0].status for c in waiting], [200, 200])
        self.assertEqual([c.responses[0].body for c in waiting], [body, body])
        self.assertEqual((cache.counters.stored, origin.count(b"/big")), (1, 1))
        self.assertEqual(leader.responses, [])

    async def test_fill_abandoned_without_waiters(self) -> None:
        """
        When the filling client disconnects and nobody waits, the fill is
        abandoned: the upstream connection is closed, nothing is stored, and
        the next request goes upstream again.
        """
        origin = self.start_origin()
        held = Held(lambda _: reply(fields=[b"Cache-Control: max-age=60"], body=b"late\n"))
        origin.routes[b"/alone"] = held
        cache = self.start_cached(origin)
        client = await self.send(b"/alone")
        await self.eventually(lambda: len(held.pending) == 1)
        assert client.transport is not None
        client.transport.abortConnection()  # type: ignore[attr-defined]  # a TCP transport
        await client.closed
        await self.eventually(lambda: origin.lost == 1, message="upstream connection kept")
        held.release()
        self.assertEqual(cache.counters.stored, 0)
        origin.routes[b"/alone"] = lambda _: reply(
            fields=[b"Cache-Control: max-age=60"], body=b"again\n"
        )
        again = await self.get(b"/alone")
        self.assertEqual((again.status, again.body), (200, b"again\n"))
        self.assertEqual(origin.count(b"/alone"), 2)

    async def test_head_from_stored_get(self) -> None:
        """
        A HEAD request is answered from a stored GET response: its status,
        fields and C{Content-Length}, no body, and no request upstream.
        """
        origin = self.start_origin()
        body = b"x" * 1234
        origin.routes[b"/page"] = lambda request: reply(
            fields=[b"Cache-Control: max-age=60", b"Content-Type: text/plain"],
            body=body,
            method=request.method,
        )
        self.start_cached(origin)
        await self.get(b"/page")
        client = await self.connect()
        [head] = await self.exchange(client, build_request(b"HEAD", b"/page"), b"HEAD")
        # The connection is still in step: a GET after the HEAD gets its body.
        [get] = await self.exchange(client, build_request(b"GET", b"/page"), b"GET")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.header(b"content-length"), b"1234")
        self.assertEqual(head.header(b"content-type"), b"text/plain")
        self.assertRegex(cache_status(head), rb"^balancebeam; hit; ttl=")
        self.assertEqual(get.body, body)
        self.assertEqual(origin.count(b"/page"), 1)

    async def test_content_length_mismatch_never_stored(self) -> None:
        """
        A response whose body ends (the origin closes) before its
        C{Content-Length} is reached is not stored, and the client
        connection is cut rather than given a short body as complete.
        """
        origin = self.start_origin()
        origin.routes[b"/short"] = lambda _: reply(
            fields=[b"Cache-Control: max-age=60"], body=b"only ten b", length=1000, close=True
        )
        cache = self.start_cached(origin)
        for _ in range(2):
            client = await self.send(b"/short")
            await client.closed
            self.assertEqual(client.responses, [])
        self.assertEqual(cache.counters.stored, 0)
        self.assertEqual(origin.count(b"/short"), 2)

    async def test_unsafe_method_invalidates(self) -> None:
        """
        A successful POST drops the stored response for its URI and for a
        same-origin C{Location}; the next GETs go upstream again.
        """
        origin = self.start_origin()
        versions = {b"/item": 0, b"/item/2": 0}

        def item(request: OriginRequest) -> Reply:
            if request.method == b"POST":
                versions[request.target] += 1
                return reply(b"201 Created", [b"Location: /item/2"], b"created\n")
            return reply(
                fields=[b"Cache-Control: max-age=60"],
                body=b"version %d\n" % versions[request.target],
            )

        origin.routes[b"/item"] = item
        origin.routes[b"/item/2"] = item
        cache = self.start_cached(origin)
        self.assertEqual((await self.get(b"/item")).body, b"version 0\n")
        self.assertEqual((await self.get(b"/item/2")).body, b"version 0\n")
        self.assertEqual((await self.get(b"/item")).body, b"version 0\n")
        self.assertEqual(len(origin.requests), 2)
        posted = await self.fetch(build_request(b"POST", b"/item", body=b"new"), b"POST")
        self.assertEqual(posted.status, 201)
        self.assertEqual(cache_status(posted), b"balancebeam; fwd=method")
        item_after = await self.get(b"/item")
        other_after = await self.get(b"/item/2")
        self.assertEqual((item_after.body, other_after.body), (b"version 1\n", b"version 0\n"))
        self.assertRegex(cache_status(item_after), rb"^balancebeam; fwd=uri-miss")
        self.assertRegex(cache_status(other_after), rb"^balancebeam; fwd=uri-miss")
        self.assertEqual(len(origin.requests), 5)
        self.assertEqual(cache.counters.invalidated, 2)


class CacheTwistdTests(IntegrationTestCase):
    """
    The cache through C{twistd balancebeam --cache-size}, as a subprocess.
    """

    timeout = 30

    async def test_twistd_cache_size(self) -> None:
        """
        C{twistd -n balancebeam --cache-size 1m} serves the second request
        for a cacheable URL from its cache (one request upstream), and stops
        cleanly with the cache counters in its shutdown line.
        """
        origin = Origin()
        origin.start()
        self.addCleanup(origin.stop)
        origin.routes[b"/cached"] = lambda _: reply(
            fields=[b"Cache-Control: max-age=60"], body=b"from the origin, once\n"
        )
        port = unused_port()
        process = TwistdProcess()
        process.listening.addErrback(lambda _: None)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
        )
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + [
                "-n", "--pidfile=", "balancebeam", "--bind", f"127.0.0.1:{port}",
                "--upstream", origin.address, "--active-health-check-interval", "0",
                "--cache-size", "1m",
            ],
            env=environment,
            path=tempfile.mkdtemp(prefix="balancebeam-cache-twistd-"),
        )

        async def stop() -> None:
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(stop)
        await process.listening
        responses = []
        for _ in range(2):
            client = await connect_client(self, reactor, port)
            client.send(build_request(b"GET", b"/cached"), b"GET")
            await client.wait_responses(1)
            responses.append(client.responses[0])
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertEqual({r.body for r in responses}, {b"from the origin, once\n"})
        self.assertRegex(cache_status(responses[1]), rb"^balancebeam; hit; ttl=")
        self.assertEqual(origin.count(b"/cached"), 1)
        transport.signalProcess("TERM")
        code = await process.ended
        output = process.output.decode(errors="replace")
        self.assertIn(code, (0, -signal.SIGTERM), output)
        self.assertIn("'cache_hits': 1", output)
        self.assertIn("'cache_stored': 1", output)
        self.assertNotIn("Traceback", output)

