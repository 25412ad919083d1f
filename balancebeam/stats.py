"""
Counters describing what the balancer has done, cheap to update on the hot path.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable

#: Upper bounds, in seconds, of the request-duration histogram's buckets
#: (Prometheus C{le}); a last bucket holds the longer ones.
DURATION_BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


def new_request_id_prefix(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """
    A fresh L{Stats.request_id_prefix}: 8 random hexadecimal digits and a
    dash (C{"9b1e07c2-"}), drawn once per process.
    """
    return random_bytes(4).hex() + "-"


class Stats:
    """
    Plain integer counters; L{snapshot} copies them for reporting.

    @ivar requests: request heads parsed.
    @ivar by_class: responses sent, by status class: index 2 counts 2xx, and so on.
    @ivar rate_limited: requests answered 429.
    @ivar no_upstream: requests answered 503 because every upstream was down.
    @ivar connect_failures: failed connects to upstreams (passive health checks).
    @ivar upstream_failures: upstream connections that failed mid-request.
    @ivar upstream_timeouts: requests answered 504.
    @ivar retries: requests sent again after an upstream failed before answering.
    @ivar reuse_retries: of those, retries after the keep-alive race on a reused connection.
    @ivar client_errors: malformed or over-limit requests (400, 408, 413, 431, ...).
    @ivar refused_connections: client connections answered 503 over the connection limit.
    @ivar refused_per_client: client connections answered 503 over the limit
        of connections from one client address.
    @ivar filter_errors: request filters that raised or failed (see
        L{IRequestFilter.fail_open <balancebeam.interfaces.IRequestFilter>}).
    @ivar client_connections: client connections accepted (refused ones included).
    @ivar durations: finished requests by duration, one count per bucket of
        L{DURATION_BOUNDS} plus one for longer (not cumulative); from the
        parsed head to the end of the response (tunnels are not counted).
    @ivar duration_sum: the seconds those requests took, in total.
    @ivar request_id_prefix: what a request id starts with, before the
        request's number (L{requests} when it began) in hexadecimal: a tag
        of this process, so that ids from several worker processes, or from
        before and after a restart, do not collide in the logs.
    """

    __slots__ = (
        "requests",
        "by_class",
        "rate_limited",
        "no_upstream",
        "connect_failures",
        "upstream_failures",
        "upstream_timeouts",
        "retries",
        "reuse_retries",
        "client_errors",
        "refused_connections",
        "refused_per_client",
        "filter_errors",
        "client_connections",
        "durations",
        "duration_sum",
        "request_id_prefix",
    )

    def __init__(self, request_id_prefix: str = "") -> None:
        self.requests = 0
        self.by_class = [0, 0, 0, 0, 0, 0]
        self.rate_limited = 0
        self.no_upstream = 0
        self.connect_failures = 0
        self.upstream_failures = 0
        self.upstream_timeouts = 0
        self.retries = 0
        self.reuse_retries = 0
        self.client_errors = 0
        self.refused_connections = 0
        self.refused_per_client = 0
        self.filter_errors = 0
        self.client_connections = 0
        self.durations = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        self.request_id_prefix = request_id_prefix

    def count_status(self, status: int) -> None:
        """
        Count one response with C{status}.
        """
        self.by_class[status // 100 if 100 <= status < 600 else 0] += 1

    def count_duration(self, seconds: float) -> None:
        """
        Count one finished request that took C{seconds}.
        """
        self.durations[bisect_left(DURATION_BOUNDS, seconds)] += 1
        self.duration_sum += seconds

    def snapshot(self) -> dict[str, object]:
        """
        A copy of every counter, for logs and status pages.
        """
        # Spelled out rather than read from __slots__, which a class compiled
        # with mypyc does not have.
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "no_upstream": self.no_upstream,
            "connect_failures": self.connect_failures,
            "upstream_failures": self.upstream_failures,
            "upstream_timeouts": self.upstream_timeouts,
            "retries": self.retries,
            "reuse_retries": self.reuse_retries,
            "client_errors": self.client_errors,
            "refused_connections": self.refused_connections,
            "refused_per_client": self.refused_per_client,
            "filter_errors": self.filter_errors,
            "client_connections": self.client_connections,
            "responses": {f"{n}xx": count for n, count in enumerate(self.by_class) if n},
        }


class ReloadCounts:
    """
    How configuration reloads went (see L{balancebeam.reload}).

    @ivar success: reloads applied.
    @ivar failure: reloads refused (an invalid file changes nothing).
    @ivar last_ok: whether the last one was applied (C{True} before any).
    @ivar last_at: clock time of the last one, or C{None}.
    @ivar last_success_at: clock time of the last one applied, or C{None}.
    @ivar last_error: why the last one was refused, or C{None}.
    """

    def __init__(self) -> None:
        self.success = 0
        self.failure = 0
        self.last_ok = True
        self.last_at: float | None = None
        self.last_success_at: float | None = None
        self.last_error: str | None = None
