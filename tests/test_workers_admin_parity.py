"""
The master's admin shows what a single process's shows: workers report
their histogram, gauges and per-upstream counters
(L{balancebeam.workers.worker_admin}), the master adds them up
(L{balancebeam.workers.fleet.WorkerFleet.snapshot}) and exports them under
the single process's names (L{balancebeam.admin.master_metrics},
L{balancebeam.admin.master_status}).

The workers here are fake processes (L{tests.test_workers_fakes}) whose
reports come from real balancers in memory (L{ServiceHarness}) that served
known traffic, so the master's sums can be checked against the single
process's own exposition of each.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.admin.master_metrics import duration_counts, master_exposition
from balancebeam.admin.master_status import master_status_data
from balancebeam.admin.status import status_data
from balancebeam.metrics import build_registry, exposition
from balancebeam.registry import DRAINING, REMOVED
from balancebeam.stats import DURATION_BOUNDS
from balancebeam.workers.control import REPORT, STATS
from balancebeam.workers.counters import add_counters
from balancebeam.workers.master import Master
from tests.helpers import response
from tests.operations_helpers import ServiceHarness, metric, parse_metrics
from tests.test_workers_master import MasterScenario
from tests.test_workers_worker import UPSTREAMS as WORKER_UPSTREAMS
from tests.test_workers_worker import WorkerScenario

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

A = "127.0.0.1:9001"
B = "127.0.0.1:9002"
C = "127.0.0.1:9003"

HISTOGRAM = "balancebeam_http_request_duration_seconds"

MASTER_OWNED = {
    "balancebeam_health_checks_total",
    "balancebeam_health_check_failures_total",
    "balancebeam_upstream_check_failures_total",
    "balancebeam_upstream_state_changes_total",
    "balancebeam_config_reloads_total",
}
"""Counters the master counts itself (it probes, its health changes every
worker's, it reloads), rather than summing the workers'."""

SUMMED_GAUGES = {
    "balancebeam_http_requests_in_flight",
    "balancebeam_client_connections_open",
    "balancebeam_upstream_requests_in_flight",
    "balancebeam_upstream_idle_connections",
    "balancebeam_upstream_open_connections",
}
"""Gauges that count things: summed over the live workers."""

_STARTS_AND_CRASHES = {"balancebeam_worker_starts_total", "balancebeam_worker_crashes_total"}

MASTER_ONLY = {
    "balancebeam_connect_failures_total",
    "balancebeam_upstream_failures_total",
    "balancebeam_worker_starts_total",
    "balancebeam_worker_crashes_total",
    "balancebeam_generation",
    "balancebeam_workers",
    "balancebeam_worker_requests",
    "balancebeam_worker_connections",
    "balancebeam_worker_start_time_seconds",
    "balancebeam_upstream_workers_up",
    "balancebeam_upstream_workers_down",
}
"""What only the master exports."""


def serve(
    traffic: Sequence[tuple[bytes, float]], waiting: int = 0
) -> tuple[ServiceHarness, Any]:
    """
    A single balancer in memory (round robin over C{A} and C{B}) that
    answered one request per C{(status, seconds)} of C{traffic} on one
    keep-alive connection, then has C{waiting} more requests in flight.

    @return: the balancer, and its client connection (to keep it open).
    """
    harness = ServiceHarness()
    client, _ = harness.client()
    upstreams: dict[int, Any] = {}
    for index, (status, seconds) in enumerate(traffic):
        harness.get(client)
        if harness.pending_ports():
            protocol, _, port = harness.accept()
            upstreams[port] = protocol
        harness.reactor.advance(seconds)
        upstreams[9001 if index % 2 == 0 else 9002].dataReceived(response(b"x", status))
    for _ in range(waiting):
        other, _ = harness.client(40001)
        harness.get(other)
    return harness, client


def single_samples(harness: ServiceHarness) -> Samples:
    """
    The single process's own exposition of C{harness}'s balancer.
    """
    return parse_metrics(exposition(build_registry(harness.service, process=False)))


def master_samples(master: Master) -> Samples:
    """
    The master's exposition of what its workers last reported.
    """
    return parse_metrics(
        master_exposition(master.snapshot(), master.admin.states, master.started_at, False)
    )


def families(samples: Samples) -> set[tuple[str, tuple[str, ...]]]:
    """
    Each sample's name and label names.
    """
    return {(name, tuple(label for label, _ in labels)) for name, labels in samples}


def scenario_of(test: SynchronousTestCase, **values: object) -> MasterScenario:
    """
    A master balancing over C{A} and C{B}, both workers ready.
    """
    scenario = MasterScenario(test, upstream=[A, B], **values)
    scenario.start()
    return scenario


FIRST: Sequence[tuple[bytes, float]] = (
    (b"200 OK", 0.003),
    (b"404 Not Found", 0.02),
    (b"200 OK", 0.3),
    (b"500 Oops", 0.003),
)
SECOND: Sequence[tuple[bytes, float]] = ((b"200 OK", 2.0), (b"200 OK", 0.0005), (b"299 Odd", 45.0))


class SumTests(SynchronousTestCase):
    """
    The master's C{/metrics} is the sum of its workers' single-process
    expositions, under the same names and labels.
    """

    def setUp(self) -> None:
        """
        Two balancers that served different traffic, each reported by one
        worker of a master.
        """
        self.first, self._held_first = serve(FIRST, waiting=1)
        self.second, self._held_second = serve(SECOND)
        self.scenario = scenario_of(self)
        self.workers = self.scenario.launcher.live()
        for worker, harness in zip(self.workers, (self.first, self.second)):
            worker.report(harness.service)

    def test_same_families(self) -> None:
        """
        Every metric of a single process is exported by the master with the
        same labels; what the master adds is its own.
        """
        single = families(single_samples(self.first))
        master = families(master_samples(self.scenario.master))
        self.assertEqual(single - master, set())
        self.assertEqual({name for name, _ in master - single} - MASTER_ONLY, set())

    def test_counters_and_histogram_summed(self) -> None:
        """
        Each counter, each histogram bucket, the histogram's sum and count,
        and each counting gauge is the sum of the two workers' values, per
        upstream and status class too.
        """
        first, second = single_samples(self.first), single_samples(self.second)
        master = master_samples(self.scenario.master)
        compared = 0
        for key, value in first.items():
            name = key[0]
            counted = name.endswith(("_total", "_bucket", "_sum", "_count"))
            if name.startswith("process_") or name in MASTER_OWNED:
                continue
            if counted or name in SUMMED_GAUGES:
                self.assertAlmostEqual(master[key], value + second[key], places=6, msg=str(key))
                compared += 1
        self.assertGreater(compared, 60)
        self.assertEqual(metric(master, HISTOGRAM + "_count"), 7)
        self.assertEqual(metric(master, HISTOGRAM + "_bucket", le="0.001"), 1)
        self.assertEqual(metric(master, HISTOGRAM + "_bucket", le="0.005"), 3)
        self.assertEqual(metric(master, HISTOGRAM + "_bucket", le="30.0"), 6)
        self.assertEqual(metric(master, HISTOGRAM + "_bucket", le="60.0"), 7)
        self.assertEqual(metric(master, HISTOGRAM + "_bucket", le="+Inf"), 7)
        self.assertAlmostEqual(metric(master, HISTOGRAM + "_sum"), 47.3265, places=6)
        self.assertEqual(metric(master, "balancebeam_http_requests_in_flight"), 1)
        self.assertEqual(metric(master, "balancebeam_upstream_requests_in_flight", upstream=A), 1)
        self.assertEqual(metric(master, "balancebeam_http_responses_total", code="other"), 0)
        self.assertEqual(
            metric(master, "balancebeam_upstream_responses_total", upstream=A, code="2xx"), 4
        )
        self.assertEqual(metric(master, "balancebeam_upstream_requests_total", upstream=A), 5)

    def test_never_backwards_when_replaced(self) -> None:
        """
        A worker killed keeps its counters and histogram in the sums, and
        its replacement's add to them; its gauges (a request in flight) are
        gone with it.
        """
        before = master_samples(self.scenario.master)
        self.workers[0].exit(None, signal.SIGKILL)
        self.scenario.reactor.advance(0)
        after = master_samples(self.scenario.master)
        for key, value in before.items():
            if key[0].endswith(("_total", "_bucket", "_sum", "_count")):
                expected = value + 1 if key[0] in _STARTS_AND_CRASHES else value
                self.assertEqual(after[key], expected, str(key))
        self.assertEqual(metric(after, "balancebeam_http_requests_in_flight"), 0)
        self.assertEqual(metric(after, "balancebeam_upstream_requests_in_flight", upstream=A), 0)
        replacement = self.scenario.launcher.launched[-1]
        replacement.ready()
        fresh, _ = serve([(b"200 OK", 0.003)])
        replacement.report(fresh.service)
        again = master_samples(self.scenario.master)
        self.assertEqual(metric(again, HISTOGRAM + "_count"), 8)
        self.assertEqual(metric(again, HISTOGRAM + "_bucket", le="0.005"), 4)
        self.assertEqual(metric(again, "balancebeam_upstream_requests_total", upstream=A), 6)
        self.assertEqual(
            metric(again, "balancebeam_upstream_responses_total", upstream=A, code="2xx"), 5
        )

    def test_never_backwards_across_reload(self) -> None:
        """
        Once a reload's old generation has exited, its histogram and
        per-upstream counters stay in the sums.
        """
        before = master_samples(self.scenario.master)
        self.scenario.master.reload()
        for worker in self.scenario.launcher.launched[2:]:
            worker.ready()
        for worker in self.workers:
            worker.exit(0)
        after = master_samples(self.scenario.master)
        self.assertEqual(len(self.scenario.master.workers()), 2)
        for key, value in before.items():
            if key[0].endswith(("_total", "_bucket", "_sum", "_count")):
                if key[0] == "balancebeam_worker_starts_total":
                    self.assertEqual(after[key], value + 2)
                elif key != ("balancebeam_config_reloads_total", (("result", "success"),)):
                    self.assertEqual(after[key], value, str(key))

    def test_status_json(self) -> None:
        """
        C{/status.json} has every key of the single process's, each
        upstream's row too, with the sums.
        """
        master = self.scenario.master
        data = master_status_data(master.snapshot(), master.admin.states, 1000.0, 990.0, 2.5)
        single = status_data(self.first.service)
        self.assertEqual(set(single) - set(data), set())
        self.assertEqual(set(single["upstreams"][0]) - set(data["upstreams"][0]), set())
        self.assertEqual(
            set(single["upstreams"][0]["failures"]) - set(data["upstreams"][0]["failures"]),
            set(),
        )
        self.assertEqual(data["requests"], 8)
        self.assertEqual(data["requests_in_flight"], 1)
        self.assertEqual(data["client_connections"], 3)
        self.assertEqual(data["requests_per_second"], 2.5)
        self.assertEqual(data["responses"], {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 1, "5xx": 1})
        self.assertEqual(data["strategy"], "random")
        self.assertEqual(data["listeners"], ["127.0.0.1:1100"])
        row = data["upstreams"][0]
        self.assertEqual((row["name"], row["requests"], row["in_flight"]), (A, 5, 1))
        self.assertEqual(row["responses"]["2xx"], 4)
        self.assertEqual((row["pool_idle"], row["pool_open"]), (1, 2))
        self.assertEqual(row["workers"], {"up": [w.pid for w in self.workers], "down": []})


class CollectTimeoutTests(SynchronousTestCase):
    """
    A worker that does not answer in time counts with its last report, its
    gauges too, as its counters always did.
    """

    def test_last_gauges_kept(self) -> None:
        """
        After the timeout the snapshot has the fresh gauges of the worker
        that answered and the last ones of the one that did not.
        """
        scenario = scenario_of(self)
        first, second = scenario.launcher.live()
        first.stats(1, gauges={"requests_in_flight": 4})
        second.stats(1, gauges={"requests_in_flight": 3})
        collected = scenario.master.collect(timeout=1.0)
        serial = first.received_of(REPORT)[-1]["serial"]
        first.stats(2, serial=serial, gauges={"requests_in_flight": 1})
        scenario.reactor.advance(1.0)
        snapshot = self.successResultOf(collected)
        self.assertEqual(snapshot.gauges["requests_in_flight"], 4)
        self.assertEqual(snapshot.counters["requests"], 3)


class HealthViewTests(SynchronousTestCase):
    """
    An upstream's state is the master's and every worker's: up only when
    all see it up, with who sees what.
    """

    def test_worker_sees_it_down(self) -> None:
        """
        A worker that reports an upstream down (before the master hears of
        it) makes it down on the master's admin, which says which workers
        see it how.
        """
        scenario = scenario_of(self)
        first, second = scenario.launcher.live()
        seen, _ = serve([])
        down, _ = serve([])
        down.service.registry.mark_down(down.service.registry.upstreams[0], "refused")
        first.report(seen.service)
        second.report(down.service)
        master = scenario.master
        self.assertEqual(master.snapshot().upstreams_up, (A, B))
        samples = master_samples(master)
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=A), 0)
        self.assertEqual(metric(samples, "balancebeam_upstream_serving", upstream=A), 0)
        self.assertEqual(metric(samples, "balancebeam_upstream_workers_up", upstream=A), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_workers_down", upstream=A), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=B), 1)
        data = master_status_data(master.snapshot(), master.admin.states, 0.0, None)
        row = data["upstreams"][0]
        self.assertEqual((row["state"], row["healthy"], row["serving"]), ("down", False, False))
        self.assertEqual(row["workers"], {"up": [first.pid], "down": [second.pid]})
        self.assertEqual(data["upstreams_up"], 1)

    def test_admin_state_shown(self) -> None:
        """
        A drained upstream is up and not serving, as in one process.
        """
        scenario = scenario_of(self)
        scenario.master.admin.set_state(A, DRAINING)
        samples = master_samples(scenario.master)
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=A), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_serving", upstream=A), 0)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_admin_state", upstream=A, state=DRAINING), 1
        )

    def test_removed_while_old_generation_drains(self) -> None:
        """
        An upstream a reload removed shows as C{removed} while the old
        workers that have it drain, and is gone once they exit; its
        counters stay in the sums.
        """
        scenario = scenario_of(self)
        old = scenario.launcher.live()
        served, _ = serve(FIRST)
        for worker in old:
            worker.report(served.service)
        scenario.next_values = {**scenario.values, "upstream": [A, C]}
        scenario.master.reload()
        new = scenario.launcher.launched[2:]
        for worker in new:
            worker.ready()
        samples = master_samples(scenario.master)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_admin_state", upstream=B, state=REMOVED), 1
        )
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=C), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_requests_total", upstream=B), 4)
        for worker in old:
            worker.exit(0)
        snapshot = scenario.master.snapshot()
        self.assertEqual([row.name for row in snapshot.upstreams], [A, C])
        self.assertEqual(snapshot.counters["upstreams"][B]["requests"], 4)


class MasterHealthCountTests(SynchronousTestCase):
    """
    An upstream's failed probes and state changes are the master's: it
    probes, and its health changes every worker's.
    """

    def test_check_failures_and_state_changes(self) -> None:
        """
        Probes that fail count on the upstream and take it down once; the
        counts survive a reload that replaces the master's health.
        """
        scenario = scenario_of(self, **{"active-health-check-interval": "1"})
        for _ in range(2):
            scenario.reactor.advance(1)
            for name, probe in scenario.probe.calls:
                if not probe.called:
                    probe.callback(500 if name == A else 200)
        samples = master_samples(scenario.master)
        self.assertEqual(_upstream(samples, "check_failures_total", A), 2)
        self.assertEqual(_upstream(samples, "state_changes_total", A), 1)
        self.assertEqual(_upstream(samples, "up", A), 0)
        self.assertEqual(_upstream(samples, "check_failures_total", B), 0)
        old = scenario.launcher.live()
        scenario.next_values = {**scenario.values, "active-health-check-interval": "5"}
        scenario.master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        for worker in old:
            worker.exit(0)
        samples = master_samples(scenario.master)
        self.assertEqual(_upstream(samples, "check_failures_total", A), 2)
        self.assertEqual(_upstream(samples, "state_changes_total", A), 1)


def _upstream(samples: Samples, name: str, upstream: str) -> float:
    """
    The sample of C{balancebeam_upstream_<name>} for C{upstream}.
    """
    return metric(samples, f"balancebeam_upstream_{name}", upstream=upstream)


class ReloadStatusTests(SynchronousTestCase):
    """
    The master's reloads (new generations) as a single process shows its
    own: whether the last applied, and when the last one that did.
    """

    def test_failed_then_applied(self) -> None:
        """
        A refused reload makes the last one unsuccessful, with its reason;
        one that applies makes it successful, at its time.
        """
        scenario = scenario_of(self)
        master = scenario.master
        scenario.next_values = {**scenario.values, "bind": "127.0.0.1:1200"}
        scenario.reactor.advance(10)
        self.assertFalse(self.successResultOf(master.reload()))
        samples = master_samples(master)
        self.assertEqual(metric(samples, "balancebeam_config_last_reload_successful"), 0)
        self.assertEqual(
            metric(samples, "balancebeam_config_reloads_total", result="failure"), 1
        )
        self.assertNotIn(
            ("balancebeam_config_last_reload_success_timestamp_seconds", ()), samples
        )
        data = master_status_data(master.snapshot(), master.admin.states, 20.0, None)
        self.assertEqual(data["reloads"]["last_ok"], False)
        self.assertEqual(data["reloads"]["last_at"], 10.0)
        self.assertIn("listeners", data["reloads"]["last_error"])
        scenario.next_values = None
        scenario.reactor.advance(5)
        reloaded = master.reload()
        for worker in scenario.launcher.launched[2:]:
            worker.ready()
        self.assertTrue(self.successResultOf(reloaded))
        samples = master_samples(master)
        self.assertEqual(metric(samples, "balancebeam_config_last_reload_successful"), 1)
        self.assertEqual(
            metric(samples, "balancebeam_config_last_reload_success_timestamp_seconds"), 15
        )


class WorkerReportTests(SynchronousTestCase):
    """
    What a worker reports for the master's admin beyond the balancer's
    counters.
    """

    def test_histogram_and_upstream_counters(self) -> None:
        """
        The counters carry the request duration histogram by upper bound
        and its sum, the responses of no class, and each upstream's
        counters (not its probe failures and state changes: the master's).
        """
        scenario = WorkerScenario()
        scenario.health()
        stats = scenario.service.stats
        for seconds in (0.003, 0.003, 90.0):
            stats.count_duration(seconds)
        stats.count_status(200)
        stats.count_status(700)
        upstream = scenario.service.registry.upstreams[0]
        upstream.requests = 4
        upstream.responses[2] = 3
        upstream.responses[7] = 1
        upstream.timeouts = 1
        scenario.reactor.advance(1)
        [message] = scenario.received(STATS)
        counters = message["counters"]
        self.assertEqual(counters["durations"]["0.005"], 2)
        self.assertEqual(counters["durations"]["+Inf"], 1)
        self.assertEqual(len(counters["durations"]), len(DURATION_BOUNDS) + 1)
        self.assertAlmostEqual(counters["duration_sum"], 90.006)
        self.assertEqual(counters["responses"]["other"], 1)
        self.assertEqual(
            counters["upstreams"][WORKER_UPSTREAMS[0]],
            {
                "requests": 4,
                "responses": {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0, "other": 1},
                "connect_failures": 0,
                "response_errors": 0,
                "timeouts": 1,
                "retries": 0,
                "connections_opened": 0,
                "connections_reused": 0,
            },
        )

    def test_gauges(self) -> None:
        """
        The gauges: requests in flight, client connections open, and each
        upstream's requests in flight, pooled connections and whether this
        worker has it up.
        """
        scenario = WorkerScenario()
        scenario.health(u8082="refused")
        client = scenario.service.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        assert client is not None
        client.makeConnection(StringTransport())
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        scenario.reactor.advance(1)
        gauges = scenario.received(STATS)[-1]["gauges"]
        self.assertEqual((gauges["requests_in_flight"], gauges["client_connections_open"]), (1, 1))
        self.assertEqual(
            gauges["upstreams"],
            {
                WORKER_UPSTREAMS[0]: {
                    "in_flight": 1,
                    "pool_idle": 0,
                    "pool_open": 1,
                    "alive": True,
                },
                WORKER_UPSTREAMS[1]: {
                    "in_flight": 0,
                    "pool_idle": 0,
                    "pool_open": 0,
                    "alive": False,
                },
            },
        )
        self.assertEqual(gauges["features"], {})

    def test_cache_gauges_apart(self) -> None:
        """
        The cache's bytes and entries are reported as gauges, not among
        the counters (a sum kept after a worker exits would be wrong); its
        counters stay counters.
        """
        scenario = WorkerScenario(values={"cache-size": "1m"})
        scenario.health()
        scenario.reactor.advance(1)
        [message] = scenario.received(STATS)
        self.assertNotIn("cache_bytes", message["counters"])
        self.assertNotIn("cache_entries", message["counters"])
        self.assertEqual(message["counters"]["cache_hits"], 0)
        self.assertEqual(message["gauges"]["features"], {"cache": {"bytes": 0, "entries": 0}})


class HelperTests(SynchronousTestCase):
    """
    Adding reports up, and reading the histogram back.
    """

    def test_floats_summed(self) -> None:
        """
        Floats (the durations' sum) are summed with the integers.
        """
        total: dict[str, Any] = {"duration_sum": 1.5, "requests": 1}
        add_counters(total, {"duration_sum": 0.25, "requests": 2, "durations": {"+Inf": 1}})
        self.assertEqual(total, {"duration_sum": 1.75, "requests": 3, "durations": {"+Inf": 1}})

    def test_duration_counts(self) -> None:
        """
        Counts by upper bound become the buckets' counts; a bound this
        version lacks counts in the next one up, a bad one is skipped.
        """
        counts = duration_counts({"0.001": 2, "0.002": 1, "100.0": 4, "+Inf": 1, "x": 9})
        self.assertEqual(counts[:2], [2, 1])
        self.assertEqual(counts[-1], 5)
        self.assertEqual(sum(counts), 8)
        self.assertEqual(duration_counts(None), [0] * (len(DURATION_BOUNDS) + 1))
