"""
The request-filter seam: what a filter may answer instead of an upstream.

After a request head is parsed and before it is dispatched, the exchange
(L{balancebeam.relay.exchange.Exchange}) asks each L{IRequestFilter
<balancebeam.interfaces.IRequestFilter>} in order. A filter lets the request
pass (C{None}), answers it itself with an L{Answer} (a 429, a 403, a cached
response), or attaches an L{IResponseObserver
<balancebeam.interfaces.IResponseObserver>} that sees the upstream response as
it is relayed; it may decide later, through a L{Deferred}. The chain is run
by L{balancebeam.relay.filtering.FilterChain}. See C{doc/architecture.md}.
"""

from __future__ import annotations

from collections.abc import Sequence

from balancebeam.http1.rewrite import REASONS
from balancebeam.interfaces import Answer

__all__ = ["Answer", "text_answer"]


def text_answer(
    status: int, message: str, fields: Sequence[tuple[bytes, bytes]] = ()
) -> Answer:
    """
    A short C{text/plain} answer such as C{429 Too Many Requests: <message>}.

    @param fields: more header fields, after C{Content-Type}.
    """
    body = f"{status} {REASONS.get(status, 'Error')}: {message}\n".encode()
    return Answer(status, ((b"Content-Type", b"text/plain; charset=utf-8"), *fields), body)
