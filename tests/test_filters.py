"""
The request-filter seam on the whole relay in memory: filters that answer,
pass, decide later or fail; response observers that watch, replace or keep
a response; and what filters may change (issue 9).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.filters import Answer, text_answer
from balancebeam.http1.heads import ResponseHead
from balancebeam.interfaces import IExchange, IRequestFilter, IResponseObserver
from balancebeam.relay.client import ClientConnection
from tests.helpers import Harness, response

GET = b"GET /page?q=1 HTTP/1.1\r\nHost: example.com\r\nCookie: a=b\r\n\r\n"


@implementer(IRequestFilter)
class RecordingFilter:
    """
    A filter that records what it saw and does what it is told.

    @ivar result: what L{on_request} returns (or raises, for an exception).
    """

    fail_open = True

    def __init__(self, name: str, result: object = None, fail_open: bool = True) -> None:
        self.name = name
        self.result = result
        self.fail_open = fail_open
        self.seen: list[IExchange] = []
        self.observer: IResponseObserver | None = None
        self.body_limit: int | None = None
        self.bodies: list[bytes | None] = []

    def on_request(self, exchange: IExchange) -> Answer | Deferred[Answer | None] | None:
        """
        Record C{exchange}; observe or read the body when asked; return or
        raise C{result}.
        """
        self.seen.append(exchange)
        if self.observer is not None:
            exchange.observe(self.observer)
        if isinstance(self.result, Exception):
            raise self.result
        if self.body_limit is not None:
            return exchange.read_body(self.body_limit).addCallback(self._got_body)
        return self.result  # type: ignore[return-value]  # what the test told it to return

    def _got_body(self, body: bytes | None) -> Answer | None:
        self.bodies.append(body)
        return self.result  # type: ignore[return-value]  # what the test told it to return


@implementer(IResponseObserver)
class RecordingObserver:
    """
    An observer that records every event and answers as told.
    """

    def __init__(
        self,
        replace_head: Answer | None = None,
        replace_failure: Answer | None = None,
        keep_going: bool = False,
    ) -> None:
        self.events: list[tuple[str, object]] = []
        self._replace_head = replace_head
        self._replace_failure = replace_failure
        self._keep_going = keep_going

    def response_head(self, response: ResponseHead) -> Answer | None:
        """
        Record the status; maybe replace the response.
        """
        self.events.append(("head", response.status))
        return self._replace_head

    def response_body(self, data: bytes) -> None:
        """
        Record a body piece.
        """
        self.events.append(("body", data))

    def response_complete(self) -> None:
        """
        Record the end.
        """
        self.events.append(("complete", None))

    def continue_without_client(self) -> bool:
        """
        Record the question; answer as told.
        """
        self.events.append(("client gone", None))
        return self._keep_going

    def response_failed(self, reason: str) -> Answer | None:
        """
        Record the failure; maybe offer an answer.
        """
        self.events.append(("failed", reason))
        return self._replace_failure


class AnswerTests(SynchronousTestCase):
    """
    A filter answers in place of an upstream.
    """

    def test_answer_sent_without_upstream(self) -> None:
        """
        A filter's answer reaches the client with its fields, body,
        Content-Length and keep-alive; no upstream is contacted and the next
        request on the connection is served normally.
        """
        answer = Answer(403, ((b"X-Why", b"policy"),), b"forbidden\n")
        harness = Harness(filters=[RecordingFilter("deny", answer)])
        client, transport = harness.client()
        client.dataReceived(GET)
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 403 Forbidden\r\nX-Why: policy\r\n"
            b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 10\r\n"
            b"Connection: keep-alive\r\n\r\nforbidden\n",
        )
        self.assertEqual(harness.pending_connects(), 0)
        self.assertEqual(harness.stats.by_class[4], 1)
        self.assertFalse(transport.disconnecting)

    def test_answer_to_head_request_has_no_body(self) -> None:
        """
        An answer to HEAD keeps its Content-Length and carries no body, so a
        keep-alive client is not desynchronised.
        """
        harness = Harness(filters=[RecordingFilter("deny", text_answer(403, "no"))])
        client, transport = harness.client()
        client.dataReceived(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        length = len(text_answer(403, "no").body)
        self.assertIn(b"Content-Length: %d\r\n" % length, head + b"\r\n")
        self.assertEqual(body, b"")

    def test_first_answer_stops_the_chain(self) -> None:
        """
        Filters are asked in order, and none after the one that answers.
        """
        first = RecordingFilter("first")
        second = RecordingFilter("second", text_answer(429, "slow down"))
        third = RecordingFilter("third")
        harness = Harness(filters=[first, second, third])
        client, transport = harness.client()
        client.dataReceived(GET)
        self.assertEqual((len(first.seen), len(second.seen), len(third.seen)), (1, 1, 0))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429 "))

    def test_answer_while_body_arrives_skips_the_body(self) -> None:
        """
        A request answered before its body arrived keeps the connection: the
        body is read and dropped, then the next request is served.
        """
        harness = Harness(filters=[RecordingFilter("deny", text_answer(403, "no"))])
        client, transport = harness.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))
        client.dataReceived(b"cde" + GET)
        self.assertEqual(transport.value().count(b"HTTP/1.1 403 "), 2)
        self.assertFalse(transport.disconnecting)


class AsynchronousFilterTests(SynchronousTestCase):
    """
    Filters that decide later.
    """

    def test_dispatch_waits_for_the_decision(self) -> None:
        """
        No upstream is contacted until the filter's Deferred fires with
        C{None}; then the request goes upstream.
        """
        deciding: Deferred[Answer | None] = Deferred()
        harness = Harness(filters=[RecordingFilter("later", deciding)])
        client, _ = harness.client()
        client.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 0)
        deciding.callback(None)
        self.assertEqual(harness.pending_connects(), 1)

    def test_late_answer_is_sent(self) -> None:
        """
        An answer that arrives later is sent then.
        """
        deciding: Deferred[Answer | None] = Deferred()
        harness = Harness(filters=[RecordingFilter("later", deciding)])
        client, transport = harness.client()
        client.dataReceived(GET)
        self.assertEqual(transport.value(), b"")
        deciding.callback(text_answer(403, "later no"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))
        self.assertEqual(harness.pending_connects(), 0)

    def test_client_gone_cancels_the_decision(self) -> None:
        """
        A client that leaves while a filter decides cancels its Deferred.
        """
        deciding: Deferred[Answer | None] = Deferred()
        harness = Harness(filters=[RecordingFilter("later", deciding)])
        client, _ = harness.client()
        client.dataReceived(GET)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(deciding.called)
        self.assertIsNone(self.successResultOf(deciding))
        self.assertEqual(harness.pending_connects(), 0)


class FailingFilterTests(SynchronousTestCase):
    """
    A failing filter is logged and counted, and its policy decides.
    """

    def test_raising_fail_open_filter_lets_the_request_pass(self) -> None:
        """
        A fail-open filter that raises is logged, counted, and the request
        goes upstream.
        """
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        harness = Harness(filters=[RecordingFilter("broken", RuntimeError("boom"))])
        client, _ = harness.client()
        client.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 1)
        self.assertEqual(harness.stats.filter_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("letting the request pass", str(events[0].get("policy")))

    def test_raising_fail_closed_filter_answers_500(self) -> None:
        """
        A fail-closed filter that raises gets the request answered 500, and
        the connection keeps serving.
        """
        harness = Harness(
            filters=[RecordingFilter("strict", RuntimeError("boom"), fail_open=False)]
        )
        client, transport = harness.client()
        client.dataReceived(GET)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "))
        self.assertEqual(harness.pending_connects(), 0)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failed_deferred_follows_the_policy(self) -> None:
        """
        A Deferred that fails is treated like an exception: fail-closed
        gives 500, fail-open passes.
        """
        strict = Harness(
            filters=[RecordingFilter("strict", fail(ValueError("no redis")), fail_open=False)]
        )
        client, transport = strict.client()
        client.dataReceived(GET)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "))
        lenient = Harness(filters=[RecordingFilter("lenient", fail(ValueError("no redis")))])
        client, transport = lenient.client()
        client.dataReceived(GET)
        self.assertEqual(lenient.pending_connects(), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)


class ObserverTests(SynchronousTestCase):
    """
    Response observers see the response as it is relayed.
    """

    def watched(
        self, observer: RecordingObserver
    ) -> tuple[Harness, ClientConnection, StringTransport]:
        """
        A harness whose one filter attaches C{observer}, and a client that
        sent L{GET}.
        """
        watcher = RecordingFilter("watch")
        watcher.observer = observer
        harness = Harness(filters=[watcher])
        client, transport = harness.client()
        client.dataReceived(GET)
        return harness, client, transport

    def test_observer_sees_head_pieces_and_end(self) -> None:
        """
        The observer sees the status, each de-chunked piece and the end,
        while the client gets the response unchanged.
        """
        observer = RecordingObserver()
        harness, client, transport = self.watched(observer)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        protocol.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
        self.assertEqual(
            observer.events,
            [("head", 200), ("body", b"abc"), ("body", b"de"), ("complete", None)],
        )
        self.assertTrue(transport.value().endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))

    def test_observer_told_of_upstream_failure(self) -> None:
        """
        An upstream dying mid-body is reported to the observer once.
        """
        observer = RecordingObserver()
        harness, client, _ = self.watched(observer)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(observer.events[-1][0], "failed")
        self.assertEqual([e for e, _ in observer.events].count("failed"), 1)

    def test_observer_replaces_the_response(self) -> None:
        """
        An observer answering at the head (a 304 turned into a stored 200)
        gets its answer sent; the upstream's own response is dropped and its
        connection goes back to the pool.
        """
        stored = Answer(200, ((b"ETag", b'"v1"'),), b"stored body")
        observer = RecordingObserver(replace_head=stored)
        harness, client, transport = self.watched(observer)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\nETag: \"v1\"\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nstored body"))
        self.assertEqual(harness.pool.idle_count(harness.registry.upstreams[0]), 1)
        client.dataReceived(GET)
        self.assertEqual(harness.pending_connects(), 0)

    def test_replaced_response_with_body_is_drained(self) -> None:
        """
        When the replaced response has a body still to come, it is read and
        dropped, and the client's next request waits for it to end.
        """
        observer = RecordingObserver(replace_head=Answer(200, (), b"stale copy"))
        harness, client, transport = self.watched(observer)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 500 Oops\r\nContent-Length: 6\r\n\r\nabc")
        self.assertTrue(transport.value().endswith(b"stale copy"))
        client.dataReceived(GET)
        upstream.clear()
        protocol.dataReceived(b"def")
        self.assertTrue(upstream.value().startswith(b"GET /page?q=1 HTTP/1.1\r\n"))
        self.assertNotIn(b"abc", transport.value())

    def test_failure_answer_replaces_the_error(self) -> None:
        """
        When no upstream can answer, an observer's answer (stale-if-error)
        is sent instead of the balancer's 503.
        """
        observer = RecordingObserver(replace_failure=Answer(200, (), b"stale"))
        watcher = RecordingFilter("cache")
        watcher.observer = observer
        harness = Harness(filters=[watcher])
        for upstream in harness.registry.upstreams:
            harness.registry.mark_down(upstream, "test")
        client, transport = harness.client()
        client.dataReceived(GET)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nstale"))

    def test_fill_outlives_its_client_when_asked(self) -> None:
        """
        A client leaving mid-response does not stop the response when an
        observer wants the rest: it is read to the end, the observer sees it
        complete, and the upstream connection is reused.
        """
        observer = RecordingObserver(keep_going=True)
        harness, client, _ = self.watched(observer)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(upstream.disconnecting)
        protocol.dataReceived(b"def")
        self.assertEqual(observer.events[-2:], [("body", b"def"), ("complete", None)])
        self.assertEqual(harness.pool.idle_count(harness.registry.upstreams[0]), 1)
        self.assertEqual(harness.factory.detached, set())

    def test_fill_without_client_has_a_deadline(self) -> None:
        """
        A response read on after its client left is still bounded by the
        upstream timeout.
        """
        observer = RecordingObserver(keep_going=True)
        harness, client, _ = self.watched(observer)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        client.connectionLost(Failure(ConnectionDone()))
        harness.reactor.advance(61)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(observer.events[-1][0], "failed")
        self.assertEqual(harness.factory.detached, set())

    def test_client_gone_stops_the_response_by_default(self) -> None:
        """
        Without an observer asking for it, a client leaving closes the
        upstream connection.
        """
        observer = RecordingObserver(keep_going=False)
        harness, client, _ = self.watched(observer)
        protocol, upstream, _ = harness.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(observer.events[-1], ("failed", "the client went away"))


class RewriteTests(SynchronousTestCase):
    """
    What a filter may change on the way.
    """

    def test_upstream_head_rewritten(self) -> None:
        """
        Fields named by a filter are dropped from the upstream head and its
        added fields appended.
        """

        @implementer(IRequestFilter)
        class Revalidate:
            name = "revalidate"
            fail_open = True

            def on_request(self, exchange: IExchange) -> None:
                exchange.rewrite_upstream_request(
                    remove=[b"Cookie"], add=[(b"If-None-Match", b'"v1"')]
                )

        harness = Harness(filters=[Revalidate()])
        client, _ = harness.client()
        client.dataReceived(GET)
        _, upstream, _ = harness.accept()
        head = upstream.value()
        self.assertNotIn(b"Cookie", head)
        self.assertTrue(head.endswith(b'Via: 1.1 balancebeam\r\nIf-None-Match: "v1"\r\n\r\n'))

    def test_response_headers_added_everywhere(self) -> None:
        """
        Lines a filter adds reach the client on relayed responses and on
        answers alike.
        """

        @implementer(IRequestFilter)
        class Tag:
            name = "tag"
            fail_open = True

            def on_request(self, exchange: IExchange) -> None:
                exchange.add_response_headers(b"X-Tag: 1\r\n")

        harness = Harness(filters=[Tag()])
        client, transport = harness.client()
        client.dataReceived(GET)
        protocol, _, _ = harness.accept()
        protocol.dataReceived(response(b"ok"))
        self.assertIn(b"\r\nX-Tag: 1\r\n\r\nok", transport.value())
        tagged = Harness(filters=[Tag(), RecordingFilter("deny", text_answer(403, "no"))])
        client, transport = tagged.client()
        client.dataReceived(GET)
        self.assertIn(b"\r\nX-Tag: 1\r\n\r\n403 Forbidden", transport.value())


class ReadBodyTests(SynchronousTestCase):
    """
    A filter may hold the request body to inspect it.
    """

    def test_body_within_limit_is_handed_over_then_relayed(self) -> None:
        """
        A body within the limit is given to the filter whole, then sent
        upstream byte for byte.
        """
        reader = RecordingFilter("inspect")
        reader.body_limit = 100
        harness = Harness(filters=[reader])
        client, _ = harness.client()
        client.dataReceived(b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello")
        self.assertEqual(reader.bodies, [])
        self.assertEqual(harness.pending_connects(), 0)
        client.dataReceived(b" world")
        self.assertEqual(reader.bodies, [b"hello world"])
        _, upstream, _ = harness.accept()
        self.assertTrue(upstream.value().endswith(b"\r\n\r\nhello world"))

    def test_chunked_body_over_limit_is_passed_unread(self) -> None:
        """
        A chunked body that outgrows the limit is reported as C{None} at
        once, and relayed whole, re-chunked, when the filter lets it pass.
        """
        reader = RecordingFilter("inspect")
        reader.body_limit = 4
        harness = Harness(filters=[reader])
        client, _ = harness.client()
        client.dataReceived(
            b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        self.assertEqual(reader.bodies, [])
        client.dataReceived(b"3\r\ndef\r\n")
        self.assertEqual(reader.bodies, [None])
        client.dataReceived(b"0\r\n\r\n")
        _, upstream, _ = harness.accept()
        self.assertTrue(upstream.value().endswith(b"\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"))

    def test_trailers_of_an_inspected_body_are_dropped(self) -> None:
        """
        The trailers of a chunked body a filter read (which it does not
        see) are not forwarded, within the limit or over it; the same
        request without such a filter keeps them.
        """
        request = (b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\nX-Smuggled: ' OR 1=1 --\r\n\r\n")
        for limit in (100, 2):
            reader = RecordingFilter("inspect")
            reader.body_limit = limit
            harness = Harness(filters=[reader])
            client, _ = harness.client()
            client.dataReceived(request)
            _, upstream, _ = harness.accept()
            self.assertTrue(upstream.value().endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), limit)
        harness = Harness()
        client, _ = harness.client()
        client.dataReceived(request)
        _, upstream, _ = harness.accept()
        self.assertTrue(upstream.value().endswith(b"0\r\nX-Smuggled: ' OR 1=1 --\r\n\r\n"))

    def test_announced_body_over_limit_is_none_at_once(self) -> None:
        """
        A Content-Length over the limit is known at once: C{None}, no wait.
        """
        reader = RecordingFilter("inspect")
        reader.body_limit = 4
        harness = Harness(filters=[reader])
        client, _ = harness.client()
        client.dataReceived(b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        self.assertEqual(reader.bodies, [None])
        self.assertEqual(harness.pending_connects(), 1)

    def test_expect_continue_answered_before_reading(self) -> None:
        """
        A client waiting for C{100 Continue} gets it when a filter asks for
        the body, so the body can come.
        """
        reader = RecordingFilter("inspect")
        reader.body_limit = 100
        harness = Harness(filters=[reader])
        client, transport = harness.client()
        client.dataReceived(
            b"POST /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        client.dataReceived(b"ok")
        self.assertEqual(reader.bodies, [b"ok"])
