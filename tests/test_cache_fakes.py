"""
Fakes for the cache's unit tests: an L{IExchange} that records what a filter
does to it, a relay stand-in that feeds an upstream response to the observers,
and an L{IBackgroundFetch} that hands each fetch to the test.

(No tests here; the other C{test_cache_*} modules import these.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from email.utils import formatdate
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from balancebeam.cache.filter import CacheFilter
from balancebeam.cache.interfaces import IBackgroundFetch, IResendable
from balancebeam.filters import Answer
from balancebeam.http1.heads import RequestHead, parse_request_head, parse_response_head
from balancebeam.http1.rewrite import render_response
from balancebeam.interfaces import IExchange, IResponseObserver

if TYPE_CHECKING:
    from balancebeam.interfaces import FilterResult

EPOCH = 1_700_000_000.0
"""Where the tests' clocks start: a realistic time, so that dates are plausible."""


def http_date(when: float) -> bytes:
    """
    C{when} as an IMF-fixdate.
    """
    return formatdate(when, usegmt=True).encode("ascii")


@implementer(IExchange)
class FakeExchange:
    """
    One request as a filter sees it, recording what the filter asks for.

    @ivar added: the header lines passed to L{add_response_headers}.
    @ivar observers: the observers passed to L{observe}.
    @ivar rewrites: the C{(remove, add)} pairs passed to L{rewrite_upstream_request}.
    """

    def __init__(
        self,
        head: bytes,
        started: float,
        scheme: bytes = b"http",
        client_ip: str = "192.0.2.1",
    ) -> None:
        self.request: RequestHead = parse_request_head(head, 100)
        self.client_ip = client_ip
        self.scheme = scheme
        self.started = started
        self.request_id = "test-1"
        self.added: list[bytes] = []
        self.observers: list[IResponseObserver] = []
        self.rewrites: list[tuple[tuple[bytes, ...], tuple[tuple[bytes, bytes], ...]]] = []

    def add_response_headers(self, lines: bytes) -> None:
        """
        Record header lines, which must each end with CRLF.
        """
        assert lines.endswith(b"\r\n"), lines
        self.added.append(lines)

    def observe(self, observer: IResponseObserver) -> None:
        """
        Record an observer, which must provide L{IResponseObserver}.
        """
        assert IResponseObserver.providedBy(observer)
        self.observers.append(observer)

    def rewrite_upstream_request(
        self, remove: Iterable[bytes] = (), add: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """
        Record a rewrite; names to remove must be lower case.
        """
        removed = tuple(remove)
        assert all(name == name.lower() for name in removed)
        self.rewrites.append((removed, tuple(add)))

    def read_body(self, limit: int) -> Deferred[bytes | None]:
        """
        The cache never reads request bodies.
        """
        raise AssertionError("the cache must not read request bodies")

    def cache_status(self) -> bytes:
        """
        The C{Cache-Status} value added to the relayed response (which must have one).
        """
        for lines in self.added:
            for line in lines.split(b"\r\n"):
                if line.lower().startswith(b"cache-status:"):
                    return line.split(b":", 1)[1].strip()
        raise AssertionError(f"no Cache-Status added: {self.added!r}")


@implementer(IResendable)
class ResendableExchange(FakeExchange):
    """
    A L{FakeExchange} that can send its request again, as the relay's can.

    @ivar resends: the C{remove} argument of each L{send_again}.
    @ivar resendable: what L{send_again} answers.
    @ivar pending: whether L{relay} must drop the response it is relaying
        (as the relay does after L{send_again}).
    """

    def __init__(self, head: bytes, started: float, scheme: bytes = b"http") -> None:
        super().__init__(head, started, scheme)
        self.resends: list[tuple[bytes, ...]] = []
        self.resendable = True
        self.pending = False

    def send_again(self, remove: Sequence[bytes]) -> bool:
        """
        Record the request to send again; names must be lower case.
        """
        if not self.resendable:
            return False
        assert all(name == name.lower() for name in remove)
        assert not self.pending, "sent again twice for one response"
        self.resends.append(tuple(remove))
        self.pending = True
        return True


def request_head(
    target: bytes = b"/", method: bytes = b"GET", host: bytes | None = b"example.com",
    fields: Sequence[bytes] = (),
) -> bytes:
    """
    A request head (without the blank line) with C{Host} and C{fields}.
    """
    lines = [method + b" " + target + b" HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + host)
    lines.extend(fields)
    return b"\r\n".join(lines)


def response_head(status: bytes = b"200 OK", fields: Sequence[bytes] = (),
                  length: int | None = None) -> bytes:
    """
    A response head (without the blank line), with C{Content-Length: length}
    when given.
    """
    lines = [b"HTTP/1.1 " + status, *fields]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines)


class Outcome:
    """
    What a relay did with an upstream response, as the observers decided.

    @ivar answer: the L{Answer} an observer sent instead, or C{None}.
    @ivar continued: what C{continue_without_client} answered, when asked.
    @ivar resent: whether an observer had the request sent again instead.
    """

    def __init__(self) -> None:
        self.answer: Answer | None = None
        self.continued: bool | None = None
        self.resent = False


def relay(
    exchange: FakeExchange,
    head: bytes,
    body: Sequence[bytes] = (),
    complete: bool = True,
    failure: str | None = None,
    client_leaves_after: int | None = None,
) -> Outcome:
    """
    Feed an upstream response to the exchange's observers as the relay does.

    @param head: the response head; its framing decides nothing here, the
        pieces are given as C{body}.
    @param complete: call C{response_complete} after the body.
    @param failure: call C{response_failed(failure)} after the body instead.
    @param client_leaves_after: the client goes away after this many body
        pieces: C{continue_without_client} is asked, and the relay stops
        (calling C{response_failed}) when it says no.
    """
    outcome = Outcome()
    response = parse_response_head(head, exchange.request.method)
    for observer in exchange.observers:
        answer = observer.response_head(response)
        if answer is not None:
            outcome.answer = answer
            return outcome
        if isinstance(exchange, ResendableExchange) and exchange.pending:
            # The relay drops this response and sends the request again.
            exchange.pending = False
            outcome.resent = True
            return outcome
    for index, piece in enumerate(body):
        if client_leaves_after is not None and index == client_leaves_after:
            outcome.continued = all(o.continue_without_client() for o in exchange.observers)
            if not outcome.continued:
                for observer in exchange.observers:
                    observer.response_failed("client went away")
                return outcome
        for observer in exchange.observers:
            observer.response_body(piece)
    if failure is not None:
        for observer in exchange.observers:
            observer.response_failed(failure)
    elif complete:
        for observer in exchange.observers:
            observer.response_complete()
    return outcome


def fail_before_head(exchange: FakeExchange, reason: str = "connect failed") -> Answer | None:
    """
    The upstream could not be reached: tell the observers, return an answer if one was given.
    """
    answer = None
    for observer in exchange.observers:
        given = observer.response_failed(reason)
        if given is not None and answer is None:
            answer = given
    return answer


def render(answer: Answer, method: bytes = b"GET") -> bytes:
    """
    The bytes the relay sends for C{answer}.
    """
    return render_response(
        answer.status, answer.reason, answer.fields, answer.body, True, method == b"HEAD"
    )


def field(answer: Answer, name: bytes) -> bytes | None:
    """
    The first value of field C{name} (any case) in C{answer}.
    """
    for field_name, value in answer.fields:
        if field_name.lower() == name.lower():
            return value
    return None


@implementer(IBackgroundFetch)
class FakeBackgroundFetch:
    """
    Records each background fetch; the test plays the upstream's part with
    L{relay_background}.

    @ivar fetches: C{(request, client_ip, scheme, remove, add, observer)} per call.
    """

    def __init__(self) -> None:
        self.fetches: list[
            tuple[RequestHead, str, bytes, tuple[bytes, ...], tuple[tuple[bytes, bytes], ...],
                  IResponseObserver]
        ] = []

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
        Record the fetch; it must be a C{GET}.
        """
        assert request.method == b"GET"
        assert IResponseObserver.providedBy(observer)
        self.fetches.append((request, client_ip, scheme, tuple(remove), tuple(add), observer))


def relay_background(observer: IResponseObserver, head: bytes, body: Sequence[bytes] = ()) -> None:
    """
    Feed a complete response to a background fetch's observer.
    """
    response = parse_response_head(head, b"GET")
    if observer.response_head(response) is not None:
        return
    for piece in body:
        observer.response_body(piece)
    observer.response_complete()


class CacheScenario:
    """
    A cache filter on a fake clock with a fake background fetcher, and
    shortcuts to send it requests and upstream responses.
    """

    def __init__(
        self,
        background: bool = True,
        store_set_cookie: bool = False,
        max_object_size: int = 1000,
        hit_for_miss_ttl: float = 120.0,
        max_bytes: int = 1 << 20,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.background = FakeBackgroundFetch()
        self.cache = CacheFilter(
            self.clock,
            max_bytes,
            max_object_size,
            5.0,
            background=self.background if background else None,
            store_set_cookie=store_set_cookie,
            hit_for_miss_ttl=hit_for_miss_ttl,
        )

    def ask(
        self,
        target: bytes = b"/",
        method: bytes = b"GET",
        fields: Sequence[bytes] = (),
        host: bytes | None = b"example.com",
        scheme: bytes = b"http",
        resendable: bool = False,
    ) -> tuple[FakeExchange, FilterResult]:
        """
        Send a request to the filter: the exchange and what C{on_request} returned.

        @param resendable: make the exchange a L{ResendableExchange}.
        """
        kind = ResendableExchange if resendable else FakeExchange
        exchange = kind(request_head(target, method, host, fields), self.clock.seconds(), scheme)
        return exchange, self.cache.on_request(exchange)

    def answer(
        self, target: bytes = b"/", method: bytes = b"GET", fields: Sequence[bytes] = ()
    ) -> Answer:
        """
        Send a request that must be answered from the cache at once.
        """
        _, result = self.ask(target, method, fields)
        assert isinstance(result, Answer), result
        return result

    def fetch(
        self,
        target: bytes = b"/",
        response_fields: Sequence[bytes] = (b"Cache-Control: max-age=60",),
        body: bytes = b"hello",
        status: bytes = b"200 OK",
        request_fields: Sequence[bytes] = (),
        method: bytes = b"GET",
    ) -> tuple[FakeExchange, Outcome]:
        """
        Send a request that must go upstream, and relay a response to it
        (dated now, with a Content-Length) in two pieces.
        """
        exchange, result = self.ask(target, method, request_fields)
        assert result is None, result
        return exchange, self.respond(exchange, response_fields, body, status)

    def respond(
        self,
        exchange: FakeExchange,
        response_fields: Sequence[bytes] = (b"Cache-Control: max-age=60",),
        body: bytes = b"hello",
        status: bytes = b"200 OK",
        complete: bool = True,
        failure: str | None = None,
        client_leaves_after: int | None = None,
    ) -> Outcome:
        """
        Relay a response dated now, with a Content-Length, to C{exchange}'s
        observers, in two pieces (see L{relay} for the other parameters).
        """
        fields = list(response_fields)
        if not any(line.lower().startswith(b"date:") for line in fields):
            fields.insert(0, b"Date: " + http_date(self.clock.seconds()))
        head = response_head(status, fields, len(body))
        half = len(body) // 2
        return relay(
            exchange, head, [body[:half], body[half:]], complete, failure, client_leaves_after
        )
