"""
The balancer as a tree of Twisted services, built from a L{BalancerConfig}.

The tree, in start order (it stops in the reverse order, one child after the
other):
  0. with HTTPS listeners, the certificate store (its reload poll and the
     SIGHUP handler);
  1. the rate limiter (it connects to Redis here, not when built), then the
     firewall (its inspection threads);
  2. the upstream pool (warm-up connections);
  3. the active health checker (when on);
  4. the deadline timer;
  5. the drain step, which on stop lets requests in progress finish;
  6. one L{StreamServerEndpointService} per listener: plain HTTP, then HTTPS.
So on stop the listeners close first, then the connections drain, and only
then do the timers, the pool and the limiter go.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam import __version__
from balancebeam.admin.auth import AdminToken, read_token_file
from balancebeam.admin.providers import IFeatureCounters, IPurger
from balancebeam.admin.rate import RequestRate
from balancebeam.admin.resources import build_admin_site
from balancebeam.clientip import parse_trusted_networks
from balancebeam.compiled import describe_build
from balancebeam.config import BalancerConfig, TlsConfig, UpstreamSpec
from balancebeam.errors import StartupError
from balancebeam.health.checker import HealthChecker
from balancebeam.health.probe import HTTPProbe
from balancebeam.interfaces import IRateLimiter, IRequestFilter
from balancebeam.pool import UpstreamPool
from balancebeam.ratelimit.build import build_rate_limiter
from balancebeam.ratelimit.filter import RateLimitFilter
from balancebeam.registry import UpstreamRegistry
from balancebeam.relay.deadlines import DeadlineTimer, resolution_for
from balancebeam.relay.factory import RelayFactory
from balancebeam.routing import Dispatcher
from balancebeam.stats import ReloadCounts, Stats
from balancebeam.strategies import build_strategy
from balancebeam.systemd import SystemdService

if TYPE_CHECKING:
    from balancebeam.cache import CacheFilter
    from balancebeam.relay.settings import RelaySettings
    from balancebeam.tls import CertificateStore, UpstreamTLS
    from balancebeam.waf.build import WafService


class ListenFailed(Exception):
    """
    A listener could not be started (address in use, permission denied, ...).
    """


class _Lifecycle(Service):
    """
    A service made of a start and a stop function, for the objects that are
    not services themselves (the pool, the rate limiter).
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], object],
        stop: Callable[[], Deferred[Any] | None],
    ) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        """
        Run the start function.
        """
        super().startService()
        self._start()

    def stopService(self) -> Deferred[Any]:
        """
        Run the stop function.

        @return: fires once it has finished.
        """
        super().stopService()
        return maybeDeferred(self._stop)


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """
    Wraps a server endpoint to log where it listens, remember the port, and
    report a failure to listen with one clear line.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        listening: Callable[[IListeningPort], None],
        tls: bool = False,
    ) -> None:
        self._endpoint = endpoint
        self._description = description
        self._listening = listening
        self._tls = tls

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with the wrapped endpoint.
        """
        listening: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        if self._tls:
            self.log.info(
                "Listening for requests on {address} (HTTPS)", address=describe_port(port)
            )
        else:
            self.log.info("Listening for requests on {address}", address=describe_port(port))
        self._listening(port)
        return port

    def _failed(self, failure: Failure) -> Failure:
        failure.value = ListenFailed(
            f"cannot listen on {self._description}: {failure.getErrorMessage()}"
        )
        return failure


class ListenerService(StreamServerEndpointService):
    """
    One listener. A failure to listen that is known at once (an address in
    use) is raised from C{privilegedStartService}, as Twisted's own
    C{strports.service} arranges, so that startup fails cleanly.
    """

    _raiseSynchronously = True


class _SequentialMultiService(MultiService):
    """
    A L{MultiService} that stops its children one after the other, last
    added first, each once the previous one has finished stopping.
    """

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in reverse order, one at a time.
        """
        Service.stopService(self)
        done: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            done.addCallback(_stop_child, child)
        return done.addCallback(lambda _: None)


def _stop_child(_: object, child: IService) -> Deferred[Any]:
    return maybeDeferred(child.stopService).addErrback(_log_stop_failure, child)


def _log_stop_failure(failure: Failure, child: IService) -> None:
    Logger().failure("stopping {service} failed", failure, service=child.name)


class BalancerService(_SequentialMultiService):
    """
    The whole balancer.

    @ivar registry: the upstreams and their health.
    @ivar pool: upstream connections.
    @ivar dispatcher: chooses upstreams and applies passive health.
    @ivar rate_limiter: the rate limiter, or C{None} when off.
    @ivar waf: the web application firewall, or C{None} when off.
    @ivar cache: the response cache, or C{None} when off.
    @ivar filters: the request filters, in order: the rate limiter, the
        firewall, the cache.
    @ivar factory: the client-side protocol factory of the plain-HTTP listeners.
    @ivar https_factory: that of the HTTPS listeners (C{X-Forwarded-Proto:
        https}), sharing the dispatcher, filters, stats and connection cap;
        C{None} without any.
    @ivar certificates: the HTTPS listeners' certificate store, or C{None}.
    @ivar upstream_tls: what TLS upstreams' connections share (trust,
        client certificate), or C{None} when no upstream is C{https://}.
    @ivar health: the active health checker, or C{None} when off.
    @ivar ports: the plain-HTTP listening ports, once listening.
    @ivar tls_ports: the HTTPS listening ports, once listening.
    """

    log = Logger()

    def __init__(
        self, config: BalancerConfig, reactor: Any, exit_on_listen_failure: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._exit_on_listen_failure = exit_on_listen_failure
        self._endpoints: dict[UpstreamSpec, IStreamClientEndpoint] = {}
        self._restore_sighup: Callable[[], None] | None = None
        # TLS material is loaded first: a bad certificate stops startup
        # before anything else is built.
        self.certificates: CertificateStore | None = None
        self.upstream_tls: UpstreamTLS | None = None
        self.certificates, self.upstream_tls = _load_tls(reactor, config)
        active = config.active_health_check_interval > 0
        self.stats = Stats()
        self.registry = UpstreamRegistry(config.upstreams, reactor)
        self.pool = UpstreamPool(
            reactor,
            self._endpoint_for,
            max_idle_per_upstream=config.pool_max_idle_per_upstream,
            idle_timeout=config.pool_idle_timeout,
            max_requests_per_connection=config.pool_max_requests_per_connection,
            max_connections_per_upstream=config.pool_max_connections_per_upstream,
            queue_timeout=config.queue_timeout,
            warm=config.pool_warm,
            on_connect_failed=self._warm_up_failed,
        )
        self.registry.add_observer(self.pool.upstream_changed)
        retry_after = max(
            1, round(config.active_health_check_interval or config.passive_retry_interval)
        )
        self.dispatcher = Dispatcher(
            self.registry,
            build_strategy(config.strategy, random.Random(config.random_seed)),
            self.pool,
            self.stats,
            reactor,
            passive_retry_interval=None if active else config.passive_retry_interval,
            retry_after=retry_after,
        )
        self.rate_limiter: IRateLimiter | None = build_rate_limiter(
            reactor,
            backend=config.rate_limit_backend,
            limit=config.max_requests_per_minute,
            window=config.rate_limit_window,
            algorithm=config.rate_limit_algorithm,
            timeout=config.rate_limit_redis_timeout,
            on_error=config.rate_limit_on_error,
            max_keys=config.rate_limit_max_keys,
        )
        filters: list[IRequestFilter] = []
        if self.rate_limiter is not None:
            filters.append(
                RateLimitFilter(
                    self.rate_limiter,
                    self.stats,
                    parse_trusted_networks(config.trusted_proxies),
                    config.rate_limit_headers,
                )
            )
        self.waf: WafService | None = None
        if config.waf.mode != "off":
            self.waf = _build_waf(reactor, config)
            filters.append(self.waf.filter)
        self.cache: CacheFilter | None = None
        if config.cache.size > 0:
            self.cache = _build_cache(reactor, config, lambda: self.factory.settings)
            filters.append(self.cache)
        self.filters = tuple(filters)
        self.factory = RelayFactory(
            reactor,
            self.dispatcher,
            self.stats,
            config.timeouts,
            config.limits,
            self.filters,
            access_log=config.access_log,
            retry_after=retry_after,
            max_connections=config.max_client_connections,
        )
        self.https_factory: RelayFactory | None = None
        if self.certificates is not None:
            self.https_factory = RelayFactory(
                reactor,
                self.dispatcher,
                self.stats,
                config.timeouts,
                config.limits,
                self.filters,
                scheme=b"https",
                access_log=config.access_log,
                retry_after=retry_after,
                max_connections=config.max_client_connections,
            )
            self.https_factory.share_connection_cap(self.factory)
        self.ports: list[IListeningPort] = []
        self.tls_ports: list[IListeningPort] = []

        if self.certificates is not None:
            _Lifecycle(
                "tls certificates", self._start_certificates, self._stop_certificates
            ).setServiceParent(self)
        # The current limiter (a reload may replace it) and those it retired.
        self.retired_limiters: list[IRateLimiter] = []
        _Lifecycle(
            "rate limiter", self._start_rate_limiter, self._close_rate_limiters
        ).setServiceParent(self)
        if self.waf is not None:
            self.waf.setServiceParent(self)
        _Lifecycle(
            "pool", lambda: self.pool.start(self.registry.upstreams), self.pool.close
        ).setServiceParent(self)
        self.health: HealthChecker | None = None
        if active:
            probe = HTTPProbe(self._probe_endpoint_for, config.active_health_check_path)
            self.health = HealthChecker(
                self.registry,
                reactor,
                probe.probe,
                interval=config.active_health_check_interval,
                timeout=config.health_check_timeout,
                rise=config.health_check_rise,
                fall=config.health_check_fall,
            )
            self.health.setName("health checks")
            self.health.setServiceParent(self)
        timer = DeadlineTimer(reactor, self.relay_factories, resolution_for(config.timeouts))
        timer.setName("deadlines")
        timer.setServiceParent(self)
        _Lifecycle("drain", lambda: None, self._drain).setServiceParent(self)
        self._add_operations()
        self._register_features()
        for description in config.listen:
            endpoint = _ReportingEndpoint(
                serverFromString(reactor, description), description, self._port_listening
            )
            listener = ListenerService(endpoint, self.factory)
            listener.setName(f"listener {description}")
            listener.setServiceParent(self)
        if self.certificates is not None and self.https_factory is not None:
            self._add_tls_listeners(reactor, self.certificates, self.https_factory)

    @property
    def relay_factories(self) -> tuple[RelayFactory, ...]:
        """
        The client-side factories: plain HTTP, then HTTPS when configured.
        """
        if self.https_factory is None:
            return (self.factory,)
        return (self.factory, self.https_factory)

    def _add_tls_listeners(
        self, reactor: Any, store: CertificateStore, factory: RelayFactory
    ) -> None:
        """
        One listener per C{--tls-bind}, with TLS from C{store} on top of
        its TCP endpoint.
        """
        from balancebeam.tls import tls_server_endpoint

        for description in self.config.tls.listen:
            tls_endpoint = tls_server_endpoint(
                reactor, store, serverFromString(reactor, description)
            )
            endpoint = _ReportingEndpoint(
                tls_endpoint, f"{description} (HTTPS)", self.tls_ports.append, tls=True
            )
            listener = ListenerService(endpoint, factory)
            listener.setName(f"https listener {description}")
            listener.setServiceParent(self)

    def _start_certificates(self) -> None:
        """
        Start the certificate store's poll and reload it on SIGHUP.
        """
        from balancebeam.tls import reload_on_sighup

        store = self.certificates
        assert store is not None
        store.startService()
        try:
            self._restore_sighup = reload_on_sighup(self._reactor, store)
        except ValueError as error:
            # signal.signal works only in the main thread.
            self.log.warn(
                "TLS certificates will not reload on SIGHUP: {reason}", reason=str(error)
            )

    def hangup(self) -> None:
        """
        What C{SIGHUP} does under twistd (L{balancebeam.tap} installs it):
        reload the TLS certificates, then the configuration.
        """
        if self.certificates is not None:
            self.certificates.reload()
        if self.reloader is not None:
            self.reloader.reload()

    def _stop_certificates(self) -> Deferred[None]:
        """
        Put the previous SIGHUP handler back and stop the poll.
        """
        restore, self._restore_sighup = self._restore_sighup, None
        if restore is not None:
            restore()
        store = self.certificates
        assert store is not None
        return store.stopService()

    # Operations (issue 13): the admin listener, systemd, and what a reload
    # and the admin read and change.

    def _add_operations(self) -> None:
        """
        Add the admin listener (with C{--admin-bind}) and the systemd
        notifications, before the listeners (which stop first).

        @ivar clock: the reactor, as the admin's clock.
        @ivar started_at: clock time the balancer started, or C{None}.
        @ivar reloads: reload outcomes (L{ReloadCounts}).
        @ivar feature_counters: counters of optional features (the cache,
            the firewall, TLS) shown by the admin (L{IFeatureCounters}).
        @ivar purger: the cache's purger for C{POST /cache/purge}, or C{None}.
        @ivar admin_ports: the admin listener's port, once listening.
        @ivar admin_token: the admin's token holder, or C{None} without admin.
        @ivar request_rate: requests per second over a minute (with admin).
        @ivar systemd: the systemd notifications (L{SystemdService}).
        @ivar reload_steps: what a reload calls for features of their own
            (see L{balancebeam.reload.ReloadStep}).
        @ivar reloader: the L{balancebeam.reload.Reloader}, once made.
        @ivar listening_on: C{host:port} of each listener, once listening.
        """
        reactor = self._reactor
        config = self.config
        self.clock: Any = reactor
        self.started_at: float | None = None
        self.reloads = ReloadCounts()
        self.feature_counters: list[IFeatureCounters] = []
        self.purger: IPurger | None = None
        self.admin_ports: list[IListeningPort] = []
        self.admin_token: AdminToken | None = None
        self.request_rate: RequestRate | None = None
        self.reload_steps: list[Any] = []
        self.reloader: Any = None
        self.listening_on: list[str] = []
        self._listening_waiters: list[Deferred[str]] = []
        if config.admin_bind is not None:
            token = None
            if config.admin_token_file is not None:
                try:
                    token = read_token_file(config.admin_token_file)
                except ValueError as e:
                    if self._exit_on_listen_failure:
                        raise SystemExit(f"balancebeam: {e}") from None
                    raise
            self.admin_token = AdminToken(token)
            self.request_rate = RequestRate(reactor, lambda: self.stats.requests)
            self.request_rate.setServiceParent(self)
            site = build_admin_site(self, self.admin_token)
            endpoint = _AdminEndpoint(
                serverFromString(reactor, config.admin_bind),
                f"--admin-bind ({config.admin_bind})",
                self._admin_listening,
            )
            admin = ListenerService(endpoint, site)
            admin.setName("admin listener")
            admin.setServiceParent(self)
        self.systemd = SystemdService(reactor, self._all_listening, self.summary)
        self.systemd.setServiceParent(self)

    def _port_listening(self, port: IListeningPort) -> None:
        self.ports.append(port)
        self.listening_on.append(describe_port(port))
        self._check_listening()

    def _admin_listening(self, port: IListeningPort) -> None:
        self.admin_ports.append(port)
        self._check_listening()

    def _listeners_up(self) -> bool:
        expected = len(self.config.listen) + (1 if self.config.admin_bind is not None else 0)
        return len(self.ports) + len(self.admin_ports) >= expected

    def _check_listening(self) -> None:
        if self._listeners_up():
            waiters, self._listening_waiters = self._listening_waiters, []
            for waiter in waiters:
                waiter.callback(self.summary())

    def _all_listening(self) -> Deferred[str]:
        """
        Fires with L{summary} once every listener (the admin's too) is up;
        records the start time.
        """
        self.started_at = self._reactor.seconds()
        waiter: Deferred[str] = Deferred()
        self._listening_waiters.append(waiter)
        self._check_listening()
        return waiter

    def not_ready_reason(self) -> str | None:
        """
        Why the balancer cannot serve (C{/ready} answers 503 with it), or
        C{None} when every listener is up and an upstream takes requests.
        """
        if self.factory.draining:
            return "draining"
        if not self.running or not self._listeners_up():
            return "not listening yet"
        if not self.registry.live():
            return "no upstream is up"
        return None

    def is_ready(self) -> bool:
        """
        Whether L{not_ready_reason} is C{None}.
        """
        return self.not_ready_reason() is None

    def summary(self) -> str:
        """
        One line for systemd's C{STATUS=}: listeners, upstreams, load.
        """
        upstreams = self.registry.upstreams
        serving = sum(1 for u in upstreams if u.serving)
        listening = ", ".join(self.listening_on) or "nothing yet"
        return (
            f"listening on {listening}; {serving}/{len(upstreams)} upstreams serving; "
            f"{len(self.factory.connections)} connections; {self.stats.requests} requests"
        )

    def _register_features(self) -> None:
        """
        Show the firewall's and the cache's counters on the admin's metrics,
        status page and JSON.
        """
        if self.waf is not None:
            self.feature_counters.append(
                _FeatureCounters("waf", self.waf.counters.snapshot, gauges=())
            )
        if self.cache is not None:
            snapshot = self.cache.counters.snapshot
            self.feature_counters.append(
                _FeatureCounters("cache", snapshot, gauges=("bytes", "entries"))
            )

    def _start_rate_limiter(self) -> None:
        if self.rate_limiter is not None:
            self.rate_limiter.start()

    def _close_rate_limiters(self) -> Deferred[None]:
        """
        Close the current rate limiter and any a reload retired.
        """
        if self.reloader is not None:
            self.reloader.stop()
        limiters = list(self.retired_limiters)
        self.retired_limiters.clear()
        if self.rate_limiter is not None:
            limiters.append(self.rate_limiter)
        closing = [maybeDeferred(limiter.close) for limiter in limiters]
        return gatherResults(closing).addCallback(lambda _: None)

    def forget_endpoints(self) -> None:
        """
        Build upstream endpoints anew (a reload changed the connect timeout).
        """
        self._endpoints.clear()

    def build_health_checker(self, config: BalancerConfig) -> HealthChecker | None:
        """
        A health checker for C{config}'s settings on this registry, not
        started; C{None} when active checks are off.
        """
        if config.active_health_check_interval <= 0:
            return None
        probe = HTTPProbe(self._probe_endpoint_for, config.active_health_check_path)
        checker = HealthChecker(
            self.registry,
            self._reactor,
            probe.probe,
            interval=config.active_health_check_interval,
            timeout=config.health_check_timeout,
            rise=config.health_check_rise,
            fall=config.health_check_fall,
        )
        checker.setName("health checks")
        return checker

    def _endpoint_for(self, spec: UpstreamSpec) -> IStreamClientEndpoint:
        """
        The client endpoint for an upstream (IP literals skip name resolution).
        """
        endpoint = self._endpoints.get(spec)
        if endpoint is None:
            endpoint = self._make_endpoint(spec, self.config.timeouts.connect)
            self._endpoints[spec] = endpoint
        return endpoint

    def _probe_endpoint_for(self, spec: UpstreamSpec) -> IStreamClientEndpoint:
        return self._make_endpoint(spec, self.config.timeouts.connect)

    def _make_endpoint(self, spec: UpstreamSpec, timeout: float) -> IStreamClientEndpoint:
        """
        The endpoint that connects to C{spec}; for a TLS upstream, one whose
        connection is handed over only once the upstream's certificate has
        been verified (within the same C{timeout} as the TCP connect).
        """
        endpoint = self._tcp_endpoint(spec, timeout)
        if not spec.tls:
            return endpoint
        # _load_tls builds it whenever the configuration has a TLS upstream.
        assert self.upstream_tls is not None, "a TLS upstream without upstream TLS"
        return self.upstream_tls.endpoint(self._reactor, spec.host, spec.port, endpoint, timeout)

    def _tcp_endpoint(self, spec: UpstreamSpec, timeout: float) -> IStreamClientEndpoint:
        try:
            address = ipaddress.ip_address(spec.host)
        except ValueError:
            return HostnameEndpoint(self._reactor, spec.host.encode("idna"), spec.port, timeout)
        if address.version == 6:
            return TCP6ClientEndpoint(self._reactor, spec.host, spec.port, timeout)
        return TCP4ClientEndpoint(self._reactor, spec.host, spec.port, timeout)

    def _warm_up_failed(self, upstream: Any, reason: Failure) -> None:
        self.dispatcher.warm_up_failed(upstream, reason)

    def privilegedStartService(self) -> None:
        """
        Listen on every configured endpoint (before twistd drops privileges).

        @raise SystemExit: with a one-line message, when a listener fails at
            once and C{exit_on_listen_failure} is set (as under twistd).
        @raise ListenFailed: when a listener fails at once otherwise.
        """
        try:
            super().privilegedStartService()
        except ListenFailed as error:
            for child in list(self):
                if isinstance(child, ListenerService) and child.running:
                    child.stopService()
            for port in self.ports + self.tls_ports:
                port.stopListening()
            self.ports.clear()
            self.tls_ports.clear()
            if self._exit_on_listen_failure:
                raise SystemExit(f"balancebeam: {error}") from None
            raise

    def startService(self) -> None:
        """
        Start the children, in order.
        """
        super().startService()
        self.log.info(
            "balancebeam {version}, {build}", version=__version__, build=describe_build()
        )
        self.log.info(
            "balancing over {count} upstream(s): {upstreams}",
            count=len(self.registry.upstreams),
            upstreams=", ".join(u.name for u in self.registry.upstreams),
        )

    def use_shared_health(self) -> None:
        """
        Leave the upstreams' health to another process (the master of
        L{balancebeam.workers}): no active health checks here, and no
        passive retry timers. A failed connect still takes an upstream out
        of rotation here at once, and the dispatcher's passive failure
        observers hear of it. Call it before the service starts.
        """
        if self.health is not None:
            self.removeService(self.health)
            self.health = None
        self.dispatcher.disable_passive_retry()

    def _drain(self) -> Deferred[None]:
        factories = self.relay_factories
        self.log.info(
            "stopping: draining {count} client connection(s)",
            count=sum(len(factory.connections) for factory in factories),
        )
        if len(factories) == 1:
            return self.factory.drain(self.config.shutdown_timeout)
        drained = DeferredList(
            [factory.drain(self.config.shutdown_timeout) for factory in factories]
        )
        return drained.addCallback(lambda _: None)

    def snapshot(self) -> dict[str, object]:
        """
        Every counter: requests and answers, upstream connections opened and
        reused, and health probes (counted apart from client requests).
        """
        values = self.stats.snapshot()
        values["pool_connections_opened"] = self.pool.opened
        values["pool_connections_reused"] = self.pool.reused
        if self.health is not None:
            values["health_probes_sent"] = self.health.probes_sent
            values["health_probes_failed"] = self.health.probes_failed
        if self.waf is not None:
            for name, count in self.waf.counters.snapshot().items():
                values[f"waf_{name}"] = count
        if self.cache is not None:
            for name, count in self.cache.counters.snapshot().items():
                values[f"cache_{name}"] = count
        values.update(self._tls_counters())
        values["upstreams_up"] = [u.name for u in self.registry.upstreams if u.alive]
        values["upstreams_down"] = [u.name for u in self.registry.upstreams if not u.alive]
        return values

    def _tls_counters(self) -> dict[str, object]:
        """
        The certificate store's reloads, and the TLS upstream handshakes
        (all, resumed, refused by verification), when TLS is on.
        """
        values: dict[str, object] = {}
        store = self.certificates
        if store is not None:
            values["tls_certificate_reloads"] = store.reloads
            values["tls_certificate_reload_failures"] = store.reload_failures
        if self.upstream_tls is not None:
            creators = self.upstream_tls.creators
            values["tls_upstream_handshakes"] = sum(c.handshakes for c in creators)
            values["tls_upstream_resumed_handshakes"] = sum(
                c.resumed_handshakes for c in creators
            )
            values["tls_upstream_verification_failures"] = sum(
                c.verification_failures for c in creators
            )
        return values

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, drain, then stop the rest; log the counters.

        @return: fires once everything has stopped.
        """
        stopped = super().stopService()
        return stopped.addCallback(self._report)

    def _report(self, _: object) -> None:
        self.log.info("stopped; counters: {counters}", counters=self.snapshot())


def _build_cache(
    reactor: Any, config: BalancerConfig, settings: Callable[[], RelaySettings]
) -> CacheFilter:
    """
    The response cache, revalidating in the background on the relay's
    current settings.
    """
    from balancebeam.cache import CacheFilter
    from balancebeam.relay.background import BackgroundFetcher

    return CacheFilter(
        reactor,
        config.cache.size,
        config.cache.max_object_size,
        config.cache.lock_timeout,
        background=BackgroundFetcher(settings),
        store_set_cookie=config.cache.store_set_cookie,
    )


def _load_tls(
    reactor: Any, config: BalancerConfig
) -> tuple[CertificateStore | None, UpstreamTLS | None]:
    """
    Load the listeners' certificates (with C{--tls-bind}) and the upstreams'
    trust anchors and client certificate (with an C{https://} upstream).

    L{balancebeam.tls} (and so pyOpenSSL) is imported only then.

    @raise StartupError: naming the flag and the file, when one cannot be
        used (unreadable, bad PEM, a key that does not match, no
        certificate at all).
    """
    tls = config.tls
    needs_upstream_tls = any(spec.tls for spec in config.upstreams)
    if not tls.listening and not needs_upstream_tls:
        return None, None
    from balancebeam.tls import CertificateError, CertificateStore, UpstreamTLS

    store: CertificateStore | None = None
    upstream_tls: UpstreamTLS | None = None
    try:
        if tls.listening:
            store = CertificateStore(reactor, tls.certificates, tls.certificate_dirs)
        if needs_upstream_tls:
            upstream_tls = UpstreamTLS(
                ca_file=tls.upstream_ca,
                verify=tls.upstream_verify != "none",
                server_name=tls.upstream_name,
                client_certificate_file=tls.upstream_client_cert,
            )
    except CertificateError as error:
        raise StartupError(f"{_tls_flag(tls, error.path)} {error}") from None
    return store, upstream_tls


def _tls_flag(tls: TlsConfig, path: str) -> str:
    """
    The flag that named C{path}, for a startup error about it.
    """
    if path == tls.upstream_ca:
        return "--upstream-ca"
    if path == tls.upstream_client_cert:
        return "--upstream-client-cert"
    if path in tls.certificates:
        return "--tls-cert"
    return "--tls-cert-dir"


def _build_waf(reactor: Any, config: BalancerConfig) -> WafService:
    """
    Load the firewall's rules and start its engine.

    @raise StartupError: when the rules fail to load, with the engine's
        message and the file.
    """
    # Imported only when the firewall is on: it loads ModSecurity.
    from balancebeam.waf.build import build_waf

    try:
        return build_waf(reactor, config.waf)
    except ValueError as error:
        raise StartupError(f"--waf: {error}") from None


@implementer(IFeatureCounters)
class _FeatureCounters:
    """
    A feature's own counters as the admin reads them: counters get the
    C{_total} suffix, the named gauges keep their names.
    """

    def __init__(
        self, name: str, snapshot: Callable[[], Mapping[str, int]], gauges: Sequence[str]
    ) -> None:
        self.name = name
        self._snapshot = snapshot
        self._gauges = frozenset(gauges)

    def snapshot(self) -> dict[str, float]:
        """
        The counters now.
        """
        return {
            key if key in self._gauges else f"{key}_total": value
            for key, value in self._snapshot().items()
        }


class _AdminEndpoint(_ReportingEndpoint):
    """
    The admin listener's endpoint: logs where the admin listens.
    """

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.log.info("Admin listening on {address}", address=describe_port(port))
        self._listening(port)
        return port


def describe_port(port: IListeningPort) -> str:
    """
    C{host:port} (IPv6 in brackets) of a listening port, for logs.
    """
    address = port.getHost()
    host = getattr(address, "host", None)
    port_number = getattr(address, "port", None)
    if host is not None and port_number is not None:
        return f"{host}:{port_number}" if ":" not in host else f"[{host}]:{port_number}"
    return str(address)
