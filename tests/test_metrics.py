"""
Tests for L{balancebeam.metrics}: the exposition, parsed back with
C{prometheus_client.parser}, has exact counts after known traffic driven
through the whole balancer in memory.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.admin.providers import IFeatureCounters
from balancebeam.metrics import build_registry, exposition
from balancebeam.stats import DURATION_BOUNDS, Stats
from tests.helpers import response
from tests.operations_helpers import ServiceHarness, harness_config, metric, parse_metrics

A = "127.0.0.1:9001"
B = "127.0.0.1:9002"


@implementer(IFeatureCounters)
class CacheCounters:
    """
    A feature provider, as the response cache will be.
    """

    name = "cache"

    def __init__(self) -> None:
        self.values: dict[str, float] = {"hits_total": 7, "misses_total": 2, "entries": 5}

    def snapshot(self) -> Mapping[str, float]:
        """
        The counters.
        """
        return self.values


class MetricsAfterTrafficTests(SynchronousTestCase):
    """
    Counts on C{/metrics} after requests whose outcome the test decides.
    """

    def scrape(
        self, harness: ServiceHarness
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """
        Parse the exposition of C{harness}'s balancer (process metrics off).
        """
        return parse_metrics(exposition(build_registry(harness.service, process=False)))

    def test_requests_responses_and_durations(self) -> None:
        """
        Four requests answered 200, 200, 404 and 500 by two upstreams in turn,
        each taking 3 ms, are counted by class, by upstream and in the
        duration histogram; two connections are opened and two reused.
        """
        harness = ServiceHarness()
        client, transport = harness.client()
        upstreams = {}
        for status in (b"200 OK", b"404 Not Found", b"200 OK", b"500 Oops"):
            harness.get(client)
            if harness.pending_ports():
                protocol, _, port = harness.accept()
                upstreams[port] = protocol
            port = 9001 if status in (b"200 OK",) else 9002
            harness.reactor.advance(0.003)
            upstreams[port].dataReceived(response(b"x", status))
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 4)
        samples = self.scrape(harness)
        self.assertEqual(metric(samples, "balancebeam_http_requests_total"), 4)
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="2xx"), 2)
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="4xx"), 1)
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="5xx"), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_requests_total", upstream=A), 2)
        self.assertEqual(metric(samples, "balancebeam_upstream_requests_total", upstream=B), 2)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_responses_total", upstream=A, code="2xx"), 2
        )
        self.assertEqual(
            metric(samples, "balancebeam_upstream_responses_total", upstream=B, code="4xx"), 1
        )
        self.assertEqual(
            metric(samples, "balancebeam_upstream_responses_total", upstream=B, code="5xx"), 1
        )
        self.assertEqual(
            metric(samples, "balancebeam_upstream_responses_total", upstream=B, code="2xx"), 0
        )
        histogram = "balancebeam_http_request_duration_seconds"
        self.assertEqual(metric(samples, histogram + "_count"), 4)
        self.assertAlmostEqual(metric(samples, histogram + "_sum"), 0.012, places=6)
        self.assertEqual(metric(samples, histogram + "_bucket", le="0.0025"), 0)
        self.assertEqual(metric(samples, histogram + "_bucket", le="0.005"), 4)
        self.assertEqual(metric(samples, histogram + "_bucket", le="+Inf"), 4)
        self.assertEqual(metric(samples, "balancebeam_pool_connections_opened_total"), 2)
        self.assertEqual(metric(samples, "balancebeam_pool_connections_reused_total"), 2)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_connection_reuses_total", upstream=A), 1
        )
        self.assertEqual(
            metric(samples, "balancebeam_upstream_connection_attempts_total", upstream=B), 1
        )
        self.assertEqual(metric(samples, "balancebeam_upstream_idle_connections", upstream=A), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_open_connections", upstream=A), 1)
        self.assertEqual(metric(samples, "balancebeam_client_connections_open"), 1)
        self.assertEqual(metric(samples, "balancebeam_client_connections_total"), 1)
        self.assertEqual(
            metric(samples, "balancebeam_client_connections_refused_per_client_total"), 0
        )
        self.assertEqual(metric(samples, "balancebeam_http_requests_in_flight"), 0)

    def test_in_flight_counted_while_waiting(self) -> None:
        """
        A request waiting for its response is in flight, on the client side
        and on its upstream.
        """
        harness = ServiceHarness()
        client, _ = harness.client()
        harness.get(client)
        upstream, _, _ = harness.accept()
        samples = self.scrape(harness)
        self.assertEqual(metric(samples, "balancebeam_http_requests_in_flight"), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_requests_in_flight", upstream=A), 1)
        upstream.dataReceived(response())
        samples = self.scrape(harness)
        self.assertEqual(metric(samples, "balancebeam_http_requests_in_flight"), 0)
        self.assertEqual(metric(samples, "balancebeam_upstream_requests_in_flight", upstream=A), 0)

    def test_connect_failure_fails_over(self) -> None:
        """
        A refused connect counts a connection error and a state change on
        that upstream, which is then down; the request succeeds on the other.
        """
        harness = ServiceHarness()
        client, transport = harness.client()
        harness.get(client)
        self.assertEqual(harness.refuse(), 9001)
        upstream, _, port = harness.accept()
        self.assertEqual(port, 9002)
        upstream.dataReceived(response())
        self.assertIn(b"200 OK", transport.value())
        samples = self.scrape(harness)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_connection_errors_total", upstream=A), 1
        )
        self.assertEqual(
            metric(samples, "balancebeam_upstream_connection_errors_total", upstream=B), 0
        )
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=A), 0)
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=B), 1)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_state_changes_total", upstream=A), 1
        )
        self.assertEqual(metric(samples, "balancebeam_upstream_serving", upstream=A), 0)
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="2xx"), 1)

    def test_retry_after_keepalive_race(self) -> None:
        """
        A reused connection closed before answering is retried once; the
        retry and the response error are counted on that upstream.
        """
        harness = ServiceHarness(harness_config(upstreams=1))
        client, transport = harness.client()
        harness.get(client)
        upstream, upstream_transport, _ = harness.accept()
        upstream.dataReceived(response())
        harness.get(client)
        upstream.connectionLost(Failure(ConnectionResetError()))
        fresh, _, _ = harness.accept()
        fresh.dataReceived(response(b"again"))
        self.assertTrue(transport.value().endswith(b"again"))
        samples = self.scrape(harness)
        self.assertEqual(metric(samples, "balancebeam_retries_total"), 1)
        self.assertEqual(metric(samples, "balancebeam_keepalive_race_retries_total"), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_retries_total", upstream=A), 1)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_response_errors_total", upstream=A), 1
        )
        self.assertEqual(metric(samples, "balancebeam_upstream_requests_total", upstream=A), 3)
        del upstream_transport

    def test_rate_limited(self) -> None:
        """
        Requests over the rate limit are counted as rate limited and 4xx.
        """
        harness = ServiceHarness(harness_config(max_requests_per_minute=1))
        client, transport = harness.client()
        harness.get(client)
        upstream, _, _ = harness.accept()
        upstream.dataReceived(response())
        harness.get(client)
        harness.get(client)
        self.assertEqual(transport.value().count(b"HTTP/1.1 429 "), 2)
        samples = self.scrape(harness)
        self.assertEqual(metric(samples, "balancebeam_rate_limited_requests_total"), 2)
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="4xx"), 2)
        self.assertEqual(metric(samples, "balancebeam_upstream_requests_total", upstream=A), 1)

    def test_no_upstream(self) -> None:
        """
        With every upstream down, a 503 is counted as no upstream.
        """
        harness = ServiceHarness(harness_config(upstreams=1))
        registry = harness.service.registry
        registry.mark_down(registry.upstreams[0], "test")
        client, transport = harness.client()
        harness.get(client)
        self.assertIn(b"503", transport.value())
        samples = self.scrape(harness)
        self.assertEqual(metric(samples, "balancebeam_no_upstream_total"), 1)
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="5xx"), 1)

    def test_health_check_failures(self) -> None:
        """
        Failed active probes count as check failures, and two take the
        upstream down, one state change.
        """
        harness = ServiceHarness(
            harness_config(upstreams=1, active_health_check_interval=5.0, health_check_fall=2)
        )
        for _ in range(3):
            harness.reactor.advance(5.0)
            harness.refuse()
        samples = self.scrape(harness)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_check_failures_total", upstream=A), 3
        )
        self.assertEqual(metric(samples, "balancebeam_health_checks_total"), 3)
        self.assertEqual(metric(samples, "balancebeam_health_check_failures_total"), 3)
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=A), 0)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_state_changes_total", upstream=A), 1
        )

    def test_admin_states(self) -> None:
        """
        The admin state is one-hot over the four states; a drained upstream
        is up but not serving.
        """
        harness = ServiceHarness()
        registry = harness.service.registry
        registry.set_admin_state(registry.upstreams[0], "draining", "test")
        samples = self.scrape(harness)
        for state, value in (("enabled", 0), ("draining", 1), ("disabled", 0), ("removed", 0)):
            self.assertEqual(
                metric(samples, "balancebeam_upstream_admin_state", upstream=A, state=state),
                value,
            )
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=A), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_serving", upstream=A), 0)
        self.assertEqual(metric(samples, "balancebeam_upstream_weight", upstream=B), 1)

    def test_build_info_and_reloads(self) -> None:
        """
        Build info is 1 with the version as a label; reloads start at 0 by
        result, and the last one counts as successful.
        """
        import balancebeam

        harness = ServiceHarness()
        samples = self.scrape(harness)
        [info] = [key for key in samples if key[0] == "balancebeam_build_info"]
        self.assertIn(("version", balancebeam.__version__), info[1])
        self.assertEqual(samples[info], 1)
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="success"), 0)
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="failure"), 0)
        self.assertEqual(metric(samples, "balancebeam_config_last_reload_successful"), 1)
        self.assertEqual(metric(samples, "balancebeam_start_time_seconds"), 1000.0)

    def test_feature_counters(self) -> None:
        """
        A feature provider's keys become counters (C{_total}) and gauges
        under its prefix, read at each scrape.
        """
        harness = ServiceHarness()
        cache = CacheCounters()
        harness.service.feature_counters.append(cache)
        samples = self.scrape(harness)
        self.assertEqual(metric(samples, "balancebeam_cache_hits_total"), 7)
        self.assertEqual(metric(samples, "balancebeam_cache_misses_total"), 2)
        self.assertEqual(metric(samples, "balancebeam_cache_entries"), 5)
        cache.values["hits_total"] = 9
        self.assertEqual(metric(self.scrape(harness), "balancebeam_cache_hits_total"), 9)

    def test_bad_feature_key_refused(self) -> None:
        """
        A provider key that is not a metric name part is an error, not a
        malformed exposition.
        """
        harness = ServiceHarness()
        cache = CacheCounters()
        cache.values = {"Hit Rate": 1}
        harness.service.feature_counters.append(cache)
        self.assertRaises(ValueError, exposition, build_registry(harness.service, process=False))

    def test_no_unbounded_labels(self) -> None:
        """
        After traffic from several clients to several paths, the only labels
        are upstream, code, state, result, le and the build info's.
        """
        harness = ServiceHarness()
        for port, path in ((40001, b"/a?x=1"), (40002, b"/b/c")):
            client, _ = harness.client(port)
            harness.get(client, path)
            upstream, _, _ = harness.accept()
            upstream.dataReceived(response())
        labels = {name for _, pairs in self.scrape(harness) for name, _ in pairs}
        self.assertEqual(
            labels,
            {"upstream", "code", "state", "result", "le", "version", "python", "twisted"},
        )

    def test_process_metrics(self) -> None:
        """
        The default registry also exports the process collector's metrics.
        """
        harness = ServiceHarness()
        text = exposition(build_registry(harness.service))
        self.assertIn(b"\nprocess_open_fds ", text)


class DurationTests(SynchronousTestCase):
    """
    L{Stats.count_duration} fills the histogram's buckets as Prometheus's C{le}.
    """

    def test_bucket_bounds_inclusive(self) -> None:
        """
        A duration equal to a bound falls in that bucket; one beyond the last
        bound in the overflow bucket.
        """
        stats = Stats()
        stats.count_duration(DURATION_BOUNDS[0])
        stats.count_duration(DURATION_BOUNDS[0] * 1.5)
        stats.count_duration(DURATION_BOUNDS[-1] + 1)
        self.assertEqual(stats.durations[0], 1)
        self.assertEqual(stats.durations[1], 1)
        self.assertEqual(stats.durations[-1], 1)
        self.assertEqual(sum(stats.durations), 3)
