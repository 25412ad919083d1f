"""
What the cache needs from the relay beyond the request-filter seam: sending
a request upstream with no client behind it, for C{stale-while-revalidate}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from balancebeam.http1.heads import RequestHead
    from balancebeam.interfaces import IResponseObserver


class IBackgroundFetch(Interface):
    """
    Sends one request upstream on the cache's behalf, with no client: the
    background revalidation of C{stale-while-revalidate} (RFC 5861).
    """

    def fetch(
        request: RequestHead,
        client_ip: str,
        scheme: bytes,
        remove: Sequence[bytes],
        add: Sequence[tuple[bytes, bytes]],
        observer: IResponseObserver,
    ) -> None:
        """
        Route and forward C{request} as the relay forwards a client's (same
        upstream choice, same head rewriting, C{X-Forwarded-For} from
        C{client_ip}, C{X-Forwarded-Proto} from C{scheme}, same timeouts),
        with the fields named in C{remove} (lower-case) dropped and the
        C{add} fields appended, as L{IExchange.rewrite_upstream_request
        <balancebeam.interfaces.IExchange.rewrite_upstream_request>} does.
        The request is always a C{GET} without a body.

        Report the response to C{observer} as an exchange does: the final
        head (if L{response_head
        <balancebeam.interfaces.IResponseObserver.response_head>} returns an
        L{Answer <balancebeam.filters.Answer>}, read and drop the body and
        call nothing more), each body piece, then exactly one of
        C{response_complete} and C{response_failed}; never
        C{continue_without_client}. Never raise: a request that cannot be
        dispatched (no healthy upstream, shutting down) is reported through
        C{response_failed}, possibly before this returns.
        """
