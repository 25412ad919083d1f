"""
Requests sent upstream with no client behind them (L{BackgroundFetcher}):
the cache's background revalidations (C{stale-while-revalidate}).

Each one is an ordinary exchange whose client side is a L{DetachedClient}:
it is routed, rewritten, bounded by the same deadlines and reported to its
observer exactly as a client's request, but skips the request filters (it
is the cache's own request) and writes nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zope.interface import implementer

from balancebeam.cache.interfaces import IBackgroundFetch
from balancebeam.http1.heads import RequestHead
from balancebeam.interfaces import IResponseObserver
from balancebeam.relay.detached import DetachedClient
from balancebeam.relay.exchange import Exchange
from balancebeam.relay.settings import RelaySettings


@implementer(IBackgroundFetch)
class BackgroundFetcher:
    """
    Sends requests upstream on the relay's current settings.

    @ivar started: requests sent so far.
    """

    def __init__(self, settings: Callable[[], RelaySettings]) -> None:
        """
        @param settings: gives the relay's current settings (those a new
            client request would get).
        """
        self._settings = settings
        self.started = 0

    def fetch(
        self,
        request: RequestHead,
        client_ip: str,
        scheme: bytes,
        remove: Sequence[bytes],
        add: Sequence[tuple[bytes, bytes]],
        observer: IResponseObserver,
    ) -> None:
        """
        Send C{request} upstream and report its response to C{observer}.
        """
        settings = self._settings()
        self.started += 1
        client = DetachedClient(settings.detached, client_ip, scheme)
        exchange = Exchange(client, settings, request, settings.clock.seconds(), 0)
        client.adopt(exchange)
        exchange.keep_alive = False
        exchange.observe(observer)
        exchange.rewrite_upstream_request(remove, add)
        exchange.filters_passed()
