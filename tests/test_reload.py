"""
Tests for L{balancebeam.reload}: applying a new configuration to a running
balancer on a memory reactor, with requests in flight.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.clientip import parse_trusted_networks
from balancebeam.config import BalancerConfig, Timeouts
from balancebeam.configfile import ConfigFileError
from balancebeam.interfaces import IRateLimiter, RateLimitDecision
from balancebeam.metrics import build_registry, exposition
from balancebeam.ratelimit.filter import RateLimitFilter
from balancebeam.registry import REMOVED
from balancebeam.relay.client import ClientConnection
from balancebeam.reload import Reloader, install_sighup
from tests.helpers import response
from tests.operations_helpers import (
    ServiceHarness,
    harness_config,
    metric,
    parse_metrics,
    specs,
)
from tests.test_admin import TOKEN, token_file


class Loader:
    """
    Hands the reloader the configuration the test sets, or raises.

    @ivar config: what the next load returns.
    @ivar error: what the next load raises instead, if set.
    """

    def __init__(self, config: BalancerConfig) -> None:
        self.config = config
        self.error: Exception | None = None

    def __call__(self) -> BalancerConfig:
        if self.error is not None:
            raise self.error
        return self.config


def reloadable(config: BalancerConfig | None = None) -> tuple[ServiceHarness, Loader, Reloader]:
    """
    A started balancer with a reloader whose loader the test controls.
    """
    harness = ServiceHarness(config)
    loader = Loader(harness.service.config)
    reloader = Reloader(harness.service, loader, harness.reactor)
    return harness, loader, reloader


def close(protocol: IProtocol) -> None:
    """
    Tell an upstream-side protocol its connection is gone.
    """
    protocol.connectionLost(Failure(ConnectionDone()))


@implementer(IRateLimiter)
class SlowLimiter:
    """
    A rate limiter that decides later, and records when it is closed.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[RateLimitDecision]] = []
        self.closed = False

    def check(self, key: str) -> Deferred[RateLimitDecision]:
        """
        A decision the test fires.
        """
        decision: Deferred[RateLimitDecision] = Deferred()
        self.pending.append(decision)
        return decision

    def start(self) -> None:
        """
        Nothing to start.
        """

    def close(self) -> None:
        """
        Record the close.
        """
        self.closed = True


class UpstreamListTests(SynchronousTestCase):
    """
    Added upstreams join; removed ones drain.
    """

    def test_add_and_remove_with_request_in_flight(self) -> None:
        """
        A removed upstream takes no new request, finishes the one in flight,
        closes its connection and is forgotten; an added one takes requests.
        """
        harness, loader, reloader = reloadable()
        slow_client, slow_transport = harness.client(40001)
        harness.get(slow_client, b"/slow")
        slow, slow_upstream, port = harness.accept()
        self.assertEqual(port, 9001)
        loader.config = harness.reconfigured(upstreams=specs(2, base=9002))
        self.assertTrue(reloader.reload())
        registry = harness.service.registry
        self.assertEqual(
            [u.name for u in registry.upstreams], ["127.0.0.1:9002", "127.0.0.1:9003"]
        )
        self.assertEqual([u.name for u in registry.retiring], ["127.0.0.1:9001"])
        self.assertEqual(registry.retiring[0].admin_state, REMOVED)
        seen = []
        connections: dict[int, IProtocol] = {}
        for number in range(4):
            client, transport = harness.client(40010 + number)
            harness.get(client)
            if harness.pending_ports():
                upstream, _, port = harness.accept()
                connections[port] = upstream
            [busy] = [u for u in registry.upstreams if u.in_flight]
            seen.append(busy.spec.port)
            connections[busy.spec.port].dataReceived(response(b"new"))
            self.assertTrue(transport.value().endswith(b"new"), transport.value())
        self.assertEqual(seen, [9002, 9003, 9002, 9003])
        harness.reactor.advance(1.0)
        self.assertEqual(len(registry.retiring), 1)
        slow.dataReceived(response(b"finished"))
        self.assertTrue(slow_transport.value().endswith(b"finished"))
        self.assertTrue(slow_upstream.disconnecting)
        close(slow)
        harness.reactor.advance(0.5)
        self.assertEqual(registry.retiring, [])
        self.assertEqual(harness.service.reloads.success, 1)

    def test_removed_then_added_again(self) -> None:
        """
        An upstream removed and added back while its old record drains is a
        new record that takes requests at once.
        """
        harness, loader, reloader = reloadable()
        client, _ = harness.client()
        harness.get(client)
        harness.accept()
        loader.config = harness.reconfigured(upstreams=specs(1, base=9002))
        reloader.reload()
        loader.config = harness.reconfigured(upstreams=specs(2))
        reloader.reload()
        registry = harness.service.registry
        self.assertEqual([u.name for u in registry.retiring], ["127.0.0.1:9001"])
        fresh = registry.get("127.0.0.1:9001")
        assert fresh is not None
        self.assertTrue(fresh.serving)
        self.assertIsNot(fresh, registry.retiring[0])

    def test_weights(self) -> None:
        """
        New weights apply to the next choices.
        """
        harness, loader, reloader = reloadable()
        first, second = specs(2)
        loader.config = harness.reconfigured(
            upstreams=(first, type(second)(second.host, second.port, 3))
        )
        reloader.reload()
        upstreams = harness.service.registry.upstreams
        self.assertEqual([u.weight for u in upstreams], [1, 3])
        client, _ = harness.client()
        ports = []
        connections: dict[int, IProtocol] = {}
        for _ in range(8):
            harness.get(client)
            if harness.pending_ports():
                upstream, _, port = harness.accept()
                connections[port] = upstream
            busy = [u for u in upstreams if u.in_flight]
            port = busy[0].spec.port
            ports.append(port)
            connections[port].dataReceived(response())
        self.assertEqual((ports.count(9001), ports.count(9002)), (2, 6))


class SettingsTests(SynchronousTestCase):
    """
    Timeouts, pool, health and rate-limit settings.
    """

    def test_timeouts_for_new_requests_only(self) -> None:
        """
        A shorter upstream timeout applies to requests started after the
        reload; the request in flight keeps the one it started with.
        """
        harness, loader, reloader = reloadable()
        old_client, old_transport = harness.client(40001)
        harness.get(old_client)
        harness.accept()
        old_settings = harness.service.factory.settings
        loader.config = harness.reconfigured(timeouts=Timeouts(upstream=5.0))
        reloader.reload()
        self.assertIsNot(harness.service.factory.settings, old_settings)
        new_client, new_transport = harness.client(40002)
        harness.get(new_client)
        harness.accept()
        harness.reactor.advance(6.0)
        self.assertTrue(new_transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertEqual(old_transport.value(), b"")
        assert old_client.exchange is not None
        self.assertIs(old_client.exchange.relay, old_settings)

    def test_deadline_resolution_follows(self) -> None:
        """
        A client header timeout shorter than the timer's resolution gets a
        finer timer: a slow head is answered 408 on time.
        """
        harness, loader, reloader = reloadable()
        old_timer = harness.service.getServiceNamed("deadlines")
        loader.config = harness.reconfigured(timeouts=Timeouts(client_header=0.5))
        reloader.reload()
        timer = harness.service.getServiceNamed("deadlines")
        self.assertIsNot(timer, old_timer)
        self.assertFalse(old_timer.running)
        self.assertTrue(timer.running)
        children = [child.name for child in harness.service]
        self.assertLess(children.index("deadlines"), children.index("drain"))
        client, transport = harness.client()
        client.dataReceived(b"GET / HTTP/1.1\r\n")
        harness.reactor.advance(0.3)
        self.assertEqual(transport.value(), b"")
        harness.reactor.advance(0.3)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_pool_settings(self) -> None:
        """
        A smaller idle cap closes idle connections beyond it.
        """
        harness, loader, reloader = reloadable(harness_config(upstreams=1))
        clients = [harness.client(40001 + i)[0] for i in range(2)]
        upstreams = []
        for client in clients:
            harness.get(client)
            upstreams.append(harness.accept())
        for upstream, _, _ in upstreams:
            upstream.dataReceived(response())
        pool = harness.service.pool
        first = harness.service.registry.upstreams[0]
        self.assertEqual(pool.idle_count(first), 2)
        loader.config = harness.reconfigured(pool_max_idle_per_upstream=1)
        reloader.reload()
        self.assertEqual(pool.idle_count(first), 1)
        self.assertEqual([t.disconnecting for _, t, _ in upstreams], [True, False])

    def test_health_checker_restarted(self) -> None:
        """
        New health-check settings restart the checker's loop with them; the
        old one is stopped and no longer probes.
        """
        harness, loader, reloader = reloadable(harness_config(active_health_check_interval=10.0))
        old = harness.service.health
        assert old is not None
        loader.config = harness.reconfigured(
            active_health_check_interval=2.0, health_check_timeout=1.0
        )
        reloader.reload()
        new = harness.service.health
        assert new is not None
        self.assertIsNot(new, old)
        self.assertFalse(old.running)
        self.assertEqual((new.interval, new.timeout), (2.0, 1.0))
        children = [child.name for child in harness.service]
        self.assertEqual(children.count("health checks"), 1)
        self.assertLess(children.index("health checks"), children.index("deadlines"))
        harness.reactor.advance(2.0)
        self.assertEqual(sorted(harness.pending_ports()), [9001, 9002])
        self.assertEqual(old.probes_sent, 0)

    def test_health_checks_off_and_on(self) -> None:
        """
        Turning active checks off removes the checker (passive retries take
        over); turning them on adds one.
        """
        harness, loader, reloader = reloadable(harness_config(active_health_check_interval=10.0))
        loader.config = harness.reconfigured(active_health_check_interval=0.0)
        reloader.reload()
        self.assertIsNone(harness.service.health)
        self.assertNotIn("health checks", [c.name for c in harness.service])
        harness.reactor.advance(20.0)
        self.assertEqual(harness.pending_ports(), [])
        loader.config = harness.reconfigured(active_health_check_interval=3.0)
        reloader.reload()
        self.assertIsNotNone(harness.service.health)
        harness.reactor.advance(3.0)
        self.assertEqual(sorted(harness.pending_ports()), [9001, 9002])

    def test_rate_limiting_turned_on(self) -> None:
        """
        Rate limiting turned on by a reload answers 429 beyond the limit.
        """
        harness, loader, reloader = reloadable(harness_config(upstreams=1))
        loader.config = harness.reconfigured(max_requests_per_minute=1)
        reloader.reload()
        self.assertIsNotNone(harness.service.rate_limiter)
        client, transport = harness.client()
        harness.get(client)
        upstream, _, _ = harness.accept()
        upstream.dataReceived(response())
        harness.get(client)
        self.assertIn(b"HTTP/1.1 429 ", transport.value())

    def test_unchanged_limiter_kept(self) -> None:
        """
        A reload that does not touch rate limiting keeps the limiter and its
        counts.
        """
        harness, loader, reloader = reloadable(harness_config(max_requests_per_minute=5))
        limiter = harness.service.rate_limiter
        loader.config = harness.reconfigured(strategy="random")
        reloader.reload()
        self.assertIs(harness.service.rate_limiter, limiter)

    def test_old_limiter_closed_once_unused(self) -> None:
        """
        A replaced limiter is closed only once no request waits for its
        decision; that request then goes on.
        """
        harness, loader, reloader = reloadable(harness_config(upstreams=1))
        service = harness.service
        slow = SlowLimiter()
        slow_filter = RateLimitFilter(slow, service.stats, parse_trusted_networks(()))
        service.rate_limiter = slow
        service.filters = (slow_filter,)
        service.factory.reconfigure(
            service.dispatcher,
            service.config.timeouts,
            service.config.limits,
            service.filters,
            False,
        )
        client, transport = harness.client()
        harness.get(client)
        self.assertEqual(len(slow.pending), 1)
        loader.config = harness.reconfigured(max_requests_per_minute=100)
        reloader.reload()
        self.assertIsNot(service.rate_limiter, slow)
        self.assertNotIn(slow_filter, service.filters)
        harness.reactor.advance(2.0)
        self.assertFalse(slow.closed)
        slow.pending[0].callback(RateLimitDecision(True, 10, 9, 60.0, 0.0))
        upstream, _, _ = harness.accept()
        upstream.dataReceived(response())
        self.assertIn(b"200 OK", transport.value())
        harness.reactor.advance(0.5)
        self.assertTrue(slow.closed)
        self.assertEqual(service.retired_limiters, [])

    def test_connections_per_client(self) -> None:
        """
        A changed C{max-connections-per-client} applies to the connections
        opened after the reload, counting those already open; set back to
        0, it limits nothing.
        """
        harness, loader, reloader = reloadable()
        harness.client(40001)
        harness.client(40002)
        loader.config = harness.reconfigured(max_connections_per_client=2)
        self.assertTrue(reloader.reload())
        address = IPv4Address("TCP", "127.0.0.1", 40003)
        refused = harness.service.factory.buildProtocol(address)
        self.assertNotIsInstance(refused, ClientConnection)
        assert refused is not None
        transport = StringTransport(peerAddress=address)
        refused.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        samples = parse_metrics(exposition(build_registry(harness.service, process=False)))
        self.assertEqual(
            metric(samples, "balancebeam_client_connections_refused_per_client_total"), 1
        )
        loader.config = harness.reconfigured(max_connections_per_client=0)
        self.assertTrue(reloader.reload())
        harness.client(40004)
        self.assertEqual(harness.service.factory.max_connections_per_client, 0)

    def test_strategy(self) -> None:
        """
        A new strategy takes the next choices: least connections sends a
        second concurrent request to the idle upstream, as round robin would
        not after a weight change.
        """
        harness, loader, reloader = reloadable()
        loader.config = harness.reconfigured(strategy="least-connections")
        reloader.reload()
        first, _ = harness.client(40001)
        second, _ = harness.client(40002)
        harness.get(first)
        harness.get(second)
        self.assertEqual(sorted(harness.pending_ports()), [9001, 9002])
        self.assertEqual(harness.service.config.strategy, "least-connections")


class OutcomeTests(SynchronousTestCase):
    """
    What a reload reports, and what it refuses.
    """

    def test_invalid_changes_nothing(self) -> None:
        """
        An invalid configuration changes nothing, is logged at error and
        counted as a failure; systemd hears RELOADING then READY.
        """
        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]  # the method only calls addCleanup
            globalLogPublisher,
        )
        harness, loader, reloader = reloadable()
        before = harness.service.config
        settings = harness.service.factory.settings
        loader.error = ConfigFileError("bb.toml", 3, "strategy", "'fast' must be one of ...")
        self.assertFalse(reloader.reload())
        self.assertIs(harness.service.config, before)
        self.assertIs(harness.service.factory.settings, settings)
        reloads = harness.service.reloads
        self.assertEqual((reloads.success, reloads.failure, reloads.last_ok), (0, 1, False))
        self.assertEqual(reloads.last_error, "bb.toml:3: strategy 'fast' must be one of ...")
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["reason"], "bb.toml:3: strategy 'fast' must be one of ...")
        messages = harness.notifier.messages
        self.assertEqual(messages[-2][:2], ["RELOADING=1", "MONOTONIC_USEC=123456"])
        self.assertEqual(messages[-1][0], "READY=1")
        self.assertTrue(messages[-1][1].startswith("STATUS=reload failed: bb.toml:3: "))
        samples = parse_metrics(exposition(build_registry(harness.service, process=False)))
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="failure"), 1)
        self.assertEqual(metric(samples, "balancebeam_config_last_reload_successful"), 0)

    def test_failure_while_preparing_changes_nothing(self) -> None:
        """
        A configuration that loads but cannot be built (a rate limiter with
        a bad backend) changes nothing either.
        """
        harness, loader, reloader = reloadable()
        before = harness.service.config
        loader.config = harness.reconfigured(
            strategy="p2c", max_requests_per_minute=5, rate_limit_backend="bogus://x"
        )
        self.assertFalse(reloader.reload())
        self.assertIs(harness.service.config, before)
        self.assertIsNone(harness.service.rate_limiter)

    def test_success_counted_and_notified(self) -> None:
        """
        A reload that applies is counted, and systemd hears RELOADING then READY.
        """
        harness, loader, reloader = reloadable()
        harness.reactor.advance(5.0)
        loader.config = harness.reconfigured(strategy="p2c")
        self.assertTrue(reloader.reload())
        reloads = harness.service.reloads
        self.assertEqual((reloads.success, reloads.failure), (1, 0))
        self.assertEqual(reloads.last_success_at, 1005.0)
        messages = harness.notifier.messages
        self.assertEqual(messages[-2][:2], ["RELOADING=1", "MONOTONIC_USEC=123456"])
        self.assertEqual(messages[-1][:2], ["READY=1", messages[-1][1]])
        self.assertTrue(messages[-1][1].startswith("STATUS=reloaded; listening on"))
        samples = parse_metrics(exposition(build_registry(harness.service, process=False)))
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="success"), 1)
        self.assertEqual(
            metric(samples, "balancebeam_config_last_reload_success_timestamp_seconds"), 1005.0
        )

    def test_listeners_need_restart(self) -> None:
        """
        A changed listener address is logged as needing a restart and left
        as it is; the rest of the configuration applies.
        """
        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]  # the method only calls addCleanup
            globalLogPublisher,
        )
        harness, loader, reloader = reloadable()
        loader.config = harness.reconfigured(listen=("tcp:9999",), strategy="p2c")
        self.assertTrue(reloader.reload())
        self.assertEqual(harness.service.config.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(harness.service.config.strategy, "p2c")
        warnings = [e for e in events if "restart the balancer" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["field"], "listen")

    def test_listen_backlog_needs_restart(self) -> None:
        """
        A changed C{listen-backlog} is logged as needing a restart and left
        as it is; the rest of the configuration applies.
        """
        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]  # the method only calls addCleanup
            globalLogPublisher,
        )
        harness, loader, reloader = reloadable()
        loader.config = harness.reconfigured(listen_backlog=4096, strategy="p2c")
        self.assertTrue(reloader.reload())
        self.assertEqual(harness.service.config.listen_backlog, 511)
        self.assertEqual(harness.service.config.strategy, "p2c")
        warnings = [e for e in events if "restart the balancer" in e.get("log_format", "")]
        self.assertEqual(
            [(e["field"], e["old"], e["new"]) for e in warnings], [("listen-backlog", 511, 4096)]
        )

    def test_admin_token_reread(self) -> None:
        """
        The admin token file is read again: the new token is required.
        """
        path = token_file(self)
        harness, loader, reloader = reloadable(
            harness_config(admin_bind="tcp:9100:interface=0.0.0.0", admin_token_file=path)
        )
        with open(path, "w") as file:
            file.write("rotated\n")
        reloader.reload()
        old = [(b"Authorization", b"Bearer " + TOKEN.encode())]
        self.assertEqual(harness.admin("/healthz", headers=old).status, 401)
        new = [(b"Authorization", b"Bearer rotated")]
        self.assertEqual(harness.admin("/healthz", headers=new).status, 200)

    def test_unreadable_token_refuses_reload(self) -> None:
        """
        An unreadable token file refuses the whole reload.
        """
        path = token_file(self)
        harness, loader, reloader = reloadable(
            harness_config(admin_bind="tcp:9100:interface=0.0.0.0", admin_token_file=path)
        )
        loader.config = harness.reconfigured(admin_token_file=path + ".missing", strategy="p2c")
        self.assertFalse(reloader.reload())
        self.assertEqual(harness.service.config.strategy, "round-robin")

    def test_ignored_while_draining(self) -> None:
        """
        A reload asked for while the balancer stops does nothing.
        """
        harness, loader, reloader = reloadable()
        harness.service.factory.draining = True
        loader.config = harness.reconfigured(strategy="p2c")
        self.assertFalse(reloader.reload())
        self.assertEqual(harness.service.reloads.failure, 0)
        self.assertEqual(harness.service.config.strategy, "round-robin")

    def test_feature_steps(self) -> None:
        """
        A feature's reload step checks first (refusing the reload by raising)
        and applies with the rest.
        """
        harness, loader, reloader = reloadable()
        applied: list[str] = []

        def step(old: BalancerConfig, new: BalancerConfig) -> Callable[[], None]:
            if new.strategy == "p2c":
                raise ValueError("feature refuses p2c")
            return lambda: applied.append(new.strategy)

        harness.service.reload_steps.append(step)
        loader.config = harness.reconfigured(strategy="p2c")
        self.assertFalse(reloader.reload())
        self.assertEqual(harness.service.reloads.last_error, "feature refuses p2c")
        loader.config = harness.reconfigured(strategy="random")
        self.assertTrue(reloader.reload())
        self.assertEqual(applied, ["random"])


class SignalTests(SynchronousTestCase):
    """
    C{SIGHUP} asks for a reload in the reactor thread.
    """

    def test_sighup(self) -> None:
        """
        The handler passes the reload to C{reactor.callFromThread}.
        """
        calls: list[Any] = []

        class Reactor:
            def callFromThread(self, f: Callable[[], object]) -> None:
                calls.append(f)

        def reload() -> None:
            pass

        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        install_sighup(Reactor(), reload)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(calls, [reload])
