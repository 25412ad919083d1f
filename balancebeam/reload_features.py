"""
The firewall's and the cache's parts of a configuration reload
(L{balancebeam.reload.ReloadStep}s, registered by the service).

A changed C{--waf*} setting builds a new firewall before anything changes
(rules that fail to load refuse the whole reload); a changed C{--cache*}
setting builds a new, empty cache. Applying one swaps its filter in the
chain for new requests; requests in flight finish with the filters they
started with, and the old firewall is stopped once they are done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from balancebeam.cache.purge import CachePurger
from balancebeam.config import BalancerConfig

if TYPE_CHECKING:
    from balancebeam.cache import CacheFilter
    from balancebeam.service import BalancerService
    from balancebeam.waf.build import WafService

log = Logger()


def order_filters(service: BalancerService) -> None:
    """
    Rebuild C{service.filters} in the relay's order: the rate limiter (and
    any other filter), then the firewall, then the cache.
    """
    special = {id(service.waf.filter) if service.waf is not None else 0, id(service.cache)}
    others = [f for f in service.filters if id(f) not in special and not _is_feature(f)]
    filters = list(others)
    if service.waf is not None:
        filters.append(service.waf.filter)
    if service.cache is not None:
        filters.append(service.cache)
    service.filters = tuple(filters)


def _is_feature(request_filter: object) -> bool:
    """
    Whether C{request_filter} is a firewall's or a cache's (of any generation).
    """
    name = getattr(request_filter, "name", "")
    return name in ("waf", "cache")


def waf_step(service: BalancerService, reactor: Any) -> Callable[..., Any]:
    """
    The firewall's reload step for C{service}.
    """

    def step(old: BalancerConfig, new: BalancerConfig) -> Callable[[], None] | None:
        if old.waf == new.waf:
            return None
        replacement: WafService | None = None
        if new.waf.mode != "off":
            from balancebeam.errors import StartupError
            from balancebeam.features import build_waf_service

            try:
                replacement = build_waf_service(reactor, new)
            except StartupError as error:
                # Rules that fail to load refuse the whole reload.
                raise ValueError(str(error)) from None

        def apply() -> None:
            retired = service.waf
            if replacement is not None:
                replacement.startService()
            service.waf = replacement
            order_filters(service)
            log.info("firewall reloaded: --waf {mode}", mode=new.waf.mode)
            if retired is not None:
                # Requests already past the chain's start may still reach it.
                reactor.callLater(new.shutdown_timeout, retired.stopService)

        return apply

    return step


def cache_step(service: BalancerService, reactor: Any) -> Callable[..., Any]:
    """
    The cache's reload step for C{service}: new settings start an empty
    cache (its counters go on).
    """

    def step(old: BalancerConfig, new: BalancerConfig) -> Callable[[], None] | None:
        if old.cache == new.cache:
            return None
        replacement: CacheFilter | None = None
        if new.cache.size > 0:
            from balancebeam.features import build_cache_filter

            counters = service.cache.counters if service.cache is not None else None
            replacement = build_cache_filter(
                reactor, new, lambda: service.factory.settings, counters
            )

        def apply() -> None:
            if replacement is not None:
                replacement.counters.bytes = 0
                replacement.counters.entries = 0
            service.cache = replacement
            service.purger = CachePurger(replacement.store) if replacement is not None else None
            order_filters(service)
            log.info(
                "cache reloaded with --cache-size {size}: it starts empty",
                size=new.cache.size,
            )

        return apply

    return step
