"""
Interim rate-limit filter (replaced by the ratelimit branch).
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred
from zope.interface import implementer

from balancebeam.clientip import TrustedNetworks, client_key
from balancebeam.filters import Answer, text_answer
from balancebeam.interfaces import IExchange, IRateLimiter, IRequestFilter, RateLimitDecision
from balancebeam.stats import Stats


@implementer(IRequestFilter)
class RateLimitFilter:
    """
    Interim.
    """

    name = "ratelimit"
    fail_open = True

    def __init__(
        self,
        limiter: IRateLimiter,
        stats: Stats,
        trusted_proxies: TrustedNetworks = (),
        headers: bool = False,
    ) -> None:
        self._limiter = limiter
        self._stats = stats
        self._trusted = trusted_proxies
        self._headers = headers

    def on_request(self, exchange: IExchange) -> Answer | None | Deferred[Answer | None]:
        """
        Interim.
        """
        if self._trusted:
            values = [v for n, v, _ in exchange.request.fields if n == b"x-forwarded-for"]
            forwarded = b", ".join(values) if values else None
            key = client_key(exchange.client_ip, forwarded, self._trusted)
        else:
            key = exchange.client_ip
        decision = self._limiter.check(key)
        if type(decision) is RateLimitDecision:
            return self._decided(decision, exchange)
        assert isinstance(decision, Deferred)
        return decision.addCallback(self._decided, exchange)

    def _decided(self, decision: RateLimitDecision, exchange: IExchange) -> Answer | None:
        if self._headers:
            exchange.add_response_headers(
                b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n"
                % (decision.limit, decision.remaining, math.ceil(decision.reset_after))
            )
        if decision.allowed:
            return None
        self._stats.rate_limited += 1
        fields = [(b"Retry-After", b"%d" % max(1, math.ceil(decision.retry_after)))]
        return text_answer(429, "too many requests from this client", fields)
