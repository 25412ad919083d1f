"""
Integration test of the master's admin listener: a real twistd master with
C{--workers 2 --admin-bind}, its worker processes and two recording
upstreams on 127.0.0.1. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests import test_workers_integration as base
from tests.helpers import unused_port, wait_until
from tests.operations_helpers import metric, parse_metrics
from tests.test_workers_integration import alive, reactor, request
from tests.upstreams import RawClient, RawResponse, _ClientFactory, start_upstream

HISTOGRAM = "balancebeam_http_request_duration_seconds"


async def admin(port: int, path: str, method: bytes = b"GET") -> RawResponse:
    """
    One request to the admin listener on a fresh connection.
    """
    client = RawClient(clock=reactor)
    reactor.connectTCP("127.0.0.1", port, _ClientFactory(client), timeout=5)
    await client.ready
    client.send(
        method + b" " + path.encode("ascii") + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\nContent-Length: 0\r\n\r\n",
        method,
    )
    await client.wait_responses(1, timeout=15)
    await client.closed
    return client.responses[0]


class MasterAdminIntegrationTests(TestCase):
    """
    C{twistd balancebeam --workers 2 --admin-bind ...} run for real.
    """

    timeout = 90
    # Borrowed, not inherited: a subclass would run every test of the base again.
    spawn = base.WorkersIntegrationTests.spawn

    async def start_master(self, *arguments: str) -> tuple[base.MasterProcess, int, Any]:
        """
        L{base.WorkersIntegrationTests.start_master}: an upstream, a master
        of two workers, every worker ready.
        """
        borrowed: Any = self
        return await base.WorkersIntegrationTests.start_master(borrowed, *arguments)

    async def test_master_admin(self) -> None:
        """
        Both workers stay up (the master alone binds the admin), the
        metrics count every request (in the request duration histogram
        too, and per upstream as each upstream saw them), the status lists
        both workers, and a drain on the admin takes the upstream out in
        both workers.
        """
        other = start_upstream(self, reactor, "other")
        admin_port = unused_port()
        process, port, upstream = await self.start_master(
            "--upstream", other.address,
            "--strategy", "round-robin",
            "--admin-bind", f"127.0.0.1:{admin_port}",
        )
        pids = sorted(process.ready())
        requests = 10
        statuses = [await request(port, b"/n/%d" % i) for i in range(requests)]
        self.assertEqual(statuses, ["200"] * requests)
        counted = ("balancebeam_http_requests_total", HISTOGRAM + "_count")
        deadline = time.monotonic() + 10
        while True:
            answer = await admin(admin_port, "/metrics")
            samples = parse_metrics(answer.body)
            counts = [metric(samples, name) for name in counted]
            if counts == [requests, requests]:
                break
            self.assertLess(time.monotonic(), deadline, f"{counted} stuck at {counts}")
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(metric(samples, HISTOGRAM + "_bucket", le="+Inf"), requests)
        self.assertEqual(metric(samples, "balancebeam_http_requests_in_flight"), 0)
        for each in (upstream, other):
            self.assertEqual(
                metric(samples, "balancebeam_upstream_requests_total", upstream=each.address),
                len(each.client_requests),
            )
            answered = metric(
                samples,
                "balancebeam_upstream_responses_total",
                upstream=each.address,
                code="2xx",
            )
            self.assertEqual(answered, len(each.client_requests))
            self.assertEqual(
                metric(samples, "balancebeam_upstream_workers_up", upstream=each.address), 2
            )
        self.assertEqual(len(upstream.client_requests) + len(other.client_requests), requests)
        status = json.loads((await admin(admin_port, "/status.json")).body)
        self.assertEqual(sorted(w["pid"] for w in status["workers"]), pids)
        self.assertEqual(sorted(w["slot"] for w in status["workers"]), [0, 1])
        self.assertEqual(sum(w["requests"] for w in status["workers"]), requests)
        self.assertEqual(
            {u["name"]: u["requests"] for u in status["upstreams"]},
            {
                upstream.address: len(upstream.client_requests),
                other.address: len(other.client_requests),
            },
        )
        drained = await admin(admin_port, f"/upstreams/{upstream.address}/drain", b"POST")
        self.assertEqual(drained.status, 200)
        self.assertEqual(json.loads(drained.body)["admin_state"], "draining")
        marker = b"is now draining: requested on the master's admin"
        await wait_until(
            reactor,
            lambda: all(
                any(marker in line for line in process.worker_lines(pid)) for pid in pids
            ),
            "both workers to drain the upstream",
        )
        before, others = len(upstream.client_requests), len(other.client_requests)
        statuses = [await request(port) for _ in range(8)]
        self.assertEqual(statuses, ["200"] * 8)
        self.assertEqual(len(upstream.client_requests), before)
        self.assertEqual(len(other.client_requests), others + 8)
        self.assertEqual(len(process.started()), 2)
        self.assertTrue(all(alive(pid) for pid in pids))
        self.assertEqual(sorted(process.ready()), pids)
        self.assertEqual(re.findall(rb"Address already in use", process.output), [])
        self.assertNotIn(b"Traceback", process.output)

    async def test_token(self) -> None:
        """
        With a token file, the master's admin answers 401 without it.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as file:
            file.write("tok\n")
        admin_port = unused_port()
        await self.start_master(
            "--admin-bind", f"127.0.0.1:{admin_port}", "--admin-token-file", path
        )
        answer: Any = await admin(admin_port, "/status.json")
        self.assertEqual(answer.status, 401)
