"""
The firewall filter's decisions, with a fake engine: answers, logs, counters, body limit.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.filters import Answer
from balancebeam.observers import JSONLinesObserver
from balancebeam.waf.engine import InspectionError, Verdict
from balancebeam.waf.filter import WafFilter, inspected_request
from balancebeam.waf.runner import IInspectionRunner, RunnerBusy, TurnTakingRunner
from tests.test_waf_fakes import CLEAN, FakeExchange, FakeInspector, request_head

T = TypeVar("T")

BLOCKING = Verdict(403, (942100, 949110), 5, ("SQL Injection", "Inbound Anomaly Score Exceeded"))
"""What the CRS says about a SQL injection."""

SCORING = Verdict(None, (920350,), 3, ("Host header is a numeric IP address",))
"""A match under the anomaly threshold."""


@implementer(IInspectionRunner)
class BusyRunner:
    """
    A runner that refuses all work, as one with a full queue does.
    """

    def run(self, work: Callable[[], T]) -> Deferred[T]:
        """
        Refuse C{work}.
        """
        return fail(RunnerBusy("256 inspections are waiting already"))

    def stop(self) -> None:
        """
        Nothing to stop.
        """


class FilterHarness:
    """
    A L{WafFilter} on a fake engine, taking turns on a L{Clock}.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        mode: str = "block",
        verdict: Verdict = CLEAN,
        error: Exception | None = None,
        body_limit: int = 1024,
    ) -> None:
        self.test = test
        self.clock = Clock()
        self.inspector = FakeInspector(verdict, error)
        self.filter = WafFilter(self.inspector, TurnTakingRunner(self.clock), mode, body_limit)
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        self.events = EventLoggingObserver.createWithCleanup(
            test, globalLogPublisher  # type: ignore[arg-type]
        )

    def decide(self, exchange: FakeExchange) -> Answer | None:
        """
        Ask the filter about C{exchange}, let the inspection run, return the answer.
        """
        result = self.filter.on_request(exchange)
        self.clock.advance(0)
        return self.test.successResultOf(result)

    def waf_events(self) -> list[dict[str, Any]]:
        """
        The firewall's log events.
        """
        return [dict(e) for e in self.events if "action" in e]


def sqli_exchange(request_id: str = "req-7") -> FakeExchange:
    """
    A GET with an injection in the query (what the engine says is up to the fake).
    """
    head = request_head("GET", "/products?id=1%27+OR+1%3D1", (("Host", "shop.example.com"),))
    return FakeExchange(head, client_ip="198.51.100.4", request_id=request_id)


def post_exchange(body: bytes, **kw: Any) -> FakeExchange:
    """
    A form POST with C{body}.
    """
    head = request_head(
        "POST",
        "/contact",
        (("Host", "shop.example.com"), ("Content-Type", "application/x-www-form-urlencoded")),
        body,
    )
    return FakeExchange(head, body, **kw)


class BlockModeTests(SynchronousTestCase):
    """
    C{--waf block}: what the rules block is answered by the balancer.
    """

    def test_blocked_request_gets_403_with_request_id(self) -> None:
        """
        A blocking verdict is a 403 with a short text body and the request id.
        """
        harness = FilterHarness(self, verdict=BLOCKING)
        answer = harness.decide(sqli_exchange("req-7"))
        assert answer is not None
        self.assertEqual(answer.status, 403)
        self.assertEqual(
            answer.body,
            b"403 Forbidden: blocked by the web application firewall (request id req-7)\n",
        )
        self.assertIn((b"X-Request-Id", b"req-7"), answer.fields)

    def test_blocked_request_logged_with_fields(self) -> None:
        """
        The block is one warn event with the rule ids, score, client, method, path and action.
        """
        harness = FilterHarness(self, verdict=BLOCKING)
        harness.decide(sqli_exchange())
        events = harness.waf_events()
        self.assertEqual(len(events), 1)
        event = events[0]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(
            {k: event[k] for k in ("action", "rule_ids", "anomaly_score", "client", "method",
                                   "path", "request_id", "mode")},
            {
                "action": "block",
                "rule_ids": [942100, 949110],
                "anomaly_score": 5,
                "client": "198.51.100.4",
                "method": "GET",
                "path": "/products",
                "request_id": "req-7",
                "mode": "block",
            },
        )
        self.assertEqual(event["target"], "/products?id=1%27+OR+1%3D1")

    def test_counters(self) -> None:
        """
        One blocked and one clean request count as two inspected, one matched, one blocked.
        """
        harness = FilterHarness(self, verdict=BLOCKING)
        harness.decide(sqli_exchange())
        harness.inspector.verdict = Verdict(None)
        harness.decide(sqli_exchange())
        self.assertEqual(
            harness.filter.counters.snapshot(),
            {
                "inspected": 2,
                "matched": 1,
                "blocked": 1,
                "over_limit_rejected": 0,
                "over_limit_bypassed": 0,
                "engine_errors": 0,
                "overloaded": 0,
            },
        )

    def test_match_under_threshold_passes_and_is_logged(self) -> None:
        """
        Rules that matched without the engine blocking: the request passes,
        logged at info with action C{pass} and the score.
        """
        harness = FilterHarness(self, verdict=SCORING)
        self.assertIsNone(harness.decide(sqli_exchange()))
        [event] = harness.waf_events()
        self.assertEqual(
            (event["action"], event["rule_ids"], event["anomaly_score"], event["log_level"]),
            ("pass", [920350], 3, LogLevel.info),
        )
        self.assertEqual(harness.filter.counters.matched, 1)
        self.assertEqual(harness.filter.counters.blocked, 0)

    def test_clean_request_passes_silently(self) -> None:
        """
        No match: the request passes and nothing is logged.
        """
        harness = FilterHarness(self)
        self.assertIsNone(harness.decide(sqli_exchange()))
        self.assertEqual(harness.waf_events(), [])
        self.assertEqual(harness.filter.counters.inspected, 1)

    def test_log_event_is_one_json_line(self) -> None:
        """
        With the JSON observer a block is one line holding the decision's fields.
        """
        harness = FilterHarness(self, verdict=BLOCKING)
        harness.decide(sqli_exchange())
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        for event in harness.waf_events():
            observer(event)
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        record = json.loads(lines[0])
        self.assertEqual(
            (record["action"], record["rule_ids"], record["anomaly_score"], record["client"],
             record["method"], record["path"], record["level"]),
            ("block", [942100, 949110], 5, "198.51.100.4", "GET", "/products", "warn"),
        )
        self.assertIn("matched rules [942100, 949110]", record["text"])


class DetectModeTests(SynchronousTestCase):
    """
    C{--waf detect}: everything passes, what would be blocked is logged.
    """

    def test_blocking_verdict_passes_and_logs(self) -> None:
        """
        A verdict that would block passes, logged as C{detect}; nothing counts as blocked.
        """
        harness = FilterHarness(self, mode="detect", verdict=BLOCKING)
        self.assertIsNone(harness.decide(sqli_exchange()))
        [event] = harness.waf_events()
        self.assertEqual((event["action"], event["rule_ids"]), ("detect", [942100, 949110]))
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(harness.filter.counters.blocked, 0)
        self.assertEqual(harness.filter.counters.matched, 1)

    def test_detect_fails_open(self) -> None:
        """
        The filter in detect mode asks the chain to pass a request if it fails;
        in block mode, to answer 500.
        """
        detect = FilterHarness(self, mode="detect").filter
        block = FilterHarness(self, mode="block").filter
        self.assertEqual((detect.fail_open, block.fail_open), (True, False))


class BodyTests(SynchronousTestCase):
    """
    Request bodies are held up to the limit and inspected.
    """

    def test_body_is_inspected(self) -> None:
        """
        The engine sees the body, read with the configured limit.
        """
        harness = FilterHarness(self, body_limit=1024)
        exchange = post_exchange(b"name=Jane&message=hello")
        self.assertIsNone(harness.decide(exchange))
        self.assertEqual(exchange.read_limits, [1024])
        [seen] = harness.inspector.seen
        self.assertEqual(seen.body, b"name=Jane&message=hello")
        self.assertEqual(seen.method, "POST")

    def test_no_body_is_not_read(self) -> None:
        """
        A request without a body is inspected without asking for one.
        """
        harness = FilterHarness(self)
        exchange = sqli_exchange()
        harness.decide(exchange)
        self.assertEqual(exchange.read_limits, [])
        self.assertEqual(harness.inspector.seen[0].body, b"")

    def test_body_at_the_limit_is_inspected(self) -> None:
        """
        A body of exactly the limit is inspected.
        """
        harness = FilterHarness(self, body_limit=16)
        self.assertIsNone(harness.decide(post_exchange(b"x" * 16)))
        self.assertEqual(len(harness.inspector.seen), 1)

    def test_over_limit_block_mode_is_413(self) -> None:
        """
        In block mode a body over the limit is a 413, uninspected, logged and counted.
        """
        harness = FilterHarness(self, body_limit=16)
        answer = harness.decide(post_exchange(b"x" * 17, request_id="big-1"))
        assert answer is not None
        self.assertEqual(answer.status, 413)
        self.assertIn(b"big-1", answer.body)
        self.assertEqual(harness.inspector.seen, [])
        [event] = harness.waf_events()
        self.assertEqual((event["action"], event["body_limit"]), ("reject_over_limit", 16))
        self.assertEqual(harness.filter.counters.over_limit_rejected, 1)

    def test_over_limit_detect_mode_passes(self) -> None:
        """
        In detect mode a body over the limit passes uninspected, logged and counted.
        """
        harness = FilterHarness(self, mode="detect", body_limit=16)
        self.assertIsNone(harness.decide(post_exchange(b"x" * 17)))
        self.assertEqual(harness.inspector.seen, [])
        [event] = harness.waf_events()
        self.assertEqual(event["action"], "bypass_over_limit")
        self.assertEqual(harness.filter.counters.over_limit_bypassed, 1)

    def test_waits_for_the_body(self) -> None:
        """
        Nothing is inspected until the held body is complete.
        """
        harness = FilterHarness(self)
        exchange = post_exchange(b"a=1", hold_body=True)
        result = harness.filter.on_request(exchange)
        harness.clock.advance(0)
        self.assertNoResult(result)
        self.assertEqual(harness.inspector.seen, [])
        exchange.body_reads[0].callback(b"a=1")
        harness.clock.advance(0)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(harness.inspector.seen[0].body, b"a=1")


class FailureTests(SynchronousTestCase):
    """
    Engine failures and overload are outcomes, not crashes.
    """

    def test_engine_error_block_mode_is_500(self) -> None:
        """
        An engine error is a 500 in block mode, logged at error and counted.
        """
        harness = FilterHarness(self, error=InspectionError("out of memory"))
        answer = harness.decide(sqli_exchange("req-9"))
        assert answer is not None
        self.assertEqual(answer.status, 500)
        self.assertIn(b"req-9", answer.body)
        [event] = harness.waf_events()
        self.assertEqual((event["action"], event["reason"]), ("error_block", "out of memory"))
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(harness.filter.counters.engine_errors, 1)

    def test_engine_error_detect_mode_passes(self) -> None:
        """
        An engine error lets the request pass in detect mode, logged and counted.
        """
        harness = FilterHarness(self, mode="detect", error=InspectionError("boom"))
        self.assertIsNone(harness.decide(sqli_exchange()))
        [event] = harness.waf_events()
        self.assertEqual(event["action"], "error_pass")
        self.assertEqual(harness.filter.counters.engine_errors, 1)

    def test_unexpected_exception_is_logged_as_failure(self) -> None:
        """
        Any other exception from the engine is logged with its traceback and
        treated as an engine error.
        """
        harness = FilterHarness(self, error=RuntimeError("bug"))
        answer = harness.decide(sqli_exchange())
        self.assertEqual(getattr(answer, "status", None), 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(harness.filter.counters.engine_errors, 1)

    def test_keeps_serving_after_an_error(self) -> None:
        """
        After an engine error the next request is inspected as usual.
        """
        harness = FilterHarness(self, error=InspectionError("once"), verdict=BLOCKING)
        harness.decide(sqli_exchange())
        harness.inspector.error = None
        answer = harness.decide(sqli_exchange())
        self.assertEqual(getattr(answer, "status", None), 403)

    def test_overload_block_mode_is_503(self) -> None:
        """
        When the runner refuses the work, block mode answers 503 and logs it.
        """
        waf = WafFilter(FakeInspector(), BusyRunner(), "block", 1024)
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        answer = self.successResultOf(waf.on_request(sqli_exchange()))
        self.assertEqual(getattr(answer, "status", None), 503)
        self.assertEqual([e["action"] for e in events if "action" in e], ["overload_block"])
        self.assertEqual(waf.counters.overloaded, 1)

    def test_overload_detect_mode_passes(self) -> None:
        """
        When the runner refuses the work, detect mode passes the request.
        """
        waf = WafFilter(FakeInspector(), BusyRunner(), "detect", 1024)
        self.assertIsNone(self.successResultOf(waf.on_request(sqli_exchange())))
        self.assertEqual(waf.counters.overloaded, 1)

    def test_bad_mode(self) -> None:
        """
        The filter exists only for detect and block.
        """
        self.assertRaises(ValueError, WafFilter, FakeInspector(), BusyRunner(), "off", 1)


class InspectedRequestTests(SynchronousTestCase):
    """
    What the engine is shown of a request.
    """

    def test_fields_as_received(self) -> None:
        """
        Header names keep their case, values are trimmed, the line is kept whole.
        """
        head = request_head(
            "POST",
            "/a/b?c=d",
            (("Host", "example.com"), ("X-Custom-Name", "  some value "), ("cookie", "a=b")),
            b"xy",
        )
        request = inspected_request(FakeExchange(head, request_id="r1"), b"xy")
        self.assertEqual(
            (request.method, request.target, request.http_version, request.request_id),
            ("POST", "/a/b?c=d", "1.1", "r1"),
        )
        self.assertEqual(
            list(request.headers),
            [
                (b"Host", b"example.com"),
                (b"X-Custom-Name", b"some value"),
                (b"cookie", b"a=b"),
                (b"Content-Length", b"2"),
            ],
        )
        self.assertEqual(request.client_ip, "192.0.2.7")
