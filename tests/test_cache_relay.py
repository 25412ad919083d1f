"""
The cache on the real relay, in memory (L{tests.helpers.Harness}): what the
cache needs from the exchange beyond the filter seam, chiefly sending a
request again (L{IResendable}) when a C{304} names a response it does not
hold.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.cache import CacheFilter
from balancebeam.cache.interfaces import IResendable
from balancebeam.filters import Answer
from balancebeam.http1.heads import ResponseHead
from balancebeam.interfaces import FilterResult, IExchange, IRequestFilter, IResponseObserver
from balancebeam.relay.client import ClientConnection
from tests.helpers import Harness

from .test_cache_fakes import EPOCH, http_date

GET = b"GET /doc HTTP/1.1\r\nHost: example.com\r\n\r\n"


@implementer(IRequestFilter)
class _LateFilter:
    """
    Passes each request to a filter set after the harness (and its clock) exist.
    """

    name = "late"
    fail_open = False
    target: CacheFilter

    def on_request(self, exchange: IExchange) -> FilterResult:
        """
        Ask the target filter.
        """
        return self.target.on_request(exchange)


class ResendTests(SynchronousTestCase):
    """
    A C{304} that does not select the stored response makes the relay send
    the request again without validators.
    """

    def setUp(self) -> None:
        late = _LateFilter()
        self.harness = Harness(upstream_count=1, filters=[late])
        self.clock = self.harness.reactor
        self.clock.advance(EPOCH)
        self.cache = late.target = CacheFilter(self.clock, 1 << 20, 1 << 20, 5.0)
        self.client, self.transport = self.harness.client()
        self.client.dataReceived(GET)
        self.upstream, self.upstream_transport, _ = self.harness.accept()
        self.respond(b'ETag: "v1"\r\nCache-Control: max-age=10', b"version one")
        self.assertEqual(self.cache.counters.stored, 1)
        self.clock.advance(11)

    def respond(self, fields: bytes, body: bytes, status: bytes = b"200 OK") -> None:
        """
        Write a response dated now on the upstream connection.
        """
        date = b"Date: " + http_date(self.clock.seconds())
        length = b"" if status.startswith(b"304") else b"\r\nContent-Length: %d" % len(body)
        self.upstream.dataReceived(
            b"HTTP/1.1 " + status + b"\r\n" + date + b"\r\n" + fields + length + b"\r\n\r\n"
            + body
        )

    def revalidate(self) -> None:
        """
        Send the client's request again; the upstream must get it conditionally.
        """
        self.transport.clear()
        self.upstream_transport.clear()
        self.client.dataReceived(GET)
        self.assertIn(b'\r\nIf-None-Match: "v1"\r\n', self.upstream_transport.value())

    def test_sent_again_without_validators(self) -> None:
        """
        After a C{304} naming another ETag, the request goes upstream again
        without C{If-None-Match}, the client gets that 200, and it is stored.
        """
        self.revalidate()
        self.upstream_transport.clear()
        self.respond(b'ETag: "v2"', b"", b"304 Not Modified")
        self.assertEqual(self.transport.value(), b"")
        again = self.upstream_transport.value()
        self.assertTrue(again.startswith(b"GET /doc HTTP/1.1\r\n"), again)
        self.assertNotIn(b"If-None-Match", again)
        self.assertEqual(again.count(b"\r\nHost: example.com\r\n"), 1)
        self.respond(b'ETag: "v2"\r\nCache-Control: max-age=60', b"version two")
        response = self.transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nversion two"), response)
        self.assertIn(
            b"\r\nCache-Status: balancebeam; fwd=stale; fwd-status=200; stored; ttl=60\r\n",
            response,
        )
        self.assertNotIn(b"304", response)
        self.transport.clear()
        self.client.dataReceived(GET)
        self.assertTrue(self.transport.value().endswith(b"version two"))
        self.assertIn(b"Cache-Status: balancebeam; hit; ttl=60", self.transport.value())
        self.assertEqual(self.harness.stats.snapshot()["responses"],
                         {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0})

    def test_sent_again_on_a_new_connection(self) -> None:
        """
        When the connection that carried the C{304} cannot be reused, the
        request is sent again on a new connection.
        """
        self.revalidate()
        self.respond(b'ETag: "v2"\r\nConnection: close', b"", b"304 Not Modified")
        protocol, upstream_transport, _ = self.harness.accept()
        self.assertNotIn(b"If-None-Match", upstream_transport.value())
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew")
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\nnew"))

    def test_sent_again_times_out(self) -> None:
        """
        A request sent again that gets no answer ends with the balancer's
        504, as any request would.
        """
        self.revalidate()
        self.upstream_transport.clear()
        self.respond(b'ETag: "v2"', b"", b"304 Not Modified")
        self.assertIn(b"GET /doc", self.upstream_transport.value())
        self.harness.reactor.advance(61)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 504 "))

    def test_conditional_client_gets_the_304(self) -> None:
        """
        A client whose own C{If-None-Match} names the C{304}'s ETag gets that
        C{304}, and the request is not sent again.
        """
        self.transport.clear()
        self.upstream_transport.clear()
        self.client.dataReceived(
            b'GET /doc HTTP/1.1\r\nHost: example.com\r\nIf-None-Match: "v2"\r\n\r\n'
        )
        self.respond(b'ETag: "v2"', b"", b"304 Not Modified")
        response = self.transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 304 "), response)
        self.assertIn(b"detail=validator-mismatch", response)
        self.assertEqual(self.harness.pending_connects(), 0)
        self.assertEqual(self.upstream_transport.value().count(b"GET /doc"), 1)


class _AgainOnce:
    """
    Asks for the request to be sent again on the first response, sees the rest.

    @ivar events: what the observer saw.
    """

    def __init__(self) -> None:
        self.exchange: IExchange | None = None
        self.events: list[object] = []

    def on_request(self, exchange: IExchange) -> FilterResult:
        """
        Watch the response; let the request pass.
        """
        self.exchange = exchange
        exchange.observe(_AgainObserver(self))
        return None


@implementer(IResponseObserver)
class _AgainObserver:
    """
    Records what it sees in its owner's events; on the first head, asks
    twice for the request to be sent again (the second must be refused).
    """

    def __init__(self, owner: _AgainOnce) -> None:
        self.owner = owner

    def response_head(self, response: ResponseHead) -> Answer | None:
        """
        Record the status; the first time, ask for the request again.
        """
        self.owner.events.append(response.status)
        exchange = self.owner.exchange
        if len(self.owner.events) == 1:
            resend = IResendable(exchange)
            self.owner.events.append(resend.send_again([b"x-first"]))
            self.owner.events.append(resend.send_again([b"x-first"]))
        return None

    def response_body(self, data: bytes) -> None:
        """
        Record the piece.
        """
        self.owner.events.append(data)

    def response_complete(self) -> None:
        """
        Record the end.
        """
        self.owner.events.append("complete")

    def continue_without_client(self) -> bool:
        """
        Never.
        """
        return False

    def response_failed(self, reason: str) -> Answer | None:
        """
        Record the failure.
        """
        self.owner.events.append("failed")
        return None


@implementer(IRequestFilter)
class _AgainFilter(_AgainOnce):
    """
    L{_AgainOnce} as a request filter.
    """

    name = "again"
    fail_open = False


class SendAgainTests(SynchronousTestCase):
    """
    L{IResendable.send_again} on the relay's exchange, for any response.
    """

    def start(self) -> tuple[_AgainFilter, ClientConnection, StringTransport, Harness]:
        """
        A relay whose one filter asks for the first response to be dropped.
        """
        watcher = _AgainFilter()
        harness = Harness(upstream_count=1, filters=[watcher])
        client, transport = harness.client()
        client.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\nX-First: 1\r\n\r\n")
        return watcher, client, transport, harness

    def test_dropped_body_then_sent_again(self) -> None:
        """
        The dropped response's body is read and thrown away, then the request
        goes again without the named field, only once, and its response is
        relayed to the client and shown to the observer.
        """
        watcher, _, transport, harness = self.start()
        protocol, upstream, _ = harness.accept()
        self.assertIn(b"X-First: 1", upstream.value())
        upstream.clear()
        protocol.dataReceived(b"HTTP/1.1 500 No\r\nContent-Length: 6\r\n\r\nabc")
        protocol.dataReceived(b"def")
        self.assertNotIn(b"X-First", upstream.value())
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(watcher.events, [500, True, False, 200, b"ok", "complete"])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertNotIn(b"abc", transport.value())

    def test_dropped_response_fails(self) -> None:
        """
        When the dropped response fails mid-body, the request goes again on
        a new connection all the same.
        """
        watcher, _, transport, harness = self.start()
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 500 No\r\nContent-Length: 6\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        again, again_transport, _ = harness.accept()
        self.assertTrue(again_transport.value().startswith(b"GET /x HTTP/1.1\r\n"))
        again.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok"))
        self.assertEqual(watcher.events[-3:], [200, b"ok", "complete"])


class TargetKeyTests(SynchronousTestCase):
    """
    The cache keys a response on the target the upstream received: a
    client cannot store the answer to one target under another.
    """

    def test_dot_segments_and_encodings_do_not_alias(self) -> None:
        late = _LateFilter()
        harness = Harness(upstream_count=1, filters=[late])
        harness.reactor.advance(EPOCH)
        cache = late.target = CacheFilter(harness.reactor, 1 << 20, 1 << 20, 5.0)
        client, transport = harness.client()
        upstream = None
        for target in (b"/attacker/../victim", b"/attacker/%2e%2e/victim", b"/x/./victim",
                       b"/%76ictim", b"/victim"):
            transport.clear()
            client.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
            if upstream is None:
                upstream, upstream_transport, _ = harness.accept()
            self.assertIn(b"GET " + target + b" HTTP/1.1\r\n", upstream_transport.value())
            upstream_transport.clear()
            body = b"answer for " + target
            upstream.dataReceived(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\nDate: "
                + http_date(harness.reactor.seconds())
                + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            self.assertTrue(transport.value().endswith(body), target)
        self.assertEqual(cache.counters.stored, 5)
        transport.clear()
        client.dataReceived(b"GET /victim HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertTrue(transport.value().endswith(b"answer for /victim"))
        self.assertEqual(upstream_transport.value(), b"")

    def test_fragment_in_the_target_refused(self) -> None:
        harness = Harness(upstream_count=1)
        client, transport = harness.client()
        client.dataReceived(b"GET /victim#x HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertEqual(harness.pending_connects(), 0)
