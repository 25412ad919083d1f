# -*- test-case-name: tests.test_workers_admin -*-
"""
A worker's side of the master's admin (L{balancebeam.workers.fleet_admin}):
applying the upstreams' admin states the master sends
(L{apply_admin_states}), purging its cache when asked (L{purge}), and what
it reports in its L{STATS <balancebeam.workers.control.STATS>} messages
beyond the balancer's counters (L{report_counters}, L{report_gauges}), so
that the master's admin shows what a single process's shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.admin.providers import IPurger
from balancebeam.admin.status import client_connections_open, requests_in_flight
from balancebeam.metrics import upstream_classes
from balancebeam.registry import DISABLED, DRAINING, ENABLED, REMOVED, UpstreamRegistry
from balancebeam.stats import DURATION_BOUNDS
from balancebeam.workers.control import PURGED, Message

if TYPE_CHECKING:
    from balancebeam.service import BalancerService

log = Logger()

UPSTREAM_COUNTERS: tuple[str, ...] = (
    "requests",
    "connect_failures",
    "response_errors",
    "timeouts",
    "retries",
    "connections_opened",
    "connections_reused",
)
"""The counters a worker reports for each upstream (with its responses by
class). Its C{check_failures} and C{state_changes} are the master's to
count: the master probes, and its health changes every worker's state."""


def duration_buckets(counts: list[int]) -> dict[str, int]:
    """
    The request duration histogram's counts (not cumulative) by upper
    bound, as the C{le} label spells it (C{"0.001"}, ..., C{"+Inf"}).
    """
    buckets = {repr(float(bound)): count for bound, count in zip(DURATION_BOUNDS, counts)}
    buckets["+Inf"] = counts[len(DURATION_BOUNDS)]
    return buckets


def report_counters(service: BalancerService) -> dict[str, Any]:
    """
    The balancer's counters (L{BalancerService.snapshot}, without the lists
    of upstreams up and down, which are the master's to say, and without
    the features' gauges, which L{report_gauges} gives), with the responses
    of no status class (C{responses.other}), the request duration
    histogram (C{durations}, by upper bound, and C{duration_sum}), and each
    upstream's counters (C{upstreams}, by name).
    """
    gauges = {
        f"{provider.name}_{key}"
        for provider in service.feature_counters
        for key in provider.snapshot()
        if not key.endswith("_total")
    }
    counters: dict[str, Any] = {
        name: value
        for name, value in service.snapshot().items()
        if isinstance(value, (int, dict)) and not isinstance(value, bool) and name not in gauges
    }
    stats = service.stats
    responses = counters.get("responses")
    if isinstance(responses, dict):
        responses["other"] = stats.by_class[0]
    counters["durations"] = duration_buckets(stats.durations)
    counters["duration_sum"] = stats.duration_sum
    registry = service.registry
    counters["upstreams"] = {
        upstream.name: {
            **{name: getattr(upstream, name) for name in UPSTREAM_COUNTERS},
            "responses": upstream_classes(upstream.responses),
        }
        for upstream in (*registry.upstreams, *registry.retiring)
    }
    return counters


def report_gauges(service: BalancerService) -> dict[str, Any]:
    """
    What the balancer counts now, which the master sums over its live
    workers only: requests in flight, client connections open, each
    upstream's requests in flight and pooled connections (with whether this
    worker has it up, C{alive}), and the features' gauges (the cache's
    C{bytes} and C{entries}) by feature.
    """
    pool = service.pool
    registry = service.registry
    return {
        "requests_in_flight": requests_in_flight(service),
        "client_connections_open": client_connections_open(service),
        "upstreams": {
            upstream.name: {
                "in_flight": upstream.in_flight,
                "pool_idle": pool.idle_count(upstream),
                "pool_open": pool.open_count(upstream),
                "alive": upstream.alive,
            }
            for upstream in (*registry.upstreams, *registry.retiring)
        },
        "features": {
            provider.name: {
                key: value
                for key, value in provider.snapshot().items()
                if not key.endswith("_total")
            }
            for provider in service.feature_counters
        },
    }


def apply_admin_states(registry: UpstreamRegistry, states: Mapping[str, Any]) -> int:
    """
    Put each upstream named in C{states} in its admin state, as the single
    process's admin does (C{registry.set_admin_state}). Unknown names (an
    older or newer configuration), removed upstreams and unknown states are
    skipped.

    @return: how many states changed.
    """
    changed = 0
    if not isinstance(states, Mapping):
        return changed
    for name, state in states.items():
        upstream = registry.get(name)
        if upstream is None or upstream.admin_state == REMOVED:
            continue
        if state not in (ENABLED, DRAINING, DISABLED):
            continue
        if registry.set_admin_state(upstream, state, "requested on the master's admin"):
            changed += 1
    return changed


def purge(purger: IPurger | None, message: Message) -> Deferred[Message]:
    """
    Purge the URL of a L{PURGE <balancebeam.workers.control.PURGE>} message.

    @return: fires with the L{PURGED} answer (0 purged without a cache; an
        C{error} when purging failed).
    """
    serial = message.get("serial")
    url = message.get("url")
    if purger is None or not isinstance(url, str):
        return succeed({"type": PURGED, "serial": serial, "purged": 0})
    call: Callable[[str], Any] = purger.purge
    purging: Deferred[int] = maybeDeferred(call, url)

    def purged(count: int) -> Message:
        return {"type": PURGED, "serial": serial, "purged": count}

    def failed(reason: Failure) -> Message:
        log.failure("purging {url} failed", reason, url=url)
        return {"type": PURGED, "serial": serial, "purged": 0, "error": "purging failed"}

    return purging.addCallbacks(purged, failed)
