"""
The request-filter seam: what a filter may answer instead of an upstream.

After a request head is parsed and before it is dispatched, the exchange
(L{balancebeam.relay.exchange.Exchange}) asks each L{IRequestFilter
<balancebeam.interfaces.IRequestFilter>} in order. A filter lets the request
pass (C{None}), answers it itself with an L{Answer} (a 429, a 403, a cached
response), or attaches an L{IResponseObserver
<balancebeam.interfaces.IResponseObserver>} that sees the upstream response as
it is relayed; it may decide later, through a L{Deferred}. See
C{doc/architecture.md}.
"""

from __future__ import annotations

from collections.abc import Sequence

from balancebeam.http1.rewrite import REASONS


class Answer:
    """
    A complete response the balancer sends instead of an upstream's.

    @ivar status: the status code.
    @ivar fields: header fields as C{(name, value)} bytes, in order, without
        C{Content-Length} or C{Connection}, which the relay writes.
    @ivar body: the whole body (not sent for HEAD requests, 1xx, 204 and 304).
    @ivar reason: the reason phrase, or C{None} for the standard one.
    """

    __slots__ = ("status", "fields", "body", "reason")

    def __init__(
        self,
        status: int,
        fields: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        reason: bytes | None = None,
    ) -> None:
        self.status = status
        self.fields = fields
        self.body = body
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Answer {self.status} fields={len(self.fields)} body={len(self.body)} bytes>"


def text_answer(
    status: int, message: str, fields: Sequence[tuple[bytes, bytes]] = ()
) -> Answer:
    """
    A short C{text/plain} answer such as C{429 Too Many Requests: <message>}.

    @param fields: more header fields, after C{Content-Type}.
    """
    body = f"{status} {REASONS.get(status, 'Error')}: {message}\n".encode()
    return Answer(status, ((b"Content-Type", b"text/plain; charset=utf-8"), *fields), body)
