"""
Running the request filters for an exchange (L{FilterChain}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.filters import text_answer
from balancebeam.interfaces import Answer, IRequestFilter
from balancebeam.stats import Stats

if TYPE_CHECKING:
    from balancebeam.relay.exchange import Exchange


class FilterChain:
    """
    The request filters, in order, and the running of them for an exchange.

    Each filter is asked in turn; the first that answers ends the run. A
    filter that decides later (a L{Deferred}) holds the exchange in its
    C{FILTERING} state until it fires. A filter that raises, or whose
    Deferred fails, is logged and counted (C{stats.filter_errors}), and its
    C{fail_open} policy decides: pass, or answer 500.
    """

    log: ClassVar[Logger] = Logger()  # ClassVar: a class attribute under mypyc too

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
