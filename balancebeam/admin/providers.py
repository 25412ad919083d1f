"""
Hooks for features that report counters to the admin listener, and for the
cache's purge endpoint.

A feature (the response cache, the firewall, TLS) adds an
L{IFeatureCounters} provider to C{BalancerService.feature_counters}; its
counters then show on C{/metrics} (as C{balancebeam_<name>_<key>}), on the
status page and in C{/status.json}, with no change to the admin. The cache
sets C{BalancerService.purger} to an L{IPurger} for C{POST /cache/purge}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

NAME = re.compile(r"[a-z][a-z0-9_]*")
"""What a provider's C{name} and each key of its snapshot must match."""


class IFeatureCounters(Interface):
    """
    A feature's counters, read when the admin is asked (never per request).
    """

    name = Attribute(
        """
        A short lowercase name (C{"cache"}, C{"waf"}, C{"tls"}): the metric
        prefix C{balancebeam_<name>_} and the status page section title.
        """
    )

    def snapshot() -> Mapping[str, float]:
        """
        The current values by key (lowercase, C{[a-z][a-z0-9_]*}). A key
        ending in C{_total} is a counter (it never goes down), any other a
        gauge: C{{"hits_total": 10, "misses_total": 2, "entries": 5}}
        becomes C{balancebeam_cache_hits_total} and so on.
        """


class IPurger(Interface):
    """
    Removes cached responses (C{POST /cache/purge?url=URL}).
    """

    def purge(url: str) -> int | Deferred[int]:
        """
        Remove the responses stored for C{url} (an absolute URL or a path).

        @return: how many were removed, or a L{Deferred} firing with it.
        """


def check_name(name: str) -> str:
    """
    Check a provider's name or key against L{NAME}.

    @raise ValueError: when it does not match.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a metric name part ([a-z][a-z0-9_]*)")
    return name
