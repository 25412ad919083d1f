"""
Workers and HTTPS (C{--tls-bind} with C{--workers}): the master binds the
HTTPS sockets and shares them; each worker serves them with TLS from its own
certificate store, leaves C{SIGHUP} to the master, and counts its HTTPS
connections. (Kept apart from the other worker tests: these need pyOpenSSL
and trustme, which the PyPy run of the unit tests does not have.)
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import trustme
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.tls.layer import DirectTLSFactory
from balancebeam.workers.control import REPORT, STATS
from balancebeam.workers.spec import ListenerFd
from tests.test_workers_fakes import certificate_file
from tests.test_workers_master import BASE, MasterScenario, log_events, logged
from tests.test_workers_worker import WorkerScenario


class MasterHTTPSTests(SynchronousTestCase):
    """
    The master binds and shares the HTTPS sockets.
    """

    def https_values(self) -> dict[str, object]:
        """
        C{--tls-bind 127.0.0.1:1443} with a certificate.
        """
        pem = certificate_file(self.mktemp(), trustme.CA(), "example.test")
        return {"tls-bind": ["127.0.0.1:1443"], "tls-cert": [pem]}

    def test_https_listeners_shared(self) -> None:
        """
        The C{--tls-bind} sockets are bound by the master and given to every
        worker after the plain ones, marked HTTPS (not C{ssl:}); the
        workers keep the TLS options, to load the certificates.
        """
        events = log_events(self)
        scenario = MasterScenario(self, **self.https_values())
        launched = scenario.start(ready=False)
        plain, https = scenario.binder.opened
        self.assertEqual((plain.getsockname()[1], https.getsockname()[1]), (1100, 1443))
        for worker in launched:
            self.assertEqual(
                (worker.child_fds[5], worker.child_fds[6]), (plain.fileno(), https.fileno())
            )
            self.assertEqual(
                [(x.fd, x.description, x.tls, x.https) for x in worker.spec.listeners],
                [
                    (5, "tcp:1100:interface=127.0.0.1", False, False),
                    (6, "tcp:1443:interface=127.0.0.1", False, True),
                ],
            )
            self.assertEqual(worker.spec.values["tls-bind"], ["127.0.0.1:1443"])
        listening = logged(events, "Listening for requests on")
        self.assertEqual(
            [(e["address"], e["https"]) for e in listening],
            [("127.0.0.1:1100", ""), ("127.0.0.1:1443", "HTTPS, ")],
        )

    def test_https_reuse_port(self) -> None:
        """
        With C{--reuse-port} each slot gets an HTTPS socket of its own too.
        """
        scenario = MasterScenario(self, **{"reuse-port": True}, **self.https_values())
        launched = scenario.start(ready=False)
        opened = scenario.binder.opened
        self.assertEqual([s.getsockname()[1] for s in opened], [1100, 1100, 1443, 1443])
        self.assertIsNone(scenario.master.table)
        for slot, worker in enumerate(launched):
            self.assertEqual(
                (worker.child_fds[4], worker.child_fds[5]),
                (opened[slot].fileno(), opened[2 + slot].fileno()),
            )
            self.assertEqual([x.https for x in worker.spec.listeners], [False, True])

    def test_https_listener_change_refused(self) -> None:
        """
        Changing the HTTPS listeners needs a restart too.
        """
        events = log_events(self)
        pem = certificate_file(self.mktemp(), trustme.CA(), "example.test")
        https = {"tls-bind": ["127.0.0.1:1443"], "tls-cert": [pem]}
        scenario = MasterScenario(self, **https)
        scenario.start()
        scenario.next_values = {**BASE, **https, "tls-bind": ["127.0.0.1:1444"]}
        self.assertFalse(self.successResultOf(scenario.master.reload()))
        self.assertEqual(len(scenario.launcher.launched), 2)
        [event] = logged(events, "reload refused")
        self.assertEqual(event["problem"], "changing the HTTPS listeners needs a restart")


class WorkerHTTPSTests(SynchronousTestCase):
    """
    A worker serves a shared HTTPS socket.
    """

    def https_scenario(self) -> tuple[WorkerScenario, int]:
        """
        A worker given an HTTPS listener (with C{--tls-bind} and
        C{--tls-cert} among its values) on a pipe standing in for the
        socket; the read end is the listener's descriptor.
        """
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, write_end)
        pem = certificate_file(self.mktemp(), trustme.CA(), "example.test")
        listener = ListenerFd(
            read_end, socket.AF_INET, "tcp:8443:interface=127.0.0.1", https=True
        )
        values = {"tls-bind": ["127.0.0.1:8443"], "tls-cert": [pem]}
        return WorkerScenario(listeners=(listener,), values=values), read_end

    def test_https_listener(self) -> None:
        """
        An HTTPS listener is served with the balancer's HTTPS factory under
        TLS from its certificate store; the worker binds nothing itself.
        """
        scenario, read_end = self.https_scenario()
        service = scenario.service
        self.assertIsNotNone(service.certificates)
        self.assertEqual(service.config.tls.listen, ())
        scenario.health()
        [(fd, family, factory)] = scenario.reactor.adoptedPorts
        self.assertEqual((fd, family), (read_end, socket.AF_INET))
        self.assertIsInstance(factory, DirectTLSFactory)
        self.assertIs(factory.wrappedFactory, service.https_factory)
        self.assertEqual(scenario.reactor.tcpServers, [])
        self.assertEqual(service.tls_ports, [])

    def test_https_listener_without_certificates(self) -> None:
        """
        An HTTPS listener given to a worker without certificates fails its
        build with one line.
        """
        from balancebeam.errors import StartupError

        listener = ListenerFd(9, socket.AF_INET, "tcp:8443:interface=127.0.0.1", https=True)
        self.assertRaises(StartupError, WorkerScenario, listeners=(listener,))

    def test_sighup_stays_ignored(self) -> None:
        """
        The certificate store does not take C{SIGHUP} over (it is the
        master's); the store still polls its files.
        """
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        scenario, _ = self.https_scenario()
        scenario.health()
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)
        store = scenario.service.certificates
        assert store is not None
        scenario.reactor.advance(30)
        self.assertEqual(store.reloads, 0)
        self.assertTrue(store.running)

    def test_connections_counted_over_both_factories(self) -> None:
        """
        The connections a worker reports (and publishes for balanced
        accepting), and its gauges of open connections and requests in
        flight, are its plain and HTTPS ones together.
        """
        scenario, _ = self.https_scenario()
        scenario.health()
        service = scenario.service
        assert service.https_factory is not None
        busy: Any = _Connection(busy=True)
        idle: Any = _Connection(busy=False)
        service.https_factory.connections.add(busy)
        service.factory.connections.add(idle)
        scenario.send({"type": REPORT, "serial": 1})
        stats = scenario.received(STATS)[-1]
        self.assertEqual(stats["connections"], 2)
        self.assertEqual(stats["gauges"]["client_connections_open"], 2)
        self.assertEqual(stats["gauges"]["requests_in_flight"], 1)


class _Connection:
    """
    A client connection as the worker's counts read it: serving a request
    or not.
    """

    def __init__(self, busy: bool) -> None:
        self.exchange = object() if busy else None
