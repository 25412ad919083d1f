"""
Tests for the master's admin across processes: L{Master} sending admin
states and purges to its (fake) workers
(L{balancebeam.workers.fleet_admin}), a L{Worker} applying them
(L{balancebeam.workers.worker_admin}), and the admin listener of
C{make_master_service} (L{balancebeam.workers.master_admin}).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from balancebeam.admin.providers import IPurger
from balancebeam.admin.resources import AdminSite
from balancebeam.registry import DISABLED, DRAINING, ENABLED
from balancebeam.workers.control import ADMIN, PURGE, PURGED, REPORT
from balancebeam.workers.master import Master, make_master_service
from balancebeam.workers.master_admin import master_admin_service
from tests.test_tap import PortAssigningReactor, parse
from tests.test_workers_fakes import Launched
from tests.test_workers_master import UPSTREAMS, MasterScenario
from tests.test_workers_worker import WorkerScenario


class MasterFanOutTests(SynchronousTestCase):
    """
    The master sends the admin's changes to every worker, and to those it
    starts later.
    """

    def test_state_sent_to_every_worker(self) -> None:
        """
        Setting a state sends every state set to every live worker.
        """
        scenario = MasterScenario(self)
        workers = scenario.start()
        self.assertEqual([w.received_of(ADMIN) for w in workers], [[], []])
        self.assertTrue(scenario.master.admin.set_state(UPSTREAMS[0], DRAINING))
        expected = {"type": ADMIN, "upstreams": {UPSTREAMS[0]: DRAINING}}
        self.assertEqual([w.received_of(ADMIN) for w in workers], [[expected], [expected]])
        self.assertRaises(ValueError, scenario.master.admin.set_state, UPSTREAMS[0], "removed")

    def test_replacement_gets_the_states(self) -> None:
        """
        A worker started after a change (a crash's replacement) is sent the
        states right after the upstreams' health.
        """
        scenario = MasterScenario(self)
        first, _ = scenario.start()
        scenario.master.admin.set_state(UPSTREAMS[1], DISABLED)
        first.exit(None, signal.SIGKILL)
        scenario.reactor.advance(0)
        replacement = scenario.launcher.launched[-1]
        self.assertIsNot(replacement, first)
        kinds = [m["type"] for m in replacement.received()]
        self.assertEqual(kinds[:2], ["health", ADMIN])
        expected = {"type": ADMIN, "upstreams": {UPSTREAMS[1]: DISABLED}}
        self.assertEqual(replacement.received_of(ADMIN), [expected])

    def test_new_generation_gets_the_states(self) -> None:
        """
        The workers of a reload's generation are sent the states too.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.master.admin.set_state(UPSTREAMS[0], DRAINING)
        scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            self.assertEqual(len(worker.received_of(ADMIN)), 1)

    def test_disabled_not_probed(self) -> None:
        """
        A disabled upstream is probed no more by the master, in this
        generation's health and in that of a reload with new health
        settings; enabled again, it is probed again.
        """
        scenario = MasterScenario(self, **{"active-health-check-interval": "1"})
        scenario.start()
        scenario.master.admin.set_state(UPSTREAMS[0], DISABLED)

        def probed(seconds: int) -> list[str]:
            before = len(scenario.probe.calls)
            for _ in range(seconds):
                scenario.reactor.advance(1)
                scenario.probe.answer_all(200)
            return sorted(name for name, _ in scenario.probe.calls[before:])

        self.assertEqual(probed(2), [UPSTREAMS[1]] * 2)
        scenario.next_values = {**scenario.values, "active-health-check-interval": "2"}
        scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        for worker in scenario.launcher.launched[:2]:
            worker.exit(0)
        self.assertEqual(probed(4), [UPSTREAMS[1]] * 2)
        scenario.master.admin.set_state(UPSTREAMS[0], ENABLED)
        self.assertEqual(probed(4), sorted(UPSTREAMS * 2))

    def test_purge_summed(self) -> None:
        """
        A purge asks every ready worker and fires with the sum of their
        answers; a worker that exits is not waited for.
        """
        scenario = MasterScenario(self)
        first, second = scenario.start()
        purged = scenario.master.admin.purge("/a")
        [asked] = first.received_of(PURGE)
        self.assertEqual(second.received_of(PURGE), [asked])
        first.send({"type": PURGED, "serial": asked["serial"], "purged": 4})
        self.assertNoResult(purged)
        second.exit(None, signal.SIGKILL)
        self.assertEqual(self.successResultOf(purged), 4)

    def test_has_cache(self) -> None:
        """
        The master knows whether its workers have a cache.
        """
        without = MasterScenario(self)
        without.start()
        self.assertFalse(without.master.has_cache())
        with_cache = MasterScenario(self, **{"cache-size": "1M"})
        with_cache.start()
        self.assertTrue(with_cache.master.has_cache())

    def test_admin_bind_change_needs_restart(self) -> None:
        """
        A reload cannot move the master's admin listener.
        """
        scenario = MasterScenario(self)
        scenario.start()
        scenario.next_values = {**scenario.values, "admin-bind": "127.0.0.1:9100"}
        self.assertFalse(self.successResultOf(scenario.master.reload()))


@implementer(IPurger)
class CountingPurger:
    """
    Purges nothing, and says it purged C{count}; or fails.
    """

    def __init__(self, count: int = 2, fail: bool = False) -> None:
        self.count = count
        self.fail = fail
        self.urls: list[str] = []

    def purge(self, url: str) -> int | Deferred[int]:
        """
        Record C{url}.
        """
        self.urls.append(url)
        if self.fail:
            raise RuntimeError("disk on fire")
        return self.count


class WorkerAdminTests(SynchronousTestCase):
    """
    A worker applies the master's admin messages.
    """

    def test_no_admin_listener(self) -> None:
        """
        A worker never binds the admin listener, even when the master's
        options have one.
        """
        scenario = WorkerScenario(values={"admin-bind": "127.0.0.1:9100"})
        self.assertIsNone(scenario.service.config.admin_bind)
        scenario.health()
        self.assertEqual(scenario.reactor.tcpServers, [])

    def test_states_applied(self) -> None:
        """
        The states sent are set in the worker's registry; unknown names and
        states are skipped; sending the same again changes nothing.
        """
        scenario = WorkerScenario()
        scenario.health()
        message = {
            "type": ADMIN,
            "upstreams": {UPSTREAMS[0]: DRAINING, "10.0.0.1:1": DISABLED, UPSTREAMS[1]: "bad"},
        }
        scenario.send(message)
        registry = scenario.service.registry
        self.assertEqual([u.admin_state for u in registry.upstreams], [DRAINING, ENABLED])
        self.assertFalse(registry.upstreams[0].serving)
        since = registry.upstreams[0].state_since
        scenario.reactor.advance(5)
        scenario.send(message)
        self.assertEqual(registry.upstreams[0].state_since, since)
        scenario.send({"type": ADMIN, "upstreams": {UPSTREAMS[0]: ENABLED}})
        self.assertTrue(registry.upstreams[0].serving)

    def test_states_before_serving(self) -> None:
        """
        States sent before the health (a new worker) apply once it serves.
        """
        scenario = WorkerScenario()
        scenario.send({"type": ADMIN, "upstreams": {UPSTREAMS[1]: DISABLED}})
        scenario.health()
        self.assertEqual(len(scenario.service.dispatcher.live()), 1)

    def test_purge(self) -> None:
        """
        A purge is answered with what the cache removed, quoting the serial.
        """
        scenario = WorkerScenario()
        scenario.health()
        purger = CountingPurger(3)
        scenario.service.purger = purger
        scenario.send({"type": PURGE, "url": "/a", "serial": 7})
        self.assertEqual(purger.urls, ["/a"])
        self.assertEqual(
            scenario.received(PURGED), [{"type": PURGED, "serial": 7, "purged": 3}]
        )

    def test_purge_without_cache_or_failing(self) -> None:
        """
        Without a cache the answer is 0; a failing purge answers an error.
        """
        scenario = WorkerScenario()
        scenario.health()
        scenario.send({"type": PURGE, "url": "/a", "serial": 1})
        scenario.service.purger = CountingPurger(fail=True)
        scenario.send({"type": PURGE, "url": "/a", "serial": 2})
        first, second = scenario.received(PURGED)
        self.assertEqual(first, {"type": PURGED, "serial": 1, "purged": 0})
        self.assertEqual(second["error"], "purging failed")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class MasterAdminServiceTests(SynchronousTestCase):
    """
    C{make_master_service} with C{--admin-bind}: the master's listener.
    """

    def test_master_listens(self) -> None:
        """
        With C{--admin-bind} the master's service holds the master, then
        its admin listener (which stops first).
        """
        reactor = PortAssigningReactor()
        options = parse(
            "-u", "127.0.0.1:8081", "--workers", "2", "--admin-bind", "127.0.0.1:9100"
        )
        service = make_master_service(options.config_values(), reactor)
        assert isinstance(service, MultiService)
        master, admin = list(service)
        self.assertIsInstance(master, Master)
        self.assertEqual(admin.name, "admin listener")

    def test_no_admin_bind(self) -> None:
        """
        Without C{--admin-bind} there is no admin listener.
        """
        reactor = PortAssigningReactor()
        options = parse("-u", "127.0.0.1:8081", "--workers", "2")
        self.assertIsInstance(make_master_service(options.config_values(), reactor), Master)

    def test_listen_backlog(self) -> None:
        """
        The master's admin listener listens with C{--listen-backlog}.
        """
        reactor = PortAssigningReactor()
        options = parse(
            "-u", "127.0.0.1:8081", "--workers", "2",
            "--admin-bind", "127.0.0.1:9100", "--listen-backlog", "300",
        )
        master = Master(options.config_values(), reactor)
        listener = master_admin_service(master, master.config, reactor)
        assert listener is not None
        listener.privilegedStartService()
        self.addCleanup(listener.stopService)
        self.assertEqual(
            [(port, backlog) for port, _, backlog, _ in reactor.tcpServers], [(9100, 300)]
        )

    def test_token_file_unreadable(self) -> None:
        """
        An unreadable token file ends startup with one line naming it.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "token")
        with open(path, "w") as file:
            file.write("t\n")
        options = parse(
            "-u", "127.0.0.1:8081", "--workers", "2",
            "--admin-bind", "0.0.0.0:9100", "--admin-token-file", path,
        )
        os.remove(path)
        master = Master(options.config_values(), PortAssigningReactor())
        with self.assertRaises(SystemExit) as raised:
            master_admin_service(master, master.config, PortAssigningReactor(), True)
        self.assertIn("--admin-token-file", str(raised.exception))


class MasterAdminStatusTests(SynchronousTestCase):
    """
    The master's admin listener measures what its status shows beside the
    counters: the request rate and its own address.
    """

    def test_rate_and_address(self) -> None:
        """
        While it listens, the status shows the workers' requests per second
        over the last minute and where the admin listens; once stopped, it
        measures no more.
        """
        scenario = MasterScenario(self, **{"admin-bind": "127.0.0.1:9100"})
        listener: Any = master_admin_service(
            scenario.master, scenario.master.config, scenario.reactor
        )
        workers = scenario.start()
        listener.privilegedStartService()
        listener.startService()
        [(port, _, _, interface)] = scenario.reactor.tcpServers
        self.assertEqual((port, interface), (9100, "127.0.0.1"))
        workers[0].stats(10)
        scenario.reactor.advance(10)
        workers[1].stats(20)
        data = _status_json(listener.factory, workers, {0: 10, 1: 20})
        self.assertEqual(data["requests_per_second"], 3.0)
        # The memory reactor's port says it listens on 0.0.0.0.
        self.assertEqual(data["admin"], ["0.0.0.0:9100"])
        self.assertEqual(data["requests"], 30)
        self.successResultOf(listener.stopService())
        data = _status_json(listener.factory, workers, {0: 10, 1: 20})
        self.assertIsNone(data["requests_per_second"])


def _status_json(site: AdminSite, workers: list[Launched], requests: dict[int, int]) -> Any:
    """
    C{GET /status.json} of C{site}, each worker answering the master's
    request for counters with its C{requests}; parsed.
    """
    address = IPv4Address("TCP", "127.0.0.1", 50000)
    channel = site.buildProtocol(address)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(
        b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    for index, worker in enumerate(workers):
        worker.stats(requests[index], serial=worker.received_of(REPORT)[-1]["serial"])
    body = transport.value().partition(b"\r\n\r\n")[2]
    channel.connectionLost(Failure(ConnectionError("done")))
    return json.loads(body)


def _allows(site: AdminSite, token: str) -> bool:
    request: Any = DummyRequest([b"status"])
    request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + token.encode()])
    return site.token.allows(request)


class TokenReloadTests(SynchronousTestCase):
    """
    A reload of the master reads the admin token again, as the single
    process's does.
    """

    def scenario(self) -> tuple[MasterScenario, AdminSite, str]:
        """
        A master with a token file, and its admin site.
        """
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "token")
        self.addCleanup(shutil.rmtree, directory)
        with open(path, "w") as file:
            file.write("first\n")
        scenario = MasterScenario(
            self, **{"admin-bind": "0.0.0.0:9100", "admin-token-file": path}
        )
        listener: Any = master_admin_service(
            scenario.master, scenario.master.config, scenario.reactor
        )
        scenario.start()
        return scenario, listener.factory, path

    def test_rotated(self) -> None:
        """
        The new token is required once the new generation took over.
        """
        scenario, site, path = self.scenario()
        self.assertTrue(_allows(site, "first"))
        with open(path, "w") as file:
            file.write("second\n")
        reloaded = scenario.master.reload()
        self.assertTrue(_allows(site, "first"))
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        self.assertTrue(self.successResultOf(reloaded))
        self.assertFalse(_allows(site, "first"))
        self.assertTrue(_allows(site, "second"))

    def test_unreadable_refuses_the_reload(self) -> None:
        """
        A token file that cannot be read refuses the reload; the old token
        stays.
        """
        scenario, site, path = self.scenario()
        with open(path, "w") as file:
            file.write("\n")
        self.assertFalse(self.successResultOf(scenario.master.reload()))
        self.assertEqual(len(scenario.launcher.launched), 2)
        self.assertTrue(_allows(site, "first"))
