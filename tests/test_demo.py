"""
Tests for L{balancebeam.demo}: the demo upstreams behind C{--demo}.
"""

from __future__ import annotations

from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.iweb import IResponse

from balancebeam.config import UpstreamSpec
from balancebeam.demo import DemoResource, demo_site, start_demo_upstreams


def exchange(resource: DemoResource, request: bytes) -> bytes:
    """
    Feed C{request} to a demo site over a L{StringTransport} and return
    everything it wrote back.
    """
    site = demo_site(resource, Clock())
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    response = transport.value()
    protocol.connectionLost(Failure(ConnectionRefusedError("test over")))
    return response


def split_response(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """
    Split a single HTTP response into status line, headers and body.
    """
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


_RESPONSE_DONE = Failure(ResponseDone())

class BodyCollector(Protocol):
    """
    Collects a response body and fires L{done} with it once it is complete.

    @ivar done: fires with the body, or fails if the body was cut short.
    """

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        """
        Keep a part of the body.
        """
        self._parts.append(data)

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
        """
        Fire L{done} with the body when it ended cleanly, else with the failure.
        """
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


def read_body(response: IResponse) -> Deferred[bytes]:
    """
    Read the whole body of C{response}.
    """
    collector = BodyCollector()
    response.deliverBody(collector)
    return collector.done


class DemoResourceTests(SynchronousTestCase):
    """
    L{DemoResource} answers every request with a line naming itself.
    """

    def test_names_itself(self) -> None:
        """
        A GET is answered with 200 and a line naming the upstream and the request.
        """
        status, headers, body = split_response(
            exchange(
                DemoResource(2, "127.0.0.1:8082"),
                b"GET /anything?x=1 HTTP/1.1\r\nHost: demo\r\n\r\n",
            )
        )
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertEqual(
            body,
            b"hello from demo upstream 2 (127.0.0.1:8082), you asked for GET /anything?x=1\n",
        )
        self.assertEqual(headers[b"content-length"], str(len(body)).encode())

    def test_any_method(self) -> None:
        """
        Methods other than GET get the same kind of answer, naming the method.
        """
        _, _, body = split_response(
            exchange(
                DemoResource(1, "127.0.0.1:9"),
                b"POST /form HTTP/1.1\r\nHost: demo\r\nContent-Length: 3\r\n\r\nabc",
            )
        )
        self.assertEqual(
            body, b"hello from demo upstream 1 (127.0.0.1:9), you asked for POST /form\n"
        )

    def test_head_has_no_body(self) -> None:
        """
        A HEAD request gets the headers of a GET and no body.
        """
        status, headers, body = split_response(
            exchange(DemoResource(1, "127.0.0.1:9"), b"HEAD /x HTTP/1.1\r\nHost: demo\r\n\r\n")
        )
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b"")
        expected = b"hello from demo upstream 1 (127.0.0.1:9), you asked for HEAD /x\n"
        self.assertEqual(headers[b"content-length"], str(len(expected)).encode())

    def test_health(self) -> None:
        """
        C{/health} answers 200 C{ok}.
        """
        status, _, body = split_response(
            exchange(DemoResource(3, "127.0.0.1:9"), b"GET /health HTTP/1.1\r\nHost: d\r\n\r\n")
        )
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"ok\n"))


class StartDemoUpstreamsTests(TestCase):
    """
    L{start_demo_upstreams} starts real servers on loopback.
    """

    async def test_serves_and_stops(self) -> None:
        """
        Each demo upstream listens on its own loopback port and answers with
        its own number; after C{stopService} the ports refuse connections.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        specs, service = start_demo_upstreams(global_reactor, count=2)
        stopped = False

        async def stop() -> None:
            if not stopped:
                await service.stopService()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        self.assertEqual([spec.host for spec in specs], ["127.0.0.1", "127.0.0.1"])
        self.assertNotEqual(specs[0].port, specs[1].port)
        self.assertEqual(
            [
                (e["log_format"], e["number"], e["address"])
                for e in events
                if e.get("log_namespace") == "balancebeam.demo"
            ],
            [
                ("demo upstream {number} listening on {address}", 1, specs[0].name),
                ("demo upstream {number} listening on {address}", 2, specs[1].name),
            ],
        )

        pool = HTTPConnectionPool(global_reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(global_reactor, pool=pool)
        for number, spec in enumerate(specs, start=1):
            response = await agent.request(b"GET", f"http://{spec.name}/anything".encode())
            self.assertEqual(response.code, 200)
            body = await read_body(response)
            self.assertEqual(
                body,
                f"hello from demo upstream {number} ({spec.name}), "
                f"you asked for GET /anything\n".encode(),
            )

        await service.stopService()
        stopped = True
        for spec in specs:
            await self.assertFailure(
                connectProtocol(
                    TCP4ClientEndpoint(global_reactor, spec.host, spec.port), Protocol()
                ),
                ConnectionRefusedError,
            )

    def test_spec_type(self) -> None:
        """
        The returned specs are plain L{UpstreamSpec}s with weight 1.
        """
        specs, service = start_demo_upstreams(global_reactor, count=1)
        self.addCleanup(service.stopService)
        self.assertEqual(specs, [UpstreamSpec("127.0.0.1", specs[0].port, 1)])
