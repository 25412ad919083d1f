# -*- test-case-name: tests.test_admin_master -*-
"""
The master's Prometheus metrics (C{--workers N}), from a
L{MasterSnapshot <balancebeam.workers.counters.MasterSnapshot>}.

The sums of the workers' counters keep the names the single process gives
the same counters (L{balancebeam.metrics}): C{balancebeam_http_requests_total}
is the requests of every worker, those of workers gone included, so it
never goes down when a worker is replaced. What only the master has:
C{balancebeam_worker_starts_total}, C{balancebeam_worker_crashes_total},
C{balancebeam_workers}, C{balancebeam_generation} and one series per live
worker (C{balancebeam_worker_requests{slot,pid,generation}}, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from balancebeam.admin.providers import NAME
from balancebeam.admin.status import CLASSES
from balancebeam.metrics import (
    _counter,
    _gauge,
    exposition,
    process_families,
    upstream_state_families,
)
from balancebeam.registry import ENABLED
from balancebeam.workers.counters import MasterSnapshot

SUMMED: tuple[tuple[str, str, str], ...] = (
    ("requests", "http_requests", "Client request heads received"),
    ("client_connections", "client_connections", "Client connections accepted"),
    (
        "refused_connections",
        "client_connections_refused",
        "Client connections refused (503) over --max-client-connections",
    ),
    (
        "refused_per_client",
        "client_connections_refused_per_client",
        "Client connections refused (503) over --max-connections-per-client",
    ),
    ("client_errors", "client_errors", "Malformed, over-limit or too slow requests"),
    ("rate_limited", "rate_limited_requests", "Requests answered 429 (rate limited)"),
    ("retries", "retries", "Requests sent again after an upstream failed"),
    (
        "reuse_retries",
        "keepalive_race_retries",
        "Retries after an upstream closed a reused connection as it was reused",
    ),
    ("no_upstream", "no_upstream", "Requests answered 503: no upstream available"),
    ("upstream_timeouts", "requests_timed_out", "Requests answered 504"),
    ("filter_errors", "filter_errors", "Request filters that raised or failed"),
    ("pool_connections_opened", "pool_connections_opened", "Upstream connections opened"),
    (
        "pool_connections_reused",
        "pool_connections_reused",
        "Requests sent on an idle pooled upstream connection",
    ),
    ("health_probes_sent", "health_checks", "Active health probes sent (by the master)"),
    ("health_probes_failed", "health_check_failures", "Active health probes that failed"),
    ("connect_failures", "connect_failures", "Failed connects to upstreams, all upstreams"),
    (
        "upstream_failures",
        "upstream_failures",
        "Upstream connections that failed mid-request, all upstreams",
    ),
    ("worker_starts", "worker_starts", "Worker processes started"),
    ("worker_crashes", "worker_crashes", "Worker processes that exited unasked"),
)
"""Summed counters: the snapshot's key, the metric name (without the
C{balancebeam_} prefix and C{_total}), its help."""

GAUGES = frozenset({"cache_bytes", "cache_entries"})
"""Per-worker gauges in the counters: not shown (a sum would keep the
values of workers gone)."""

_HANDLED = frozenset(
    {key for key, _, _ in SUMMED} | {"responses", "reloads", "reloads_failed"} | GAUGES
)


class MasterCollector(Collector):
    """
    The metric families of one master snapshot.
    """

    def __init__(
        self,
        snapshot: MasterSnapshot,
        states: Mapping[str, str],
        started_at: float | None,
    ) -> None:
        """
        @param states: the admin state set for each upstream (by name).
        @param started_at: when the master started (Unix time), or C{None}.
        """
        self._snapshot = snapshot
        self._states = states
        self._started_at = started_at

    def collect(self) -> Iterator[Metric]:
        """
        The metric families.
        """
        yield from process_families(self._started_at)
        yield from self._sums(self._snapshot.counters)
        yield from self._workers()
        yield from self._upstreams()

    def _sums(self, counters: Mapping[str, Any]) -> Iterator[Metric]:
        for key, name, documentation in SUMMED:
            family = _counter(name, documentation)
            family.add_metric([], _int(counters.get(key)))
            yield family
        responses = _counter(
            "http_responses", "Responses sent to clients, by status class", ["code"]
        )
        by_class = counters.get("responses")
        classes = by_class if isinstance(by_class, Mapping) else {}
        for code in CLASSES:
            responses.add_metric([code], _int(classes.get(code)))
        yield responses
        reloads = _counter("config_reloads", "Configuration reloads, by result", ["result"])
        reloads.add_metric(["success"], _int(counters.get("reloads")))
        reloads.add_metric(["failure"], _int(counters.get("reloads_failed")))
        yield reloads
        for key in sorted(counters):
            value = counters[key]
            if key in _HANDLED or not NAME.fullmatch(key) or isinstance(value, bool):
                continue
            if isinstance(value, int):
                # Feature counters: waf_blocked is balancebeam_waf_blocked_total,
                # as the single process names it.
                family = _counter(key, f"{key}, summed over the workers")
                family.add_metric([], value)
                yield family

    def _workers(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        generation = _gauge("generation", "The generation of workers serving (1, +1 per reload)")
        generation.add_metric([], snapshot.generation)
        yield generation
        count = _gauge("workers", "Live worker processes, by state", ["state"])
        for state in ("starting", "ready", "stopping"):
            count.add_metric([state], sum(1 for w in snapshot.workers if w.state == state))
        yield count
        labels = ["slot", "pid", "generation"]
        requests = _gauge(
            "worker_requests", "Requests the worker has parsed (its last report)", labels
        )
        connections = _gauge(
            "worker_connections", "Client connections the worker holds (its last report)", labels
        )
        started = _gauge(
            "worker_start_time_seconds", "When the worker started (Unix time)", labels
        )
        for worker in snapshot.workers:
            values = [str(worker.slot), str(worker.pid), str(worker.generation)]
            requests.add_metric(values, worker.requests)
            connections.add_metric(values, worker.connections)
            started.add_metric(values, worker.started)
        yield from (requests, connections, started)

    def _upstreams(self) -> Iterator[Metric]:
        states = self._states
        yield from upstream_state_families(
            (name, alive, states.get(name, ENABLED)) for name, alive in _upstreams(self._snapshot)
        )


def _upstreams(snapshot: MasterSnapshot) -> Sequence[tuple[str, bool]]:
    """
    Each upstream's name and health, in the snapshot's order.
    """
    up = [(name, True) for name in snapshot.upstreams_up]
    return up + [(name, False) for name in snapshot.upstreams_down]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def master_exposition(
    snapshot: MasterSnapshot,
    states: Mapping[str, str],
    started_at: float | None,
    process: bool = True,
) -> bytes:
    """
    The text exposition of the master's metrics, and with C{process} the
    master process's own (C{process_cpu_seconds_total}, ...).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MasterCollector(snapshot, states, started_at))
    if process:
        ProcessCollector(registry=registry)
    return exposition(registry)
