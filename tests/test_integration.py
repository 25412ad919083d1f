"""
Integration tests: the whole balancer over real loopback sockets, between
raw clients and recording upstream servers (L{tests.upstreams}).

These use the global reactor and real time; waits on real time happen only
where the behaviour is about real time (timeouts, health check intervals).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from balancebeam.config import BalancerConfig, Limits, Timeouts, parse_upstream, with_backlog
from balancebeam.relay.client import ClientConnection
from balancebeam.service import BalancerService
from balancebeam.workers.sockets import bind_listener, inspect_listener
from tests.helpers import unused_port
from tests.upstreams import (
    RawClient,
    RawResponse,
    UpstreamServer,
    connect_client,
    large_body_sha256,
)

reactor: Any = _global_reactor

HOST = (b"Host", b"balancer.test")


def build_request(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: Sequence[tuple[bytes, bytes]] = (HOST,),
    body: bytes | None = None,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """
    The bytes of one request, with a C{Content-Length} when C{body} is given.
    """
    lines = [method + b" " + target + b" " + version]
    lines.extend(name + b": " + value for name, value in headers)
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def chunked(data: bytes, size: int) -> bytes:
    """
    C{data} framed as chunks of C{size} bytes plus the last chunk.
    """
    pieces = [
        b"%x\r\n" % len(data[i : i + size]) + data[i : i + size] + b"\r\n"
        for i in range(0, len(data), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def hanging_port(case: TestCase) -> int:
    """
    A loopback port whose connects hang: it listens with a full accept
    queue and never accepts, so the kernel drops new SYNs.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    sockets = [listener]
    for _ in range(3):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        sockets.append(filler)
    for each in sockets:
        case.addCleanup(each.close)
    return port


def sleep(seconds: float) -> Deferred[None]:
    """
    Wait C{seconds} of real time without blocking the reactor.
    """
    return deferLater(reactor, seconds, lambda: None)


class IntegrationTestCase(TestCase):
    """
    Starts upstreams, the balancer and clients, and cleans them all up.
    """

    timeout = 15

    def start_upstream(
        self,
        name: str = "upstream",
        mode: str = "ok",
        delay: float = 0.0,
        interface: str = "127.0.0.1",
    ) -> UpstreamServer:
        """
        Start a recording upstream, stopped when the test ends.
        """
        server = UpstreamServer(reactor, name, mode, delay, interface)
        server.start()
        self.addCleanup(server.stop)
        return server

    def restart_upstream(self, old: UpstreamServer, name: str, mode: str = "ok") -> UpstreamServer:
        """
        Start a new upstream on the port of a stopped one.
        """
        server = UpstreamServer(reactor, name, mode)
        server.port = old.port
        server.start()
        self.addCleanup(server.stop)
        return server

    def start_balancer(
        self, upstreams: Sequence[UpstreamServer | str], **options: Any
    ) -> BalancerService:
        """
        Start a balancer on a free loopback port in front of C{upstreams}
        (active health checks off unless given); it is stopped, and its
        client connections are gone, when the test ends.

        @param options: other L{BalancerConfig} fields.
        """
        options.setdefault("active_health_check_interval", 0.0)
        addresses = [u.address if isinstance(u, UpstreamServer) else u for u in upstreams]
        config = BalancerConfig(
            upstreams=tuple(parse_upstream(a) for a in addresses),
            listen=("tcp:0:interface=127.0.0.1",),
            **options,
        )
        service = BalancerService(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(self._stop_balancer, service)
        address = service.ports[0].getHost()
        assert isinstance(address, IPv4Address)
        self.port = address.port
        return service

    async def _stop_balancer(self, service: BalancerService) -> None:
        """
        Stop the balancer and wait (briefly) until its client connections are gone.
        """
        await service.stopService()
        deadline = time.monotonic() + 2.0
        while service.factory.connections and time.monotonic() < deadline:
            await sleep(0.01)
        for protocol in list(service.factory.connections):
            protocol.abort()
        if service.factory.connections:
            await sleep(0.05)

    async def connect(self, keep_bodies: bool = True) -> RawClient:
        """
        A new client connection to the balancer.
        """
        return await connect_client(self, reactor, self.port, keep_bodies)

    async def close(self, client: RawClient) -> None:
        """
        Close a client connection and wait until it is gone.
        """
        if not client.is_closed:
            assert client.transport is not None
            client.transport.loseConnection()
        await client.closed

    async def exchange(self, client: RawClient, data: bytes, *methods: bytes) -> list[RawResponse]:
        """
        Send C{data} (holding requests with C{methods}) and wait for their responses.

        @return: the responses received for them.
        """
        before = len(client.responses)
        client.send(data, *methods)
        await client.wait_responses(before + len(methods))
        return client.responses[before:]

    async def fetch(self, data: bytes, method: bytes = b"GET") -> RawResponse:
        """
        Send one request on a fresh connection, return its response, and
        close the connection.
        """
        client = await self.connect()
        responses = await self.exchange(client, data, method)
        await self.close(client)
        self.assertEqual(len(responses), 1, f"no response to {data[:60]!r}")
        return responses[0]

    async def eventually(
        self, condition: Callable[[], bool], timeout: float = 5.0, message: str = ""
    ) -> None:
        """
        Poll C{condition} until it holds; fail the test after C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail(message or "condition never held")
            await sleep(0.01)


class RelayTests(IntegrationTestCase):
    """
    Requests and responses relayed intact: methods, headers, bodies, framing.
    """

    async def test_get_and_post_reach_upstream(self) -> None:
        """
        A GET and a POST on fresh connections reach the upstream as HTTP/1.1
        origin-form requests with the client's headers in order, the client
        address in X-Forwarded-For and the POST body intact.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client_headers = [HOST, (b"X-Custom-Header", b"Value One"), (b"Accept", b"*/*")]
        get = await self.fetch(build_request(b"GET", b"/first_url", client_headers))
        body = b"a body for the POST \x00\xff and some more bytes"
        post = await self.fetch(
            build_request(b"POST", b"/first_url", client_headers, body=body), b"POST"
        )
        self.assertEqual((get.status, post.status), (200, 200))
        self.assertEqual(len(upstream.requests), 2)
        first, second = upstream.requests
        self.assertEqual(first.request_line, b"GET /first_url HTTP/1.1")
        self.assertEqual(second.request_line, b"POST /first_url HTTP/1.1")
        for received in (first, second):
            names = {name.lower() for name, _ in client_headers}
            passed = [(n, v) for n, v in received.headers if n.lower() in names]
            self.assertEqual(passed, client_headers)
            self.assertEqual(received.header_values(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(first.body, b"")
        self.assertEqual(second.body, body)
        self.assertEqual(second.header(b"content-length"), str(len(body)).encode())
        self.assertEqual(
            post.body,
            b"only POST /first_url HTTP/1.1 %d %s\n"
            % (len(body), hashlib.sha256(body).hexdigest().encode()),
        )

    async def test_concurrent_keep_alive_clients(self) -> None:
        """
        Three concurrent clients each sending four requests on one keep-alive
        connection get twelve correct answers, and the upstream counts twelve.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])

        async def one_client(number: int) -> list[int]:
            """
            Send four requests on one connection; return their statuses.
            """
            client = await self.connect()
            statuses = []
            for index in range(4):
                target = b"/client%d/request%d" % (number, index)
                [response] = await self.exchange(client, build_request(target=target), b"GET")
                statuses.append(response.status)
                self.assertIn(b" GET " + target + b" HTTP/1.1 0 ", response.body)
            self.assertFalse(client.is_closed)
            await self.close(client)
            return statuses

        results = await gatherResults(
            [Deferred.fromCoroutine(one_client(n)) for n in range(3)]
        )
        self.assertEqual(results, [[200] * 4] * 3)
        self.assertEqual(len(upstream.requests), 12)

    async def test_distribution_over_three_upstreams(self) -> None:
        """
        Ninety sequential requests over three upstreams give each one within
        40% of the mean (the default strategy is uniform random; its random
        source is seeded so that the test cannot fail by chance).
        """
        upstreams = [self.start_upstream(f"u{n}") for n in range(3)]
        self.start_balancer(upstreams, random_seed=90)
        for index in range(90):
            response = await self.fetch(build_request(target=b"/r%d" % index))
            self.assertEqual(response.status, 200)
        counts = [len(u.requests) for u in upstreams]
        self.assertEqual(sum(counts), 90)
        for count in counts:
            self.assertTrue(18 <= count <= 42, f"unbalanced counts {counts}")

    async def test_pipelined_requests_answered_in_order(self) -> None:
        """
        Three requests sent in one write are answered in order, each with its
        own body.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        data = b"".join(build_request(target=b"/pipe%d" % n) for n in range(3))
        responses = await self.exchange(client, data, b"GET", b"GET", b"GET")
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        for n, response in enumerate(responses):
            self.assertTrue(
                response.body.startswith(b"only GET /pipe%d HTTP/1.1 0 " % n), response.body
            )
        self.assertEqual([r.target for r in upstream.requests], [b"/pipe0", b"/pipe1", b"/pipe2"])
        self.assertFalse(client.is_closed)

    async def test_chunked_request_body_relayed_exactly(self) -> None:
        """
        A 1 MiB chunked request body reaches the upstream byte for byte.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        body = os.urandom(1024 * 1024)
        head = build_request(b"POST", b"/upload", [HOST, (b"Transfer-Encoding", b"chunked")])
        response = await self.fetch(head + chunked(body, 10_000), b"POST")
        digest = hashlib.sha256(body).hexdigest().encode()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"only POST /upload HTTP/1.1 1048576 " + digest + b"\n")
        [received] = upstream.requests
        self.assertTrue(received.chunked)
        self.assertEqual(hashlib.sha256(received.body).hexdigest().encode(), digest)

    async def test_content_length_body_relayed_exactly(self) -> None:
        """
        A 5 MiB request body with a Content-Length reaches the upstream byte
        for byte, with the same Content-Length.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        body = os.urandom(5 * 1024 * 1024)
        response = await self.fetch(build_request(b"PUT", b"/big", body=body), b"PUT")
        digest = hashlib.sha256(body).hexdigest().encode()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"only PUT /big HTTP/1.1 5242880 " + digest + b"\n")
        [received] = upstream.requests
        self.assertEqual(received.header(b"content-length"), b"5242880")
        self.assertEqual(hashlib.sha256(received.body).hexdigest().encode(), digest)

    async def test_large_streamed_response(self) -> None:
        """
        A 20 MiB response body reaches the client byte for byte.
        """
        size = 20 * 1024 * 1024
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect(keep_bodies=False)
        [response] = await self.exchange(client, build_request(target=b"/large/%d" % size), b"GET")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-length"), b"%d" % size)
        self.assertEqual(response.digest.hexdigest(), large_body_sha256(size))
        self.assertFalse(client.is_closed)

    async def test_chunked_response_rechunked(self) -> None:
        """
        A 3 MiB chunked response reaches an HTTP/1.1 client chunked and byte
        for byte, and the connection stays usable.
        """
        size = 3 * 1024 * 1024 + 17
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect(keep_bodies=False)
        [response] = await self.exchange(
            client, build_request(target=b"/large/%d?chunked" % size), b"GET"
        )
        self.assertEqual(response.header(b"transfer-encoding"), b"chunked")
        self.assertEqual(response.digest.hexdigest(), large_body_sha256(size))
        [after] = await self.exchange(client, build_request(target=b"/after"), b"GET")
        self.assertEqual(after.status, 200)

    async def test_head_has_no_body(self) -> None:
        """
        A HEAD response carries the upstream's Content-Length but no body: the
        next response on the connection parses cleanly.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        data = build_request(b"HEAD", b"/large/5000") + build_request(target=b"/next")
        head, get = await self.exchange(client, data, b"HEAD", b"GET")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.header(b"content-length"), b"5000")
        self.assertEqual(get.status, 200)
        self.assertTrue(get.body.startswith(b"only GET /next HTTP/1.1"), get.body)
        await sleep(0.05)
        self.assertEqual(client.responses, [head, get])

    async def test_204_and_304_have_no_body(self) -> None:
        """
        204 and 304 responses are relayed without a body, and the next
        response on the connection parses cleanly.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        data = (
            build_request(target=b"/status/204")
            + build_request(target=b"/status/304")
            + build_request(target=b"/next")
        )
        responses = await self.exchange(client, data, b"GET", b"GET", b"GET")
        self.assertEqual([r.status for r in responses], [204, 304, 200])
        self.assertEqual([r.body for r in responses[:2]], [b"", b""])
        self.assertTrue(responses[2].body.startswith(b"only GET /next HTTP/1.1"))

    async def test_expect_continue(self) -> None:
        """
        A request with Expect: 100-continue gets exactly
        C{HTTP/1.1 100 Continue} before its body is sent, then the final
        response; the upstream receives the body and no Expect header.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        head = build_request(
            b"POST", b"/expect", [HOST, (b"Expect", b"100-continue"), (b"Content-Length", b"11")]
        )
        client.send(head, b"POST")
        await client.wait_for(lambda: bool(client.informational))
        self.assertEqual([r.raw for r in client.informational], [b"HTTP/1.1 100 Continue\r\n\r\n"])
        self.assertEqual(client.responses, [])
        client.send(b"hello world")
        await client.wait_responses(1)
        [response] = client.responses
        self.assertEqual(response.status, 200)
        [received] = upstream.requests
        self.assertEqual(received.body, b"hello world")
        self.assertIsNone(received.header(b"expect"))

    async def test_http10_client(self) -> None:
        """
        An HTTP/1.0 client gets a complete response, the upstream still sees
        HTTP/1.1, and the connection closes afterwards.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        client.send(b"GET /ten HTTP/1.0\r\n\r\n", b"GET")
        await client.wait_for(lambda: client.is_closed)
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body[:33], b"only GET /ten HTTP/1.1 0 e3b0c442")
        self.assertEqual(upstream.requests[0].request_line, b"GET /ten HTTP/1.1")
        self.assertTrue(client.is_closed)

    async def test_upgrade_tunnel(self) -> None:
        """
        An Upgrade request answered 101 becomes a two-way byte tunnel.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        head = build_request(
            target=b"/upgrade",
            headers=[HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
        )
        client.send(head)
        await client.wait_responses(1)
        [switch] = client.responses
        self.assertEqual(switch.status, 101)
        self.assertEqual(switch.header(b"upgrade"), b"websocket")
        [received] = upstream.requests
        self.assertEqual(received.header(b"upgrade"), b"websocket")
        self.assertEqual((received.header(b"connection") or b"").lower(), b"upgrade")
        client.send(b"\x81\x04ping")
        await client.wait_for(lambda: client.tunnel == b"\x81\x04ping")
        client.send(b"second frame")
        await client.wait_for(lambda: len(client.tunnel) >= 18)
        self.assertEqual(client.tunnel, b"\x81\x04pingsecond frame")
        self.assertEqual(upstream.tunnel_bytes, b"\x81\x04pingsecond frame")

    async def test_client_disconnect_mid_response_frees_upstream(self) -> None:
        """
        A client that disconnects in the middle of a large response makes the
        balancer close that upstream connection.
        """
        upstream = self.start_upstream("only")
        service = self.start_balancer([upstream])
        client = await self.connect(keep_bodies=False)
        client.send(build_request(target=b"/large/%d" % (200 * 1024 * 1024)), b"GET")
        await self.eventually(lambda: bool(upstream.connections), message="no upstream connection")
        await sleep(0.1)
        transport: Any = client.transport
        transport.abortConnection()
        await client.closed
        await self.eventually(
            lambda: upstream.closed_connections == 1, message="upstream connection stayed open"
        )
        self.assertEqual(upstream.accepted, 1)
        upstream_state = service.registry.upstreams[0]
        self.assertEqual(upstream_state.in_flight, 0)
        self.assertEqual(service.pool.open_count(upstream_state), 0)


class ErrorTests(IntegrationTestCase):
    """
    Every failure is a clear HTTP answer.
    """

    async def test_all_upstreams_down(self) -> None:
        """
        With the only upstream unreachable, the failed attempt is answered 502
        and the next request, with no upstream alive, 503 with Retry-After.
        """
        self.start_balancer([f"127.0.0.1:{unused_port()}"])
        first = await self.fetch(build_request(target=b"/a"))
        second = await self.fetch(build_request(target=b"/b"))
        self.assertEqual(first.status, 502)
        self.assertEqual(second.status, 503)
        self.assertIsNotNone(second.header(b"retry-after"))
        self.assertEqual(second.header(b"content-type"), b"text/plain; charset=utf-8")

    async def test_one_down_retried_transparently(self) -> None:
        """
        With one of two upstreams unreachable, every request is answered 200
        by the other.
        """
        upstream = self.start_upstream("alive")
        self.start_balancer([f"127.0.0.1:{unused_port()}", upstream])
        for index in range(6):
            response = await self.fetch(build_request(target=b"/r%d" % index))
            self.assertEqual(response.status, 200)
        self.assertEqual(len(upstream.requests), 6)

    async def test_passive_failover(self) -> None:
        """
        Five requests, one of two upstreams stopped, six more requests at
        once: all eleven are answered 200.
        """
        first = self.start_upstream("first")
        second = self.start_upstream("second")
        self.start_balancer([first, second])
        for index in range(5):
            response = await self.fetch(build_request(target=b"/before%d" % index))
            self.assertEqual(response.status, 200)
        await first.stop()
        for index in range(6):
            response = await self.fetch(build_request(target=b"/after%d" % index))
            self.assertEqual(response.status, 200)
            self.assertTrue(response.body.startswith(b"second GET /after%d" % index))
        self.assertEqual(len(first.requests) + len(second.requests), 11)

    async def test_upstream_closes_without_answer(self) -> None:
        """
        An upstream that closes the connection without answering gives 502.
        """
        upstream = self.start_upstream("closer", mode="close")
        self.start_balancer([upstream])
        response = await self.fetch(build_request(target=b"/x"))
        self.assertEqual(response.status, 502)
        self.assertEqual(len(upstream.requests), 1)

    async def test_malformed_request(self) -> None:
        """
        A malformed request line gets 400 and the connection is closed.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        client.send(b"THIS IS NOT HTTP\r\n\r\n", b"GET")
        await client.wait_for(lambda: client.is_closed)
        [response] = client.responses
        self.assertEqual(response.status, 400)
        self.assertEqual(response.header(b"connection"), b"close")
        self.assertEqual(upstream.requests, [])

    async def test_huge_head(self) -> None:
        """
        A request head over 16 KiB gets 431 and the connection is closed.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        client.send(build_request(headers=[HOST, (b"X-Big", b"a" * 17000)]), b"GET")
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual([r.status for r in client.responses], [431])
        self.assertEqual(upstream.requests, [])

    async def test_smuggling_rejected(self) -> None:
        """
        A request with both Content-Length and Transfer-Encoding gets 400, the
        connection is closed, and nothing reaches the upstream.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        data = (
            b"POST /smuggle HTTP/1.1\r\nHost: balancer.test\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        client.send(data, b"POST")
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual([r.status for r in client.responses], [400])
        self.assertEqual(upstream.requests, [])

    async def test_upstream_timeout(self) -> None:
        """
        An upstream slower than the upstream timeout gives 504 after about
        that timeout.
        """
        upstream = self.start_upstream("slow", delay=3.0)
        self.start_balancer([upstream], timeouts=Timeouts(upstream=0.5))
        started = time.monotonic()
        response = await self.fetch(build_request(target=b"/slow"))
        elapsed = time.monotonic() - started
        self.assertEqual(response.status, 504)
        self.assertTrue(0.4 <= elapsed < 1.5, f"answered after {elapsed:.2f}s")
        await self.eventually(
            lambda: upstream.closed_connections == 1, message="timed-out connection not closed"
        )

    async def test_upstream_timeout_while_connecting(self) -> None:
        """
        An upstream whose connect hangs longer than the upstream timeout gives
        exactly one 504 response.
        """
        self.start_balancer(
            [f"127.0.0.1:{hanging_port(self)}"], timeouts=Timeouts(upstream=0.5, connect=5.0)
        )
        client = await self.connect()
        client.send(build_request(target=b"/hang"), b"GET")
        await client.wait_responses(1)
        await sleep(0.2)
        self.assertEqual([r.status for r in client.responses], [504])

    async def test_connect_timeout(self) -> None:
        """
        An upstream whose connect hangs longer than the connect timeout gives
        exactly one 502 response, and the next request 503.
        """
        self.start_balancer(
            [f"127.0.0.1:{hanging_port(self)}"], timeouts=Timeouts(upstream=5.0, connect=0.3)
        )
        client = await self.connect()
        client.send(build_request(target=b"/hang"), b"GET")
        await client.wait_responses(1)
        await sleep(0.2)
        self.assertEqual([r.status for r in client.responses], [502])
        second = await self.fetch(build_request(target=b"/again"))
        self.assertEqual(second.status, 503)

    async def test_client_header_timeout(self) -> None:
        """
        A client trickling its request head slower than the header deadline
        gets 408 and the connection is closed, although it never went quiet.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], timeouts=Timeouts(client_header=0.5))
        client = await self.connect()
        started = time.monotonic()
        client.send(b"GET /trickle HTTP/1.1\r\n", b"GET")
        for index in range(15):
            await sleep(0.1)
            if client.is_closed:
                break
            client.send(b"X-Slow-%d: y\r\n" % index)
        await client.wait_for(lambda: client.is_closed)
        elapsed = time.monotonic() - started
        self.assertEqual([r.status for r in client.responses], [408])
        self.assertTrue(0.4 <= elapsed < 1.0, f"closed after {elapsed:.2f}s")
        self.assertEqual(upstream.requests, [])


class RateLimitTests(IntegrationTestCase):
    """
    C{max_requests_per_minute} over real connections.
    """

    async def test_fresh_connections(self) -> None:
        """
        With a limit of 5, five requests pass and three more on fresh
        connections each get 429; the upstream counts exactly five.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], max_requests_per_minute=5)
        statuses = []
        for index in range(8):
            response = await self.fetch(build_request(target=b"/r%d" % index))
            statuses.append(response.status)
            if response.status == 429:
                self.assertIsNotNone(response.header(b"retry-after"))
        self.assertEqual(statuses, [200] * 5 + [429] * 3)
        self.assertEqual(len(upstream.requests), 5)

    async def test_one_keep_alive_connection(self) -> None:
        """
        With a limit of 5, eight requests on one connection give five 200s
        and three 429s, and the connection stays open throughout.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], max_requests_per_minute=5)
        client = await self.connect()
        statuses = []
        for index in range(8):
            [response] = await self.exchange(client, build_request(target=b"/r%d" % index), b"GET")
            statuses.append(response.status)
        self.assertEqual(statuses, [200] * 5 + [429] * 3)
        self.assertEqual(client.responses[-1].header(b"connection"), b"keep-alive")
        await sleep(0.05)
        self.assertFalse(client.is_closed)
        self.assertEqual(len(upstream.requests), 5)


class HealthCheckTests(IntegrationTestCase):
    """
    Active health checks with a one-second interval (these wait in real time).
    """

    async def test_failing_upstream_taken_out(self) -> None:
        """
        An upstream replaced by one answering 500 to everything stops getting
        client traffic within three seconds.
        """
        healthy = self.start_upstream("healthy")
        doomed = self.start_upstream("doomed")
        self.start_balancer([healthy, doomed], active_health_check_interval=1.0)
        for index in range(4):
            response = await self.fetch(build_request(target=b"/before%d" % index))
            self.assertEqual(response.status, 200)
        await doomed.stop()
        failing = self.restart_upstream(doomed, "failing", mode="error")
        await sleep(3.0)
        before = len(healthy.client_requests)
        for index in range(8):
            response = await self.fetch(build_request(target=b"/after%d" % index))
            self.assertEqual(response.status, 200)
        self.assertEqual(len(healthy.client_requests) - before, 8)
        self.assertEqual(failing.client_requests, [])
        self.assertGreaterEqual(len(failing.probe_requests), 2)
        probe = failing.probe_requests[0]
        self.assertEqual(probe.request_line, b"GET / HTTP/1.1")
        self.assertEqual(probe.header(b"host"), failing.address.encode())

    async def test_recovered_upstream_back_in_rotation(self) -> None:
        """
        An upstream that was stopped, and started again on the same address,
        receives client traffic again within three seconds.
        """
        steady = self.start_upstream("steady")
        flaky = self.start_upstream("flaky")
        self.start_balancer([steady, flaky], active_health_check_interval=1.0)
        await flaky.stop()
        for index in range(6):
            response = await self.fetch(build_request(target=b"/down%d" % index))
            self.assertEqual(response.status, 200)
        revived = self.restart_upstream(flaky, "revived")
        await sleep(3.0)
        for index in range(20):
            response = await self.fetch(build_request(target=b"/up%d" % index))
            self.assertEqual(response.status, 200)
        self.assertGreater(len(revived.client_requests), 0)


class PoolTests(IntegrationTestCase):
    """
    Upstream connections are reused across requests and clients.
    """

    async def test_connections_reused(self) -> None:
        """
        1000 sequential requests on one client connection and 1000 on fresh
        client connections open at most three upstream connections.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        for index in range(1000):
            [response] = await self.exchange(client, build_request(target=b"/k%d" % index), b"GET")
            self.assertEqual(response.status, 200)
        await self.close(client)
        for index in range(1000):
            response = await self.fetch(build_request(target=b"/f%d" % index))
            self.assertEqual(response.status, 200)
        self.assertEqual(len(upstream.requests), 2000)
        self.assertLessEqual(upstream.accepted, 3)

    async def test_warm_connections_opened_at_start(self) -> None:
        """
        With pool_warm=2 the upstream sees two connections open before any
        request.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], pool_warm=2)
        await self.eventually(lambda: upstream.accepted >= 2, message="no warm connections")
        await sleep(0.1)
        self.assertEqual(upstream.accepted, 2)
        self.assertEqual(upstream.requests, [])



@implementer(IPushProducer)
class _WriteGate:
    """
    A client-side producer that only records whether the transport wants
    more bytes.
    """

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full.
        """
        self.paused = True

    def resumeProducing(self) -> None:
        """
        The transport's buffer drained.
        """
        self.paused = False

    def stopProducing(self) -> None:
        """
        The transport is going away.
        """
        self.paused = True


class HeaderTests(IntegrationTestCase):
    """
    Header rewriting in both directions.
    """

    async def test_request_headers_rewritten(self) -> None:
        """
        X-Forwarded-For and Via are appended to, X-Forwarded-Proto is added,
        hop-by-hop headers (and those Connection names) are dropped, and other
        headers pass in order, repeated ones included.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        headers = [
            HOST,
            (b"X-Forwarded-For", b"203.0.113.7"),
            (b"Connection", b"keep-alive, X-Drop-Me"),
            (b"X-Repeat", b"a"),
            (b"X-Drop-Me", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Proxy-Authorization", b"Basic eDp5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Repeat", b"b"),
            (b"Via", b"1.1 other-proxy"),
            (b"Accept", b"text/plain"),
        ]
        response = await self.fetch(build_request(target=b"/headers", headers=headers))
        self.assertEqual(response.status, 200)
        [received] = upstream.requests
        self.assertEqual(received.header_values(b"x-forwarded-for"), [b"203.0.113.7, 127.0.0.1"])
        self.assertEqual(received.header_values(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(received.header_values(b"via"), [b"1.1 other-proxy, 1.1 balancebeam"])
        names = [name.lower() for name, _ in received.headers]
        hop_by_hop = (
            b"x-drop-me",
            b"keep-alive",
            b"te",
            b"proxy-authorization",
            b"proxy-connection",
        )
        for dropped in hop_by_hop:
            self.assertNotIn(dropped, names)
        for value in received.header_values(b"connection"):
            self.assertNotIn(b"x-drop-me", value.lower())
        kept = (b"Host", b"X-Repeat", b"Accept")
        end_to_end = [(n, v) for n, v in received.headers if n in kept]
        self.assertEqual(
            end_to_end,
            [HOST, (b"X-Repeat", b"a"), (b"X-Repeat", b"b"), (b"Accept", b"text/plain")],
        )

    async def test_response_hop_by_hop_removed(self) -> None:
        """
        Hop-by-hop response headers (and those the upstream's Connection
        names) do not reach the client; repeated headers keep their order.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        response = await self.fetch(build_request(target=b"/hop"))
        self.assertEqual((response.status, response.body), (200, b"hop"))
        names = [name.lower() for name, _ in response.headers]
        for dropped in (b"x-secret", b"keep-alive", b"proxy-authenticate"):
            self.assertNotIn(dropped, names)
        self.assertEqual(response.header_values(b"x-repeat"), [b"one", b"two"])
        self.assertEqual(response.header_values(b"via"), [b"1.1 balancebeam"])

    async def test_absolute_form_target(self) -> None:
        """
        A request in absolute form reaches the upstream in origin form.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        response = await self.fetch(build_request(target=b"http://balancer.test/abs?q=1"))
        self.assertEqual(response.status, 200)
        self.assertEqual(upstream.requests[0].request_line, b"GET /abs?q=1 HTTP/1.1")

    async def test_client_connection_close(self) -> None:
        """
        A request with C{Connection: close} is answered with
        C{Connection: close}, and the connection closes.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        client.send(build_request(headers=[HOST, (b"Connection", b"close")]), b"GET")
        await client.wait_for(lambda: client.is_closed)
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"connection"), b"close")


class FramingTests(IntegrationTestCase):
    """
    Bodies re-framed for each hop.
    """

    async def test_http10_client_chunked_upstream(self) -> None:
        """
        A chunked upstream response reaches an HTTP/1.0 client unchunked,
        delimited by the close, byte for byte.
        """
        size = 100_000
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect(keep_bodies=False)
        client.send(b"GET /large/%d?chunked HTTP/1.0\r\n\r\n" % size, b"GET")
        await client.wait_for(lambda: client.is_closed)
        [response] = client.responses
        self.assertIsNone(response.header(b"transfer-encoding"))
        self.assertEqual(response.digest.hexdigest(), large_body_sha256(size))

    async def test_until_close_response_rechunked(self) -> None:
        """
        An HTTP/1.0 upstream response delimited by its close reaches an
        HTTP/1.1 client chunked, and the client connection stays usable.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        [legacy] = await self.exchange(client, build_request(target=b"/legacy"), b"GET")
        self.assertEqual(legacy.status, 200)
        self.assertEqual(legacy.header(b"transfer-encoding"), b"chunked")
        self.assertEqual(legacy.body, b"until close body")
        [after] = await self.exchange(client, build_request(target=b"/after"), b"GET")
        self.assertEqual(after.status, 200)

    async def test_many_pipelined_requests(self) -> None:
        """
        A hundred requests, some with bodies, sent in one write are answered
        in order.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        data = b"".join(
            build_request(b"POST", b"/p%d" % n, body=b"x" * n) if n % 3 == 0
            else build_request(target=b"/p%d" % n)
            for n in range(100)
        )
        methods = [b"POST" if n % 3 == 0 else b"GET" for n in range(100)]
        responses = await self.exchange(client, data, *methods)
        self.assertEqual(len(responses), 100)
        for n, response in enumerate(responses):
            expected = b"only %s /p%d HTTP/1.1 %d " % (methods[n], n, n if n % 3 == 0 else 0)
            self.assertTrue(response.body.startswith(expected), (n, response.body))

    async def test_head_trickled_byte_by_byte(self) -> None:
        """
        A valid request head arriving one byte at a time is relayed normally.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        data = build_request(target=b"/slowly", headers=[HOST, (b"X-One", b"1")])
        client.expect(b"GET")
        assert client.transport is not None
        for index in range(len(data)):
            client.transport.write(data[index : index + 1])
            await sleep(0.001)
        await client.wait_responses(1)
        self.assertEqual([r.status for r in client.responses], [200])
        self.assertEqual(upstream.requests[0].header(b"x-one"), b"1")


class FlowControlTests(IntegrationTestCase):
    """
    Slow peers apply backpressure instead of filling the balancer's memory.
    """

    async def test_slow_client_pauses_upstream(self) -> None:
        """
        While a client reads nothing, the upstream can write only a bounded
        amount of a 300 MiB response.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect(keep_bodies=False)
        transport: Any = client.transport
        client.send(build_request(target=b"/large/%d" % (300 * 1024 * 1024)), b"GET")
        transport.pauseProducing()
        await self.eventually(lambda: upstream.body_bytes_written > 0, message="no body written")
        await sleep(1.0)
        written = upstream.body_bytes_written
        self.assertLess(written, 48 * 1024 * 1024, f"upstream wrote {written} bytes")
        transport.abortConnection()
        await self.eventually(
            lambda: upstream.closed_connections == 1, message="upstream kept open"
        )

    async def test_slow_upstream_pauses_client(self) -> None:
        """
        While the upstream reads nothing, a client uploading a large body can
        send only a bounded amount.
        """
        upstream = self.start_upstream("only")
        upstream.pause_reads = True
        self.start_balancer([upstream])
        client = await self.connect()
        transport: Any = client.transport
        gate = _WriteGate()
        transport.registerProducer(gate, True)
        client.send(build_request(b"PUT", b"/upload", [HOST, (b"Content-Length", b"1073741824")]))
        piece = b"u" * (256 * 1024)
        sent = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and sent < 200 * 1024 * 1024:
            if not gate.paused:
                transport.write(piece)
                sent += len(piece)
            await sleep(0.001)
        self.assertLess(sent, 48 * 1024 * 1024, f"client sent {sent} bytes")
        transport.unregisterProducer()
        transport.abortConnection()


class MoreErrorTests(IntegrationTestCase):
    """
    Further failures and limits, each a clear answer.
    """

    async def test_upstream_garbage(self) -> None:
        """
        An upstream answering with bytes that are not HTTP gives 502.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        response = await self.fetch(build_request(b"POST", b"/garbage", body=b"x"), b"POST")
        self.assertEqual(response.status, 502)

    async def test_upstream_dies_mid_body(self) -> None:
        """
        When the upstream dies in the middle of a body, the client connection
        is aborted rather than the response presented as complete.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        client.send(build_request(target=b"/truncate"), b"GET")
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual(client.responses, [])

    async def test_post_not_replayed(self) -> None:
        """
        A POST whose upstream closes without answering gets 502 and is not
        sent to the other upstream; a GET in the same case is retried there.
        """
        closer = self.start_upstream("closer", mode="close")
        fine = self.start_upstream("fine")
        self.start_balancer([closer, fine])
        statuses = []
        for index in range(12):
            response = await self.fetch(
                build_request(b"POST", b"/post%d" % index, body=b"once"), b"POST"
            )
            statuses.append(response.status)
        self.assertEqual(len(closer.requests) + len(fine.requests), 12)
        self.assertEqual(statuses.count(502), len(closer.requests))
        self.assertEqual(statuses.count(200), len(fine.requests))
        self.assertGreater(len(closer.requests), 0)
        before = len(closer.requests), len(fine.requests)
        for index in range(6):
            response = await self.fetch(build_request(target=b"/get%d" % index))
            self.assertEqual(response.status, 200)
        self.assertEqual(len(fine.requests) - before[1], 6)

    async def test_body_too_large(self) -> None:
        """
        With max_body_size 1000, a 5000-byte body gets 413 and never reaches
        the upstream.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], limits=Limits(max_body_size=1000))
        client = await self.connect()
        client.send(build_request(b"POST", b"/big", body=b"b" * 5000), b"POST")
        await client.wait_responses(1)
        self.assertEqual([r.status for r in client.responses], [413])
        self.assertEqual(upstream.requests, [])

    async def test_chunked_body_too_large(self) -> None:
        """
        With max_body_size 1000, a chunked body of 5000 bytes gets 413.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], limits=Limits(max_body_size=1000))
        client = await self.connect()
        head = build_request(b"POST", b"/big", [HOST, (b"Transfer-Encoding", b"chunked")])
        client.send(head + chunked(b"c" * 5000, 500), b"POST")
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual([r.status for r in client.responses], [413])
        self.assertFalse(any(len(r.body) > 1000 for r in upstream.requests))

    async def test_too_many_headers(self) -> None:
        """
        A request with more than 100 header lines gets 431.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        headers = [HOST] + [(b"X-H%d" % n, b"v") for n in range(101)]
        client = await self.connect()
        client.send(build_request(headers=headers), b"GET")
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual([r.status for r in client.responses], [431])
        self.assertEqual(upstream.requests, [])

    async def test_smuggling_variants(self) -> None:
        """
        Differing duplicate Content-Length, a signed length, and a transfer
        coding other than chunked each get 400 and reach no upstream.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        variants = [
            [HOST, (b"Content-Length", b"3"), (b"Content-Length", b"4")],
            [HOST, (b"Content-Length", b"+3")],
            [HOST, (b"Content-Length", b"-1")],
            [HOST, (b"Transfer-Encoding", b"gzip")],
            [HOST, (b"Transfer-Encoding", b"chunked, gzip")],
            [HOST, (b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
        ]
        for headers in variants:
            client = await self.connect()
            client.send(build_request(b"POST", b"/s", headers) + b"abcd", b"POST")
            # Awaited within this iteration, so the late binding is harmless.
            await client.wait_for(lambda: client.is_closed)  # noqa: B023
            self.assertEqual([r.status for r in client.responses], [400], headers)
        self.assertEqual(upstream.requests, [])

    async def test_bad_chunk_size(self) -> None:
        """
        A chunked body with an invalid chunk size gets 400 and a close.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        head = build_request(b"POST", b"/c", [HOST, (b"Transfer-Encoding", b"chunked")])
        client.send(head + b"zz\r\nabc\r\n0\r\n\r\n", b"POST")
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual([r.status for r in client.responses], [400])
        self.assertFalse(any(r.body for r in upstream.requests))

    async def test_idle_keep_alive_closed(self) -> None:
        """
        An idle keep-alive client connection is closed after the idle timeout.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], timeouts=Timeouts(client_idle=0.3))
        client = await self.connect()
        await self.exchange(client, build_request(), b"GET")
        started = time.monotonic()
        await client.wait_for(lambda: client.is_closed)
        elapsed = time.monotonic() - started
        self.assertTrue(client.is_closed)
        self.assertTrue(0.2 <= elapsed < 1.0, f"closed after {elapsed:.2f}s")

    async def test_rate_limit_ignores_spoofed_forwarded_for(self) -> None:
        """
        Without trusted proxies, a client cannot escape the rate limit by
        sending a different X-Forwarded-For each time.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], max_requests_per_minute=2)
        statuses = []
        for index in range(4):
            headers = [HOST, (b"X-Forwarded-For", b"198.51.100.%d" % index)]
            response = await self.fetch(build_request(headers=headers))
            statuses.append(response.status)
        self.assertEqual(statuses, [200, 200, 429, 429])


class ConnectionLifecycleTests(IntegrationTestCase):
    """
    Connections opened, kept, tunnelled and closed on either side.
    """

    async def test_tunnel_closed_by_client(self) -> None:
        """
        When the client closes an upgraded connection, the upstream side of
        the tunnel is closed too.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        head = build_request(
            target=b"/upgrade", headers=[HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"echo")]
        )
        client.send(head + b"early bytes")
        await client.wait_for(lambda: client.tunnel == b"early bytes")
        self.assertEqual([r.status for r in client.responses], [101])
        await self.close(client)
        await self.eventually(
            lambda: upstream.closed_connections == 1, message="upstream tunnel side stayed open"
        )

    async def test_tunnel_closed_by_upstream(self) -> None:
        """
        When the upstream closes an upgraded connection, the client
        connection is closed after the bytes already sent.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        head = build_request(
            target=b"/upgrade", headers=[HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"echo")]
        )
        client.send(head + b"last words")
        await client.wait_for(lambda: client.tunnel == b"last words")
        [protocol] = upstream.connections
        transport: Any = protocol.transport
        transport.loseConnection()
        await client.wait_for(lambda: client.is_closed)
        self.assertTrue(client.is_closed)
        self.assertEqual(client.tunnel, b"last words")

    async def test_upgrade_refused(self) -> None:
        """
        An Upgrade request that the upstream answers with an ordinary 200 is
        relayed as a normal response and the connection stays usable.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        head = build_request(
            target=b"/plain", headers=[HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"echo")]
        )
        [refused] = await self.exchange(client, head, b"GET")
        self.assertEqual(refused.status, 200)
        self.assertTrue(refused.body.startswith(b"only GET /plain HTTP/1.1"))
        [after] = await self.exchange(client, build_request(target=b"/after"), b"GET")
        self.assertEqual(after.status, 200)

    async def test_client_gone_while_waiting_for_head(self) -> None:
        """
        A client that resets its connection while the upstream is still
        working frees the upstream connection at once.
        """
        upstream = self.start_upstream("slow", delay=3.0)
        service = self.start_balancer([upstream])
        client = await self.connect()
        client.send(build_request(target=b"/slow"), b"GET")
        await self.eventually(lambda: bool(upstream.requests), message="request never arrived")
        started = time.monotonic()
        # A reset, not a FIN: a FIN is a half-close, and a half-closed
        # client is still answered (test_half_closed_client_still_answered).
        transport: Any = client.transport
        transport.abortConnection()
        await client.closed
        await self.eventually(
            lambda: upstream.closed_connections == 1, timeout=2.0, message="upstream kept open"
        )
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(service.registry.upstreams[0].in_flight, 0)

    async def test_half_closed_client_still_answered(self) -> None:
        """
        A client that shuts down its sending side right after its request
        (as C{nc -N} does) still gets the response.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        client.send(b"GET /half HTTP/1.0\r\n\r\n", b"GET")
        transport: Any = client.transport
        transport.loseWriteConnection()
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual([r.status for r in client.responses], [200])

    async def test_http10_keep_alive(self) -> None:
        """
        An HTTP/1.0 client asking for keep-alive gets C{Connection:
        keep-alive} with a length and can send a second request.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        request = b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        [first] = await self.exchange(client, request, b"GET")
        self.assertEqual(first.header(b"connection"), b"keep-alive")
        self.assertIsNotNone(first.header(b"content-length"))
        [second] = await self.exchange(client, request, b"GET")
        self.assertEqual(second.status, 200)

    async def test_head_of_chunked_resource(self) -> None:
        """
        A HEAD answered with C{Transfer-Encoding: chunked} and no body
        completes at once, and the connection stays usable.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        data = build_request(b"HEAD", b"/large/5000?chunked") + build_request(target=b"/next")
        head, get = await self.exchange(client, data, b"HEAD", b"GET")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(get.status, 200)
        self.assertTrue(get.body.startswith(b"only GET /next HTTP/1.1"))

    async def test_many_concurrent_clients(self) -> None:
        """
        Two hundred clients connected at once each get their own answer.
        """
        upstreams = [self.start_upstream(f"u{n}") for n in range(2)]
        self.start_balancer(upstreams)

        async def one(number: int) -> bytes:
            """
            Fetch one request on its own connection; return the body.
            """
            response = await self.fetch(build_request(target=b"/c%d" % number))
            return response.body

        bodies = await gatherResults([Deferred.fromCoroutine(one(n)) for n in range(200)])
        for number, body in enumerate(bodies):
            self.assertIn(b" GET /c%d HTTP/1.1 0 " % number, body)
        self.assertEqual(sum(len(u.requests) for u in upstreams), 200)


class BoundaryTests(IntegrationTestCase):
    """
    Limits at their exact edges, and connections the upstream does not keep.
    """

    def head_of_size(self, size: int) -> bytes:
        """
        A GET whose head (request line and fields, without the blank line
        that ends it) is exactly C{size} bytes.
        """
        base = b"GET / HTTP/1.1\r\nHost: balancer.test\r\nX-Pad: "
        return base + b"p" * (size - len(base)) + b"\r\n\r\n"

    async def test_head_at_limit_accepted(self) -> None:
        """
        A head of exactly 16384 bytes is accepted and one of 16385 gets 431.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        accepted = await self.fetch(self.head_of_size(16384))
        rejected = await self.fetch(self.head_of_size(16385))
        self.assertEqual((accepted.status, rejected.status), (200, 431))
        self.assertEqual(len(upstream.requests), 1)

    async def test_upstream_connection_close_honoured(self) -> None:
        """
        Five POSTs on one client connection to an upstream that closes after
        every response all succeed, each on a new upstream connection.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        for index in range(5):
            [response] = await self.exchange(
                client, build_request(b"POST", b"/close-after", body=b"n%d" % index), b"POST"
            )
            self.assertEqual((response.status, response.body), (200, b"closed"))
        self.assertEqual(upstream.accepted, 5)
        self.assertEqual(len(upstream.requests), 5)

    async def test_pipelined_after_rate_limited_body(self) -> None:
        """
        After a rate-limited POST whose body is discarded, pipelined requests
        on the same connection are still parsed and answered in order.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], max_requests_per_minute=1)
        client = await self.connect()
        data = (
            build_request(b"POST", b"/one", body=b"first body")
            + build_request(b"POST", b"/two", body=b"GET /smuggled HTTP/1.1\r\n\r\n")
            + build_request(target=b"/three")
        )
        responses = await self.exchange(client, data, b"POST", b"POST", b"GET")
        self.assertEqual([r.status for r in responses], [200, 429, 429])
        self.assertEqual([r.target for r in upstream.requests], [b"/one"])
        self.assertFalse(client.is_closed)


class PoolPolicyTests(IntegrationTestCase):
    """
    The pool's rules for reuse, retry and caps, seen from outside.
    """

    async def test_keep_alive_race_get_retried(self) -> None:
        """
        A GET sent on a reused connection that the upstream closes without
        answering is retried once on a fresh connection and answered 200.
        """
        upstream = self.start_upstream("racy", mode="close_reused")
        service = self.start_balancer([upstream])
        first = await self.fetch(build_request(target=b"/a"))
        second = await self.fetch(build_request(target=b"/b"))
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual([r.target for r in upstream.requests], [b"/a", b"/b", b"/b"])
        self.assertEqual(upstream.accepted, 2)
        self.assertEqual(service.stats.reuse_retries, 1)

    async def test_keep_alive_race_post_not_replayed(self) -> None:
        """
        A POST lost the same way is answered 502 and never sent twice, while
        a POST carrying an Idempotency-Key is retried.
        """
        upstream = self.start_upstream("racy", mode="close_reused")
        self.start_balancer([upstream])
        first = await self.fetch(build_request(b"POST", b"/a", body=b"1"), b"POST")
        lost = await self.fetch(build_request(b"POST", b"/b", body=b"2"), b"POST")
        self.assertEqual((first.status, lost.status), (200, 502))
        self.assertEqual([r.target for r in upstream.requests], [b"/a", b"/b"])
        await self.fetch(build_request(b"POST", b"/c", body=b"3"), b"POST")
        keyed = await self.fetch(
            build_request(b"POST", b"/d", [HOST, (b"Idempotency-Key", b"k1")], body=b"4"), b"POST"
        )
        self.assertEqual(keyed.status, 200)
        self.assertEqual([r.target for r in upstream.requests][-2:], [b"/d", b"/d"])

    async def test_connection_cap_queue_timeout(self) -> None:
        """
        With one connection allowed per upstream and that one busy, a second
        request waits in the queue and gets 503 when the queue timeout passes.
        """
        upstream = self.start_upstream("slow", delay=2.0)
        self.start_balancer(
            [upstream], pool_max_connections_per_upstream=1, queue_timeout=0.3
        )
        busy = await self.connect()
        busy.send(build_request(target=b"/busy"), b"GET")
        await self.eventually(lambda: bool(upstream.requests), message="first request not sent")
        started = time.monotonic()
        queued = await self.fetch(build_request(target=b"/queued"))
        elapsed = time.monotonic() - started
        self.assertEqual(queued.status, 503)
        self.assertLess(elapsed, 1.5)
        self.assertEqual(upstream.accepted, 1)
        self.assertEqual([r.target for r in upstream.requests], [b"/busy"])


class RateLimitHeaderTests(IntegrationTestCase):
    """
    Rate limiting by forwarded address and its response headers.
    """

    async def test_trusted_proxy_keys_by_forwarded_address(self) -> None:
        """
        Behind a trusted proxy, clients are limited by their X-Forwarded-For
        address, each with its own budget.
        """
        upstream = self.start_upstream("only")
        self.start_balancer(
            [upstream], max_requests_per_minute=1, trusted_proxies=("127.0.0.1/32",)
        )
        statuses = []
        for address in (b"198.51.100.1", b"198.51.100.2", b"198.51.100.1"):
            response = await self.fetch(
                build_request(headers=[HOST, (b"X-Forwarded-For", address)])
            )
            statuses.append(response.status)
        self.assertEqual(statuses, [200, 200, 429])

    async def test_rate_limit_headers(self) -> None:
        """
        With rate limit headers on, answers carry RateLimit-Limit and a
        decreasing RateLimit-Remaining.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream], max_requests_per_minute=3, rate_limit_headers=True)
        remaining = []
        for index in range(4):
            response = await self.fetch(build_request(target=b"/h%d" % index))
            self.assertEqual(response.header(b"ratelimit-limit"), b"3")
            remaining.append((response.status, response.header(b"ratelimit-remaining")))
        self.assertEqual(remaining, [(200, b"2"), (200, b"1"), (200, b"0"), (429, b"0")])


class ResponseEdgeTests(IntegrationTestCase):
    """
    Unusual but legal (or dangerous) upstream responses.
    """

    async def test_early_hints_relayed_to_http11(self) -> None:
        """
        A 103 before the final response reaches an HTTP/1.1 client, not an
        HTTP/1.0 one, and both get the final 200.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        modern = await self.connect()
        [final] = await self.exchange(modern, build_request(target=b"/early"), b"GET")
        self.assertEqual((final.status, final.body), (200, b"ok"))
        self.assertEqual([r.status for r in modern.informational], [103])
        self.assertEqual(modern.informational[0].header(b"link"), b"</style.css>; rel=preload")
        legacy = await self.connect()
        legacy.send(b"GET /early HTTP/1.0\r\n\r\n", b"GET")
        await legacy.wait_for(lambda: legacy.is_closed)
        self.assertEqual([(r.status, r.body) for r in legacy.responses], [(200, b"ok")])
        self.assertEqual(legacy.informational, [])

    async def test_response_with_length_and_chunked(self) -> None:
        """
        A response framed both by Content-Length and chunked is read as
        chunked (RFC 9112 section 6.3) and reaches the client with the
        chunked framing only.
        """
        upstream = self.start_upstream("only")
        self.start_balancer([upstream])
        client = await self.connect()
        [response] = await self.exchange(client, build_request(target=b"/cl-te"), b"GET")
        framing = [
            (n.lower(), v)
            for n, v in response.headers
            if n.lower() in (b"content-length", b"transfer-encoding")
        ]
        self.assertEqual(framing, [(b"transfer-encoding", b"chunked")])
        self.assertEqual((response.status, response.body), (200, b"abc"))
        [after] = await self.exchange(client, build_request(target=b"/after"), b"GET")
        self.assertEqual(after.status, 200)
        self.assertEqual(upstream.accepted, 2)


class AddressTests(IntegrationTestCase):
    """
    Upstreams given by hostname or IPv6 literal.
    """

    async def test_hostname_upstream(self) -> None:
        """
        An upstream given as C{localhost:PORT} is resolved and reached.
        """
        upstream = self.start_upstream("named")
        self.start_balancer([f"localhost:{upstream.port}"])
        response = await self.fetch(build_request(target=b"/named"))
        self.assertEqual(response.status, 200)
        [received] = upstream.requests
        self.assertEqual(received.request_line, b"GET /named HTTP/1.1")

    async def test_ipv6_upstream(self) -> None:
        """
        An upstream given as C{[::1]:PORT} is reached, and a request without a
        Host header gets C{Host: [::1]:PORT}.
        """
        if not socket.has_ipv6:
            raise SkipTest("no IPv6 on this machine")
        try:
            upstream = self.start_upstream("six", interface="::1")
        except CannotListenError as error:
            raise SkipTest(f"cannot listen on ::1: {error}") from error
        self.start_balancer([upstream])
        self.assertEqual(upstream.address, f"[::1]:{upstream.port}")
        response = await self.fetch(b"GET /six HTTP/1.0\r\n\r\n")
        self.assertEqual(response.status, 200)
        [received] = upstream.requests
        self.assertEqual(received.header(b"host"), upstream.address.encode())


def listen_queue(port: int) -> int:
    """
    The backlog of the TCP socket listening on C{127.0.0.1:port}, as the
    kernel reports it (C{ss}'s C{Send-Q} column for a listening socket).
    """
    if shutil.which("ss") is None:
        raise SkipTest("needs ss (iproute2) to read a listening socket's backlog")
    output = subprocess.run(
        ["ss", "-H", "-l", "-t", "-n", f"sport = :{port}"],
        capture_output=True,
        check=True,
        text=True,
        timeout=10,
    ).stdout
    [line] = [line for line in output.splitlines() if f"127.0.0.1:{port} " in line]
    return int(line.split()[2])


class ConnectionLimitTests(IntegrationTestCase):
    """
    C{--max-connections-per-client} and C{--listen-backlog} on real sockets.
    """

    async def test_connections_per_client(self) -> None:
        """
        With a limit of 2, the third connection from 127.0.0.1 gets 503 and
        is closed while the first two are served; once one of them closes,
        a new connection is served.
        """
        upstream = self.start_upstream("limited")
        service = self.start_balancer([upstream], max_connections_per_client=2)
        clients = [await self.connect(), await self.connect()]
        await self.eventually(lambda: len(service.factory.connections) == 2)
        third = await self.connect()
        third.expect(b"GET")
        await third.closed
        [refused] = third.responses
        self.assertEqual(refused.status, 503)
        self.assertIn(b"retry-after", [name.lower() for name, _ in refused.headers])
        self.assertEqual(service.stats.refused_per_client, 1)
        for client in clients:
            [served] = await self.exchange(client, build_request(target=b"/held"), b"GET")
            self.assertEqual(served.status, 200)
        await self.close(clients[0])
        await self.eventually(lambda: len(service.factory.connections) == 1)
        fourth = await self.connect()
        [served] = await self.exchange(fourth, build_request(target=b"/again"), b"GET")
        self.assertEqual(served.status, 200)
        self.assertEqual(service.factory.per_client, {"127.0.0.1": 2})
        self.assertTrue(
            all(isinstance(c, ClientConnection) for c in service.factory.connections)
        )
        self.assertEqual(service.stats.refused_per_client, 1)

    async def test_listen_backlog(self) -> None:
        """
        The balancer's and the admin's sockets listen with
        C{--listen-backlog} (the kernel reports the queue length it was
        given), and so does a socket a master binds for its workers.
        """
        upstream = self.start_upstream("queued")
        service = self.start_balancer(
            [upstream], listen_backlog=137, admin_bind="tcp:0:interface=127.0.0.1"
        )
        await self.eventually(lambda: bool(service.admin_ports))
        admin = service.admin_ports[0].getHost()
        assert isinstance(admin, IPv4Address)
        self.assertEqual((listen_queue(self.port), listen_queue(admin.port)), (137, 137))
        shared = bind_listener(
            inspect_listener(with_backlog("tcp:0:interface=127.0.0.1", 138))
        )
        self.addCleanup(shared.close)
        self.assertEqual(listen_queue(shared.getsockname()[1]), 138)


class SnapshotTests(IntegrationTestCase):
    """
    The service's counters.
    """

    async def test_counters_after_requests(self) -> None:
        """
        After three requests on one connection the snapshot counts three
        requests, three 2xx answers, one upstream connection opened and two
        reuses, and the upstream as up.
        """
        upstream = self.start_upstream("counted")
        service = self.start_balancer([upstream])
        client = await self.connect()
        for index in range(3):
            await self.exchange(client, build_request(target=b"/c%d" % index), b"GET")
        await self.close(client)
        snapshot = service.snapshot()
        self.assertEqual(snapshot["requests"], 3)
        self.assertEqual(snapshot["responses"], {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0})
        self.assertEqual(snapshot["pool_connections_opened"], 1)
        self.assertEqual(snapshot["pool_connections_reused"], 2)
        self.assertEqual(snapshot["upstreams_up"], [upstream.address])
