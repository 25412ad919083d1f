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
from dataclasses import dataclass
from urllib.parse import urlsplit

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
        Remove the responses stored for C{url} (an absolute URL or a path:
        the admin passes only URLs that L{parse_purge_url} accepts).

        @return: how many were removed, or a L{Deferred} firing with it.
        """


@dataclass(frozen=True)
class PurgeURL:
    """
    What a purge names: one resource of one host, or a path on every host.

    @ivar scheme: C{b"http"} or C{b"https"}; C{b""} for a path.
    @ivar host: the host (and port) in ASCII (IDNA); C{b""} for a path.
    @ivar target: the path (C{b"/"} when an absolute URL has none) and
        query, UTF-8.
    """

    scheme: bytes
    host: bytes
    target: bytes


def parse_purge_url(url: str) -> PurgeURL:
    """
    Check and split the URL of a purge: an absolute C{http} or C{https} URL
    with a host (C{https://example.com/a?b}), or a path (C{/a?b}).

    @raise ValueError: saying why, when C{url} is neither or cannot be
        parsed.
    """
    if url.startswith("/"):
        scheme, host, target = "", "", url
    else:
        try:
            parts = urlsplit(url)
        except ValueError as error:
            raise ValueError(f"{url!r} cannot be parsed: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an absolute http(s) URL or a path")
        scheme, host = parts.scheme, parts.netloc
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return PurgeURL(scheme.encode("ascii"), host.encode("idna"), target.encode("utf-8"))
    except UnicodeError as error:
        raise ValueError(f"{url!r} cannot be parsed: {error}") from None


def check_name(name: str) -> str:
    """
    Check a provider's name or key against L{NAME}.

    @raise ValueError: when it does not match.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a metric name part ([a-z][a-z0-9_]*)")
    return name
