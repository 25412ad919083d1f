"""
The C{Date} header field the balancer adds (RFC 9110 section 6.6.1): to
the responses it writes itself, and to upstream responses that arrive
without one ("a recipient with a clock ... MUST ... append a corresponding
Date header field ... if it is cached or forwarded downstream").
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate


class DateField:
    """
    The C{Date} header line for the current second, formatted once per
    second of the injected clock.
    """

    __slots__ = ("_seconds", "_second", "_line")

    def __init__(self, seconds: Callable[[], float]) -> None:
        """
        @param seconds: the clock (C{IReactorTime.seconds}).
        """
        self._seconds = seconds
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        """
        C{b"Date: Tue, 01 Dec 2026 05:20:00 GMT"} for now, without CRLF.
        """
        now = int(self._seconds())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode("ascii")
        return self._line
