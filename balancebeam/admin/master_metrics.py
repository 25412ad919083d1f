# -*- test-case-name: tests.test_admin_master -*-
"""
The master's Prometheus metrics (C{--workers N}), from a
L{MasterSnapshot <balancebeam.workers.counters.MasterSnapshot>}.

Every metric the single process exports (L{balancebeam.metrics}) is here
under the same name and labels, made from the workers' reports:

  - counters, the request duration histogram (bucket by bucket, with its
    sum and count) and each upstream's counters are the sums over every
    worker, those of workers gone included, so none goes down when a
    worker is replaced: C{balancebeam_http_requests_total} is the requests
    of every worker;
  - the gauges that count things (requests in flight, client connections,
    each upstream's requests in flight and pooled connections, the cache's
    bytes and entries) are the sums over the live workers;
  - an upstream's health (C{balancebeam_upstream_up}) is 1 only when the
    master's health has it up and no live worker reports it down; its
    failed probes and state changes are the master's, which probes and
    tells the workers; its weight and last change are the master's.

What only the master has: C{balancebeam_worker_starts_total},
C{balancebeam_worker_crashes_total}, C{balancebeam_workers},
C{balancebeam_generation}, one series per live worker
(C{balancebeam_worker_requests{slot,pid,generation}}, ...), and per
upstream the workers that see it up and down
(C{balancebeam_upstream_workers_up}, C{balancebeam_upstream_workers_down}).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from balancebeam.admin.providers import NAME
from balancebeam.admin.status import CLASSES
from balancebeam.metrics import (
    POOL_COUNTERS,
    STATS_COUNTERS,
    UPSTREAM_COUNTERS,
    UpstreamMetrics,
    _counter,
    _gauge,
    duration_family,
    exposition,
    feature_family,
    load_gauges,
    process_families,
    reload_families,
    upstream_families,
    upstream_state_families,
)
from balancebeam.registry import ENABLED, REMOVED
from balancebeam.stats import DURATION_BOUNDS
from balancebeam.workers.counters import MasterSnapshot, UpstreamStatus

SUMMED: tuple[tuple[str, str, str], ...] = (
    *STATS_COUNTERS,
    *((name, name, documentation) for name, documentation in POOL_COUNTERS),
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
"""Gauges that earlier workers reported among their counters: not shown
from there (a sum would keep the values of workers gone); the live workers'
gauges have them now."""

_HANDLED = frozenset(
    {key for key, _, _ in SUMMED}
    | {"responses", "reloads", "reloads_failed", "durations", "duration_sum", "upstreams"}
    | GAUGES
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
        yield from self._features()

    def _sums(self, counters: Mapping[str, Any]) -> Iterator[Metric]:
        for key, name, documentation in SUMMED:
            family = _counter(name, documentation)
            family.add_metric([], _int(counters.get(key)))
            yield family
        responses = _counter(
            "http_responses", "Responses sent to clients, by status class", ["code"]
        )
        classes = _mapping(counters.get("responses"))
        for code in (*CLASSES, "other"):
            responses.add_metric([code], _int(classes.get(code)))
        yield responses
        yield duration_family(
            duration_counts(counters.get("durations")), _number(counters.get("duration_sum"))
        )
        gauges = self._snapshot.gauges
        yield from load_gauges(
            _int(gauges.get("requests_in_flight")), _int(gauges.get("client_connections_open"))
        )
        last = self._snapshot.last_reload
        yield from reload_families(
            _int(counters.get("reloads")),
            _int(counters.get("reloads_failed")),
            last.ok,
            last.success_at,
        )
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
        snapshot = self._snapshot
        rows = snapshot.upstream_states()
        yield from upstream_state_families(
            (row.name, row.alive, admin_state(row, self._states)) for row in rows
        )
        yield from upstream_families([upstream_metrics(snapshot, row) for row in rows])
        labels = ["upstream"]
        up = _gauge(
            "upstream_workers_up", "Live workers whose last report has the upstream up", labels
        )
        down = _gauge(
            "upstream_workers_down",
            "Live workers whose last report has the upstream down",
            labels,
        )
        for row in rows:
            up.add_metric([row.name], len(row.workers_up))
            down.add_metric([row.name], len(row.workers_down))
        yield from (up, down)

    def _features(self) -> Iterator[Metric]:
        features = _mapping(self._snapshot.gauges.get("features"))
        for name in sorted(features):
            values = _mapping(features[name])
            for key in sorted(values):
                value = values[key]
                if not NAME.fullmatch(name) or not NAME.fullmatch(key):
                    continue
                if key.endswith("_total") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)):
                    yield feature_family(name, key, value)


def admin_state(row: UpstreamStatus, states: Mapping[str, str]) -> str:
    """
    The admin state of an upstream: C{removed} for one only a draining
    generation has, else the one the master's admin set (C{enabled} unless
    set).
    """
    return REMOVED if row.removed else states.get(row.name, ENABLED)


def upstream_metrics(snapshot: MasterSnapshot, row: UpstreamStatus) -> UpstreamMetrics:
    """
    What C{/metrics} and the status show of one upstream: its counters
    summed over every worker (those gone included; its failed probes and
    state changes are the master's), its gauges summed over the live
    workers, its weight and last change from the master.
    """
    counters = _mapping(_mapping(snapshot.counters.get("upstreams")).get(row.name))
    gauges = _mapping(_mapping(snapshot.gauges.get("upstreams")).get(row.name))
    responses = _mapping(counters.get("responses"))
    return UpstreamMetrics(
        name=row.name,
        weight=row.weight,
        in_flight=_int(gauges.get("in_flight")),
        idle=_int(gauges.get("pool_idle")),
        open=_int(gauges.get("pool_open")),
        since=row.since,
        requests=_int(counters.get("requests")),
        responses={code: _int(responses.get(code)) for code in (*CLASSES, "other")},
        counters={
            attribute: _int(counters.get(attribute)) for attribute, _, _ in UPSTREAM_COUNTERS
        },
    )


def duration_counts(buckets: object) -> list[int]:
    """
    The request duration histogram's counts in each bucket of
    L{DURATION_BOUNDS} and beyond (not cumulative), from the summed reports
    (counts by upper bound, C{"0.001"} to C{"+Inf"}). A bound this version
    does not have (from a worker of another version) counts in the next
    one up, so that every bucket still counts requests at most that long.
    """
    counts = [0] * (len(DURATION_BOUNDS) + 1)
    for bound, count in _mapping(buckets).items():
        if bound == "+Inf":
            counts[-1] += _int(count)
            continue
        try:
            limit = float(bound)
        except (TypeError, ValueError):
            continue
        if limit == limit:  # not NaN
            counts[bisect_left(DURATION_BOUNDS, limit)] += _int(count)
    return counts


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


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
