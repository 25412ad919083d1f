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
  6. one L{ListenerService} per listener: plain HTTP, then HTTPS.
So on stop the listeners close first, then the connections drain, and only
then do the timers, the pool and the limiter go.

L{BalancerService} builds the tree and holds it; its parts live in their
own modules, and the names that other code imports from here stay
importable from here:
  - L{balancebeam.listeners}: L{ListenerService}, the endpoint wrappers
    that log where each listener listens, L{ListenFailed}, L{describe_port};
  - L{balancebeam.lifecycle}: a service made of a start and a stop function,
    and the C{MultiService} that stops its children one after the other;
  - L{balancebeam.features}: building the cache, the firewall and the TLS
    material from the configuration;
  - L{balancebeam.operations}: L{BalancerOperations}, a base of
    L{BalancerService}: listening progress, readiness, the summary, the
    counters, C{SIGHUP};
  - L{balancebeam.upstream_endpoints}: L{UpstreamEndpoints}, a base of
    L{BalancerService}: the client endpoint of each upstream.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam import __version__
from balancebeam.admin.auth import AdminToken, read_token_file
from balancebeam.admin.providers import IFeatureCounters, IPurger
from balancebeam.admin.rate import RequestRate
from balancebeam.admin.resources import build_admin_site
from balancebeam.compiled import describe_build
from balancebeam.config import BalancerConfig, UpstreamSpec, with_backlog
from balancebeam.features import _load_tls, build_cache_filter, build_waf_service
from balancebeam.health.checker import HealthChecker
from balancebeam.health.probe import HTTPProbe
from balancebeam.interfaces import IRateLimiter, IRequestFilter
from balancebeam.lifecycle import _Lifecycle, _SequentialMultiService
from balancebeam.listeners import (
    ListenerService,
    ListenFailed,
    _AdminEndpoint,
    _ReportingEndpoint,
    describe_port,
)
from balancebeam.operations import BalancerOperations
from balancebeam.pool import UpstreamPool
from balancebeam.ratelimit.build import build_rate_limiting
from balancebeam.registry import UpstreamRegistry
from balancebeam.relay.deadlines import DeadlineTimer, resolution_for
from balancebeam.relay.factory import RelayFactory
from balancebeam.routing import Dispatcher
from balancebeam.stats import ReloadCounts, Stats, new_request_id_prefix
from balancebeam.strategies import build_strategy
from balancebeam.systemd import SystemdService
from balancebeam.upstream_endpoints import UpstreamEndpoints

if TYPE_CHECKING:
    from balancebeam.cache import CacheFilter
    from balancebeam.tls import CertificateStore, UpstreamTLS
    from balancebeam.waf.build import WafService

# What other modules import from here (the listeners' names moved out).
__all__ = [
    "BalancerService",
    "ListenFailed",
    "ListenerService",
    "describe_port",
]


class BalancerService(UpstreamEndpoints, BalancerOperations, _SequentialMultiService):
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
        self._certificates_on_sighup = True
        # TLS material is loaded first: a bad certificate stops startup
        # before anything else is built.
        self.certificates: CertificateStore | None = None
        self.upstream_tls: UpstreamTLS | None = None
        self.certificates, self.upstream_tls = _load_tls(reactor, config)
        active = config.active_health_check_interval > 0
        self.stats = Stats(request_id_prefix=new_request_id_prefix())
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
        limiter, limit_filter = build_rate_limiting(reactor, config, self.stats)
        self.rate_limiter: IRateLimiter | None = limiter
        filters: list[IRequestFilter] = [] if limit_filter is None else [limit_filter]
        self.waf: WafService | None = None
        if config.waf.mode != "off":
            self.waf = build_waf_service(reactor, config)
            filters.append(self.waf.filter)
        self.cache: CacheFilter | None = None
        if config.cache.size > 0:
            self.cache = build_cache_filter(reactor, config, lambda: self.factory.settings)
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
            max_connections_per_client=config.max_connections_per_client,
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
                max_connections_per_client=config.max_connections_per_client,
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
                self._server_endpoint(description), description, self._port_listening
            )
            listener = ListenerService(endpoint, self.factory)
            listener.setName(f"listener {description}")
            listener.setServiceParent(self)
        if self.certificates is not None and self.https_factory is not None:
            self._add_tls_listeners(reactor, self.certificates, self.https_factory)

    def _server_endpoint(self, description: str) -> IStreamServerEndpoint:
        """
        The server endpoint of C{description}, listening with a queue of
        C{--listen-backlog} connections unless it gives its own backlog (or
        is a socket systemd made: see L{with_backlog}).
        """
        return serverFromString(
            self._reactor, with_backlog(description, self.config.listen_backlog)
        )

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
                reactor, store, self._server_endpoint(description)
            )
            endpoint = _ReportingEndpoint(
                tls_endpoint, f"{description} (HTTPS)", self.tls_ports.append, tls=True
            )
            listener = ListenerService(endpoint, factory)
            listener.setName(f"https listener {description}")
            listener.setServiceParent(self)

    def _start_certificates(self) -> None:
        """
        Start the certificate store's poll and reload it on SIGHUP (unless
        L{leave_sighup}).
        """
        from balancebeam.tls import reload_on_sighup

        store = self.certificates
        assert store is not None
        store.startService()
        if not self._certificates_on_sighup:
            return
        try:
            self._restore_sighup = reload_on_sighup(self._reactor, store)
        except ValueError as error:
            # signal.signal works only in the main thread.
            self.log.warn(
                "TLS certificates will not reload on SIGHUP: {reason}", reason=str(error)
            )

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
                self._server_endpoint(config.admin_bind),
                f"--admin-bind ({config.admin_bind})",
                self._admin_listening,
            )
            admin = ListenerService(endpoint, site)
            admin.setName("admin listener")
            admin.setServiceParent(self)
        self.systemd = SystemdService(reactor, self._all_listening, self.summary)
        self.systemd.setServiceParent(self)

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

    def leave_sighup(self) -> None:
        """
        Leave C{SIGHUP} to another process (the master of
        L{balancebeam.workers}): the certificate store does not reload on it
        (it still reloads when its files change). Call it before the
        service starts.
        """
        self._certificates_on_sighup = False

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

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, drain, then stop the rest; log the counters.

        @return: fires once everything has stopped.
        """
        stopped = super().stopService()
        return stopped.addCallback(self._report)

    def _report(self, _: object) -> None:
        self.log.info("stopped; counters: {counters}", counters=self.snapshot())
