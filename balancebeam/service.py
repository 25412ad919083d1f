"""
The balancer as a Twisted service: builds the registry, pool, strategy, rate
limiter, health checker and listeners from a L{BalancerConfig}, and owns the
order in which they start and stop.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.clientip import parse_trusted_networks
from balancebeam.config import BalancerConfig, UpstreamSpec
from balancebeam.health.checker import HealthChecker, default_timeout
from balancebeam.health.probe import HTTPProbe
from balancebeam.pool import UpstreamPool
from balancebeam.ratelimit.build import build_rate_limiter
from balancebeam.registry import UpstreamRegistry, UpstreamState
from balancebeam.relay.client import BalancerFactory
from balancebeam.stats import Stats
from balancebeam.strategies import build_strategy


class ListenFailed(Exception):
    """
    A listener could not be started (address in use, permission denied, ...).
    """


class BalancerService(MultiService):
    """
    The whole balancer.

    Listening happens in L{privilegedStartService}, before twistd drops
    privileges, so that C{--bind 0.0.0.0:80} works with C{--uid}.
    L{stopService} stops listening first, then the health checks, then
    closes the pool and the rate limiter, and fires once all are done.

    @ivar registry: the upstreams and their health.
    @ivar pool: upstream connections.
    @ivar factory: the client-side protocol factory.
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
        self.registry = UpstreamRegistry(
            config.upstreams,
            reactor,
            passive_retry_interval=None if active else config.passive_retry_interval,
        )
        self.stats = Stats()
        self.pool = UpstreamPool(
            reactor,
            self._endpoint_for,
            max_idle_per_upstream=config.pool_max_idle_per_upstream,
            idle_timeout=config.pool_idle_timeout,
            max_requests_per_connection=config.pool_max_requests_per_connection,
            max_connections_per_upstream=config.pool_max_connections_per_upstream,
            queue_timeout=config.queue_timeout,
            warm=config.pool_warm,
            on_connect_failed=self._warm_connect_failed,
        )
        self.registry.add_observer(self.pool.upstream_changed)
        self.rate_limiter = build_rate_limiter(
            reactor,
            backend=config.rate_limit_backend,
            limit=config.max_requests_per_minute,
            window=config.rate_limit_window,
            algorithm=config.rate_limit_algorithm,
            timeout=config.rate_limit_redis_timeout,
            on_error=config.rate_limit_on_error,
            max_keys=config.rate_limit_max_keys,
        )
        self.factory = BalancerFactory(
            reactor,
            self.registry,
            build_strategy(config.strategy, random.Random(config.random_seed)),
            self.pool,
            self.stats,
            timeouts=config.timeouts,
            limits=config.limits,
            rate_limiter=self.rate_limiter,
            trusted_proxies=parse_trusted_networks(config.trusted_proxies),
            rate_limit_headers=config.rate_limit_headers,
            access_log=config.access_log,
            retry_after=max(
                1, round(config.active_health_check_interval or config.passive_retry_interval)
            ),
            max_connections=config.max_client_connections,
        )
        self.health: HealthChecker | None = None
        if active:
            interval = config.active_health_check_interval
            timeout = config.health_check_timeout or default_timeout(interval)
            probe = HTTPProbe(self._probe_endpoint_for, config.active_health_check_path)
            self.health = HealthChecker(
                self.registry,
                reactor,
                probe.probe,
                interval=interval,
                timeout=timeout,
                rise=config.health_check_rise,
                fall=config.health_check_fall,
            )
            self.health.setServiceParent(self)
        self.ports: list[IListeningPort] = []

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

    def _warm_connect_failed(self, upstream: UpstreamState, reason: Failure) -> None:
        self.registry.mark_down(upstream, f"connect failed: {reason.getErrorMessage()}")

    def privilegedStartService(self) -> None:
        """
        Listen on every configured endpoint.

        @raise SystemExit: with a one-line message, when a listener fails and
            C{exit_on_listen_failure} is set (as under twistd).
        @raise ListenFailed: when a listener fails otherwise.
        """
        super().privilegedStartService()
        results: list[Any] = []
        for description in self.config.listen:
            endpoint = serverFromString(self._reactor, description)
            endpoint.listen(self.factory).addBoth(results.append)
        for description, result in zip(self.config.listen, results):
            if isinstance(result, Failure):
                for port in results:
                    if not isinstance(port, Failure):
                        port.stopListening()
                message = f"cannot listen on {description}: {result.getErrorMessage()}"
                if self._exit_on_listen_failure:
                    raise SystemExit(f"balancebeam: {message}")
                raise ListenFailed(message)
            self.ports.append(result)
            self.log.info("Listening for requests on {address}", address=_describe(result))
        if len(results) != len(self.config.listen):
            raise ListenFailed("a listener did not start synchronously")

    def startService(self) -> None:
        """
        Start timers, health checks and pool warm-up.
        """
        super().startService()
        self.factory.start_timers()
        self.pool.start(self.registry.upstreams)
        self.log.info(
            "balancing over {count} upstream(s): {upstreams}",
            count=len(self.registry.upstreams),
            upstreams=", ".join(u.name for u in self.registry.upstreams),
        )

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
        values["upstreams_up"] = [u.name for u in self.registry.upstreams if u.alive]
        values["upstreams_down"] = [u.name for u in self.registry.upstreams if not u.alive]
        return values

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, stop the health checks, close connections and the
        rate limiter.

        @return: fires once everything has stopped.
        """
        listening = DeferredList([maybeDeferred(port.stopListening) for port in self.ports])
        self.ports = []

        def drain(_: object) -> Deferred[None]:
            self.log.info(
                "stopping: draining {count} client connection(s)",
                count=len(self.factory.connections),
            )
            return self.factory.drain(self.config.shutdown_timeout)

        def close_rest(_: object) -> Deferred[list[Any]]:
            self.factory.stop_timers()
            steps: list[Deferred[Any]] = [self.pool.close()]
            if self.rate_limiter is not None:
                steps.append(maybeDeferred(self.rate_limiter.close))
            return gatherResults(steps)

        children = super().stopService()
        def report(_: object) -> None:
            self.log.info("stopped; counters: {counters}", counters=self.snapshot())

        done = DeferredList([listening.addCallback(drain), children]).addCallback(close_rest)
        return done.addCallback(report)


def _describe(port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", None)
    port_number = getattr(address, "port", None)
    if host is not None and port_number is not None:
        return f"{host}:{port_number}" if ":" not in host else f"[{host}]:{port_number}"
    return str(address)
