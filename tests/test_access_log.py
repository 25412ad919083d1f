"""
The access log (C{--access-log}): one line per request, also for the
requests whose response could not be completed, with the request target
escaped so that no client can forge a line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.config import Limits, Timeouts
from balancebeam.relay.exchange_core import log_safe
from balancebeam.stats import new_request_id_prefix
from tests.helpers import Harness

GET = b"GET /file HTTP/1.1\r\nHost: h\r\n\r\n"


def _access_harness(timeouts: Timeouts = Timeouts(), limits: Limits = Limits()) -> Harness:
    harness = Harness(timeouts=timeouts, limits=limits)
    harness.factory.settings.access_log = True
    return harness


def _access_lines(events: Sequence[Mapping[str, Any]]) -> list[str]:
    return [formatEvent(dict(e)) for e in events if "latency_ms" in e]


class AccessLogTests(SynchronousTestCase):
    """
    What the access log says for each way a request ends.
    """

    def test_complete_response(self) -> None:
        """
        A whole response: one line with the status, the upstream and no note.
        """
        harness = _access_harness()
        with capturedLogs() as events:
            client, _ = harness.client()
            client.dataReceived(GET)
            upstream, _, _ = harness.accept()
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        [line] = _access_lines(events)
        self.assertRegex(line, r'^127\.0\.0\.1 "GET /file" 200 upstream=127\.0\.0\.1:8081 '
                               r"[0-9.]+ms$")
        self.assertEqual(sum(harness.stats.durations), 1)

    def test_request_ids_carry_the_process_tag(self) -> None:
        """
        A request id is the process's tag then the request's number in
        hexadecimal, so that the ids of several workers do not collide.
        """
        harness = _access_harness()
        harness.stats.request_id_prefix = "0a1b2c3d-"
        with capturedLogs() as events:
            client, _ = harness.client()
            client.dataReceived(GET)
            upstream, _, _ = harness.accept()
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            # The second request goes over the same, pooled, upstream connection.
            client.dataReceived(GET)
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual([e["request_id"] for e in events if "latency_ms" in e],
                         ["0a1b2c3d-1", "0a1b2c3d-2"])

    def test_balancer_answers_to_client_errors(self) -> None:
        """
        The balancer's own answers to a client's errors get their line: with
        the method, target and request id once the head was parsed (a body
        over the limit), with C{- -} when it was not (a malformed head).
        """
        harness = _access_harness(limits=Limits(max_body_size=10))
        with capturedLogs() as events:
            client, transport = harness.client()
            client.dataReceived(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
            client, transport = harness.client()
            client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        first, second = _access_lines(events)
        self.assertRegex(first, r'^127\.0\.0\.1 "POST /up" 413 upstream=- [0-9.]+ms$')
        self.assertEqual(second, '127.0.0.1 "- -" 400 upstream=- -')
        self.assertEqual([e["request_id"] for e in events if "latency_ms" in e][1], None)

    def test_new_request_id_prefix(self) -> None:
        """
        A process's tag is 8 hexadecimal digits drawn from the random source,
        and a dash.
        """
        drawn = bytes([0x9B, 0x1E, 0x07, 0xC2])
        self.assertEqual(new_request_id_prefix(lambda size: drawn[:size]), "9b1e07c2-")
        self.assertRegex(new_request_id_prefix(), r"^[0-9a-f]{8}-$")

    def test_response_cut_mid_body(self) -> None:
        """
        An upstream that dies mid-body: the line has the status begun and
        says why the response is incomplete; its duration is counted.
        """
        harness = _access_harness()
        with capturedLogs() as events:
            client, client_transport = harness.client()
            client.dataReceived(GET)
            upstream, _, _ = harness.accept()
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            upstream.connectionLost(None)  # type: ignore[arg-type]
        [line] = _access_lines(events)
        self.assertIn('"GET /file" 200 upstream=127.0.0.1:8081', line)
        self.assertTrue(line.endswith("ms incomplete: the upstream failed mid-response"), line)
        self.assertEqual(sum(harness.stats.durations), 1)

    def test_client_gone_before_the_response(self) -> None:
        """
        A client that leaves before the response head: logged as 499.
        """
        harness = _access_harness()
        with capturedLogs() as events:
            client, _ = harness.client()
            client.dataReceived(GET)
            harness.accept()
            client.connectionLost(None)  # type: ignore[arg-type]
        [line] = _access_lines(events)
        self.assertIn('"GET /file" 499 upstream=127.0.0.1:8081', line)
        self.assertTrue(line.endswith("ms incomplete: the client went away"), line)

    def test_client_gone_mid_response(self) -> None:
        """
        A client that leaves mid-body: the status begun, and the note.
        """
        harness = _access_harness()
        with capturedLogs() as events:
            client, _ = harness.client()
            client.dataReceived(GET)
            upstream, _, _ = harness.accept()
            upstream.dataReceived(b"HTTP/1.1 206 Partial\r\nContent-Length: 100\r\n\r\nsome")
            client.connectionLost(None)  # type: ignore[arg-type]
        [line] = _access_lines(events)
        self.assertIn('"GET /file" 206 ', line)
        self.assertTrue(line.endswith("ms incomplete: the client went away"), line)

    def test_forged_target_is_escaped(self) -> None:
        """
        A quote in the target cannot end the quoted field, and bytes outside
        printable ASCII are written as C{\\xHH}.
        """
        harness = _access_harness()
        with capturedLogs() as events:
            client, _ = harness.client()
            client.dataReceived(b'GET /a"+200+upstream=x\xe2\x80\xae HTTP/1.1\r\nHost: h\r\n\r\n')
            upstream, _, _ = harness.accept()
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        [line] = _access_lines(events)
        self.assertIn('"GET /a\\x22+200+upstream=x\\xe2\\x80\\xae" 200 ', line)

    def test_log_safe(self) -> None:
        """
        Printable ASCII is kept; quote, backslash, space and other bytes are escaped.
        """
        self.assertEqual(log_safe(b"/p?a=1&b=%20"), "/p?a=1&b=%20")
        self.assertEqual(log_safe(b'/"\\ \x7f\xff'), "/\\x22\\x5c\\x20\\x7f\\xff")
