# -*- test-case-name: tests.test_demo -*-
"""
Built-in demo upstreams for C{twistd balancebeam --demo}.

Each demo upstream is a tiny web server on 127.0.0.1 that answers every
request with a line naming itself, so a user can watch requests being
spread over several upstreams without running servers of their own.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from balancebeam.config import UpstreamSpec

log = Logger()

DEMO_INTERFACE = "127.0.0.1"
"""The loopback address the demo upstreams listen on."""

HEALTH_PATH = b"/health"
"""The path a demo upstream answers with C{200 ok}, for health probes."""


class DemoResource(Resource):
    """
    Answers every method and path with a short text naming this upstream.

    C{GET /health} (any method, in fact) answers C{ok}.

    @ivar number: which demo upstream this is, counting from 1.
    @ivar address: the C{host:port} it listens on, shown in answers.
    """

    isLeaf = True

    def __init__(self, number: int, address: str) -> None:
        super().__init__()
        self.number = number
        self.address = address

    def render(self, request: Request) -> bytes:
        """
        Answer C{request} with C{text/plain}: C{ok} for C{/health}, else a
        greeting naming this upstream and echoing the method and target.
        """
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if request.path == HEALTH_PATH:
            return b"ok\n"
        method = request.method.decode("ascii", "replace")
        target = request.uri.decode("utf-8", "replace")
        text = (
            f"hello from demo upstream {self.number} ({self.address}), "
            f"you asked for {method} {target}\n"
        )
        return text.encode("utf-8")


class DemoSite(Site):
    """
    A L{Site} that writes no access log: the balancer's C{--access-log}
    covers requests, and health probes would otherwise fill the log. Nor
    does it log when its factory starts and stops.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        """
        Log nothing.
        """


class DemoUpstreamsService(Service):
    """
    Owns the listening ports of the demo upstreams.

    The ports already listen when this service is created;
    L{stopService} closes them.

    @ivar ports: the demo upstreams' listening ports, in order.
    """

    def __init__(self, ports: list[IListeningPort]) -> None:
        self.ports = ports

    def stopService(self) -> Deferred[None]:
        """
        Stop listening on every demo port.

        @return: fires when all ports are closed.
        """
        Service.stopService(self)
        closing = [maybeDeferred(port.stopListening) for port in self.ports]
        done: Deferred[Any] = gatherResults(closing, consumeErrors=True)
        return done.addCallback(lambda _: None)


def demo_site(resource: DemoResource, reactor: IReactorTime) -> DemoSite:
    """
    Wrap C{resource} in a web site that keeps no access log and runs its
    connection timeouts on C{reactor}.
    """
    return DemoSite(resource, reactor=reactor)


def start_demo_upstreams(
    reactor: Any, count: int = 3
) -> tuple[list[UpstreamSpec], DemoUpstreamsService]:
    """
    Start C{count} demo upstreams listening on ephemeral ports of 127.0.0.1.

    They listen at once (not when the returned service starts), so their
    addresses can go into the balancer's configuration.

    @param reactor: the reactor to listen with and to run the demo servers'
        timeouts on (an C{IReactorTCP} and C{IReactorTime} provider).
    @param count: how many demo upstreams to start.
    @return: one L{UpstreamSpec} per demo upstream, in order, and the service
        whose C{stopService} closes their ports.
    @raise twisted.internet.error.CannotListenError: if listening fails (the
        ports already opened are closed first).
    """
    ports: list[IListeningPort] = []
    specs: list[UpstreamSpec] = []
    try:
        for number in range(1, count + 1):
            resource = DemoResource(number, f"{DEMO_INTERFACE}:0")
            site = demo_site(resource, reactor)
            port: IListeningPort = reactor.listenTCP(0, site, interface=DEMO_INTERFACE)
            ports.append(port)
            address = port.getHost()
            if not isinstance(address, IPv4Address):
                raise TypeError(f"listenTCP gave a {address!r}, not an IPv4 address")
            spec = UpstreamSpec(DEMO_INTERFACE, address.port)
            resource.address = spec.name
            specs.append(spec)
            log.info(
                "demo upstream {number} listening on {address}",
                number=number,
                address=spec.name,
            )
    except BaseException:
        for port in ports:
            port.stopListening()
        raise
    return specs, DemoUpstreamsService(ports)
