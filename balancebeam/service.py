"""
The balancer as a tree of Twisted services, built from a L{BalancerConfig}.

The tree, in start order (it stops in the reverse order, one child after the
other):
  1. the rate limiter (it connects to Redis here, not when built), then the
     firewall (its inspection threads);
  2. the upstream pool (warm-up connections);
  3. the active health checker (when on);
  4. the deadline timer;
  5. the drain step, which on stop lets requests in progress finish;
  6. one L{StreamServerEndpointService} per listener.
So on stop the listeners close first, then the connections drain, and only
then do the timers, the pool and the limiter go.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
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
from balancebeam.clientip import parse_trusted_networks
from balancebeam.compiled import describe_build
from balancebeam.config import BalancerConfig, UpstreamSpec
from balancebeam.errors import StartupError
from balancebeam.health.checker import HealthChecker
from balancebeam.health.probe import HTTPProbe
from balancebeam.interfaces import IRateLimiter, IRequestFilter
from balancebeam.pool import UpstreamPool
from balancebeam.ratelimit.build import build_rate_limiter
from balancebeam.ratelimit.filter import RateLimitFilter
from balancebeam.registry import UpstreamRegistry
from balancebeam.relay.client import RelayFactory
from balancebeam.relay.deadlines import DeadlineTimer, resolution_for
from balancebeam.routing import Dispatcher
from balancebeam.stats import Stats
from balancebeam.strategies import build_strategy

if TYPE_CHECKING:
    from balancebeam.cache import CacheFilter
    from balancebeam.relay.settings import RelaySettings
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
    ) -> None:
        self._endpoint = endpoint
        self._description = description
        self._listening = listening

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with the wrapped endpoint.
        """
        listening: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
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
    @ivar factory: the client-side protocol factory of every listener.
    @ivar health: the active health checker, or C{None} when off.
    @ivar ports: the listening ports, once listening.
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
        self.ports: list[IListeningPort] = []

        if self.rate_limiter is not None:
            limiter = self.rate_limiter
            _Lifecycle("rate limiter", limiter.start, limiter.close).setServiceParent(self)
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
        timer = DeadlineTimer(reactor, [self.factory], resolution_for(config.timeouts))
        timer.setName("deadlines")
        timer.setServiceParent(self)
        _Lifecycle("drain", lambda: None, self._drain).setServiceParent(self)
        for description in config.listen:
            endpoint = _ReportingEndpoint(
                serverFromString(reactor, description), description, self.ports.append
            )
            listener = ListenerService(endpoint, self.factory)
            listener.setName(f"listener {description}")
            listener.setServiceParent(self)

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
            for port in self.ports:
                port.stopListening()
            self.ports.clear()
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

    def _drain(self) -> Deferred[None]:
        self.log.info(
            "stopping: draining {count} client connection(s)",
            count=len(self.factory.connections),
        )
        return self.factory.drain(self.config.shutdown_timeout)

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
        values["upstreams_up"] = [u.name for u in self.registry.upstreams if u.alive]
        values["upstreams_down"] = [u.name for u in self.registry.upstreams if not u.alive]
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
