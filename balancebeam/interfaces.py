"""
The seams between the relay and its policies.

The relay (L{balancebeam.relay}) only talks to these interfaces, so each
policy can be replaced, and tested, on its own. The request-filter seam
(L{IRequestFilter}, L{IResponseObserver}, L{IExchange}) is the extension
point for features that act on a request's life: the rate limiter, the
firewall and the response cache are filters; see C{doc/architecture.md}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Union

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from balancebeam.http1.heads import RequestHead, ResponseHead
    from balancebeam.registry import UpstreamState


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


FilterResult = Union[Answer, None, Deferred[Union[Answer, None]]]
"""What L{IRequestFilter.on_request} returns."""


class RateLimitDecision(NamedTuple):
    """
    The answer of a rate limiter for one request.

    @ivar allowed: whether the request may go on to an upstream.
    @ivar limit: requests allowed per window.
    @ivar remaining: requests left in the current window after this one (0 if denied).
    @ivar reset_after: seconds until the current window ends.
    @ivar retry_after: seconds until a request from this key would be allowed
        (0 when allowed).

    A named tuple rather than a frozen dataclass: one is made per request,
    and a tuple is several times cheaper to build.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


class IBalancingStrategy(Interface):
    """
    Chooses the upstream for one request.
    """

    def choose(candidates: Sequence[UpstreamState]) -> UpstreamState:
        """
        Pick one of C{candidates}, which is never empty and holds only live
        upstreams.
        """


class IRateLimiter(Interface):
    """
    Decides whether a client may make another request now.

    Building a limiter does no I/O and schedules nothing; L{start} does,
    from C{startService} (after twistd has daemonized and dropped
    privileges), and L{close} undoes it.
    """

    def start() -> None:
        """
        Open connections and start timers, if the limiter has any. Called
        once; L{check} may be called before it.
        """

    def check(key: str) -> RateLimitDecision | Deferred[RateLimitDecision]:
        """
        Count one request for C{key} and say whether it is allowed.

        In-memory limiters answer at once; remote ones return a L{Deferred}
        that always fires (never errbacks, unless cancelled) within their own
        timeout, applying their failure policy.
        """

    def close() -> Deferred[None] | None:
        """
        Release timers and connections; the result fires when they are gone.
        """


class IExchange(Interface):
    """
    One request, as request filters and response observers see it.

    An exchange lives from the moment a request head is parsed until its
    response is complete (or the connection is gone).
    """

    request: RequestHead = Attribute("The parsed request head (read only).")
    client_ip: str = Attribute(
        "The TCP peer's address in normal form (IPv4-mapped IPv6 as IPv4)."
    )
    scheme: bytes = Attribute("How the request arrived: C{b'http'} or C{b'https'}.")
    started: float = Attribute("Clock time at which the request head was parsed.")
    request_id: str = Attribute(
        "An identifier unique within this process, for logs and error pages."
    )

    def add_response_headers(lines: bytes) -> None:
        """
        Add header lines (each ending with CRLF) to whatever response this
        exchange sends: the upstream's, or an answer of a later filter.
        """

    def observe(observer: IResponseObserver) -> None:
        """
        Let C{observer} see the upstream response as it is relayed.
        Observers are called in the order they were added.
        """

    def rewrite_upstream_request(
        remove: Iterable[bytes] = (), add: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """
        Change the head sent upstream: drop the fields named in C{remove}
        (lower-case names) and append the C{(name, value)} fields of C{add}.
        """

    def read_body(limit: int) -> Deferred[bytes | None]:
        """
        Hold the request body until it is complete and hand it over.

        Only valid while a filter is deciding. The body is still relayed
        upstream afterwards, byte for byte, if the request goes on.

        @param limit: the most bytes held.
        @return: fires with the whole body once received when it is at most
            C{limit} bytes (C{b""} for none), or with C{None} as soon as it
            is known to be larger; the body is then relayed unread.
        """


class IResponseObserver(Interface):
    """
    Sees one upstream response as it is relayed, without holding it up.

    Attached to an exchange by a request filter (L{IExchange.observe}).
    Exactly one of L{response_complete} and L{response_failed} is called,
    at most once, unless L{response_head} answered instead.
    """

    def response_head(response: ResponseHead) -> Answer | None:
        """
        The upstream's final response head arrived (1xx are not shown).

        @return: C{None} to relay the response, or an L{Answer} to send
            instead; the upstream's body is then read and dropped, and no
            further method of this observer is called.
        """

    def response_body(data: bytes) -> None:
        """
        A piece of the response body, de-chunked, as it is relayed.
        """

    def response_complete() -> None:
        """
        The response body is complete and was relayed whole.
        """

    def continue_without_client() -> bool:
        """
        The client went away while the response was being relayed: whether
        to keep reading it from the upstream to the end anyway (a cache
        filling an entry that other requests wait for says C{True}). The
        observer then still gets every piece and exactly one of
        L{response_complete} and L{response_failed}.
        """

    def response_failed(reason: str) -> Answer | None:
        """
        No complete response will come: the upstream failed or timed out,
        no upstream could be reached, or the client went away.

        @return: an L{Answer} to send instead of the balancer's error
            response, when nothing of a response was sent yet; else C{None}.
            The return value is ignored once a response head was sent.
        """


class IRequestFilter(Interface):
    """
    Asked about every request after its head is parsed and before it is
    dispatched to an upstream, in configuration order.
    """

    name: str = Attribute("A short name for logs and counters, such as C{'ratelimit'}.")
    fail_open: bool = Attribute(
        "When L{on_request} raises or its Deferred fails: C{True} lets the "
        "request pass, C{False} answers it with 500. The failure is logged."
    )

    def on_request(exchange: IExchange) -> FilterResult:
        """
        Decide about one request.

        @return: C{None} to let it pass to the next filter (and then to an
            upstream), an L{Answer} to answer it without going upstream, or
            a L{Deferred} firing with either. A filter that wants to see
            the response calls L{IExchange.observe} before it returns.
        """
