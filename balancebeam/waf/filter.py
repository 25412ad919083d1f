"""
The web application firewall as a request filter: ModSecurity and the Core Rule Set.

L{WafFilter} holds the request body (up to the body limit) through
L{IExchange.read_body <balancebeam.interfaces.IExchange.read_body>}, hands
the request to the engine through an L{IInspectionRunner
<balancebeam.waf.runner.IInspectionRunner>} (never on the reactor thread
inside L{WafFilter.on_request}), and turns the verdict into an answer:

  - C{block} mode: C{403} when the rules block, C{413} for a body over the
    limit, C{500} when the engine fails, C{503} when too many inspections wait;
  - C{detect} mode: every request passes; the same outcomes are only logged.

Each decision where a rule matched, and each request over the body limit,
engine failure or refusal, is one C{twisted.logger} event with the fields
C{action}, C{rule_ids}, C{anomaly_score}, C{client}, C{method}, C{path},
C{request_id} (see C{doc/waf.md}).
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from zope.interface import implementer

from balancebeam.filters import Answer
from balancebeam.http1.heads import BODY_NONE
from balancebeam.interfaces import IExchange, IRequestFilter
from balancebeam.waf.engine import IInspector, InspectedRequest, InspectionError, Verdict
from balancebeam.waf.runner import IInspectionRunner, RunnerBusy

MODES = ("off", "detect", "block")
"""The values of C{--waf}."""

_REASONS = {
    403: "Forbidden",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
"""The reason phrases of the firewall's answers."""

_TARGET_LOGGED = 256
"""The most characters of a request target put in a log event."""


class WafCounters:
    """
    What the firewall has done, for metrics and status pages.

    @ivar inspected: requests the engine inspected to the end.
    @ivar matched: of those, requests on which at least one rule matched.
    @ivar blocked: requests answered 403 (C{block} mode).
    @ivar over_limit_rejected: bodies over the limit answered 413 (C{block} mode).
    @ivar over_limit_bypassed: bodies over the limit passed uninspected (C{detect} mode).
    @ivar engine_errors: inspections the engine failed.
    @ivar overloaded: requests not inspected because too many inspections waited.
    """

    __slots__ = (
        "inspected",
        "matched",
        "blocked",
        "over_limit_rejected",
        "over_limit_bypassed",
        "engine_errors",
        "overloaded",
    )

    def __init__(self) -> None:
        self.inspected = 0
        self.matched = 0
        self.blocked = 0
        self.over_limit_rejected = 0
        self.over_limit_bypassed = 0
        self.engine_errors = 0
        self.overloaded = 0

    def snapshot(self) -> dict[str, int]:
        """
        A copy of every counter.
        """
        return {name: getattr(self, name) for name in self.__slots__}


def inspected_request(exchange: IExchange, body: bytes) -> InspectedRequest:
    """
    What the engine is shown of C{exchange}'s request: its line, every header
    field as received, and C{body}.
    """
    head = exchange.request
    headers = []
    for _, value, raw in head.fields:
        name = raw.partition(b":")[0]
        headers.append((name, value))
    return InspectedRequest(
        request_id=exchange.request_id,
        client_ip=exchange.client_ip,
        method=head.method.decode("latin-1"),
        target=head.target.decode("latin-1"),
        http_version=f"1.{head.minor}",
        headers=headers,
        body=body,
    )


@implementer(IRequestFilter)
class WafFilter:
    """
    Inspects every request with ModSecurity before it goes upstream.

    @ivar counters: the L{WafCounters}.
    """

    name = "waf"
    # on_request handles its own failures; a failure escaping it is a bug,
    # and a firewall that fails closed in block mode is the safe default.
    fail_open = False

    log = Logger()

    def __init__(
        self,
        inspector: IInspector,
        runner: IInspectionRunner,
        mode: str,
        body_limit: int,
        counters: WafCounters | None = None,
    ) -> None:
        """
        @param inspector: the engine with its rules loaded.
        @param runner: where inspections run (see L{balancebeam.waf.runner}).
        @param mode: C{detect} or C{block}.
        @param body_limit: the most request body bytes held and inspected.
        @param counters: where to count; a new L{WafCounters} by default.
        """
        if mode not in ("detect", "block"):
            raise ValueError(f"waf mode {mode!r} is not detect or block")
        self._inspector = inspector
        self._runner = runner
        self._block = mode == "block"
        self._mode = mode
        self._body_limit = body_limit
        self.counters = counters if counters is not None else WafCounters()
        if not self._block:
            self.fail_open = True

    def on_request(self, exchange: IExchange) -> Deferred[Answer | None]:
        """
        Hold the body, inspect, and answer or pass; always a L{Deferred}
        (a L{FilterResult <balancebeam.interfaces.IRequestFilter.on_request>}).
        """
        return Deferred.fromCoroutine(self._decide(exchange))

    async def _decide(self, exchange: IExchange) -> Answer | None:
        head = exchange.request
        body: bytes | None = b""
        if head.body_kind != BODY_NONE:
            body = await exchange.read_body(self._body_limit)
        if body is None:
            return self._over_limit(exchange)
        request = inspected_request(exchange, body)
        try:
            verdict = await self._runner.run(lambda: self._inspector.inspect(request))
        except RunnerBusy as e:
            return self._overloaded(exchange, str(e))
        except InspectionError as e:
            return self._engine_error(exchange, str(e))
        except CancelledError:
            # The exchange gave up (its client left, its deadline passed).
            raise
        except Exception as e:
            self.log.failure(
                "waf inspection of {request_id} failed unexpectedly",
                request_id=exchange.request_id,
            )
            return self._engine_error(exchange, f"{type(e).__name__}: {e}")
        return self._decided(exchange, verdict)

    def _fields(self, exchange: IExchange, action: str) -> dict[str, object]:
        """
        The fields every firewall log event carries.
        """
        head = exchange.request
        target = head.target.decode("latin-1")
        return {
            "action": action,
            "mode": self._mode,
            "client": exchange.client_ip,
            "method": head.method.decode("latin-1"),
            "path": target.partition("?")[0][:_TARGET_LOGGED],
            "target": target[:_TARGET_LOGGED],
            "request_id": exchange.request_id,
        }

    def _decided(self, exchange: IExchange, verdict: Verdict) -> Answer | None:
        """
        Count, log and act on the engine's verdict.
        """
        self.counters.inspected += 1
        if not verdict.matched:
            return None
        self.counters.matched += 1
        if verdict.status is None:
            action = "pass"
        elif self._block:
            action = "block"
        else:
            action = "detect"
        fields = self._fields(exchange, action)
        fields.update(
            rule_ids=list(verdict.rule_ids),
            anomaly_score=verdict.anomaly_score,
            messages=list(verdict.messages),
            engine_status=verdict.status,
        )
        message = (
            "waf {action}: {method} {path} from {client} matched rules {rule_ids} "
            "(anomaly score {anomaly_score}), request {request_id}"
        )
        if action == "pass":
            self.log.info(message, **fields)
            return None
        self.log.warn(message, **fields)
        if action == "detect":
            return None
        self.counters.blocked += 1
        return self._answer(403, exchange, "blocked by the web application firewall")

    def _over_limit(self, exchange: IExchange) -> Answer | None:
        """
        A body over the limit: 413 in block mode, passed uninspected in detect mode.
        """
        if self._block:
            self.counters.over_limit_rejected += 1
            action = "reject_over_limit"
        else:
            self.counters.over_limit_bypassed += 1
            action = "bypass_over_limit"
        self.log.warn(
            "waf {action}: {method} {path} from {client} has a body over "
            "{body_limit} bytes, request {request_id}",
            body_limit=self._body_limit,
            **self._fields(exchange, action),
        )
        if self._block:
            return self._answer(
                413, exchange, f"the request body is over the firewall's {self._body_limit} bytes"
            )
        return None

    def _engine_error(self, exchange: IExchange, reason: str) -> Answer | None:
        """
        The engine failed: 500 in block mode, passed in detect mode.
        """
        self.counters.engine_errors += 1
        action = "error_block" if self._block else "error_pass"
        self.log.error(
            "waf {action}: the engine failed on {method} {path} from {client}: {reason}, "
            "request {request_id}",
            reason=reason,
            **self._fields(exchange, action),
        )
        if self._block:
            return self._answer(500, exchange, "the web application firewall failed")
        return None

    def _overloaded(self, exchange: IExchange, reason: str) -> Answer | None:
        """
        Too many inspections wait: 503 in block mode, passed in detect mode.
        """
        self.counters.overloaded += 1
        action = "overload_block" if self._block else "overload_pass"
        self.log.warn(
            "waf {action}: {method} {path} from {client} not inspected: {reason}, "
            "request {request_id}",
            reason=reason,
            **self._fields(exchange, action),
        )
        if self._block:
            return self._answer(503, exchange, "the web application firewall is overloaded")
        return None

    @staticmethod
    def _answer(status: int, exchange: IExchange, message: str) -> Answer:
        """
        A short text answer naming the request id (also in C{X-Request-Id}),
        like L{balancebeam.filters.text_answer} but with the reason phrase given.
        """
        request_id = exchange.request_id
        reason = _REASONS[status]
        return Answer(
            status,
            (
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"X-Request-Id", request_id.encode("ascii", "replace")),
            ),
            f"{status} {reason}: {message} (request id {request_id})\n".encode(),
            reason.encode("ascii"),
        )
