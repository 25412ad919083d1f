"""
Tests for the master's admin (C{--workers N} with C{--admin-bind}):
L{balancebeam.admin.master_resource}, L{balancebeam.admin.master_metrics}
and L{balancebeam.admin.master_status}, over a fake fleet, through the
admin site's HTTP channel on memory transports.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.admin.auth import AdminToken
from balancebeam.admin.master_metrics import SUMMED
from balancebeam.admin.master_resource import AdminFleet, build_master_admin_site
from balancebeam.admin.resources import AdminSite
from balancebeam.metrics import build_registry, exposition
from balancebeam.registry import DRAINING, ENABLED
from balancebeam.workers.control import ADMIN, PURGE
from balancebeam.workers.counters import MasterSnapshot
from balancebeam.workers.fleet_admin import FleetAdmin
from balancebeam.workers.processes import WorkerStatus
from tests.operations_helpers import (
    AdminResponse,
    ServiceHarness,
    harness_config,
    metric,
    parse_metrics,
)

UP = "127.0.0.1:8081"
DOWN = "127.0.0.1:8082"
TOKEN = "master-Token-1"

MASTER_ONLY = {"connect_failures", "upstream_failures", "worker_starts", "worker_crashes"}
"""Summed counters the single process has no unlabelled metric for."""


class FakeWorker:
    """
    A live worker as L{FleetAdmin} reaches it: records what it is sent.
    """

    def __init__(self, pid: int, state: str = "ready") -> None:
        self.pid = pid
        self.state = state
        self.sent: list[Mapping[str, object]] = []

    def send(self, message: Mapping[str, object]) -> None:
        """
        Record C{message}.
        """
        self.sent.append(dict(message))


class FakeFleet:
    """
    An L{AdminFleet}: a canned snapshot, fake workers, a real L{FleetAdmin}.

    @ivar pending: when set, L{collect} answers with it (the test fires it).
    @ivar collected: how many times L{collect} was called.
    """

    def __init__(self, clock: Clock, counters: Mapping[str, Any] | None = None) -> None:
        self.clock = clock
        self.workers = [FakeWorker(101), FakeWorker(102)]
        self.admin = FleetAdmin(lambda: self.workers, clock)
        self.started_at: float | None = 1000.0
        self.cache = False
        self.pending: Deferred[MasterSnapshot] | None = None
        self.collected = 0
        self.current = MasterSnapshot(
            counters=dict(counters or {"requests": 12, "responses": {"2xx": 11, "5xx": 1}}),
            workers=(
                WorkerStatus(101, 0, 1, 1001.0, "ready", 5, 2),
                WorkerStatus(102, 1, 1, 1002.0, "ready", 7, 3),
            ),
            generation=1,
            upstreams_up=(UP,),
            upstreams_down=(DOWN,),
        )

    def snapshot(self) -> MasterSnapshot:
        """
        The canned snapshot.
        """
        return self.current

    def collect(self, timeout: float = 1.0) -> Deferred[MasterSnapshot]:
        """
        The canned snapshot, or L{pending}.
        """
        self.collected += 1
        if self.pending is not None:
            return self.pending
        return succeed(self.current)

    def has_cache(self) -> bool:
        """
        Whether a purge is allowed.
        """
        return self.cache


def master_site(fleet: AdminFleet, token: str | None = None) -> AdminSite:
    """
    The master's admin site over C{fleet}, without process metrics.
    """
    return build_master_admin_site(fleet, AdminToken(token), Clock(), process_metrics=False)


class Exchange:
    """
    One request to an admin site, answered now or later.
    """

    def __init__(
        self,
        site: AdminSite,
        path: str,
        method: bytes = b"GET",
        headers: Sequence[tuple[bytes, bytes]] = (),
        host: bytes = b"127.0.0.1:9100",
    ) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        self.channel = site.buildProtocol(address)
        assert self.channel is not None
        self.transport = StringTransport(
            peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 9100)
        )
        self.channel.makeConnection(self.transport)
        lines = [method + b" " + path.encode("ascii") + b" HTTP/1.1", b"Host: " + host]
        lines += [name + b": " + value for name, value in headers]
        lines += [b"Connection: close", b"Content-Length: 0"]
        self.channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")

    def answered(self) -> bool:
        """
        Whether a response was written.
        """
        return bool(self.transport.value())

    def response(self) -> AdminResponse:
        """
        The response, and the connection closed.
        """
        raw = self.transport.value()
        self.channel.connectionLost(Failure(ConnectionError("done")))
        return AdminResponse(raw)


def ask(
    site: AdminSite,
    path: str,
    method: bytes = b"GET",
    headers: Sequence[tuple[bytes, bytes]] = (),
    host: bytes = b"127.0.0.1:9100",
) -> AdminResponse:
    """
    One request answered at once, with C{Host: host}.
    """
    return Exchange(site, path, method, headers, host).response()


class MetricsTests(SynchronousTestCase):
    """
    C{/metrics}: the sums under the single process's names, per-worker and
    upstream gauges.
    """

    def test_sums_under_single_process_names(self) -> None:
        """
        Each summed counter is exported with its value, under the name the
        single process exports it with.
        """
        counters: dict[str, Any] = {key: i + 1 for i, (key, _, _) in enumerate(SUMMED)}
        counters.update(responses={"2xx": 11, "5xx": 1}, reloads=3, reloads_failed=1)
        fleet = FakeFleet(Clock(), counters)
        answer = ask(master_site(fleet), "/metrics")
        self.assertEqual(answer.status, 200)
        samples = parse_metrics(answer.body)
        for key, name, _ in SUMMED:
            self.assertEqual(metric(samples, f"balancebeam_{name}_total"), counters[key], key)
        self.assertEqual(metric(samples, "balancebeam_http_requests_total"), counters["requests"])
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="2xx"), 11)
        self.assertEqual(metric(samples, "balancebeam_http_responses_total", code="4xx"), 0)
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="success"), 3)
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="failure"), 1)
        self.assertEqual(fleet.collected, 1)
        single = exposition(build_registry(ServiceHarness(harness_config()).service, False))
        names = {name for name, _ in parse_metrics(single)}
        for key, name, _ in SUMMED:
            if key not in MASTER_ONLY:
                self.assertIn(f"balancebeam_{name}_total", names)
        for family in ("http_responses", "config_reloads", "upstream_up", "upstream_serving"):
            self.assertTrue(any(n.startswith("balancebeam_" + family) for n in names), family)

    def test_features_and_gauges(self) -> None:
        """
        A feature's counter keeps the single process's name; the cache's
        gauges are the sums of the live workers' gauges, never of counters
        (whose sum would keep workers gone); the status shows them by
        feature, as the single process does.
        """
        fleet = FakeFleet(Clock(), {"requests": 1, "waf_blocked": 4, "cache_entries": 9})
        site = master_site(fleet)
        samples = parse_metrics(ask(site, "/metrics").body)
        self.assertEqual(metric(samples, "balancebeam_waf_blocked_total"), 4)
        self.assertFalse([n for n, _ in samples if "cache_entries" in n])
        fleet.current = dataclasses.replace(
            fleet.current,
            counters={"cache_hits": 3, "cache_entries": 9},
            gauges={"features": {"cache": {"bytes": 10, "entries": 2}, "waf": {}}},
        )
        samples = parse_metrics(ask(site, "/metrics").body)
        self.assertEqual(metric(samples, "balancebeam_cache_entries"), 2)
        self.assertEqual(metric(samples, "balancebeam_cache_bytes"), 10)
        self.assertEqual(metric(samples, "balancebeam_cache_hits_total"), 3)
        features = json.loads(ask(site, "/status.json").body)["features"]
        self.assertEqual(
            features, {"cache": {"hits_total": 3, "bytes": 10, "entries": 2}, "waf": {}}
        )

    def test_per_client_refusals_summed(self) -> None:
        """
        The workers' refusals over C{--max-connections-per-client}, summed,
        are exported under the single process's name, beside those over
        C{--max-client-connections}.
        """
        fleet = FakeFleet(
            Clock(), {"requests": 1, "refused_connections": 2, "refused_per_client": 9}
        )
        samples = parse_metrics(ask(master_site(fleet), "/metrics").body)
        self.assertEqual(
            metric(samples, "balancebeam_client_connections_refused_per_client_total"), 9
        )
        self.assertEqual(metric(samples, "balancebeam_client_connections_refused_total"), 2)
        self.assertFalse([n for n, _ in samples if n.startswith("balancebeam_refused_")])

    def test_workers_and_upstreams(self) -> None:
        """
        One series per live worker, and each upstream's health and admin
        state.
        """
        fleet = FakeFleet(Clock())
        fleet.admin.states[UP] = DRAINING
        samples = parse_metrics(ask(master_site(fleet), "/metrics").body)
        labels = {"slot": "1", "pid": "102", "generation": "1"}
        self.assertEqual(metric(samples, "balancebeam_worker_requests", **labels), 7)
        self.assertEqual(metric(samples, "balancebeam_worker_connections", **labels), 3)
        self.assertEqual(metric(samples, "balancebeam_worker_start_time_seconds", **labels), 1002)
        self.assertEqual(metric(samples, "balancebeam_workers", state="ready"), 2)
        self.assertEqual(metric(samples, "balancebeam_generation"), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=UP), 1)
        self.assertEqual(metric(samples, "balancebeam_upstream_up", upstream=DOWN), 0)
        self.assertEqual(metric(samples, "balancebeam_upstream_serving", upstream=UP), 0)
        self.assertEqual(
            metric(samples, "balancebeam_upstream_admin_state", upstream=UP, state=DRAINING), 1
        )
        self.assertEqual(metric(samples, "balancebeam_start_time_seconds"), 1000)

    def test_waits_for_fresh_counters(self) -> None:
        """
        The page answers once the fleet's collect fires.
        """
        fleet = FakeFleet(Clock())
        fleet.pending = Deferred()
        exchange = Exchange(master_site(fleet), "/metrics")
        self.assertFalse(exchange.answered())
        fleet.pending.callback(fleet.current)
        answer = exchange.response()
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            metric(parse_metrics(answer.body), "balancebeam_http_requests_total"), 12
        )

    def test_client_gone_before_the_counters(self) -> None:
        """
        A client that left before the counters came gets nothing written.
        """
        fleet = FakeFleet(Clock())
        fleet.pending = Deferred()
        exchange = Exchange(master_site(fleet), "/metrics")
        exchange.channel.connectionLost(Failure(ConnectionError("gone")))
        fleet.pending.callback(fleet.current)
        self.assertEqual(exchange.transport.value(), b"")


class StatusTests(SynchronousTestCase):
    """
    C{/status.json} and C{/status}: one line per worker.
    """

    def test_status_json(self) -> None:
        """
        The generation, each worker's pid, slot, start, state, requests and
        connections, the upstreams and the summed counters.
        """
        fleet = FakeFleet(Clock())
        fleet.admin.states[DOWN] = DRAINING
        answer = ask(master_site(fleet), "/status.json")
        self.assertEqual(answer.status, 200)
        data = json.loads(answer.body)
        self.assertEqual(data["generation"], 1)
        self.assertEqual(
            [
                (w["pid"], w["slot"], w["started"], w["state"], w["requests"], w["connections"])
                for w in data["workers"]
            ],
            [(101, 0, 1001.0, "ready", 5, 2), (102, 1, 1002.0, "ready", 7, 3)],
        )
        self.assertEqual(
            [(u["name"], u["state"], u["admin_state"]) for u in data["upstreams"]],
            [(UP, "up", ENABLED), (DOWN, DRAINING, DRAINING)],
        )
        self.assertEqual(data["counters"]["requests"], 12)
        self.assertEqual(data["upstreams_up"], 1)
        self.assertTrue(data["ready"])

    def test_status_page(self) -> None:
        """
        The page shows a row per worker, every value escaped.
        """
        fleet = FakeFleet(Clock(), {"requests": 3, "x<b>": 1})
        answer = ask(master_site(fleet), "/status")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertIn(b"<td>101</td><td>0</td>", answer.body)
        self.assertIn(b"<td>102</td><td>1</td>", answer.body)
        self.assertIn(b"x&lt;b&gt;", answer.body)
        self.assertNotIn(b"x<b>", answer.body)

    def test_status_page_upstreams(self) -> None:
        """
        The page shows the requests in flight and connections, and per
        upstream its workers' view, in-flight requests, pool, requests,
        responses and failures, as the single process's page does; the
        per-upstream counters are not repeated in the counters table.
        """
        fleet = FakeFleet(Clock())
        fleet.current = dataclasses.replace(
            fleet.current,
            counters={
                "requests": 3,
                "upstreams": {UP: {"requests": 3, "responses": {"2xx": 3}, "timeouts": 1}},
            },
            gauges={
                "requests_in_flight": 2,
                "client_connections_open": 5,
                "upstreams": {UP: {"in_flight": 2, "pool_idle": 1, "pool_open": 4}},
            },
        )
        body = ask(master_site(fleet), "/status").body
        self.assertIn(b"<td>3</td><td>-</td><td>2</td><td>5</td>", body)
        self.assertIn(b"<td>1/4</td><td>3</td><td>0</td><td>3</td>", body)
        self.assertIn(b"<td>1 / 0</td>", body)
        self.assertNotIn(b"upstreams.", body)

    def test_read_only(self) -> None:
        """
        The pages refuse posts; unknown paths are 404.
        """
        site = master_site(FakeFleet(Clock()))
        self.assertEqual(ask(site, "/status.json", b"POST").status, 405)
        self.assertEqual(ask(site, "/nope").status, 404)
        self.assertEqual(ask(site, "/healthz").body, b"ok\n")
        self.assertEqual(ask(site, "/").status, 302)


class ReadyTests(SynchronousTestCase):
    """
    C{/ready}: a worker ready and an upstream taking requests.
    """

    def test_ready(self) -> None:
        """
        200 with a ready worker and an upstream up and enabled.
        """
        answer = ask(master_site(FakeFleet(Clock())), "/ready")
        self.assertEqual((answer.status, answer.body), (200, b"ready\n"))

    def test_no_worker_ready(self) -> None:
        """
        503 while no worker is ready.
        """
        fleet = FakeFleet(Clock())
        fleet.current = MasterSnapshot(
            {}, (WorkerStatus(101, 0, 1, 0.0, "starting", 0, 0),), 1, (UP,), ()
        )
        answer = ask(master_site(fleet), "/ready")
        self.assertEqual((answer.status, answer.body), (503, b"not ready: no worker is ready\n"))

    def test_no_upstream(self) -> None:
        """
        503 when every upstream is down, or the one up is drained.
        """
        fleet = FakeFleet(Clock())
        site = master_site(fleet)
        fleet.admin.states[UP] = DRAINING
        answer = ask(site, "/ready")
        self.assertEqual(
            (answer.status, answer.body),
            (503, b"not ready: no upstream takes requests: the ones up are drained or disabled\n"),
        )
        fleet.admin.states[UP] = ENABLED
        self.assertEqual(ask(site, "/ready").status, 200)
        fleet.current = MasterSnapshot({}, fleet.current.workers, 1, (), (UP, DOWN))
        answer = ask(site, "/ready")
        self.assertEqual((answer.status, answer.body), (503, b"not ready: no upstream is up\n"))


class TokenTests(SynchronousTestCase):
    """
    The same token and cross-site checks as the single process.
    """

    def test_token_required(self) -> None:
        """
        401 without the token (nothing is collected), 200 with it.
        """
        fleet = FakeFleet(Clock())
        site = master_site(fleet, TOKEN)
        for path in ("/metrics", "/status.json", "/ready"):
            self.assertEqual(ask(site, path).status, 401)
        self.assertEqual(ask(site, f"/upstreams/{UP}/drain", b"POST").status, 401)
        self.assertEqual(fleet.collected, 0)
        self.assertEqual(fleet.admin.states, {})
        bearer = [(b"Authorization", b"Bearer " + TOKEN.encode())]
        self.assertEqual(ask(site, "/metrics", headers=bearer).status, 200)

    def test_cross_site_post_refused(self) -> None:
        """
        A browser's post from another site is 403 and changes nothing.
        """
        fleet = FakeFleet(Clock())
        headers = [(b"Origin", b"http://elsewhere.example")]
        answer = ask(master_site(fleet), f"/upstreams/{UP}/drain", b"POST", headers)
        self.assertEqual(answer.status, 403)
        self.assertEqual(fleet.workers[0].sent, [])

    def test_rebound_host_refused(self) -> None:
        """
        Without a token, a request for another host (DNS rebinding) is 421,
        GET and POST alike: nothing is collected, nothing sent.
        """
        fleet = FakeFleet(Clock())
        fleet.cache = True
        site = master_site(fleet)
        rebound = b"attacker.example:9100"
        for path in ("/status.json", "/status", "/metrics"):
            self.assertEqual(ask(site, path, host=rebound).status, 421, path)
        headers = [(b"Origin", b"http://attacker.example:9100")]
        answer = ask(site, f"/upstreams/{UP}/drain", b"POST", headers, host=rebound)
        self.assertEqual(answer.status, 421)
        self.assertEqual(ask(site, "/cache/purge?url=/a", b"POST", host=rebound).status, 421)
        self.assertEqual(fleet.collected, 0)
        self.assertEqual(fleet.admin.states, {})
        self.assertEqual(fleet.workers[0].sent, [])
        self.assertEqual(ask(site, "/healthz", host=rebound).status, 200)
        self.assertEqual(ask(site, "/ready", host=rebound).status, 200)

    def test_loopback_hosts_accepted(self) -> None:
        """
        Without a token, loopback hosts are answered.
        """
        fleet = FakeFleet(Clock())
        site = master_site(fleet)
        for host in (b"127.0.0.1:9100", b"localhost:9100", b"[::1]:9100", b"LOCALHOST"):
            self.assertEqual(ask(site, "/status.json", host=host).status, 200, host)
        answer = ask(site, f"/upstreams/{UP}/drain", b"POST", host=b"localhost:9100")
        self.assertEqual(answer.status, 200)

    def test_token_allows_any_host(self) -> None:
        """
        With the token, any C{Host} is answered.
        """
        fleet = FakeFleet(Clock())
        site = master_site(fleet, TOKEN)
        bearer = [(b"Authorization", b"Bearer " + TOKEN.encode())]
        for host in (b"10.0.0.5:9100", b"attacker.example:9100"):
            self.assertEqual(ask(site, "/status.json", headers=bearer, host=host).status, 200)
            self.assertEqual(ask(site, "/status.json", host=host).status, 401)


class ControlTests(SynchronousTestCase):
    """
    C{POST /upstreams/HOST:PORT/ACTION}: sent to every worker.
    """

    def test_drain_sent_to_every_worker(self) -> None:
        """
        A drain answers 200 with the state, and every live worker is sent
        every admin state set.
        """
        fleet = FakeFleet(Clock())
        site = master_site(fleet)
        answer = ask(site, f"/upstreams/{UP}/drain", b"POST")
        self.assertEqual(answer.status, 200)
        data = json.loads(answer.body)
        self.assertEqual(
            (data["upstream"], data["admin_state"], data["changed"]), (UP, DRAINING, True)
        )
        expected = {"type": ADMIN, "upstreams": {UP: DRAINING}}
        self.assertEqual([w.sent for w in fleet.workers], [[expected], [expected]])
        again = json.loads(ask(site, f"/upstreams/{UP}/drain", b"POST").body)
        self.assertFalse(again["changed"])
        ask(site, f"/upstreams/{DOWN}/disable", b"POST")
        self.assertEqual(
            fleet.workers[1].sent[-1],
            {"type": ADMIN, "upstreams": {UP: DRAINING, DOWN: "disabled"}},
        )

    def test_unknown(self) -> None:
        """
        An unknown upstream or action is 404, and a GET 405; nothing is sent.
        """
        fleet = FakeFleet(Clock())
        site = master_site(fleet)
        answer = ask(site, "/upstreams/10.0.0.1:1/drain", b"POST")
        self.assertEqual(answer.status, 404)
        self.assertEqual(json.loads(answer.body)["upstreams"], [UP, DOWN])
        self.assertEqual(ask(site, f"/upstreams/{UP}/explode", b"POST").status, 404)
        self.assertEqual(ask(site, f"/upstreams/{UP}/drain").status, 405)
        self.assertEqual(fleet.workers[0].sent, [])


class PurgeTests(SynchronousTestCase):
    """
    C{POST /cache/purge?url=}: fanned out to the workers, answers summed.
    """

    def test_no_cache(self) -> None:
        """
        404 without a cache, as in the single process.
        """
        answer = ask(master_site(FakeFleet(Clock())), "/cache/purge?url=/a", b"POST")
        self.assertEqual(answer.status, 404)

    def test_needs_url(self) -> None:
        """
        400 without a URL.
        """
        fleet = FakeFleet(Clock())
        fleet.cache = True
        self.assertEqual(ask(master_site(fleet), "/cache/purge", b"POST").status, 400)

    def test_invalid_url(self) -> None:
        """
        A URL that cannot be purged, or two, is 400 and no worker is asked.
        """
        fleet = FakeFleet(Clock())
        fleet.cache = True
        site = master_site(fleet)
        for query in ("%ff%fe", "http://[::1", "relative-no-slash"):
            answer = ask(site, f"/cache/purge?url={query}", b"POST")
            self.assertEqual(answer.status, 400, query)
            self.assertIn("invalid URL to purge", json.loads(answer.body)["error"])
        answer = ask(site, "/cache/purge?url=/a&url=/b", b"POST")
        self.assertEqual(json.loads(answer.body), {"error": "give one url to purge, not 2"})
        self.assertEqual([w.sent for w in fleet.workers], [[], []])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_summed(self) -> None:
        """
        Every ready worker is asked; the answer is the sum of theirs.
        """
        fleet = FakeFleet(Clock())
        fleet.cache = True
        exchange = Exchange(master_site(fleet), "/cache/purge?url=/a", b"POST")
        first, second = fleet.workers
        [asked] = first.sent
        self.assertEqual((asked["type"], asked["url"]), (PURGE, "/a"))
        self.assertEqual(second.sent, [asked])
        fleet.admin.purged(first, {"type": "purged", "serial": asked["serial"], "purged": 2})
        self.assertFalse(exchange.answered())
        fleet.admin.purged(second, {"type": "purged", "serial": asked["serial"], "purged": 3})
        answer = exchange.response()
        self.assertEqual((answer.status, json.loads(answer.body)["purged"]), (200, 5))

    def test_worker_error(self) -> None:
        """
        A worker that could not purge makes the answer 500.
        """
        fleet = FakeFleet(Clock())
        fleet.cache = True
        fleet.workers = fleet.workers[:1]
        exchange = Exchange(master_site(fleet), "/cache/purge?url=/a", b"POST")
        serial = fleet.workers[0].sent[0]["serial"]
        fleet.admin.purged(fleet.workers[0], {"serial": serial, "error": "x"})
        self.assertEqual(exchange.response().status, 500)
        self.flushLoggedErrors()

    def test_timeout(self) -> None:
        """
        A worker that does not answer holds the purge up for the timeout
        only; the answer sums what came.
        """
        clock = Clock()
        fleet = FakeFleet(clock)
        fleet.cache = True
        exchange = Exchange(master_site(fleet), "/cache/purge?url=/a", b"POST")
        serial = fleet.workers[0].sent[0]["serial"]
        fleet.admin.purged(fleet.workers[0], {"serial": serial, "purged": 1})
        clock.advance(4.9)
        self.assertFalse(exchange.answered())
        clock.advance(0.1)
        self.assertEqual(json.loads(exchange.response().body)["purged"], 1)
