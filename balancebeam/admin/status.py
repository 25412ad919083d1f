"""
What the status page and C{/status.json} show: L{status_data} reads the
running balancer's counters and states into plain JSON-able data.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import balancebeam
import twisted
from balancebeam.registry import ENABLED, UpstreamState

if TYPE_CHECKING:
    from balancebeam.service import BalancerService

CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
"""Response classes, in the order they are shown."""


def health_state(upstream: UpstreamState) -> str:
    """
    One word for the state of an upstream: C{up} or C{down} (health) when
    it is enabled, else its admin state (C{draining}, C{disabled},
    C{removed}).
    """
    if upstream.admin_state != ENABLED:
        return upstream.admin_state
    return "up" if upstream.alive else "down"


def _classes(counts: list[int]) -> dict[str, int]:
    return {name: counts[index + 1] for index, name in enumerate(CLASSES)}


def upstream_data(service: BalancerService, upstream: UpstreamState, now: float) -> dict[str, Any]:
    """
    One upstream's row.
    """
    probe = None
    health = service.health
    if health is not None:
        result = health.last_results.get(upstream.name)
        if result is not None:
            probe = {"healthy": result.healthy, "reason": result.reason, "at": result.at}
    return {
        "name": upstream.name,
        "state": health_state(upstream),
        "healthy": upstream.alive,
        "admin_state": upstream.admin_state,
        "serving": upstream.serving,
        "since": upstream.state_since,
        "since_seconds": max(0.0, now - upstream.state_since),
        "last_probe": probe,
        "in_flight": upstream.in_flight,
        "pool_idle": service.pool.idle_count(upstream),
        "pool_open": service.pool.open_count(upstream),
        "requests": upstream.requests,
        "responses": _classes(upstream.responses),
        "failures": {
            "connect": upstream.connect_failures,
            "response": upstream.response_errors,
            "timeout": upstream.timeouts,
            "check": upstream.check_failures,
        },
        "retries": upstream.retries,
        "state_changes": upstream.state_changes,
        "weight": upstream.weight,
        "connections_opened": upstream.connections_opened,
        "connections_reused": upstream.connections_reused,
    }


def requests_in_flight(service: BalancerService) -> int:
    """
    Client requests being served now, on the plain and HTTPS listeners
    (read at request time, never counted per request).
    """
    total = 0
    for factory in service.relay_factories:
        total += sum(1 for connection in factory.connections if connection.exchange is not None)
        total += len(factory.detached)
    return total


def client_connections_open(service: BalancerService) -> int:
    """
    Client connections open now, on the plain and HTTPS listeners.
    """
    return sum(len(factory.connections) for factory in service.relay_factories)


def runtime_data(now: float, started: float) -> dict[str, Any]:
    """
    What every status shows of the running process: versions and times.
    """
    return {
        "version": balancebeam.__version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "twisted": twisted.__version__,
        "now": now,
        "started_at": started,
        "uptime_seconds": max(0.0, now - started),
    }


def status_data(service: BalancerService) -> dict[str, Any]:
    """
    Everything the status page shows, as JSON-able data.
    """
    clock = service.clock
    now = clock.seconds()
    stats = service.stats
    started = service.started_at if service.started_at is not None else now
    registry = service.registry
    upstreams = [upstream_data(service, u, now) for u in registry.upstreams]
    upstreams += [upstream_data(service, u, now) for u in registry.retiring]
    rate = service.request_rate
    reloads = service.reloads
    features = {provider.name: dict(provider.snapshot()) for provider in service.feature_counters}
    return {
        **runtime_data(now, started),
        "listeners": list(service.listening_on),
        "admin": [describe_listener(p) for p in service.admin_ports],
        "ready": service.is_ready(),
        "draining": service.factory.draining,
        "strategy": service.config.strategy,
        "requests": stats.requests,
        "requests_per_second": rate.per_second() if rate is not None else None,
        "responses": _classes(stats.by_class),
        "requests_in_flight": requests_in_flight(service),
        "client_connections": client_connections_open(service),
        "rate_limited": stats.rate_limited,
        "retries": stats.retries,
        "no_upstream": stats.no_upstream,
        "client_errors": stats.client_errors,
        "upstream_timeouts": stats.upstream_timeouts,
        "pool_opened": service.pool.opened,
        "pool_reused": service.pool.reused,
        "reloads": {
            "success": reloads.success,
            "failure": reloads.failure,
            "last_ok": reloads.last_ok,
            "last_at": reloads.last_at,
            "last_error": reloads.last_error,
        },
        "upstreams_up": sum(1 for u in registry.upstreams if u.serving),
        "upstreams": upstreams,
        "features": features,
    }


def describe_listener(port: Any) -> str:
    """
    C{host:port} of a listening port.
    """
    from balancebeam.service import describe_port

    return describe_port(port)
