"""
What the cache needs from the relay beyond the request-filter seam: sending
a request upstream with no client behind it, for C{stale-while-revalidate}
(L{IBackgroundFetch}), and sending a client's request upstream once more
(L{IResendable}).
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


class IResendable(Interface):
    """
    An exchange that can send its request upstream once more instead of
    relaying the response it got: how the cache re-requests unconditionally
    when a C{304} answers its revalidation but names a response it does not
    hold (RFC 9111 section 4.3.4). The relay's exchanges provide it.
    """

    def send_again(remove: Sequence[bytes]) -> bool:
        """
        Called by a response observer from its C{response_head}: do not
        relay this response (its body is read and dropped) but send the
        request upstream again, to any live upstream, without the fields
        named in C{remove} (lower-case names; fields the client sent and
        fields added by C{rewrite_upstream_request} alike). The observer
        that asked returns C{None}; observers after it do not see this
        head. Every observer then sees the new response from its head on.

        @return: whether the request will be sent again; C{False} (and
            nothing changed) when it cannot be: its body was not held
            whole, it was already sent again once, or the exchange is not
            waiting for a response head.
        """
