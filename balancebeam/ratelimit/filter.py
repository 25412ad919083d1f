"""
The rate limiter as a request filter: the first filter on the seam
(L{balancebeam.filters}).

For each request it asks an L{IRateLimiter<balancebeam.interfaces.IRateLimiter>}
about the client, then lets the request pass (with C{RateLimit-*} header
lines added to the response when asked to) or answers it itself with
C{429 Too Many Requests} and C{Retry-After}. The in-memory limiter answers at
once, so the common case takes no L{Deferred}; the Redis one answers later.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

from zope.interface import classImplements

from balancebeam.clientip import TrustedNetworks, client_key
from balancebeam.filters import Answer, text_answer
from balancebeam.interfaces import IExchange, IRateLimiter, IRequestFilter, RateLimitDecision
from balancebeam.stats import Stats

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from balancebeam.http1.heads import RequestHead
    from balancebeam.interfaces import FilterResult

DENIED_MESSAGE = "too many requests from this client"
"""
The message of the 429 answer's C{text/plain} body.
"""


def forwarded_for(request: RequestHead) -> bytes | None:
    """
    The request's C{X-Forwarded-For} values, several headers joined with
    C{b", "} in order, or C{None} when it has none.
    """
    values = [value for name, value, _ in request.fields if name == b"x-forwarded-for"]
    return b", ".join(values) if values else None


class RateLimitFilter:
    """
    Answers requests over a client's rate limit with 429; lets the others pass.

    A limiter that fails (its L{Deferred} errbacks, which limiters promise
    not to do) lets the request pass: the filter fails open, and the
    exchange logs the failure.
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
        """
        @param limiter: decides, per client key.
        @param stats: its C{rate_limited} counter counts the 429 answers.
        @param trusted_proxies: peers whose C{X-Forwarded-For} is believed
            (see L{client_key}); empty to key on the TCP peer alone.
        @param headers: add C{RateLimit-Limit}, C{RateLimit-Remaining} and
            C{RateLimit-Reset} to every response, allowed or denied.
        """
        self._limiter = limiter
        self._stats = stats
        self._trusted = tuple(trusted_proxies)
        self._headers = headers

    def on_request(self, exchange: IExchange) -> FilterResult:
        """
        Ask the limiter about the request's client.

        @return: C{None} when allowed, a 429 L{Answer} when denied; a
            L{Deferred} firing with either when the limiter answers later.
        """
        if self._trusted:
            key = client_key(exchange.client_ip, forwarded_for(exchange.request), self._trusted)
        else:
            key = exchange.client_ip
        decision = self._limiter.check(key)
        # Deferred's metaclass is ABCMeta, whose isinstance is slow: test the
        # in-memory limiter's answer first.
        if type(decision) is RateLimitDecision:
            if decision.allowed and not self._headers:
                # The common case, without a call to _decided.
                return None
            return self._decided(decision, exchange)
        # Any other answer is a Deferred (mypy cannot narrow a NamedTuple away).
        pending = cast("Deferred[RateLimitDecision]", decision)
        return pending.addCallback(self._decided, exchange)

    def _decided(self, decision: RateLimitDecision, exchange: IExchange) -> Answer | None:
        """
        Turn the limiter's decision into the filter's answer.
        """
        if decision.allowed:
            if self._headers:
                exchange.add_response_headers(
                    b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n"
                    % (decision.limit, decision.remaining, math.ceil(decision.reset_after))
                )
            return None
        self._stats.rate_limited += 1
        fields = [(b"Retry-After", b"%d" % max(1, math.ceil(decision.retry_after)))]
        if self._headers:
            fields += [
                (b"RateLimit-Limit", b"%d" % decision.limit),
                (b"RateLimit-Remaining", b"0"),
                (b"RateLimit-Reset", b"%d" % math.ceil(decision.reset_after)),
            ]
        return text_answer(429, DENIED_MESSAGE, fields)


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(RateLimitFilter, IRequestFilter)
