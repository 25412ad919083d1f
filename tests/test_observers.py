"""
Tests for L{balancebeam.observers}: JSON log lines for twistd's C{--logger}.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.logger import ILogObserver, Logger, LoggingFile, LogLevel, LogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from balancebeam.observers import (
    JSONLinesObserver,
    event_as_record,
    json_stdout,
    json_stdout_debug,
)


class CountingStream(io.StringIO):
    """
    A text stream that counts its flushes.

    @ivar flushes: how many times L{flush} was called.
    """

    flushes = 0

    def flush(self) -> None:
        """
        Count the flush.
        """
        self.flushes += 1
        super().flush()


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    """
    Decode every line written to C{stream} as JSON.
    """
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class JSONLinesObserverTests(SynchronousTestCase):
    """
    L{JSONLinesObserver} writes one flattened JSON object per event.
    """

    def test_event_becomes_one_line(self) -> None:
        """
        An event emitted through a L{Logger} becomes exactly one JSON line with
        its fields, the level name and the formatted text, flushed at once.
        """
        stream = CountingStream()
        log = Logger(namespace="balancebeam.registry", observer=JSONLinesObserver(stream))
        log.warn(
            "upstream {upstream} is now down: {reason}",
            upstream="127.0.0.1:8082",
            reason="connection refused",
        )
        self.assertEqual(stream.getvalue().count("\n"), 1)
        self.assertEqual(stream.flushes, 1)
        [record] = lines_of(stream)
        self.assertRegex(record.pop("time"), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertEqual(
            record,
            {
                "upstream": "127.0.0.1:8082",
                "reason": "connection refused",
                "level": "warn",
                "namespace": "balancebeam.registry",
                "text": "upstream 127.0.0.1:8082 is now down: connection refused",
            },
        )

    def test_request_fields(self) -> None:
        """
        Numbers stay numbers, and the time is the event's, in UTC.
        """
        record = event_as_record(
            {
                "log_format": "{method} {path} -> {status}",
                "log_level": LogLevel.info,
                "log_namespace": "balancebeam.relay.client",
                "log_time": 86400.25,
                "log_system": "-",
                "client": "127.0.0.1",
                "method": "GET",
                "path": "/a",
                "status": 200,
                "latency_ms": 1.5,
            }
        )
        self.assertEqual(
            record,
            {
                "client": "127.0.0.1",
                "method": "GET",
                "path": "/a",
                "status": 200,
                "latency_ms": 1.5,
                "time": "1970-01-02T00:00:00.250000Z",
                "level": "info",
                "namespace": "balancebeam.relay.client",
                "system": "-",
                "text": "GET /a -> 200",
            },
        )

    def test_failure_has_traceback(self) -> None:
        """
        C{log.failure} adds a C{traceback} naming the exception, at level critical.
        """
        stream = io.StringIO()
        log = Logger(namespace="t", observer=JSONLinesObserver(stream))
        try:
            raise KeyError("missing-upstream")
        except KeyError:
            log.failure("relay broke for {client}", client="127.0.0.1")
        [record] = lines_of(stream)
        self.assertEqual(
            (record["level"], record["text"], record["client"]),
            ("critical", "relay broke for 127.0.0.1", "127.0.0.1"),
        )
        self.assertIn("KeyError: 'missing-upstream'", record["traceback"])
        self.assertTrue(record["traceback"].startswith("Traceback"))

    def test_unencodable_values(self) -> None:
        """
        Bytes become text and other objects their C{repr}, instead of failing.
        """
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        observer(
            {
                "log_format": "x",
                "log_level": LogLevel.debug,
                "log_namespace": "t",
                "log_time": 0.0,
                "raw": b"GET \xff",
                "level_object": LogLevel.warn,
                "ranges": {"b", "a"},
            }
        )
        [record] = lines_of(stream)
        self.assertEqual(
            (record["raw"], record["level_object"], record["ranges"]),
            ("GET \\xff", repr(LogLevel.warn), ["'a'", "'b'"]),
        )

    def test_nan_written_as_repr(self) -> None:
        """
        An event holding NaN (not valid JSON) is still written, as valid JSON.
        """
        stream = io.StringIO()
        JSONLinesObserver(stream)(
            {"log_format": "t={t}", "log_namespace": "t", "log_time": 0.0, "t": float("nan")}
        )
        [record] = lines_of(stream)
        self.assertEqual((record["t"], record["text"]), ("nan", "t=nan"))

    def test_reserved_names_win(self) -> None:
        """
        A field called C{level} or C{text} is overridden by the standard key.
        """
        record = event_as_record(
            {"log_format": "hi", "log_level": LogLevel.error, "level": "x", "text": "y"}
        )
        self.assertEqual((record["level"], record["text"], record["time"]), ("error", "hi", None))

    def test_legacy_event(self) -> None:
        """
        A message from L{twisted.python.log} keeps its text and loses its legacy keys.
        """
        stream = io.StringIO()
        publisher = LogPublisher(JSONLinesObserver(stream))
        legacy = legacy_log.LogPublisher(publisher, publisher)
        legacy.msg("Server Shut Down.", system="twistd")
        [record] = lines_of(stream)
        record.pop("time")
        self.assertEqual(
            record,
            {
                "level": "info",
                "namespace": "log_legacy",
                "system": "twistd",
                "text": "Server Shut Down.",
            },
        )


class JSONStdoutTests(SynchronousTestCase):
    """
    L{json_stdout} is the factory twistd's C{--logger} calls.
    """

    def test_writes_to_stdout(self) -> None:
        """
        The observer provides L{ILogObserver} and writes info events to C{sys.stdout}.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        observer = json_stdout()
        self.assertTrue(verifyObject(ILogObserver, observer))
        Logger(namespace="t", observer=observer).info("hello {who}", who="world")
        [record] = lines_of(stdout)
        self.assertEqual((record["text"], record["who"]), ("hello world", "world"))

    def test_drops_debug(self) -> None:
        """
        L{json_stdout} drops debug events and keeps warnings.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        log = Logger(namespace="t", observer=json_stdout())
        log.debug("probe ok")
        log.warn("upstream down")
        self.assertEqual([record["text"] for record in lines_of(stdout)], ["upstream down"])

    def test_debug_variant_keeps_debug(self) -> None:
        """
        L{json_stdout_debug} writes debug events too.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        log = Logger(namespace="t", observer=json_stdout_debug())
        log.debug("probe ok")
        [record] = lines_of(stdout)
        self.assertEqual((record["level"], record["text"]), ("debug", "probe ok"))

    def test_redirected_stdout(self) -> None:
        """
        When C{sys.stdout} already feeds the log, the original standard output is used.
        """
        self.patch(sys, "stdout", LoggingFile(Logger(observer=LogPublisher())))
        observer = json_stdout_debug()
        assert isinstance(observer, JSONLinesObserver)
        self.assertIs(observer.stream, sys.__stdout__)

    def test_resolved_like_twistd(self) -> None:
        """
        twistd's C{--logger} option resolves the documented name to L{json_stdout}.
        """
        from twisted.scripts.twistd import ServerOptions

        options = ServerOptions()
        options.parseOptions(["--logger=balancebeam.observers.json_stdout"])
        self.assertIs(options["logger"], json_stdout)

    def test_failure_argument(self) -> None:
        """
        A L{Failure} stored under C{log_failure} by hand is rendered too.
        """
        record = event_as_record({"log_format": "x", "log_failure": Failure(ValueError("v"))})
        self.assertIn("ValueError: v", record["traceback"])
