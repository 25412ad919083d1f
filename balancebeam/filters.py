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
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.http1.rewrite import REASONS
from balancebeam.interfaces import IRequestFilter
from balancebeam.stats import Stats

if TYPE_CHECKING:
    from balancebeam.relay.exchange import Exchange


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


class FilterChain:
    """
    The request filters, in order, and the running of them for an exchange.

    Each filter is asked in turn; the first that answers ends the run. A
    filter that decides later (a L{Deferred}) holds the exchange in its
    C{FILTERING} state until it fires. A filter that raises, or whose
    Deferred fails, is logged and counted (C{stats.filter_errors}), and its
    C{fail_open} policy decides: pass, or answer 500.
    """

    log = Logger()

    def __init__(self, filters: Sequence[IRequestFilter], stats: Stats) -> None:
        self.filters = tuple(filters)
        self._stats = stats

    def __len__(self) -> int:
        return len(self.filters)

    def run(self, exchange: Exchange, index: int = 0) -> None:
        """
        Ask the filters from C{index} on; then C{exchange.answer(answer)},
        C{exchange.wait_for_filter(deferred)} or C{exchange.filters_passed()}.
        """
        filters = self.filters
        count = len(filters)
        while index < count:
            request_filter = filters[index]
            try:
                result = request_filter.on_request(exchange)
            except Exception:
                result = self._failed(Failure(), request_filter, exchange)
            if result is None:
                index += 1
                continue
            if type(result) is Answer:
                exchange.answer(result)
                return
            if not isinstance(result, Deferred):
                answer = self._failed(
                    Failure(TypeError(f"on_request returned {result!r}")), request_filter, exchange
                )
                if answer is None:
                    index += 1
                    continue
                exchange.answer(answer)
                return
            exchange.wait_for_filter(result)
            result.addCallbacks(
                self._decided,
                self._errored,
                callbackArgs=(exchange, result, index),
                errbackArgs=(exchange, result, index),
            )
            return
        exchange.filters_passed()

    def _decided(
        self,
        result: object,
        exchange: Exchange,
        deferred: Deferred[Answer | None],
        index: int,
    ) -> None:
        if not exchange.filter_settled(deferred):
            return
        if result is None:
            self.run(exchange, index + 1)
        elif type(result) is Answer:
            exchange.answer(result)
        else:
            failure = Failure(TypeError(f"on_request's Deferred fired with {result!r}"))
            self._settle_failure(failure, exchange, index)
        exchange.flush()

    def _errored(
        self,
        failure: Failure,
        exchange: Exchange,
        deferred: Deferred[Answer | None],
        index: int,
    ) -> None:
        if failure.check(CancelledError) or not exchange.filter_settled(deferred):
            return
        self._settle_failure(failure, exchange, index)
        exchange.flush()

    def _settle_failure(self, failure: Failure, exchange: Exchange, index: int) -> None:
        answer = self._failed(failure, self.filters[index], exchange)
        if answer is None:
            self.run(exchange, index + 1)
        else:
            exchange.answer(answer)

    def _failed(
        self, failure: Failure, request_filter: IRequestFilter, exchange: Exchange
    ) -> Answer | None:
        """
        Log and count a failed filter, and apply its policy.
        """
        self._stats.filter_errors += 1
        self.log.failure(
            "request filter {filter} failed on {method} {path}; {policy}",
            failure,
            filter=request_filter.name,
            method=exchange.method_text,
            path=exchange.path_text,
            policy="letting the request pass" if request_filter.fail_open else "answering 500",
        )
        if request_filter.fail_open:
            return None
        return text_answer(500, "the request could not be checked")
