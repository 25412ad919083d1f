"""
The seams between the relay and its policies.

The relay (L{balancebeam.frontend}) only talks to these interfaces, so each
policy can be replaced, and tested, on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from twisted.internet.defer import Deferred
from zope.interface import Interface

if TYPE_CHECKING:
    from balancebeam.registry import UpstreamState


class RateLimitDecision(NamedTuple):
    """
    The answer of a rate limiter for one request.

    @ivar allowed: whether the request may go on to an upstream.
    @ivar limit: requests allowed per window.
    @ivar remaining: requests left in the current window after this one (0 if denied).
    @ivar reset_after: seconds until the current window ends.
    @ivar retry_after: seconds until a request from this key would be allowed
        (0 when allowed).

    A named tuple rather than a frozen dataclass: one is made per request,
    and a tuple is several times cheaper to build.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


class IBalancingStrategy(Interface):
    """
    Chooses the upstream for one request.
    """

    def choose(candidates: Sequence[UpstreamState]) -> UpstreamState:
        """
        Pick one of C{candidates}, which is never empty and holds only live
        upstreams.
        """


class IRateLimiter(Interface):
    """
    Decides whether a client may make another request now.
    """

    def check(key: str) -> RateLimitDecision | Deferred[RateLimitDecision]:
        """
        Count one request for C{key} and say whether it is allowed.

        In-memory limiters answer at once; remote ones return a L{Deferred}
        that always fires (never errbacks) within their own timeout, applying
        their failure policy.
        """

    def close() -> Deferred[None] | None:
        """
        Release timers and connections; the result fires when they are gone.
        """
