"""
Build the rate limiter the command line asks for.

Kept apart from L{balancebeam.ratelimit.memory} so that the in-memory limiter does not
depend on the Redis one (L{balancebeam.ratelimit.redis} imports
L{balancebeam.ratelimit.memory}, not the reverse).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from balancebeam.clientip import parse_trusted_networks
from balancebeam.config_values import parse_rate_limit_backend, parse_redis_url
from balancebeam.interfaces import IRateLimiter
from balancebeam.ratelimit.filter import RateLimitFilter
from balancebeam.ratelimit.memory import MemoryRateLimiter, validate_parameters
from balancebeam.ratelimit.redis import ON_ERROR_POLICIES, RedisRateLimiter

if TYPE_CHECKING:
    from balancebeam.config import BalancerConfig
    from balancebeam.stats import Stats


def build_rate_limiter(
    reactor: IReactorTime,
    backend: str,
    limit: int,
    window: float,
    algorithm: str,
    timeout: float,
    on_error: str,
    max_keys: int,
) -> IRateLimiter | None:
    """
    Build the rate limiter for C{--rate-limit-backend}.

    Nothing is connected or scheduled here (this runs in C{makeService},
    before twistd daemonizes): call the limiter's C{start()} from
    C{startService} and its C{close()} from C{stopService}.

    @param reactor: the clock of the memory limiter; the clock and connector
        of the Redis one.
    @param backend: C{memory} or C{redis://HOST:PORT/DB}.
    @param limit: requests per key per window; C{0} turns rate limiting off.
    @param timeout: seconds a Redis decision may take (Redis only).
    @param on_error: C{allow} or C{deny} when Redis cannot decide (Redis only).
    @param max_keys: the most keys held in memory (memory only).
    @return: the limiter, or C{None} when C{limit} is 0.
    @raise ValueError: on a bad backend or parameter.
    """
    if limit == 0:
        return None
    backend = parse_rate_limit_backend(backend)
    validate_parameters(limit, window, algorithm)
    if on_error not in ON_ERROR_POLICIES:
        raise ValueError(f"rate limit error policy {on_error!r} is not one of allow, deny")
    if backend == "memory":
        return MemoryRateLimiter(reactor, limit, window, algorithm, max_keys)
    host, port, db = parse_redis_url(backend)
    return RedisRateLimiter(
        reactor, host, port, db, limit, window, algorithm, timeout=timeout, on_error=on_error
    )


def build_rate_limiting(
    reactor: IReactorTime, config: BalancerConfig, stats: Stats
) -> tuple[IRateLimiter | None, RateLimitFilter | None]:
    """
    The rate limiter and its filter for C{config} (both C{None} when
    C{--max-requests-per-minute} is 0): what the service builds at start
    and a reload builds anew.
    """
    limiter = build_rate_limiter(
        reactor,
        backend=config.rate_limit_backend,
        limit=config.max_requests_per_minute,
        window=config.rate_limit_window,
        algorithm=config.rate_limit_algorithm,
        timeout=config.rate_limit_redis_timeout,
        on_error=config.rate_limit_on_error,
        max_keys=config.rate_limit_max_keys,
    )
    if limiter is None:
        return None, None
    limit_filter = RateLimitFilter(
        limiter, stats, parse_trusted_networks(config.trusted_proxies), config.rate_limit_headers
    )
    return limiter, limit_filter
