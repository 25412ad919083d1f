"""
Deterministic tests of the relay: client protocol, upstream protocol and pool
together on a memory reactor.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.config import Limits, Timeouts
from balancebeam.interfaces import IRateLimiter, RateLimitDecision
from balancebeam.relay.client import ClientConnection
from balancebeam.relay.factory import RelayFactory
from tests.helpers import Harness, response


def connection_done() -> Failure:
    """
    The failure a cleanly closed connection reports.
    """
    return Failure(ConnectionDone())


GET = b"GET /first_url HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
# The Date the balancer adds to a response that has none, at the harness clock's start.
EPOCH_DATE = b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


def _upstream_request(transport: StringTransport) -> bytes:
    data = transport.value()
    transport.clear()
    return bytes(data)


class RelayTests(SynchronousTestCase):
    """
    A request goes to an upstream and its response comes back.
    """

    def test_get_relayed_with_forwarding_headers(self) -> None:
        """
        A GET reaches the upstream in origin form over HTTP/1.1 with the
        client's headers and X-Forwarded-For/-Proto and Via added.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        _, upstream, port = harness.accept()
        self.assertEqual(port, 8081)
        self.assertEqual(
            upstream.value(),
            b"GET /first_url HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n\r\n",
        )

    def test_response_relayed_and_connection_reused(self) -> None:
        """
        The response reaches the client, and a second request on the same
        client connection reuses the idle upstream connection.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        upstream.clear()
        protocol.dataReceived(response(b"hello"))
        self.assertEqual(
            client_transport.value(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 balancebeam\r\n" + EPOCH_DATE
            + b"Content-Length: 5\r\n\r\nhello",
        )
        client_transport.clear()
        client.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 0)
        self.assertTrue(upstream.value().startswith(b"GET /first_url HTTP/1.1\r\n"))
        protocol.dataReceived(response(b"again"))
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nagain"))
        self.assertFalse(client_transport.disconnecting)
        self.assertEqual(harness.pool.opened, 1)
        self.assertEqual(harness.registry.upstreams[0].in_flight, 0)

    def test_content_length_body_streamed(self) -> None:
        """
        A request body arriving in pieces is relayed as it comes, byte-exact.
        """
        harness = Harness()
        client, _ = harness.client()
        client.dataReceived(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
        _, upstream, _ = harness.accept()
        self.assertTrue(upstream.value().endswith(b"Content-Length: 10\r\n\r\nhello"))
        upstream.clear()
        client.dataReceived(b"world")
        self.assertEqual(upstream.value(), b"world")

    def test_empty_body_of_post_put_patch_has_content_length(self) -> None:
        """
        An empty POST, PUT or PATCH body (Content-Length: 0, or no framing
        at all) goes upstream with C{Content-Length: 0} (RFC 9110 section
        8.6); a GET without a body gets no framing header.
        """
        for request, framing in (
            (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", True),
            (b"PUT /p HTTP/1.1\r\nHost: h\r\n\r\n", True),
            (b"PATCH /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", True),
            (b"GET /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", False),
        ):
            harness = Harness()
            client, _ = harness.client()
            client.dataReceived(request)
            _, upstream, _ = harness.accept()
            sent = upstream.value()
            self.assertTrue(sent.endswith(b"\r\n\r\n"), sent)
            self.assertEqual(sent.count(b"Content-Length: 0\r\n"), 1 if framing else 0, sent)
            self.assertNotIn(b"Transfer-Encoding", sent)

    def test_chunked_request_reframed(self) -> None:
        """
        A chunked request body is de-chunked and re-chunked for the upstream,
        its trailer fields forwarded.
        """
        harness = Harness()
        client, _ = harness.client()
        client.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n"
        )
        _, upstream, _ = harness.accept()
        client.dataReceived(b"0\r\nX-Trailer: t\r\n\r\n")
        head, _, body = upstream.value().partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(body, b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")

    def test_chunked_response_to_http10_client(self) -> None:
        """
        A chunked response is de-chunked for an HTTP/1.0 client and the
        connection closed to mark the end.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        protocol, upstream, _ = harness.accept()
        self.assertIn(b"Host: 127.0.0.1:8081\r\n", upstream.value())
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        self.assertEqual(
            client_transport.value(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 balancebeam\r\n" + EPOCH_DATE
            + b"Connection: close\r\n\r\nabcde",
        )
        self.assertTrue(client_transport.disconnecting)

    def test_until_close_response_chunked_for_http11(self) -> None:
        """
        A response delimited by the upstream closing is chunked for an HTTP/1.1
        client, which keeps its connection.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nsome bytes")
        protocol.connectionLost(connection_done())
        self.assertEqual(
            client_transport.value(),
            b"HTTP/1.1 200 OK\r\nVia: 1.0 balancebeam\r\n" + EPOCH_DATE
            + b"Transfer-Encoding: chunked\r\n\r\n"
            b"a\r\nsome bytes\r\n0\r\n\r\n",
        )
        self.assertFalse(client_transport.disconnecting)

    def test_head_response_has_no_body(self) -> None:
        """
        A HEAD response keeps its Content-Length but carries no body, and the
        next request is served normally.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        self.assertEqual(
            client_transport.value(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 balancebeam\r\n" + EPOCH_DATE
            + b"Content-Length: 1234\r\n\r\n",
        )
        client_transport.clear()
        client.dataReceived(GET)
        protocol.dataReceived(response(b"x"))
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nx"))

    def test_pipelined_requests_answered_in_order(self) -> None:
        """
        Two requests in one packet are sent upstream one after the other and
        answered in order.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET.replace(b"first", b"one") + GET.replace(b"first", b"two"))
        protocol, upstream, _ = harness.accept()
        self.assertIn(b"/one_url", upstream.value())
        self.assertNotIn(b"/two_url", upstream.value())
        upstream.clear()
        protocol.dataReceived(response(b"1"))
        self.assertIn(b"/two_url", upstream.value())
        protocol.dataReceived(response(b"2"))
        self.assertEqual(client_transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\n2"))

    def test_pipelined_backlog_pauses_reading(self) -> None:
        """
        Pipelined bytes beyond the head limit pause reading from the client
        until the current response is done.
        """
        harness = Harness(limits=Limits(max_head_size=1024))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        client.dataReceived(GET * 20)
        self.assertEqual(client_transport.producerState, "paused")
        for _ in range(21):
            protocol.dataReceived(response(b"1"))
        self.assertEqual(client_transport.producerState, "producing")
        self.assertEqual(client_transport.value().count(b"HTTP/1.1 200 OK"), 21)

    def test_expect_continue(self) -> None:
        """
        With Expect: 100-continue the balancer answers 100 Continue once the
        upstream connection is ready, and does not forward the expectation.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(
            b"PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        )
        self.assertEqual(client_transport.value(), b"")
        _, upstream, _ = harness.accept()
        self.assertEqual(client_transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertNotIn(b"Expect", upstream.value())
        client.dataReceived(b"abc")
        self.assertTrue(upstream.value().endswith(b"\r\n\r\nabc"))


class DateTests(SynchronousTestCase):
    """
    RFC 9110 section 6.6.1: the balancer adds a C{Date} to upstream
    responses without one, and to the responses it writes itself.
    """

    def _relay(self, harness: Harness, upstream_response: bytes) -> bytes:
        client, client_transport = harness.client()
        client.dataReceived(GET)
        upstream, _, _ = harness.accept()
        upstream.dataReceived(upstream_response)
        return client_transport.value()

    def test_added_when_missing_from_the_clock(self) -> None:
        """
        A response without C{Date} gets one, from the injected clock.
        """
        harness = Harness()
        harness.reactor.advance(1_764_566_400)
        value = self._relay(harness, response(b"ok"))
        self.assertEqual(value.count(b"\r\nDate: "), 1)
        self.assertIn(b"\r\nDate: Mon, 01 Dec 2025 05:20:00 GMT\r\n", value)

    def test_upstream_date_kept(self) -> None:
        """
        An upstream's own C{Date}, in any letter case, is forwarded alone.
        """
        for field in (b"Date: Mon, 30 Nov 2026 10:00:00 GMT\r\n",
                      b"date: Mon, 30 Nov 2026 10:00:00 GMT\r\n"):
            value = self._relay(Harness(), response(b"ok", extra=field))
            self.assertEqual(value.lower().count(b"\r\ndate: "), 1)
            self.assertIn(b"\r\n" + field, value)

    def test_not_added_to_interim_responses(self) -> None:
        """
        A forwarded 103 is left as it came; the final response gets the Date.
        """
        value = self._relay(
            Harness(), b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + response(b"ok")
        )
        interim, final = value.split(b"\r\n\r\n", 1)
        self.assertNotIn(b"Date:", interim)
        self.assertIn(EPOCH_DATE, final)

    def test_balancer_answers_dated(self) -> None:
        """
        The balancer's own answers carry a Date: a 502, a 400, a filter's
        answer and a 503 over the connection limit.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        harness.refuse()
        harness.refuse()
        self.assertIn(EPOCH_DATE, client_transport.value())
        client, client_transport = harness.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertIn(EPOCH_DATE, client_transport.value())
        harness.factory.max_connections = 1
        protocol = harness.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertIn(EPOCH_DATE, transport.value())


class FailoverTests(SynchronousTestCase):
    """
    Passive health checks and the answers when upstreams fail.
    """

    def test_connect_failure_fails_over(self) -> None:
        """
        A refused connect marks the upstream down and the request goes to the
        next upstream.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        self.assertEqual(harness.refuse(), 8081)
        self.assertFalse(harness.registry.upstreams[0].alive)
        protocol, _, port = harness.accept()
        self.assertEqual(port, 8082)
        protocol.dataReceived(response(b"ok"))
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(harness.stats.connect_failures, 1)

    def test_every_connect_fails_502(self) -> None:
        """
        When every upstream refuses, the client gets 502 and keeps its
        connection.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        harness.refuse()
        harness.refuse()
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertFalse(client_transport.disconnecting)

    def test_all_down_503_with_retry_after(self) -> None:
        """
        When no upstream is alive the client gets 503 with Retry-After at once.
        """
        harness = Harness()
        for upstream in harness.registry.upstreams:
            harness.registry.mark_down(upstream, "test")
        client, client_transport = harness.client()
        client.dataReceived(GET)
        value = client_transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"\r\nRetry-After: 5\r\n", value)
        self.assertEqual(harness.pending_connects(), 0)

    def test_idempotent_request_retried_after_close(self) -> None:
        """
        A GET whose upstream closes before answering is retried on the other
        upstream, which is not marked down.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        first, _, _ = harness.accept()
        first.connectionLost(connection_done())
        second, upstream, port = harness.accept()
        self.assertEqual(port, 8082)
        second.dataReceived(response(b"ok"))
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(harness.registry.upstreams[0].alive)

    def test_post_not_retried(self) -> None:
        """
        A POST whose upstream closes before answering gets 502, never a replay.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
        first, _, _ = harness.accept()
        first.connectionLost(connection_done())
        self.assertEqual(harness.pending_connects(), 0)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502 Bad Gateway"))

    def test_garbage_from_upstream_502(self) -> None:
        """
        A malformed response head from the upstream becomes a 502 (retried
        once elsewhere only when nothing was received: here bytes were).
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        first, upstream, _ = harness.accept()
        first.dataReceived(b"NONSENSE\r\n\r\n")
        self.assertTrue(upstream.disconnecting)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502 Bad Gateway"))

    def test_status_code_out_of_range_502(self) -> None:
        """
        A status code of three digits outside 100-599 (RFC 9110 section
        15) is a malformed head: 502, counted as such, and the relay serves on.
        """
        for line in (b"HTTP/1.1 600 Weird", b"HTTP/1.1 999 Odd"):
            harness = Harness()
            client, client_transport = harness.client()
            client.dataReceived(GET)
            first, upstream, _ = harness.accept()
            first.dataReceived(line + b"\r\nContent-Length: 3\r\n\r\nabc")
            self.assertTrue(upstream.disconnecting)
            self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502 Bad Gateway"))
            self.assertEqual(harness.stats.by_class[5], 1)

    def test_bare_lf_response_head_502_at_once(self) -> None:
        """
        A response head with bare LF line endings (which never ends with
        CRLF CRLF) is a 502 as soon as it arrives, not at the upstream timeout.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        first, upstream, _ = harness.accept()
        first.dataReceived(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
        self.assertTrue(upstream.disconnecting)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502 Bad Gateway"))

    def test_head_split_across_reads_is_not_a_bare_lf(self) -> None:
        """
        A CRLF split between two reads is not taken for a bare LF.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        first, _, _ = harness.accept()
        first.dataReceived(b"HTTP/1.1 200 OK\r")
        first.dataReceived(b"\nContent-Length: 2\r\n\r")
        first.dataReceived(b"\nok")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nok"))

    def test_head_byte_by_byte(self) -> None:
        """
        A head arriving a byte at a time (an interim one, then the final
        one) is relayed once whole; a bare LF in a late piece is still a 502.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        first, _, _ = harness.accept()
        for byte in b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + response(b"ok"):
            first.dataReceived(bytes([byte]))
        value = client_transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 103 Early Hints\r\n"), value)
        self.assertTrue(value.endswith(b"\r\n\r\nok"), value)
        client_transport.clear()
        client.dataReceived(GET)
        for byte in b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\n":
            first.dataReceived(bytes([byte]))
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502 Bad Gateway"))

    def test_interim_responses_bounded(self) -> None:
        """
        Interim responses are relayed and counted, up to 32 for one request;
        the 33rd makes it a 502 (an upstream flooding 103s is cut).
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        first, upstream, _ = harness.accept()
        hint = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        first.dataReceived(hint * 32)
        self.assertEqual(client_transport.value().count(b"HTTP/1.1 103 Early Hints"), 32)
        self.assertEqual(harness.stats.by_class[1], 32)
        self.assertFalse(upstream.disconnecting)
        first.dataReceived(hint)
        self.assertTrue(upstream.disconnecting)
        self.assertIn(b"HTTP/1.1 502 Bad Gateway", client_transport.value())
        self.assertEqual(client_transport.value().count(b"HTTP/1.1 103 Early Hints"), 32)

    def test_upstream_dies_mid_body_aborts_client(self) -> None:
        """
        An upstream that closes mid-body makes the client connection abort, so
        the client never takes a truncated body for a whole one.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        protocol.connectionLost(connection_done())
        self.assertTrue(client_transport.disconnecting)
        self.assertEqual(harness.registry.upstreams[0].in_flight, 0)

    def test_passive_retry_revives(self) -> None:
        """
        With a passive retry interval, an upstream marked down by a failed
        connect is back in rotation once the interval has passed.
        """
        harness = Harness(passive_retry_interval=10)
        client, _ = harness.client()
        client.dataReceived(GET)
        harness.refuse()
        self.assertEqual(len(harness.dispatcher.live()), 1)
        harness.reactor.advance(9.9)
        self.assertEqual(len(harness.dispatcher.live()), 1)
        harness.reactor.advance(0.2)
        self.assertEqual(len(harness.dispatcher.live()), 2)


class LimitTests(SynchronousTestCase):
    """
    Bad requests and limits get clear answers.
    """

    def test_malformed_request_400(self) -> None:
        """
        A malformed request line gets 400 and the connection closes.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(b"GARBAGE\r\n\r\n")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertTrue(client_transport.disconnecting)

    def test_smuggling_400(self) -> None:
        """
        Content-Length together with Transfer-Encoding gets 400 and close,
        and nothing reaches an upstream.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(harness.pending_connects(), 0)

    def test_head_too_large_431(self) -> None:
        """
        A request head over the limit gets 431 before it is complete.
        """
        harness = Harness(limits=Limits(max_head_size=1024))
        client, client_transport = harness.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(client_transport.disconnecting)

    def test_request_line_too_long_414(self) -> None:
        """
        A request line longer than the head limit gets 414 URI Too Long (a
        long header gets 431, above).
        """
        harness = Harness(limits=Limits(max_head_size=1024))
        client, client_transport = harness.client()
        client.dataReceived(b"GET /" + b"a" * 2000)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 414 URI Too Long\r\n"))
        self.assertTrue(client_transport.disconnecting)

    def test_body_too_large_413(self) -> None:
        """
        A declared body over --max-body-size gets 413 without contacting an
        upstream.
        """
        harness = Harness(limits=Limits(max_body_size=10))
        client, client_transport = harness.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(harness.pending_connects(), 0)

    def test_chunked_body_too_large_413(self) -> None:
        """
        A chunked body growing past --max-body-size gets 413 and close.
        """
        harness = Harness(limits=Limits(max_body_size=10))
        client, client_transport = harness.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        harness.accept()
        client.dataReceived(b"b\r\nhello world\r\n")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(client_transport.disconnecting)


class TimeoutTests(SynchronousTestCase):
    """
    Deadlines on the clock.
    """

    def test_header_deadline_from_first_byte(self) -> None:
        """
        A client trickling its head is cut off with 408 when the whole-head
        deadline passes, however steadily it sends.
        """
        harness = Harness(timeouts=Timeouts(client_header=5))
        client, client_transport = harness.client()
        for byte in b"GET / HTTP/1.1\r\nHost:":
            client.dataReceived(bytes([byte]))
            harness.reactor.advance(0.5)
            if harness.reactor.seconds() < 4.9:
                self.assertEqual(client_transport.value(), b"")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(client_transport.disconnecting)

    def test_idle_keepalive_closed(self) -> None:
        """
        An idle keep-alive connection is closed after the idle timeout,
        without a response.
        """
        harness = Harness(timeouts=Timeouts(client_idle=3))
        client, client_transport = harness.client()
        harness.reactor.advance(2.5)
        self.assertFalse(client_transport.disconnecting)
        harness.reactor.advance(1)
        self.assertTrue(client_transport.disconnecting)
        self.assertEqual(client_transport.value(), b"")

    def test_upstream_timeout_504(self) -> None:
        """
        An upstream that does not answer in time gives 504 and its connection
        is closed.
        """
        harness = Harness(timeouts=Timeouts(upstream=2))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        _, upstream, _ = harness.accept()
        harness.reactor.advance(1.5)
        self.assertEqual(client_transport.value(), b"")
        harness.reactor.advance(1)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertTrue(upstream.disconnecting)
        self.assertFalse(client_transport.disconnecting)


class FlowControlTests(SynchronousTestCase):
    """
    Backpressure in both directions, and cleanup.
    """

    def test_slow_client_pauses_upstream(self) -> None:
        """
        When the client's send buffer fills, the upstream is no longer read.
        """
        harness = Harness()
        client, _ = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        client.pauseProducing()
        self.assertEqual(upstream.producerState, "paused")
        client.resumeProducing()
        self.assertEqual(upstream.producerState, "producing")

    def test_slow_upstream_pauses_client(self) -> None:
        """
        When the upstream's send buffer fills, the client is no longer read.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
        protocol, _, _ = harness.accept()
        protocol._wrappedProtocol.pauseProducing()  # type: ignore[attr-defined]  # the endpoint wraps our UpstreamConnection
        self.assertEqual(client_transport.producerState, "paused")
        protocol._wrappedProtocol.resumeProducing()  # type: ignore[attr-defined]  # the endpoint wraps our UpstreamConnection
        self.assertEqual(client_transport.producerState, "producing")

    def test_client_disconnect_frees_upstream(self) -> None:
        """
        A client leaving mid-response closes the upstream connection and
        releases its in-flight count.
        """
        harness = Harness()
        client, _ = harness.client()
        client.dataReceived(GET)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.connectionLost(connection_done())
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(harness.registry.upstreams[0].in_flight, 0)
        self.assertEqual(harness.pool.idle_count(harness.registry.upstreams[0]), 0)

    def test_upgrade_becomes_tunnel(self) -> None:
        """
        A 101 answer to an Upgrade request turns the pair into a byte tunnel.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        protocol, upstream, _ = harness.accept()
        self.assertIn(b"Connection: upgrade\r\nUpgrade: websocket\r\n", upstream.value())
        upstream.clear()
        protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nserver-bytes"
        )
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 101 Switching Protocols"))
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nserver-bytes"))
        client.dataReceived(b"client-bytes")
        self.assertEqual(upstream.value(), b"client-bytes")


@implementer(IRateLimiter)
class _FixedLimiter:
    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.keys: list[str] = []
        self.pending: Deferred[RateLimitDecision] | None = None

    def check(self, key: str) -> RateLimitDecision | Deferred[RateLimitDecision]:
        self.keys.append(key)
        if self.pending is not None:
            return self.pending
        allowed = len(self.keys) <= self.allowed
        return RateLimitDecision(allowed, self.allowed, 0, 30.0, 0 if allowed else 12.5)

    def start(self) -> None:
        """
        Nothing to start.
        """

    def close(self) -> None:
        return None


class _FillingTransport(StringTransport):
    """
    A transport whose send buffer is full above C{limit} bytes: it pauses
    its producer then, as Twisted's TCP transport does, until L{drain}.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.limit = limit
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.io.getvalue()) > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> None:
        """
        The client read everything sent so far.
        """
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class RateLimitTests(SynchronousTestCase):
    """
    The relay honours the rate limiter's decisions.
    """

    def test_denied_request_429_keep_alive(self) -> None:
        """
        A denied request gets 429 with Retry-After rounded up, never reaches an
        upstream, and the connection stays usable.
        """
        limiter = _FixedLimiter(allowed=0)
        harness = Harness(rate_limiter=limiter)
        client, client_transport = harness.client()
        client.dataReceived(GET)
        value = client_transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"))
        self.assertIn(b"\r\nRetry-After: 13\r\n", value)
        self.assertFalse(client_transport.disconnecting)
        self.assertEqual(harness.pending_connects(), 0)
        self.assertEqual(limiter.keys, ["127.0.0.1"])

    def test_pipelined_answers_bounded_by_an_unread_client(self) -> None:
        """
        A client pipelining requests that the balancer answers itself (429s)
        and reading none of the answers is answered only until its send
        buffer is full: then it is no longer read, until it reads again;
        at the idle deadline it is dropped (a graceful close would wait for
        ever).
        """
        harness = Harness(rate_limiter=_FixedLimiter(allowed=0))
        protocol = harness.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(protocol, ClientConnection)
        transport = _FillingTransport(limit=2000)
        protocol.makeConnection(transport)
        protocol.dataReceived(GET * 200)
        answered = transport.value().count(b"HTTP/1.1 429 ")
        self.assertLess(answered, 20)
        self.assertEqual(transport.producerState, "paused")
        transport.drain()
        self.assertGreater(transport.value().count(b"HTTP/1.1 429 "), 0)
        self.assertEqual(transport.producerState, "paused")
        harness.reactor.advance(61)
        self.assertTrue(transport.aborted)

    def test_denied_post_body_skipped(self) -> None:
        """
        The body of a denied request is read and dropped, and the next request
        on the connection is parsed correctly.
        """
        limiter = _FixedLimiter(allowed=0)
        harness = Harness(rate_limiter=limiter)
        client, client_transport = harness.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde" + GET)
        self.assertEqual(client_transport.value().count(b"HTTP/1.1 429"), 2)

    def test_asynchronous_decision(self) -> None:
        """
        A limiter answering later holds the request until it answers.
        """
        limiter = _FixedLimiter(allowed=5)
        limiter.pending = Deferred()
        harness = Harness(rate_limiter=limiter)
        client, _ = harness.client()
        client.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 0)
        limiter.pending.callback(RateLimitDecision(True, 5, 4, 60.0, 0))
        self.assertEqual(harness.pending_connects(), 1)

    def test_rate_limit_headers(self) -> None:
        """
        With rate-limit headers on, allowed responses carry RateLimit-*.
        """
        limiter = _FixedLimiter(allowed=5)
        harness = Harness(rate_limiter=limiter, rate_limit_headers=True)
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(response(b"x"))
        self.assertIn(
            b"RateLimit-Limit: 5\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 30\r\n\r\nx",
            client_transport.value(),
        )


class CancelledConnectTests(SynchronousTestCase):
    """
    Abandoning a pending connect is not a connect failure.
    """

    def test_bad_body_while_connecting(self) -> None:
        """
        A malformed chunked body while the connect is pending gets exactly one
        400, and the upstream stays in rotation.
        """
        harness = Harness(upstream_count=1)
        client, client_transport = harness.client()
        client.dataReceived(
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
        )
        value = client_transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertEqual(value.count(b"HTTP/1.1"), 1)
        self.assertTrue(harness.registry.upstreams[0].alive)

    def test_upstream_deadline_while_connecting(self) -> None:
        """
        When the upstream deadline passes during a slow connect, the client
        gets one 504 and the upstream is not marked down.
        """
        harness = Harness(upstream_count=1, timeouts=Timeouts(upstream=1, connect=5))
        client, client_transport = harness.client()
        client.dataReceived(GET)
        harness.reactor.advance(1.5)
        value = client_transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertEqual(value.count(b"HTTP/1.1"), 1)
        self.assertTrue(harness.registry.upstreams[0].alive)


class HalfCloseTests(SynchronousTestCase):
    """
    Clients that shut down their sending side after a request.
    """

    def test_request_answered_then_closed(self) -> None:
        """
        A complete request followed by a half-close is answered, then the
        connection is closed.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        client.readConnectionLost()
        protocol, _, _ = harness.accept()
        protocol.dataReceived(response(b"ok"))
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nok"))
        self.assertTrue(client_transport.disconnecting)

    def test_incomplete_head_closed(self) -> None:
        """
        A half-close in the middle of a head closes the connection at once.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHo")
        client.readConnectionLost()
        self.assertTrue(client_transport.disconnecting)
        self.assertEqual(harness.pending_connects(), 0)


class DrainTests(SynchronousTestCase):
    """
    Stopping the balancer lets requests in progress finish.
    """

    def test_idle_closed_busy_finished(self) -> None:
        """
        Draining closes idle connections at once, lets a busy one finish its
        response with Connection: close, and then fires.
        """
        harness = Harness()
        idle, idle_transport = harness.client(40001)
        busy, busy_transport = harness.client(40002)
        busy.dataReceived(GET)
        protocol, _, _ = harness.accept()
        drained = harness.factory.drain(10)
        self.assertTrue(idle_transport.disconnecting)
        idle.connectionLost(connection_done())
        self.assertNoResult(drained)
        protocol.dataReceived(response(b"done"))
        self.assertIn(b"\r\nConnection: close\r\n", busy_transport.value())
        self.assertTrue(busy_transport.disconnecting)
        busy.connectionLost(connection_done())
        self.successResultOf(drained)

    def test_grace_period_aborts(self) -> None:
        """
        A request still running when the grace period ends is aborted.
        """
        harness = Harness()
        busy, busy_transport = harness.client()
        busy.dataReceived(GET)
        harness.accept()
        drained = harness.factory.drain(5)
        harness.reactor.advance(4.9)
        self.assertFalse(busy_transport.disconnecting)
        harness.reactor.advance(0.2)
        self.assertTrue(busy_transport.disconnecting)
        busy.connectionLost(connection_done())
        self.successResultOf(drained)


class ConnectionLimitTests(SynchronousTestCase):
    """
    The cap on simultaneous client connections.
    """

    def test_over_limit_gets_503(self) -> None:
        """
        A connection beyond the limit is answered 503 and closed, and counted.
        """
        harness = Harness()
        harness.factory.max_connections = 1
        harness.client(40001)
        protocol = harness.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.stats.refused_connections, 1)


def connect(factory: RelayFactory, address: IAddress) -> tuple[Protocol, StringTransport]:
    """
    Build the protocol C{factory} gives a connection from C{address}, and
    connect it to a transport whose peer is C{address}.
    """
    protocol = factory.buildProtocol(address)
    assert isinstance(protocol, Protocol)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def peer(host: str, port: int) -> IPv4Address:
    """
    A TCP client address.
    """
    return IPv4Address("TCP", host, port)


class PerClientLimitTests(SynchronousTestCase):
    """
    The cap on simultaneous connections from one client address
    (C{--max-connections-per-client}).
    """

    def harness(self, most: int) -> Harness:
        """
        A relay whose factory allows C{most} connections per client address.
        """
        harness = Harness()
        harness.factory.max_connections_per_client = most
        return harness

    def test_over_limit_gets_503(self) -> None:
        """
        The connection beyond the limit from one address is answered 503
        with Retry-After and closed, and counted apart from the global cap.
        """
        harness = self.harness(2)
        for port in (40001, 40002):
            protocol, _ = connect(harness.factory, peer("192.0.2.7", port))
            self.assertIsInstance(protocol, ClientConnection)
        refused, transport = connect(harness.factory, peer("192.0.2.7", 40003))
        self.assertNotIsInstance(refused, ClientConnection)
        answer = bytes(transport.value())
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer)
        self.assertIn(b"\r\nRetry-After: 5\r\n", answer)
        self.assertIn(b"too many connections from your address", answer)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.stats.refused_per_client, 1)
        self.assertEqual(harness.stats.refused_connections, 0)
        self.assertEqual(harness.stats.client_connections, 3)
        self.assertEqual(harness.factory.per_client, {"192.0.2.7": 2})

    def test_other_addresses_served(self) -> None:
        """
        An address at its limit does not hold back another address.
        """
        harness = self.harness(1)
        connect(harness.factory, peer("192.0.2.7", 40001))
        other, _ = connect(harness.factory, peer("192.0.2.8", 40001))
        self.assertIsInstance(other, ClientConnection)
        self.assertEqual(harness.factory.per_client, {"192.0.2.7": 1, "192.0.2.8": 1})

    def test_closing_frees_a_place_and_forgets_the_address(self) -> None:
        """
        When one of its connections closes the address may open another;
        once it has none, it is forgotten (the table holds only addresses
        with connections open).
        """
        harness = self.harness(1)
        first, _ = connect(harness.factory, peer("192.0.2.7", 40001))
        first.connectionLost(connection_done())
        self.assertEqual(harness.factory.per_client, {})
        second, _ = connect(harness.factory, peer("192.0.2.7", 40002))
        self.assertIsInstance(second, ClientConnection)
        second.connectionLost(connection_done())
        second.connectionLost(connection_done())
        self.assertEqual(harness.factory.per_client, {})
        self.assertEqual(harness.stats.refused_per_client, 0)

    def test_ipv4_mapped_is_the_ipv4_address(self) -> None:
        """
        On a dual-stack listener an IPv4 client seen as C{::ffff:a.b.c.d}
        counts as C{a.b.c.d}; other IPv6 addresses count one by one, not
        by network.
        """
        harness = self.harness(1)
        connect(harness.factory, peer("192.0.2.7", 40001))
        mapped, _ = connect(harness.factory, IPv6Address("TCP", "::ffff:192.0.2.7", 40002))
        self.assertNotIsInstance(mapped, ClientConnection)
        for host in ("2001:db8::1", "2001:db8::2"):
            protocol, _ = connect(harness.factory, IPv6Address("TCP", host, 40003))
            self.assertIsInstance(protocol, ClientConnection)
        self.assertEqual(
            harness.factory.per_client, {"192.0.2.7": 1, "2001:db8::1": 1, "2001:db8::2": 1}
        )

    def test_unix_socket_not_limited(self) -> None:
        """
        Connections whose peer is no IP address (a unix socket) are neither
        limited nor counted.
        """
        harness = self.harness(1)
        for _ in range(3):
            protocol, _ = connect(harness.factory, UNIXAddress(None))
            self.assertIsInstance(protocol, ClientConnection)
        self.assertEqual(harness.factory.per_client, {})

    def test_off_counts_nothing(self) -> None:
        """
        With the limit off (0, the default), connections from one address
        are neither refused nor counted.
        """
        harness = Harness()
        self.assertEqual(harness.factory.max_connections_per_client, 0)
        for port in range(40001, 40011):
            protocol, _ = connect(harness.factory, peer("192.0.2.7", port))
            self.assertIsInstance(protocol, ClientConnection)
        self.assertEqual(harness.factory.per_client, {})

    def test_global_cap_first(self) -> None:
        """
        A connection over C{max_connections} is refused by that cap (and
        counted there) before the per-client limit is looked at.
        """
        harness = self.harness(5)
        harness.factory.max_connections = 1
        connect(harness.factory, peer("192.0.2.7", 40001))
        _, transport = connect(harness.factory, peer("192.0.2.8", 40001))
        self.assertIn(b"too many client connections", transport.value())
        self.assertEqual(
            (harness.stats.refused_connections, harness.stats.refused_per_client), (1, 0)
        )
        self.assertEqual(harness.factory.per_client, {"192.0.2.7": 1})

    def test_turned_on_counts_open_connections(self) -> None:
        """
        Turned on while connections are open (a reload), the limit counts
        them: an address already over it gets no new connection, and none
        of its connections is closed; turned off, new connections are not
        counted, and those counted are forgotten as they close.
        """
        harness = Harness()
        opened = [connect(harness.factory, peer("192.0.2.7", port)) for port in (1, 2, 3)]
        harness.factory.limit_connections_per_client(2)
        harness.factory.limit_connections_per_client(2)
        self.assertEqual(harness.factory.per_client, {"192.0.2.7": 3})
        self.assertFalse(any(transport.disconnecting for _, transport in opened))
        refused, _ = connect(harness.factory, peer("192.0.2.7", 4))
        self.assertNotIsInstance(refused, ClientConnection)
        opened[0][0].connectionLost(connection_done())
        opened[1][0].connectionLost(connection_done())
        allowed, _ = connect(harness.factory, peer("192.0.2.7", 5))
        self.assertIsInstance(allowed, ClientConnection)
        harness.factory.limit_connections_per_client(0)
        unlimited = [connect(harness.factory, peer("192.0.2.7", port))[0] for port in (6, 7)]
        self.assertEqual(harness.factory.per_client, {"192.0.2.7": 2})
        for protocol in [opened[2][0], allowed, *unlimited]:
            protocol.connectionLost(connection_done())
        self.assertEqual(harness.factory.per_client, {})

    def test_shared_with_other_listener(self) -> None:
        """
        Factories that share their connection cap (plain HTTP and HTTPS)
        share the per-client counts too.
        """
        harness = self.harness(2)
        https = RelayFactory(
            harness.reactor,
            harness.dispatcher,
            harness.stats,
            scheme=b"https",
            max_connections_per_client=2,
        )
        https.share_connection_cap(harness.factory)
        self.assertIs(https.per_client, harness.factory.per_client)
        connect(harness.factory, peer("192.0.2.7", 1))
        connect(https, peer("192.0.2.7", 2))
        for factory in (harness.factory, https):
            refused, _ = connect(factory, peer("192.0.2.7", 3))
            self.assertNotIsInstance(refused, ClientConnection)
        self.assertEqual(harness.stats.refused_per_client, 2)


class EarlyRejectionTests(SynchronousTestCase):
    """
    Heads that can never become valid are rejected before they are complete.
    """

    def _first_answer(self, *pieces: bytes) -> bytes:
        harness = Harness()
        client, client_transport = harness.client()
        for piece in pieces:
            client.dataReceived(piece)
        self.assertEqual(harness.pending_connects(), 0)
        return bytes(client_transport.value())

    def test_tls_handshake_on_plain_port(self) -> None:
        """
        A TLS ClientHello gets 400 at once instead of waiting for a head end.
        """
        answer = self._first_answer(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"))

    def test_bare_lf(self) -> None:
        """
        A head using bare LF line endings gets 400 at once.
        """
        answer = self._first_answer(b"GET / HTTP/1.1\nHost: a\n\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"))

    def test_bad_first_line_before_head_end(self) -> None:
        """
        A malformed request line is answered as soon as it is complete.
        """
        answer = self._first_answer(b"GET  / HTTP/1.1\r\n", b"Host: a\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"))

    def test_http2_preface(self) -> None:
        """
        The HTTP/2 connection preface gets 505 without waiting.
        """
        answer = self._first_answer(b"PRI * HTTP/2.0\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 505 "))

    def test_trickled_valid_head_accepted(self) -> None:
        """
        A valid head sent one byte at a time is not rejected early.
        """
        harness = Harness()
        client, client_transport = harness.client()
        for byte in GET:
            client.dataReceived(bytes([byte]))
        self.assertEqual(client_transport.value(), b"")
        self.assertEqual(harness.pending_connects(), 1)


class CappedPoolTests(SynchronousTestCase):
    """
    A client that leaves while queued for a capped upstream leaves nothing
    behind (issue 9, defect 3).
    """

    def test_connection_opened_for_a_departed_client_serves_the_next(self) -> None:
        """
        With a cap of one connection, a queued client leaves while a new
        connection is being opened for it; that connection then serves the
        next client at once instead of being lost, so nobody gets a 503.
        """
        harness = Harness(max_connections_per_upstream=1, queue_timeout=5)
        first, _ = harness.client(40001)
        first.dataReceived(GET)
        first_upstream, _, _ = harness.accept()
        second, _ = harness.client(40002)
        second.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 0)
        first_upstream.dataReceived(response(b"1", extra=b"Connection: close\r\n"))
        first_upstream.connectionLost(connection_done())
        self.assertEqual(harness.pending_connects(), 1)
        second.connectionLost(connection_done())
        _, opened_for_second, _ = harness.accept()
        third, third_transport = harness.client(40003)
        third.dataReceived(GET)
        self.assertTrue(opened_for_second.value().startswith(b"GET /first_url HTTP/1.1\r\n"))
        harness.reactor.advance(6)
        self.assertEqual(third_transport.value(), b"")
        self.assertEqual(harness.pool.open_count(harness.registry.upstreams[0]), 1)


class TrailerTests(SynchronousTestCase):
    """
    Trailer fields reach the other side when it is chunked, minus the
    fields that must not appear in trailers (issue 9, defect 9).
    """

    CHUNKED_RESPONSE = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Server-Timing\r\n\r\n"
        b"4\r\nbody\r\n0\r\nServer-Timing: db;dur=53\r\nContent-Length: 99\r\n"
        b"Set-Cookie: s=1\r\nX-Checksum: abc\r\n\r\n"
    )

    def test_response_trailers_to_http11_client(self) -> None:
        """
        An HTTP/1.1 client gets the response's allowed trailer fields, byte
        for byte and in order, after the last chunk; framing and cookie
        fields are dropped.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(self.CHUNKED_RESPONSE)
        body = client_transport.value().partition(b"\r\n\r\n")[2]
        self.assertEqual(
            body, b"4\r\nbody\r\n0\r\nServer-Timing: db;dur=53\r\nX-Checksum: abc\r\n\r\n"
        )
        self.assertFalse(client_transport.disconnecting)

    def test_response_trailers_dropped_for_http10_client(self) -> None:
        """
        An HTTP/1.0 client gets the body de-chunked and closed, without the
        trailers, which it has no way to receive.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        protocol, _, _ = harness.accept()
        protocol.dataReceived(self.CHUNKED_RESPONSE)
        self.assertTrue(client_transport.value().endswith(b"\r\n\r\nbody"))
        self.assertNotIn(b"X-Checksum", client_transport.value())

    def test_request_trailers_filtered(self) -> None:
        """
        Request trailers go upstream without the fields that would change
        routing or credentials there.
        """
        harness = Harness()
        client, _ = harness.client()
        client.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nDigest: sha-256=x\r\nHost: evil\r\n"
            b"Authorization: Basic eA==\r\n\r\n"
        )
        _, upstream, _ = harness.accept()
        body = upstream.value().partition(b"\r\n\r\n")[2]
        self.assertEqual(body, b"2\r\nhi\r\n0\r\nDigest: sha-256=x\r\n\r\n")

    def test_lenient_chunk_size_rejected(self) -> None:
        """
        A chunk-size line a strict parser refuses (here C{2;}, an empty
        extension) is answered 400 and the connection closed (defect 8).
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nhi\r\n"
        )
        self.assertIn(b"HTTP/1.1 400 Bad Request", client_transport.value())
        self.assertTrue(client_transport.disconnecting)


class AbortTests(SynchronousTestCase):
    """
    Aborting works on a connection whose close has not completed.
    """

    def test_drain_deadline_aborts_a_closing_connection(self) -> None:
        """
        A connection that was asked to close but never went away (its client
        stopped reading) is aborted when the drain's grace period ends, and
        the drain completes.
        """
        harness = Harness()
        client, client_transport = harness.client()
        client.close()
        self.assertTrue(client_transport.disconnecting)
        self.assertFalse(client_transport.disconnected)
        drained = harness.factory.drain(5)
        self.assertNoResult(drained)
        harness.reactor.advance(5)
        self.assertTrue(client_transport.disconnected)
        client.connectionLost(connection_done())
        self.successResultOf(drained)
