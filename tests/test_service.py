"""
The service tree on a memory reactor: one endpoint service per listener,
listening that completes late, failures to listen, and the stop order
(listeners, then the drain, then the pool).
"""

from __future__ import annotations

import dataclasses

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.config import BalancerConfig, CacheConfig, UpstreamSpec
from balancebeam.relay.client import ClientConnection
from balancebeam.service import (
    BalancerService,
    ListenerService,
    ListenFailed,
    _ReportingEndpoint,
)
from tests.helpers import response


def _config(*listen: str) -> BalancerConfig:
    return BalancerConfig(
        upstreams=(UpstreamSpec("127.0.0.1", 8081),),
        listen=listen,
        active_health_check_interval=0.0,
    )


@implementer(IListeningPort)
class _FakePort:
    """
    A listening port that records being stopped.
    """

    def __init__(self) -> None:
        self.stopped = False

    def startListening(self) -> None:
        """Already listening."""

    def stopListening(self) -> None:
        """Record the stop."""
        self.stopped = True

    def getHost(self) -> IPv4Address:
        """The address it pretends to listen on."""
        return IPv4Address("TCP", "127.0.0.1", 4321)


@implementer(IStreamServerEndpoint)
class _LateEndpoint:
    """
    A server endpoint whose C{listen} completes when the test says so.
    """

    def __init__(self) -> None:
        self.listening: Deferred[IListeningPort] = Deferred()
        self.factory: IProtocolFactory | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Remember the factory; fire later."""
        self.factory = factory
        return self.listening


@implementer(IStreamServerEndpoint)
class _Refusing:
    """
    A server endpoint that cannot listen: its address is in use.
    """

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Fail at once."""
        failed: Deferred[IListeningPort] = Deferred()
        failed.errback(CannotListenError("127.0.0.1", 1100, OSError("in use")))
        return failed


class ListenerTests(SynchronousTestCase):
    """
    Listeners are Twisted endpoint services.
    """

    def test_one_endpoint_service_per_listener(self) -> None:
        """
        Every C{--listen}/C{--bind} becomes a L{StreamServerEndpointService}
        serving the relay factory, and they are the last children, so they
        stop first.
        """
        reactor = MemoryReactorClock()
        service = BalancerService(_config("tcp:1100", "tcp:1101"), reactor)
        children = list(service)
        listeners = [c for c in children if isinstance(c, StreamServerEndpointService)]
        self.assertEqual(len(listeners), 2)
        self.assertEqual(children[-2:], listeners)
        self.assertTrue(all(listener.factory is service.factory for listener in listeners))
        service.privilegedStartService()
        service.startService()
        self.assertEqual(sorted(server[0] for server in reactor.tcpServers), [1100, 1101])
        self.assertEqual(len(service.ports), 2)

    def test_listen_backlog(self) -> None:
        """
        Every listener, the admin's included, listens with a queue of
        C{--listen-backlog} connections (511 by default, not Twisted's 50),
        unless its endpoint gives its own.
        """
        for backlog in (None, 1024):
            reactor = MemoryReactorClock()
            config = dataclasses.replace(
                _config("tcp:1100", "tcp:1101:backlog=7", "unix:/nonexistent/bb.sock"),
                admin_bind="tcp:9100:interface=127.0.0.1",
            )
            if backlog is not None:
                config = dataclasses.replace(config, listen_backlog=backlog)
            expected = 511 if backlog is None else backlog
            service = BalancerService(config, reactor)
            service.privilegedStartService()
            service.startService()
            self.addCleanup(service.stopService)
            self.assertEqual(
                sorted((port, queue) for port, _, queue, _ in reactor.tcpServers),
                [(1100, expected), (1101, 7), (9100, expected)],
            )
            [(path, _, queue, _, _)] = reactor.unixServers
            self.assertEqual((path, queue), ("/nonexistent/bb.sock", expected))

    def test_listening_that_completes_later(self) -> None:
        """
        A listener whose endpoint answers later is started without error,
        and its port is known (and logged) once it listens.
        """
        late = _LateEndpoint()
        ports: list[IListeningPort] = []
        listener = ListenerService(_ReportingEndpoint(late, "late:1", ports.append), object())
        listener.privilegedStartService()
        listener.startService()
        self.assertEqual(ports, [])
        port = _FakePort()
        late.listening.callback(port)
        self.assertEqual(ports, [port])
        self.successResultOf(listener.stopService())
        self.assertTrue(port.stopped)

    def test_listen_failure_is_one_clear_error(self) -> None:
        """
        A listener that fails at once makes the start fail with a message
        naming the endpoint; ports already listening are closed.
        """

        reactor = MemoryReactorClock()
        service = BalancerService(_config("tcp:1100", "tcp:1101"), reactor)
        last = [c for c in service if isinstance(c, ListenerService)][-1]
        last.endpoint = _ReportingEndpoint(_Refusing(), "tcp:1101", service.ports.append)
        error = self.assertRaises(ListenFailed, service.privilegedStartService)
        self.assertIn("cannot listen on tcp:1101", str(error))
        self.assertEqual(service.ports, [])

    def test_exit_on_listen_failure(self) -> None:
        """
        Under twistd the same failure is a C{SystemExit} with one line.
        """

        reactor = MemoryReactorClock()
        service = BalancerService(_config("tcp:1100"), reactor, exit_on_listen_failure=True)
        [listener] = [c for c in service if isinstance(c, ListenerService)]
        listener.endpoint = _ReportingEndpoint(_Refusing(), "tcp:1100", service.ports.append)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertTrue(str(error.code).startswith("balancebeam: cannot listen on tcp:1100"))


class StopOrderTests(SynchronousTestCase):
    """
    Stopping closes the listeners first, lets requests finish, then closes
    the pool.
    """

    def test_request_in_progress_finishes_before_the_pool_closes(self) -> None:
        """
        A request in flight when the service stops is answered on its
        upstream connection; the stop completes only afterwards, once the
        pool has closed that connection; the listener was closed at once.
        """
        reactor = MemoryReactorClock()
        service = BalancerService(_config("tcp:1100"), reactor)
        service.privilegedStartService()
        service.startService()
        client = service.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        assert isinstance(client, ClientConnection)
        client_transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        client.makeConnection(client_transport)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        host, port, factory, _, _ = reactor.tcpClients[0]
        upstream = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert upstream is not None
        upstream_transport = StringTransport()
        upstream.makeConnection(upstream_transport)

        [listener] = [c for c in service if isinstance(c, ListenerService)]
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.assertFalse(listener.running)
        self.assertFalse(upstream_transport.disconnecting)
        upstream.dataReceived(response(b"late answer"))
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nlate answer"))
        client.connectionLost(None)  # type: ignore[arg-type]  # the drain closed it
        self.assertTrue(upstream_transport.disconnecting)
        upstream.connectionLost(None)  # type: ignore[arg-type]  # the pool closed it
        self.successResultOf(stopped)


class FeatureCountersTests(SynchronousTestCase):
    """
    The firewall's and the cache's counters reach the admin.
    """

    def test_cache_counters_in_metrics_names(self) -> None:
        """
        With the cache on, its counters are a feature of the admin: counters
        with C{_total}, its size a gauge.
        """
        config = BalancerConfig(
            upstreams=(UpstreamSpec("127.0.0.1", 8081),),
            listen=("tcp:1100",),
            active_health_check_interval=0.0,
            cache=CacheConfig(size=1024 * 1024),
        )
        service = BalancerService(config, MemoryReactorClock())
        [feature] = service.feature_counters
        self.assertEqual(feature.name, "cache")
        snapshot = feature.snapshot()
        self.assertEqual(snapshot["hits_total"], 0)
        self.assertIn("bytes", snapshot)
        self.assertNotIn("bytes_total", snapshot)
