# -*- test-case-name: tests.test_observers -*-
"""
Log observer factories for twistd's C{--logger} option.

C{twistd -n --pidfile= --logger=balancebeam.observers.json_stdout balancebeam ...}
writes one JSON object per log event of level C{info} and above to standard
output, which suits journald and log shippers;
C{--logger=balancebeam.observers.json_stdout_debug} keeps C{debug} events
too. twistd resolves the name with C{namedAny} and calls it with no
arguments to get the observer.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LoggingFile,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import implementer

_LEGACY_KEYS = frozenset({"message", "isError", "format", "why", "failure", "time", "system"})
"""Keys that events from C{twisted.python.log} carry besides their C{log_*} keys."""


def _jsonable(value: object) -> object:
    """
    Turn a field value that C{json} cannot encode into something it can.

    @return: text for C{bytes} (undecodable bytes escaped), a list for sets,
        and C{repr(value)} for anything else.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return sorted(repr(item) for item in value)
    return repr(value)


def event_as_record(event: LogEvent) -> dict[str, Any]:
    """
    Flatten a log event into the dictionary written as one JSON line.

    The event's own fields (C{client}, C{upstream}, C{status}, ...) are kept
    under their names. Then come C{time} (ISO 8601, UTC), C{level}
    (C{debug}, C{info}, C{warn}, C{error} or C{critical}), C{namespace},
    C{system} (when known), C{text} (the formatted message) and, for
    C{log.failure}, C{traceback}; these names win over fields of the same
    name. Twisted's C{log_*} keys are left out.

    @param event: the event as published by C{twisted.logger}.
    @return: a new dictionary; C{event} is not changed.
    """
    legacy = "message" in event and "isError" in event
    record: dict[str, Any] = {
        key: value
        for key, value in event.items()
        if not key.startswith("log_") and not (legacy and key in _LEGACY_KEYS)
    }
    timestamp = event.get("log_time")
    if isinstance(timestamp, (int, float)):
        moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
        record["time"] = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    else:
        record["time"] = None
    level = event.get("log_level")
    record["level"] = getattr(level, "name", None) or "info"
    record["namespace"] = event.get("log_namespace")
    system = event.get("log_system")
    if system is not None:
        record["system"] = system
    record["text"] = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each log event to a text stream as one line of JSON.

    Lines are flushed one by one so that a reader on a pipe (journald) sees
    each event at once. An event that cannot be encoded as it is (a NaN, say)
    is written with its values other than text and whole numbers as their
    C{repr}, never dropped.

    @ivar stream: where the lines go.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: LogEvent) -> None:
        """
        Write C{event} as one line of JSON and flush.
        """
        record = event_as_record(event)
        try:
            line = json.dumps(record, default=_jsonable, allow_nan=False)
        except (ValueError, TypeError):
            line = json.dumps(
                {
                    key: value if value is None or isinstance(value, (str, int)) else repr(value)
                    for key, value in record.items()
                }
            )
        self.stream.write(line + "\n")
        self.stream.flush()


def _stdout() -> TextIO:
    """
    Standard output as it was before twistd redirected it into the log.

    twistd calls C{--logger} factories before it replaces C{sys.stdout} with
    a L{LoggingFile}; should that already have happened, the process's
    original standard output is used so that events do not loop back into
    the log.

    @raise RuntimeError: when the process has no standard output at all.
    """
    stream: TextIO | None = sys.stdout
    if isinstance(stream, LoggingFile) or stream is None:
        stream = sys.__stdout__
    if stream is None:
        raise RuntimeError("there is no standard output to log to")
    return stream


def json_stdout() -> ILogObserver:
    """
    Write events of level C{info} and above to standard output as JSON lines.

    For C{twistd --logger=balancebeam.observers.json_stdout}. C{debug} events
    (one per health probe, for instance) are dropped; use L{json_stdout_debug}
    to keep them.
    """
    return FilteringLogObserver(
        JSONLinesObserver(_stdout()),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
    )


def json_stdout_debug() -> ILogObserver:
    """
    Write every event, C{debug} included, to standard output as JSON lines.

    For C{twistd --logger=balancebeam.observers.json_stdout_debug}.
    """
    return JSONLinesObserver(_stdout())
