"""
Counters describing what the balancer has done, cheap to update on the hot path.
"""

from __future__ import annotations


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
    @ivar filter_errors: request filters that raised or failed (see
        L{IRequestFilter.fail_open <balancebeam.interfaces.IRequestFilter>}).
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
        "filter_errors",
    )

    def __init__(self) -> None:
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
        self.filter_errors = 0

    def count_status(self, status: int) -> None:
        """
        Count one response with C{status}.
        """
        self.by_class[status // 100 if 100 <= status < 600 else 0] += 1

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
            "filter_errors": self.filter_errors,
            "responses": {f"{n}xx": count for n, count in enumerate(self.by_class) if n},
        }
