# -*- test-case-name: tests.test_workers_control -*-
"""
The control channel between the master and a worker: one JSON object per
line, over a pipe each way (the worker's standard input from the master,
its descriptor 3 back to it).

Every message has a C{"type"}. From the master to a worker:
  - L{HEALTH}: C{{"upstreams": {NAME: [ALIVE, REASON], ...}}}, the state of
    every upstream; sent when a worker starts and after every change;
  - L{REPORT}: C{{"serial": N}}, send L{STATS} now, quoting C{N};
  - L{ADMIN}: C{{"upstreams": {NAME: STATE, ...}}}, the admin state
    (C{enabled}, C{draining}, C{disabled}) set on the master's admin for
    each upstream named; sent after every change, and when a worker starts
    if any was set;
  - L{PURGE}: C{{"url": URL, "serial": N}}, purge the cache of C{URL},
    and answer with L{PURGED}.
From a worker to the master:
  - L{READY}: C{{"pid": PID}}, it accepts connections;
  - L{STATS}: C{{"counters": {...}, "gauges": {...}, "requests": N,
    "connections": N, "serial": N, "final": BOOL}}, its counters since it
    started and what it holds now
    (L{balancebeam.workers.worker_admin.report_counters},
    L{report_gauges <balancebeam.workers.worker_admin.report_gauges>}; sent
    every second, on request, and a last time after it drained);
  - L{DOWN}: C{{"upstream": NAME, "reason": TEXT}}, connecting to an
    upstream failed here (passive health);
  - L{PURGED}: C{{"serial": N, "purged": COUNT}} (or C{"error": TEXT}),
    the answer to L{PURGE} C{N}.
Lines that are not such objects are logged and dropped: both ends are
balancebeam, so they are bugs, not attacks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

HEALTH = "health"
REPORT = "report"
READY = "ready"
STATS = "stats"
DOWN = "down"
ADMIN = "admin"
PURGE = "purge"
PURGED = "purged"

MAX_LINE = 1 << 20
"""The longest line accepted, in bytes (a L{STATS} message is a few KiB,
about 400 bytes more per upstream)."""

Message = dict[str, Any]


def encode(message: Mapping[str, object]) -> bytes:
    """
    One message as a line: compact JSON (ASCII only, so no byte of it is a
    newline but the last) and C{\\n}.

    @raise ValueError: when C{message} has no string C{"type"}.
    @raise TypeError: when a value is not JSON.
    """
    if not isinstance(message.get("type"), str):
        raise ValueError(f"a control message needs a string type: {message!r}")
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


class MessageDecoder:
    """
    Splits a byte stream into messages.

    @ivar dropped: lines dropped so far (not JSON, not an object with a
        string C{type}, or longer than C{max_line}).
    """

    log = Logger()

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buffer = b""
        self._max_line = max_line
        self._skipping = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[Message]:
        """
        Take more bytes; return the messages completed by them, in order.
        """
        buffer = self._buffer + data
        messages: list[Message] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end == -1:
                break
            line = buffer[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            message = self._parse(line)
            if message is not None:
                messages.append(message)
        rest = buffer[start:]
        if len(rest) > self._max_line:
            if not self._skipping:
                self._drop("a line longer than {limit} bytes", limit=self._max_line)
            self._skipping = True
            rest = b""
        self._buffer = rest
        return messages

    def _parse(self, line: bytes) -> Message | None:
        if len(line) > self._max_line:
            self._drop("a line longer than {limit} bytes", limit=self._max_line)
            return None
        try:
            message = json.loads(line)
        except ValueError:
            self._drop("a line that is not JSON: {line!r}", line=line[:200])
            return None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._drop("a line that is not a message: {line!r}", line=line[:200])
            return None
        return message

    def _drop(self, what: str, **fields: object) -> None:
        self.dropped += 1
        self.log.error("control channel: dropped " + what, **fields)
