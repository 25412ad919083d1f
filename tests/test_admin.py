"""
Tests for the admin listener (L{balancebeam.admin}): its pages, the
upstream controls, the cache purge hook and the bearer token, through its
HTTP channel on a memory reactor.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.admin.auth import AdminToken, read_token_file
from balancebeam.admin.page import render_page
from balancebeam.admin.providers import IPurger
from balancebeam.admin.rate import RequestRate
from balancebeam.admin.status import client_connections_open, requests_in_flight
from balancebeam.registry import DISABLED, DRAINING, ENABLED
from tests.helpers import response
from tests.operations_helpers import ServiceHarness, harness_config, metric, parse_metrics

TOKEN = "s3cret-Token-value"


def admin_harness(token_file: str | None = None, **fields: Any) -> ServiceHarness:
    """
    A balancer with its admin listener on the memory reactor.
    """
    bind = "0.0.0.0:9100" if token_file is not None else "127.0.0.1:9100"
    return ServiceHarness(
        harness_config(
            admin_bind=f"tcp:9100:interface={bind.split(':')[0]}",
            admin_token_file=token_file,
            **fields,
        )
    )


def token_file(case: SynchronousTestCase, text: str = TOKEN + "\n") -> str:
    """
    A file holding C{text}, removed after the test.
    """
    descriptor, path = tempfile.mkstemp(prefix="balancebeam-token-")
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    case.addCleanup(os.remove, path)
    return path


@implementer(IPurger)
class RecordingPurger:
    """
    Records the URLs purged; answers at once or with a Deferred.
    """

    def __init__(self, later: bool = False) -> None:
        self.urls: list[str] = []
        self.later: Deferred[int] | None = Deferred() if later else None

    def purge(self, url: str) -> int | Deferred[int]:
        """
        Record C{url}.
        """
        self.urls.append(url)
        if self.later is not None:
            return self.later
        return 3


class PageTests(SynchronousTestCase):
    """
    The read-only pages.
    """

    def test_healthz(self) -> None:
        """
        C{/healthz} answers 200 while the balancer runs.
        """
        harness = admin_harness()
        answer = harness.admin("/healthz")
        self.assertEqual((answer.status, answer.body), (200, b"ok\n"))

    def test_ready_when_listening_with_an_upstream(self) -> None:
        """
        C{/ready} is 200 once listening with an upstream up, and 503 with the
        reason when every upstream is down or the balancer drains.
        """
        harness = admin_harness()
        self.assertEqual(harness.admin("/ready").status, 200)
        registry = harness.service.registry
        for upstream in registry.upstreams:
            registry.set_admin_state(upstream, DRAINING, "test")
        answer = harness.admin("/ready")
        self.assertEqual(
            (answer.status, answer.body),
            (503, b"not ready: no upstream takes requests: the ones up are drained or disabled\n"),
        )
        for upstream in registry.upstreams:
            registry.set_admin_state(upstream, ENABLED, "test")
            registry.mark_down(upstream, "test")
        answer = harness.admin("/ready")
        self.assertEqual((answer.status, answer.body), (503, b"not ready: no upstream is up\n"))
        registry.mark_up(registry.upstreams[0], "test")
        self.assertEqual(harness.admin("/ready").status, 200)
        harness.service.factory.draining = True
        self.assertEqual(harness.admin("/ready").body, b"not ready: draining\n")

    def test_ready_before_start(self) -> None:
        """
        Before the balancer listens, C{/ready} is 503.
        """
        harness = ServiceHarness(
            harness_config(admin_bind="tcp:9100:interface=127.0.0.1"), start=False
        )
        harness.service.privilegedStartService()
        answer = harness.admin("/ready")
        self.assertEqual((answer.status, answer.body), (503, b"not ready: not listening yet\n"))

    def test_metrics(self) -> None:
        """
        C{/metrics} serves the Prometheus text format with the counters.
        """
        harness = admin_harness()
        client, _ = harness.client()
        harness.get(client)
        upstream, _, _ = harness.accept()
        upstream.dataReceived(response())
        answer = harness.admin("/metrics")
        self.assertEqual(answer.status, 200)
        content_type = answer.header(b"content-type")
        assert content_type is not None
        self.assertTrue(content_type.startswith(b"text/plain; version="), content_type)
        samples = parse_metrics(answer.body)
        self.assertEqual(metric(samples, "balancebeam_http_requests_total"), 1)
        self.assertIn(b"process_cpu_seconds_total", answer.body)

    def test_status_json(self) -> None:
        """
        C{/status.json} has one row per upstream with its state, counters,
        pool and weight, and the summary above them.
        """
        harness = admin_harness()
        harness.reactor.advance(30)
        client, _ = harness.client()
        harness.get(client)
        upstream, _, _ = harness.accept()
        upstream.dataReceived(response(status=b"503 Busy"))
        answer = harness.admin("/status.json")
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        data = json.loads(answer.body)
        # The memory reactor's ports describe themselves as 0.0.0.0.
        self.assertEqual(data["listeners"], ["0.0.0.0:8080"])
        self.assertEqual(data["admin"], ["0.0.0.0:9100"])
        self.assertEqual(data["uptime_seconds"], 30)
        self.assertEqual(data["requests"], 1)
        self.assertEqual(data["responses"]["5xx"], 1)
        self.assertTrue(data["ready"])
        rows = {row["name"]: row for row in data["upstreams"]}
        self.assertEqual(list(rows), ["127.0.0.1:9001", "127.0.0.1:9002"])
        first = rows["127.0.0.1:9001"]
        self.assertEqual(first["state"], "up")
        self.assertEqual(first["since_seconds"], 30)
        self.assertEqual(first["requests"], 1)
        self.assertEqual(first["responses"]["5xx"], 1)
        self.assertEqual((first["pool_idle"], first["pool_open"]), (1, 1))
        self.assertEqual(first["weight"], 1)
        self.assertIsNone(first["last_probe"])
        self.assertEqual(rows["127.0.0.1:9002"]["requests"], 0)

    def test_status_json_last_probe(self) -> None:
        """
        With active checks, each row shows its last probe's result.
        """
        harness = admin_harness(active_health_check_interval=2.0)
        harness.reactor.advance(2.0)
        harness.refuse()
        harness.refuse()
        rows = json.loads(harness.admin("/status.json").body)["upstreams"]
        self.assertEqual(
            rows[0]["last_probe"], {"healthy": False, "reason": "connection refused", "at": 1002.0}
        )

    def test_status_page(self) -> None:
        """
        C{/status} is an HTML page for phones that embeds the data and polls
        C{status.json}.
        """
        harness = admin_harness()
        answer = harness.admin("/status")
        self.assertEqual(answer.header(b"content-type"), b"text/html; charset=utf-8")
        body = answer.body
        self.assertIn(b'<meta name="viewport" content="width=device-width', body)
        self.assertIn(b'fetch("status.json"', body)
        self.assertIn(b'"name": "127.0.0.1:9001"', body)

    def test_page_escapes_embedded_data(self) -> None:
        """
        Text in the embedded data cannot close the script element.
        """
        page = render_page({"upstreams": [], "note": "</script><script>alert(1)"})
        self.assertNotIn(b"</script><script>alert", page)
        self.assertEqual(page.count(b"</script>"), 2)

    def test_root_redirects(self) -> None:
        """
        C{/} redirects to the status page; an unknown path is 404.
        """
        harness = admin_harness()
        answer = harness.admin("/")
        self.assertEqual((answer.status, answer.header(b"location")), (302, b"/status"))
        self.assertEqual(harness.admin("/nothing").status, 404)

    def test_pages_are_read_only(self) -> None:
        """
        A POST to a page is 405 with the methods allowed.
        """
        harness = admin_harness()
        answer = harness.admin("/metrics", b"POST")
        self.assertEqual((answer.status, answer.header(b"allow")), (405, b"GET, HEAD"))

    def test_feature_counters_shown(self) -> None:
        """
        A feature provider's counters are in C{/status.json}.
        """
        from tests.test_metrics import CacheCounters

        harness = admin_harness()
        harness.service.feature_counters.append(CacheCounters())
        data = json.loads(harness.admin("/status.json").body)
        self.assertEqual(
            data["features"], {"cache": {"hits_total": 7, "misses_total": 2, "entries": 5}}
        )


class ControlTests(SynchronousTestCase):
    """
    C{POST /upstreams/HOST:PORT/drain}, C{/disable} and C{/enable}.
    """

    def test_drain_keeps_in_flight_request(self) -> None:
        """
        Draining an upstream sends new requests elsewhere, lets the request
        in flight finish, then closes its connection; enabling it puts it
        back.
        """
        harness = admin_harness()
        first, first_transport = harness.client(40001)
        harness.get(first, b"/slow")
        slow, slow_transport, port = harness.accept()
        self.assertEqual(port, 9001)
        answer = harness.admin("/upstreams/127.0.0.1:9001/drain", b"POST")
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            json.loads(answer.body),
            {
                "upstream": "127.0.0.1:9001",
                "admin_state": DRAINING,
                "changed": True,
                "in_flight": 1,
            },
        )
        for number in range(2):
            client, transport = harness.client(40010 + number)
            harness.get(client)
            if number == 0:
                other, _, port = harness.accept()
                self.assertEqual(port, 9002)
            other.dataReceived(response(b"other"))
            self.assertTrue(transport.value().endswith(b"other"))
        slow.dataReceived(response(b"slow"))
        self.assertTrue(first_transport.value().endswith(b"slow"))
        self.assertTrue(slow_transport.disconnecting)
        self.assertEqual(harness.pending_ports(), [])
        answer = harness.admin("/upstreams/127.0.0.1:9001/enable", b"POST")
        self.assertEqual(json.loads(answer.body)["admin_state"], ENABLED)
        client, _ = harness.client(40020)
        harness.get(client)
        harness.get(first)
        self.assertEqual(sorted(harness.pending_ports()), [9001])

    def test_disable_stops_probes(self) -> None:
        """
        A disabled upstream takes no request and is not probed; the others are.
        """
        harness = admin_harness(active_health_check_interval=2.0)
        answer = harness.admin("/upstreams/127.0.0.1:9001/disable", b"POST")
        self.assertEqual(json.loads(answer.body)["admin_state"], DISABLED)
        harness.reactor.advance(2.0)
        self.assertEqual(harness.pending_ports(), [9002])
        data = json.loads(harness.admin("/status.json").body)
        self.assertEqual(data["upstreams"][0]["state"], "disabled")

    def test_repeat_is_no_change(self) -> None:
        """
        Draining a drained upstream answers 200 with C{changed} false.
        """
        harness = admin_harness()
        harness.admin("/upstreams/127.0.0.1:9002/drain", b"POST")
        answer = harness.admin("/upstreams/127.0.0.1:9002/drain", b"POST")
        self.assertFalse(json.loads(answer.body)["changed"])

    def test_all_drained_not_ready(self) -> None:
        """
        With every upstream drained, C{/ready} is 503 and requests get 503.
        """
        harness = admin_harness()
        for name in ("127.0.0.1:9001", "127.0.0.1:9002"):
            harness.admin(f"/upstreams/{name}/drain", b"POST")
        self.assertEqual(harness.admin("/ready").status, 503)
        client, transport = harness.client()
        harness.get(client)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))

    def test_unknown_upstream_and_action(self) -> None:
        """
        An unknown upstream or action is 404; a GET is 405.
        """
        harness = admin_harness()
        answer = harness.admin("/upstreams/10.0.0.1:80/drain", b"POST")
        self.assertEqual(answer.status, 404)
        self.assertEqual(
            json.loads(answer.body)["upstreams"], ["127.0.0.1:9001", "127.0.0.1:9002"]
        )
        self.assertEqual(harness.admin("/upstreams/127.0.0.1:9001/explode", b"POST").status, 404)
        answer = harness.admin("/upstreams/127.0.0.1:9001/drain")
        self.assertEqual((answer.status, answer.header(b"allow")), (405, b"POST"))
        self.assertTrue(harness.service.registry.upstreams[0].serving)

    def test_percent_encoded_name(self) -> None:
        """
        The upstream's name may be percent-encoded in the path.
        """
        harness = admin_harness()
        answer = harness.admin("/upstreams/127.0.0.1%3A9002/drain", b"POST")
        self.assertEqual(answer.status, 200)
        self.assertFalse(harness.service.registry.upstreams[1].serving)

    def test_cross_site_post_refused(self) -> None:
        """
        A browser's POST from another origin is refused with 403.
        """
        harness = admin_harness()
        for header in ((b"Origin", b"http://evil.example"), (b"Sec-Fetch-Site", b"cross-site")):
            answer = harness.admin("/upstreams/127.0.0.1:9001/drain", b"POST", [header])
            self.assertEqual(answer.status, 403)
        self.assertTrue(harness.service.registry.upstreams[0].serving)
        same = harness.admin(
            "/upstreams/127.0.0.1:9001/drain", b"POST", [(b"Origin", b"http://127.0.0.1:9100")]
        )
        self.assertEqual(same.status, 200)


class PurgeTests(SynchronousTestCase):
    """
    C{POST /cache/purge?url=URL}, through the optional purger hook.
    """

    def test_no_cache(self) -> None:
        """
        Without a cache, purging is 404.
        """
        harness = admin_harness()
        answer = harness.admin("/cache/purge?url=/x", b"POST")
        self.assertEqual(answer.status, 404)

    def test_purge(self) -> None:
        """
        The purger gets the URL and its count is answered.
        """
        harness = admin_harness()
        purger = RecordingPurger()
        harness.service.purger = purger
        answer = harness.admin("/cache/purge?url=http%3A%2F%2Fsite%2Fa%3Fb", b"POST")
        self.assertEqual(answer.status, 200)
        self.assertEqual(json.loads(answer.body), {"url": "http://site/a?b", "purged": 3})
        self.assertEqual(purger.urls, ["http://site/a?b"])

    def test_purge_later(self) -> None:
        """
        A purger answering with a Deferred is waited for.
        """
        harness = admin_harness()
        purger = RecordingPurger(later=True)
        harness.service.purger = purger
        site = harness.admin_site()
        channel = site.buildProtocol(None)
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            b"POST /cache/purge?url=/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"")
        assert purger.later is not None
        purger.later.callback(2)
        self.assertIn(b'"purged": 2', transport.value())
        channel.connectionLost(Failure(ConnectionError()))

    def test_purge_needs_url(self) -> None:
        """
        Without a URL, purging is 400 and the purger is not called.
        """
        harness = admin_harness()
        purger = RecordingPurger()
        harness.service.purger = purger
        self.assertEqual(harness.admin("/cache/purge", b"POST").status, 400)
        self.assertEqual(purger.urls, [])

    def test_invalid_url(self) -> None:
        """
        A URL that is not UTF-8, cannot be parsed, or is neither absolute
        nor a path is 400 saying so, without calling the purger or logging
        a failure.
        """
        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]  # trial's TestCase, only addCleanup is called
            globalLogPublisher,
        )
        harness = admin_harness()
        purger = RecordingPurger()
        harness.service.purger = purger
        for query, reason in [
            ("%ff%fe", "it is not UTF-8"),
            ("http://[::1", "cannot be parsed: Invalid IPv6 URL"),
            ("relative-no-slash", "is not an absolute http(s) URL or a path"),
            ("ftp%3A%2F%2Fsite%2Fa", "is not an absolute http(s) URL or a path"),
            ("http%3A%2F%2Fa..b%2F", "cannot be parsed"),
        ]:
            answer = harness.admin(f"/cache/purge?url={query}", b"POST")
            self.assertEqual(answer.status, 400, query)
            error = json.loads(answer.body)["error"]
            self.assertTrue(error.startswith("invalid URL to purge: "), error)
            self.assertIn(reason, error)
        self.assertEqual(purger.urls, [])
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_one_url(self) -> None:
        """
        Two C{url} arguments are 400 rather than a purge of the first.
        """
        harness = admin_harness()
        purger = RecordingPurger()
        harness.service.purger = purger
        answer = harness.admin("/cache/purge?url=/a&url=/b", b"POST")
        self.assertEqual(answer.status, 400)
        self.assertEqual(json.loads(answer.body), {"error": "give one url to purge, not 2"})
        self.assertEqual(purger.urls, [])


REBOUND = b"attacker.example:9100"
"""The C{Host} a browser sends to a page that rebinds its name to 127.0.0.1."""


class RebindingTests(SynchronousTestCase):
    """
    Without a token, the admin answers only requests for a loopback host:
    DNS rebinding cannot lend a web page the operator's browser.
    """

    def test_rebound_get_refused(self) -> None:
        """
        A GET of any page but the probes, for another host, is 421 and
        shows nothing.
        """
        harness = admin_harness()
        for path in ("/status.json", "/status", "/metrics", "/", "/nowhere"):
            answer = harness.admin(path, host=REBOUND)
            self.assertEqual(answer.status, 421, path)
            self.assertIn(b"HTTP/1.1 421 Misdirected Request\r\n", answer.raw)
            self.assertEqual(
                answer.body,
                b"without a token, the admin answers requests for localhost, 127.0.0.1 or"
                b" [::1] only\n",
            )
            self.assertNotIn(b"127.0.0.1:9001", answer.body)

    def test_rebound_post_refused(self) -> None:
        """
        A same-origin POST from a rebound page is 421 and drains nothing.
        """
        harness = admin_harness()
        headers = [
            (b"Origin", b"http://" + REBOUND),
            (b"Sec-Fetch-Site", b"same-origin"),
        ]
        for action in ("drain", "disable"):
            answer = harness.admin(
                f"/upstreams/127.0.0.1:9001/{action}", b"POST", headers, host=REBOUND
            )
            self.assertEqual(answer.status, 421)
        purger = RecordingPurger()
        harness.service.purger = purger
        self.assertEqual(harness.admin("/cache/purge?url=/a", b"POST", host=REBOUND).status, 421)
        self.assertTrue(harness.service.registry.upstreams[0].serving)
        self.assertEqual(purger.urls, [])

    def test_other_hosts_refused(self) -> None:
        """
        Names that merely start like a loopback one, malformed values and
        non-loopback addresses are refused (421); two C{Host} fields, or none,
        in an HTTP/1.1 request are a 400 (RFC 9112 section 3.2).
        """
        harness = admin_harness()
        for host in (
            b"127.0.0.1.attacker.example",
            b"localhost.attacker.example:9100",
            b"127.0.0.1:9100@attacker.example",
            b"127.0.0.1:x",
            b"[::1",
            b"[127.0.0.1]",
            b"[::2]:9100",
            b"10.0.0.5:9100",
            b"0.0.0.0:9100",
            b"2130706433",
            b"",
        ):
            self.assertEqual(harness.admin("/status.json", host=host).status, 421, host)
        twice = [(b"Host", REBOUND)]
        self.assertEqual(harness.admin("/status.json", headers=twice).status, 400)
        answer = harness.admin("/upstreams/127.0.0.1:9001/drain", b"POST", host=None)
        self.assertEqual(answer.status, 400)
        self.assertTrue(harness.service.registry.upstreams[0].serving)

    def test_loopback_hosts_accepted(self) -> None:
        """
        C{localhost} in any case and loopback literals, with any port or
        none, are answered.
        """
        harness = admin_harness()
        for host in (
            b"127.0.0.1:9100",
            b"localhost:9100",
            b"[::1]:9100",
            b"LOCALHOST",
            b"LocalHost.:8080",
            b"127.0.0.2",
            b"127.255.0.1:1",
            b"[::1]",
            b"[0:0:0:0:0:0:0:1]:9100",
        ):
            self.assertEqual(harness.admin("/status.json", host=host).status, 200, host)
        answer = harness.admin(
            "/upstreams/127.0.0.1:9001/drain",
            b"POST",
            [(b"Origin", b"http://[::1]:9100")],
            host=b"[::1]:9100",
        )
        self.assertEqual(answer.status, 200)
        self.assertFalse(harness.service.registry.upstreams[0].serving)

    def test_probes_answer_any_host(self) -> None:
        """
        C{/healthz} and C{/ready} answer whatever the C{Host}: probes may
        ask by any name.
        """
        harness = admin_harness()
        self.assertEqual(harness.admin("/healthz", host=REBOUND).body, b"ok\n")
        self.assertEqual(harness.admin("/ready", host=b"10.0.0.5:9100").status, 200)

    def test_token_allows_any_host(self) -> None:
        """
        With a token, a request carrying it is answered whatever its
        C{Host} (a scrape by name or by the bound address); one without it
        is 401, as before.
        """
        harness = admin_harness(token_file(self))
        bearer = [(b"Authorization", b"Bearer " + TOKEN.encode())]
        for host in (b"10.0.0.5:9100", b"admin.example.com", REBOUND, b"127.0.0.1:9100"):
            self.assertEqual(harness.admin("/metrics", headers=bearer, host=host).status, 200)
            self.assertEqual(harness.admin("/metrics", host=host).status, 401)
        self.assertEqual(harness.admin("/healthz", host=b"10.0.0.5:9100").status, 401)
        answer = harness.admin(
            "/upstreams/127.0.0.1:9001/drain", b"POST", bearer, host=b"10.0.0.5:9100"
        )
        self.assertEqual(answer.status, 200)

    def test_token_removed_by_reload(self) -> None:
        """
        Once a reload takes the token away, the C{Host} is checked.
        """
        harness = admin_harness(token_file(self))
        harness.admin_site().token.replace(None)
        self.assertEqual(harness.admin("/status.json", host=REBOUND).status, 421)
        self.assertEqual(harness.admin("/status.json").status, 200)


class TokenTests(SynchronousTestCase):
    """
    The bearer token of a non-loopback admin.
    """

    def test_required(self) -> None:
        """
        Without the token, or with a wrong one, every path is 401 with the
        challenges; with it, as a bearer token or a basic password, 200.
        """
        harness = admin_harness(token_file(self))
        for headers in (
            [],
            [(b"Authorization", b"Bearer wrong")],
            [(b"Authorization", b"Token x")],
        ):
            answer = harness.admin("/status.json", headers=headers)
            self.assertEqual(answer.status, 401)
            self.assertEqual(
                answer.values(b"www-authenticate"),
                [b'Bearer realm="balancebeam admin"', b'Basic realm="balancebeam admin"'],
            )
            self.assertNotIn(TOKEN.encode(), answer.body)
        bearer = [(b"Authorization", b"Bearer " + TOKEN.encode())]
        self.assertEqual(harness.admin("/metrics", headers=bearer).status, 200)
        basic = base64.b64encode(b"anyone:" + TOKEN.encode())
        self.assertEqual(
            harness.admin("/status", headers=[(b"Authorization", b"Basic " + basic)]).status, 200
        )

    def test_control_needs_token(self) -> None:
        """
        A drain without the token changes nothing.
        """
        harness = admin_harness(token_file(self))
        self.assertEqual(harness.admin("/upstreams/127.0.0.1:9001/drain", b"POST").status, 401)
        self.assertTrue(harness.service.registry.upstreams[0].serving)

    def test_never_logged(self) -> None:
        """
        Neither the token nor the Authorization header appears in any log
        event, in the token holder's repr, or in errors about the file.
        """
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )
        harness = admin_harness(token_file(self))
        harness.admin("/status.json", headers=[(b"Authorization", b"Bearer wrong")])
        harness.admin("/status.json", headers=[(b"Authorization", b"Bearer " + TOKEN.encode())])
        text = repr([dict(event) for event in events])
        self.assertNotIn(TOKEN, text)
        self.assertNotIn("Bearer", text)
        self.assertNotIn(TOKEN, repr(harness.service.admin_token))

    def test_token_file_errors(self) -> None:
        """
        An empty or missing token file is an error naming the file only.
        """
        empty = token_file(self, "  \n")
        error = self.assertRaises(ValueError, read_token_file, empty)
        self.assertEqual(str(error), f"--admin-token-file {empty!r} is empty")
        error = self.assertRaises(ValueError, read_token_file, empty + ".missing")
        self.assertIn("cannot be read: No such file or directory", str(error))
        spaced = token_file(self, "two words")
        self.assertIn(
            "one token without spaces", str(self.assertRaises(ValueError, read_token_file, spaced))
        )

    def test_replace(self) -> None:
        """
        A replaced token is the only one accepted from then on.
        """
        from twisted.web.test.requesthelper import DummyRequest

        token = AdminToken("old")
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer old"])
        self.assertTrue(token.allows(request))  # type: ignore[arg-type]  # a request fake
        token.replace("new")
        self.assertFalse(token.allows(request))  # type: ignore[arg-type]  # a request fake
        self.assertTrue(token.required)


class RequestRateTests(SynchronousTestCase):
    """
    L{RequestRate}: requests per second over the last minute.
    """

    def test_rate_over_window(self) -> None:
        """
        The rate is the count's growth over the samples of the last window.
        """
        clock = Clock()
        count = [0]
        rate = RequestRate(clock, lambda: count[0], window=60.0, interval=1.0)
        rate.startService()
        self.assertEqual(rate.per_second(), 0.0)
        for _ in range(30):
            count[0] += 10
            clock.advance(1.0)
        self.assertEqual(rate.per_second(), 10.0)
        for _ in range(90):
            count[0] += 2
            clock.advance(1.0)
        self.assertEqual(rate.per_second(), 2.0)
        rate.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class LoadGaugeTests(SynchronousTestCase):
    """
    The requests in flight and open connections count the HTTPS listeners'
    clients too.
    """

    def test_gauges_of_every_listener(self) -> None:
        """
        Requests in flight and connections open are read from every relay
        factory (plain and HTTPS), not only the plain one.
        """
        plain = _Factory([_Connection(busy=True), _Connection(busy=False)], detached=1)
        https = _Factory([_Connection(busy=True)])
        service: Any = _Service((plain, https))
        self.assertEqual(requests_in_flight(service), 3)
        self.assertEqual(client_connections_open(service), 3)


class _Connection:
    """
    A client connection as the gauges read it: serving a request or not.
    """

    def __init__(self, busy: bool) -> None:
        self.exchange = object() if busy else None


class _Factory:
    """
    A relay factory as the gauges read it: its connections, and the
    requests whose client has gone (C{detached}).
    """

    def __init__(self, connections: list[_Connection], detached: int = 0) -> None:
        self.connections = set(connections)
        self.detached = {object() for _ in range(detached)}


class _Service:
    """
    A balancer as the gauges read it: its relay factories.
    """

    def __init__(self, factories: tuple[_Factory, ...]) -> None:
        self.relay_factories = factories
