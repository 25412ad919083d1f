# -*- test-case-name: tests.test_workers_master -*-
"""
The upstreams' health for a master and all its workers.

The master alone probes (L{balancebeam.health.checker.HealthChecker}), once
per interval per upstream however many workers there are, and keeps the one
state every worker follows. A worker whose connect to an upstream fails
takes it out of rotation at once and tells the master
(L{SharedHealth.passive_failure}), which marks it down here and so in every
other worker; with active checks off, the master also puts it back after
C{--passive-retry-interval}. Every change goes to every worker at once, as
the whole state (L{SharedHealth.message}), so a worker that missed nothing
and one that just started end up the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger

from balancebeam.config import BalancerConfig, UpstreamSpec
from balancebeam.health.checker import HealthChecker, Probe
from balancebeam.health.probe import HTTPProbe
from balancebeam.registry import UpstreamRegistry, UpstreamState
from balancebeam.workers.control import HEALTH, Message


def client_endpoint(reactor: Any, spec: UpstreamSpec, timeout: float) -> IStreamClientEndpoint:
    """
    The endpoint that connects to an upstream (IP literals skip name
    resolution), as L{balancebeam.service.BalancerService} builds it.
    """
    try:
        address = ipaddress.ip_address(spec.host)
    except ValueError:
        return HostnameEndpoint(reactor, spec.host.encode("idna"), spec.port, timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, spec.host, spec.port, timeout)
    return TCP4ClientEndpoint(reactor, spec.host, spec.port, timeout)


class SharedHealth(Service):
    """
    The health of the upstreams of one configuration, kept by the master.

    @ivar registry: the upstreams and their state.
    @ivar checker: the active health checker, or C{None} when active
        checks are off.
    """

    log = Logger()

    def __init__(
        self,
        config: BalancerConfig,
        reactor: Any,
        broadcast: Callable[[Message], None],
        probe: Probe | None = None,
    ) -> None:
        """
        @param config: the upstreams and the health check settings.
        @param reactor: connects the probes and runs the timers.
        @param broadcast: sends a message to every worker that follows this
            state; called with L{message} after every change.
        @param probe: probes one upstream (by default an L{HTTPProbe} of
            C{--active-health-check-path}).
        """
        self.config = config
        self._reactor = reactor
        self._broadcast = broadcast
        self.registry = UpstreamRegistry(config.upstreams, reactor)
        self._reasons: dict[str, str] = {u.name: "configured" for u in self.registry.upstreams}
        self._cause: str | None = None
        self._retries: dict[str, IDelayedCall] = {}
        active = config.active_health_check_interval > 0
        self._retry_interval = 0.0 if active else config.passive_retry_interval
        self.checker: HealthChecker | None = None
        if active:
            if probe is None:
                timeout = config.timeouts.connect
                probe = HTTPProbe(
                    lambda spec: client_endpoint(reactor, spec, timeout),
                    config.active_health_check_path,
                ).probe
            self.checker = HealthChecker(
                self.registry,
                reactor,
                probe,
                interval=config.active_health_check_interval,
                timeout=config.health_check_timeout,
                rise=config.health_check_rise,
                fall=config.health_check_fall,
            )
        self.registry.add_observer(self._changed)

    def same_settings(self, config: BalancerConfig) -> bool:
        """
        Whether C{config} has these upstreams and health check settings, so
        that workers built from it can follow this state.
        """
        fields = (
            "upstreams",
            "active_health_check_interval",
            "active_health_check_path",
            "health_check_timeout",
            "health_check_rise",
            "health_check_fall",
            "passive_retry_interval",
        )
        return all(getattr(config, name) == getattr(self.config, name) for name in fields) and (
            config.timeouts.connect == self.config.timeouts.connect
        )

    def startService(self) -> None:
        """
        Start probing (when active checks are on).
        """
        super().startService()
        if self.checker is not None:
            self.checker.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop probing and forget the pending passive retries.

        @return: fires once the probes in flight have finished.
        """
        super().stopService()
        for retry in self._retries.values():
            if retry.active():
                retry.cancel()
        self._retries.clear()
        if self.checker is not None and self.checker.running:
            return self.checker.stopService()
        return succeed(None)

    def message(self) -> Message:
        """
        The whole state, as the L{HEALTH} message workers apply.
        """
        return {
            "type": HEALTH,
            "upstreams": {
                u.name: [u.alive, self._reasons.get(u.name, "")] for u in self.registry.upstreams
            },
        }

    def passive_failure(self, name: str, reason: str, pid: int) -> None:
        """
        A worker could not connect to the upstream C{name}: take it out of
        rotation everywhere; with active checks off, put it back after
        C{--passive-retry-interval} (if not 0).
        """
        upstream = self.registry.get(name)
        if upstream is None or not upstream.alive:
            return
        self._mark(upstream, False, f"worker {pid}: {reason}")
        if self._retry_interval > 0:
            self._retries[name] = self._reactor.callLater(
                self._retry_interval, self._retry, upstream
            )

    def _retry(self, upstream: UpstreamState) -> None:
        self._retries.pop(upstream.name, None)
        self._mark(upstream, True, "passive retry interval elapsed")

    def _mark(self, upstream: UpstreamState, alive: bool, reason: str) -> None:
        self._cause = reason
        try:
            if alive:
                self.registry.mark_up(upstream, reason)
            else:
                self.registry.mark_down(upstream, reason)
        finally:
            self._cause = None

    def _changed(self, upstream: UpstreamState) -> None:
        """
        An upstream changed state (here, or by the checker): remember why,
        and tell the workers.
        """
        reason = self._cause
        if reason is None and self.checker is not None:
            result = self.checker.last_results.get(upstream.name)
            reason = f"health check: {result.reason}" if result is not None else None
        self._reasons[upstream.name] = reason or ("up" if upstream.alive else "down")
        if upstream.alive:
            retry = self._retries.pop(upstream.name, None)
            if retry is not None and retry.active():
                retry.cancel()
        self._broadcast(self.message())
