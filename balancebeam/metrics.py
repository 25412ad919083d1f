# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics, read from balancebeam's own counters at scrape time.

The relay counts with plain integer attributes (L{balancebeam.stats.Stats},
the counters on each L{balancebeam.registry.UpstreamState}, the pool's and
the health checker's); no C{prometheus_client} metric object is touched per
request. L{BalancerCollector} turns those numbers into metric families when
C{/metrics} is scraped, and C{prometheus_client} formats the exposition.

Names follow the Prometheus conventions, and the HAProxy exporter's where it
has an equivalent (C{haproxy_server_check_failures_total} is
C{balancebeam_upstream_check_failures_total}); every name starts with
C{balancebeam_}. Labels are bounded: C{upstream} (the configured
upstreams), C{code} (a status class), C{state}, C{result}. No client
address or path is ever a label. The full list is in C{doc/operations.md}.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

import balancebeam
import twisted
from balancebeam.admin.providers import check_name
from balancebeam.admin.status import CLASSES, client_connections_open, requests_in_flight
from balancebeam.registry import ADMIN_STATES, ENABLED, UpstreamState
from balancebeam.stats import DURATION_BOUNDS

if TYPE_CHECKING:
    from balancebeam.service import BalancerService

PREFIX = "balancebeam_"

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The C{Content-Type} of the exposition."""


def _counter(name: str, documentation: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, labels=list(labels))


def _single_counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    counter = _counter(name, documentation)
    counter.add_metric([], value)
    return counter


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=list(labels))


def process_families(started_at: float | None) -> Iterator[Metric]:
    """
    C{balancebeam_build_info}, and C{balancebeam_start_time_seconds} once
    started (also the master's, L{balancebeam.admin.master_metrics}).
    """
    info = _gauge(
        "build_info",
        "balancebeam's version and runtime, as labels; always 1",
        ["version", "python", "twisted"],
    )
    info.add_metric(
        [
            balancebeam.__version__,
            f"{platform.python_implementation()} {platform.python_version()}",
            twisted.__version__,
        ],
        1,
    )
    yield info
    if started_at is not None:
        started = _gauge("start_time_seconds", "When the balancer started (Unix time)")
        started.add_metric([], started_at)
        yield started


STATS_COUNTERS: tuple[tuple[str, str, str], ...] = (
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
)
"""The process's counters (L{Stats} attributes, and the keys of a worker's
report): the attribute, the metric name (without the C{balancebeam_}
prefix and C{_total}), its help. The single process and the master export
them alike."""

POOL_COUNTERS: tuple[tuple[str, str], ...] = (
    ("pool_connections_opened", "Upstream connections opened"),
    ("pool_connections_reused", "Requests sent on an idle pooled upstream connection"),
)
"""The pool's counters: the metric name (also the key of a worker's
report), its help."""

UPSTREAM_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("connect_failures", "upstream_connection_errors", "Failed connects to the upstream"),
    (
        "response_errors",
        "upstream_response_errors",
        "Upstream connections that failed before the response was complete",
    ),
    ("timeouts", "upstream_timeouts", "Requests the upstream did not answer in time (504)"),
    (
        "retries",
        "upstream_retries",
        "Requests sent again after the upstream failed before answering",
    ),
    ("check_failures", "upstream_check_failures", "Failed active health checks"),
    ("state_changes", "upstream_state_changes", "Health state changes (up to down and back)"),
    ("connections_opened", "upstream_connection_attempts", "Connections opened to the upstream"),
    (
        "connections_reused",
        "upstream_connection_reuses",
        "Requests sent on an idle pooled connection",
    ),
)
"""Each upstream's counters besides its requests and responses: the
attribute of L{UpstreamState}, the metric name (without the C{balancebeam_}
prefix and C{_total}), its help."""


@dataclass(frozen=True)
class UpstreamMetrics:
    """
    What C{/metrics} shows of one upstream, from one process or summed over
    the workers (L{balancebeam.admin.master_metrics}).

    @ivar name: C{host:port}.
    @ivar weight: its weight.
    @ivar in_flight: requests assigned to it now.
    @ivar idle: idle pooled connections to it.
    @ivar open: connections to it, open or being opened.
    @ivar since: when its health or admin state last changed (Unix time).
    @ivar requests: requests sent to it.
    @ivar responses: response heads from it, by class (C{1xx} to C{5xx},
        and C{other}).
    @ivar counters: the others, by attribute of L{UPSTREAM_COUNTERS}.
    """

    name: str
    weight: float
    in_flight: int
    idle: int
    open: int
    since: float
    requests: int
    responses: Mapping[str, int]
    counters: Mapping[str, int]


def upstream_families(upstreams: Sequence[UpstreamMetrics]) -> Iterator[Metric]:
    """
    The per-upstream gauges and counters (all but the state gauges of
    L{upstream_state_families}), one process and the master alike.
    """
    labels = ["upstream"]
    weight = _gauge("upstream_weight", "The upstream's weight", labels)
    in_flight = _gauge(
        "upstream_requests_in_flight", "Requests assigned to the upstream now", labels
    )
    idle = _gauge("upstream_idle_connections", "Idle pooled connections to the upstream", labels)
    open_ = _gauge(
        "upstream_open_connections",
        "Connections to the upstream, open or being opened (idle and busy)",
        labels,
    )
    since = _gauge(
        "upstream_last_state_change_timestamp_seconds",
        "When the upstream's health or admin state last changed (Unix time)",
        labels,
    )
    requests = _counter("upstream_requests", "Requests sent to the upstream", labels)
    responses = _counter(
        "upstream_responses",
        "Responses from the upstream, by status class",
        ["upstream", "code"],
    )
    counters = {
        attribute: _counter(name, documentation, labels)
        for attribute, name, documentation in UPSTREAM_COUNTERS
    }
    for upstream in upstreams:
        name = [upstream.name]
        weight.add_metric(name, upstream.weight)
        in_flight.add_metric(name, upstream.in_flight)
        idle.add_metric(name, upstream.idle)
        open_.add_metric(name, upstream.open)
        since.add_metric(name, upstream.since)
        requests.add_metric(name, upstream.requests)
        for code in (*CLASSES, "other"):
            responses.add_metric([upstream.name, code], upstream.responses.get(code, 0))
        for attribute, family in counters.items():
            family.add_metric(name, upstream.counters.get(attribute, 0))
    yield from (weight, in_flight, idle, open_, since, requests, responses)
    yield from counters.values()


def upstream_classes(counts: Sequence[int]) -> dict[str, int]:
    """
    An upstream's responses (L{UpstreamState.responses}) by class: C{1xx}
    to C{5xx}, and C{other} for the statuses beyond 599.
    """
    classes = {name: counts[index + 1] for index, name in enumerate(CLASSES)}
    classes["other"] = sum(counts[6:])
    return classes


def duration_family(counts: Sequence[int], total: float) -> Metric:
    """
    C{balancebeam_http_request_duration_seconds} from the count of requests
    in each bucket of L{DURATION_BOUNDS} and beyond (not cumulative), and
    the seconds they took in all.
    """
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(DURATION_BOUNDS, counts):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    cumulative += counts[len(DURATION_BOUNDS)] if len(counts) > len(DURATION_BOUNDS) else 0
    buckets.append(("+Inf", cumulative))
    return HistogramMetricFamily(
        PREFIX + "http_request_duration_seconds",
        "Time from a request head to the end of its response (tunnels excluded)",
        buckets=buckets,
        sum_value=total,
    )


def load_gauges(in_flight: int, connections: int) -> Iterator[Metric]:
    """
    C{balancebeam_http_requests_in_flight} and
    C{balancebeam_client_connections_open}.
    """
    for name, value, documentation in (
        ("http_requests_in_flight", in_flight, "Client requests being served"),
        ("client_connections_open", connections, "Open client connections"),
    ):
        gauge = _gauge(name, documentation)
        gauge.add_metric([], value)
        yield gauge


def reload_families(
    success: int, failure: int, last_ok: bool, last_success_at: float | None
) -> Iterator[Metric]:
    """
    C{balancebeam_config_reloads_total{result}},
    C{balancebeam_config_last_reload_successful} and, once a reload applied,
    C{balancebeam_config_last_reload_success_timestamp_seconds}.
    """
    total = _counter("config_reloads", "Configuration reloads, by result", ["result"])
    total.add_metric(["success"], success)
    total.add_metric(["failure"], failure)
    yield total
    last = _gauge(
        "config_last_reload_successful", "Whether the last reload succeeded (1 with none yet)"
    )
    last.add_metric([], 1 if last_ok else 0)
    yield last
    if last_success_at is not None:
        when = _gauge(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last reloaded successfully (Unix time)",
        )
        when.add_metric([], last_success_at)
        yield when


def feature_family(name: str, key: str, value: float) -> Metric:
    """
    One feature's counter (C{key} ending in C{_total}) or gauge, as
    C{balancebeam_<name>_<key>}.

    @raise ValueError: when C{name} or C{key} is not a metric name part.
    """
    prefix = check_name(name) + "_"
    check_name(key)
    family: CounterMetricFamily | GaugeMetricFamily
    if key.endswith("_total"):
        family = _counter(prefix + key[: -len("_total")], f"{name}: {key}")
    else:
        family = _gauge(prefix + key, f"{name}: {key}")
    family.add_metric([], value)
    return family


class BalancerCollector(Collector):
    """
    Collects every balancebeam metric from a running L{BalancerService}.
    """

    def __init__(self, service: BalancerService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        """
        The metric families, read now.
        """
        yield from self._process()
        yield from self._requests()
        yield from self._upstreams()
        yield from self._operations()
        yield from self._features()

    def _process(self) -> Iterator[Metric]:
        yield from process_families(self._service.started_at)

    def _requests(self) -> Iterator[Metric]:
        service = self._service
        stats = service.stats
        for attribute, name, documentation in STATS_COUNTERS:
            yield _single_counter(name, documentation, getattr(stats, attribute))
        responses = _counter(
            "http_responses", "Responses sent to clients, by status class", ["code"]
        )
        for index, name in enumerate(CLASSES):
            responses.add_metric([name], stats.by_class[index + 1])
        responses.add_metric(["other"], stats.by_class[0])
        yield responses
        yield duration_family(stats.durations, stats.duration_sum)
        yield from load_gauges(requests_in_flight(service), client_connections_open(service))
        pool = service.pool
        for (name, documentation), value in zip(POOL_COUNTERS, (pool.opened, pool.reused)):
            yield _single_counter(name, documentation, value)

    def _upstreams(self) -> Iterator[Metric]:
        service = self._service
        registry = service.registry
        upstreams: list[UpstreamState] = list(registry.upstreams) + list(registry.retiring)
        pool = service.pool
        yield from upstream_state_families(
            (upstream.name, upstream.alive, upstream.admin_state) for upstream in upstreams
        )
        yield from upstream_families(
            [
                UpstreamMetrics(
                    name=upstream.name,
                    weight=upstream.weight,
                    in_flight=upstream.in_flight,
                    idle=pool.idle_count(upstream),
                    open=pool.open_count(upstream),
                    since=upstream.state_since,
                    requests=upstream.requests,
                    responses=upstream_classes(upstream.responses),
                    counters={
                        attribute: getattr(upstream, attribute)
                        for attribute, _, _ in UPSTREAM_COUNTERS
                    },
                )
                for upstream in upstreams
            ]
        )
        health = service.health
        probes = _counter("health_checks", "Active health probes sent")
        failed = _counter("health_check_failures", "Active health probes that failed")
        probes.add_metric([], health.probes_sent if health is not None else 0)
        failed.add_metric([], health.probes_failed if health is not None else 0)
        yield probes
        yield failed

    def _operations(self) -> Iterator[Metric]:
        reloads = self._service.reloads
        yield from reload_families(
            reloads.success, reloads.failure, reloads.last_ok, reloads.last_success_at
        )

    def _features(self) -> Iterator[Metric]:
        for provider in self._service.feature_counters:
            for key, value in sorted(provider.snapshot().items()):
                yield feature_family(provider.name, key, value)


def upstream_state_families(states: Iterable[tuple[str, bool, str]]) -> list[Metric]:
    """
    The gauges of each upstream's health and admin state, from its name,
    whether it is up, and its admin state (one process and the master alike).
    """
    labels = ["upstream"]
    up = _gauge("upstream_up", "Whether the upstream passes its health checks (1) or not", labels)
    serving = _gauge(
        "upstream_serving", "Whether the upstream takes new requests (up and enabled)", labels
    )
    admin = _gauge(
        "upstream_admin_state",
        "The upstream's admin state: 1 for the current one",
        ["upstream", "state"],
    )
    for name, alive, state in states:
        up.add_metric([name], 1 if alive else 0)
        serving.add_metric([name], 1 if alive and state == ENABLED else 0)
        for each in ADMIN_STATES:
            admin.add_metric([name, each], 1 if state == each else 0)
    return [up, serving, admin]


def build_registry(service: BalancerService, process: bool = True) -> CollectorRegistry:
    """
    A registry of its own (not C{prometheus_client}'s global one) holding
    L{BalancerCollector} and, when C{process}, the process collector
    (C{process_cpu_seconds_total}, C{process_open_fds}, ...).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(service))
    if process:
        ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """
    The text exposition of every metric in C{registry}.
    """
    return generate_latest(registry)
