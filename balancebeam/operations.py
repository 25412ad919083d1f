"""
What operations read of a running balancer, and what C{SIGHUP} does to it:
L{BalancerOperations}, a base of L{balancebeam.service.BalancerService}.

  - the listeners' progress: systemd hears C{READY=1} once every listener
    (the admin's too) is up (L{balancebeam.systemd});
  - readiness (the admin's C{/ready}) and the one-line summary (systemd's
    C{STATUS=});
  - every counter (L{BalancerOperations.snapshot}: the admin, the workers'
    master, and the log line at stop), and the optional features' own
    counters as the admin shows them (L{IFeatureCounters}).

The admin listener and the systemd service themselves are built with the
rest of the tree, in L{balancebeam.service}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from zope.interface import implementer

from balancebeam.admin.providers import IFeatureCounters, IPurger
from balancebeam.listeners import describe_port

if TYPE_CHECKING:
    from balancebeam.cache import CacheFilter
    from balancebeam.config import BalancerConfig
    from balancebeam.health.checker import HealthChecker
    from balancebeam.pool import UpstreamPool
    from balancebeam.registry import UpstreamRegistry
    from balancebeam.relay.factory import RelayFactory
    from balancebeam.service import BalancerService
    from balancebeam.stats import Stats
    from balancebeam.tls import CertificateStore, UpstreamTLS
    from balancebeam.waf.build import WafService


class BalancerOperations:
    """
    The operations side of L{balancebeam.service.BalancerService}, which
    derives from it. It holds no state of its own: it works on the
    attributes below, which the balancer makes when it is built (see
    L{balancebeam.service.BalancerService} for what each holds).
    """

    config: BalancerConfig
    running: int
    _reactor: Any
    stats: Stats
    registry: UpstreamRegistry
    pool: UpstreamPool
    factory: RelayFactory
    health: HealthChecker | None
    waf: WafService | None
    cache: CacheFilter | None
    certificates: CertificateStore | None
    upstream_tls: UpstreamTLS | None
    reloader: Any
    ports: list[IListeningPort]
    admin_ports: list[IListeningPort]
    listening_on: list[str]
    _listening_waiters: list[Deferred[str]]
    started_at: float | None
    feature_counters: list[IFeatureCounters]
    reload_steps: list[Any]
    clock: Any
    purger: IPurger | None

    def hangup(self) -> None:
        """
        What C{SIGHUP} does under twistd (L{balancebeam.tap} installs it):
        reload the TLS certificates, then the configuration.
        """
        if self.certificates is not None:
            self.certificates.reload()
        if self.reloader is not None:
            self.reloader.reload()

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
            if any(upstream.alive for upstream in self.registry.upstreams):
                return "no upstream takes requests: the ones up are drained or disabled"
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
        status page and JSON (those of the current ones: a reload may
        rebuild them), let the admin purge the cache, and take part in
        reloads (L{balancebeam.reload_features}).
        """
        from balancebeam.cache.purge import CachePurger
        from balancebeam.reload_features import cache_step, waf_step

        if self.waf is not None:
            self.feature_counters.append(
                _FeatureCounters("waf", self._waf_counters, gauges=())
            )
        if self.cache is not None:
            self.feature_counters.append(
                _FeatureCounters("cache", self._cache_counters, gauges=("bytes", "entries"))
            )
            self.purger = CachePurger(self.cache.store)
        balancer = cast("BalancerService", self)
        self.reload_steps.append(waf_step(balancer, self.clock))
        self.reload_steps.append(cache_step(balancer, self.clock))

    def _waf_counters(self) -> Mapping[str, int]:
        return self.waf.counters.snapshot() if self.waf is not None else {}

    def _cache_counters(self) -> Mapping[str, int]:
        return self.cache.counters.snapshot() if self.cache is not None else {}

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
