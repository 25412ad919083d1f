"""
The firewall in a real balancer on loopback, with the real engine and the
system's Core Rule Set (C{bash .ci/install-waf.sh} installs both).
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from balancebeam.config import CacheConfig, WafConfig
from balancebeam.waf.build import unavailable_reason
from tests.test_cache_integration import Origin, reply
from tests.test_integration import HOST, IntegrationTestCase, build_request

SQL_INJECTION = b"/products?id=1%27%20OR%20%271%27%3D%271%27%20--"


class FirewallTests(IntegrationTestCase):
    """
    A blocked request never reaches an upstream; a benign one does.
    """

    def setUp(self) -> None:
        """
        The engine must be installed: a missing one fails, it is not skipped.
        """
        reason = unavailable_reason()
        if reason is not None:
            self.fail(f"the WAF engine is missing ({reason}); run bash .ci/install-waf.sh")

    async def test_block_mode(self) -> None:
        """
        With C{--waf block}, an SQL injection gets 403 with the request id
        and is not relayed; a benign request and a benign form post are
        relayed whole; the counters say so.
        """
        upstream = self.start_upstream("guarded")
        service = self.start_balancer([upstream], waf=WafConfig(mode="block"))
        attack = await self.fetch(build_request(target=SQL_INJECTION))
        self.assertEqual(attack.status, 403)
        self.assertIn(b"request id", attack.body)
        self.assertEqual(upstream.requests, [])
        benign = await self.fetch(build_request(target=b"/products?id=42"))
        self.assertEqual(benign.status, 200)
        form = b"name=Ada+Lovelace&comment=I+would+like+to+order+two+more+please"
        posted = await self.fetch(
            build_request(
                b"POST",
                b"/orders",
                (HOST, (b"Content-Type", b"application/x-www-form-urlencoded")),
                body=form,
            ),
            b"POST",
        )
        self.assertEqual(posted.status, 200)
        self.assertEqual([r.target for r in upstream.requests], [b"/products?id=42", b"/orders"])
        self.assertEqual(upstream.requests[1].body, form)
        assert service.waf is not None
        counters = service.waf.counters
        self.assertEqual((counters.inspected, counters.blocked), (3, 1))

    async def test_detect_mode_passes_and_logs(self) -> None:
        """
        With C{--waf detect}, the same attack is relayed, and one log event
        names the rules that matched.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        upstream = self.start_upstream("watched")
        self.start_balancer([upstream], waf=WafConfig(mode="detect"))
        response = await self.fetch(build_request(target=SQL_INJECTION))
        self.assertEqual(response.status, 200)
        self.assertEqual(len(upstream.requests), 1)
        matched = [event for event in events if event.get("rule_ids")]
        self.assertEqual(len(matched), 1)
        self.assertEqual(matched[0]["action"], "detect")

    async def test_body_over_the_limit_block_mode(self) -> None:
        """
        In block mode a body over C{--waf-body-limit} gets 413 and is not
        relayed.
        """
        upstream = self.start_upstream("limited")
        self.start_balancer([upstream], waf=WafConfig(mode="block", body_limit=1024))
        response = await self.fetch(
            build_request(b"POST", b"/upload", body=b"x" * 4096), b"POST"
        )
        self.assertEqual(response.status, 413)
        self.assertEqual(upstream.requests, [])


class FirewallBeforeCacheTests(IntegrationTestCase):
    """
    The firewall sits before the cache: a blocked request never fills it.
    """

    def setUp(self) -> None:
        """
        The engine must be installed: a missing one fails, it is not skipped.
        """
        reason = unavailable_reason()
        if reason is not None:
            self.fail(f"the WAF engine is missing ({reason}); run bash .ci/install-waf.sh")

    async def test_blocked_request_neither_reaches_nor_fills_the_cache(self) -> None:
        """
        With both on, an attack gets 403 and the cache counts nothing for it
        (no miss, no fill); a cacheable benign request then fills it and a
        second one is a hit, without a second upstream request.
        """
        origin = Origin()
        origin.start()
        self.addCleanup(origin.stop)
        origin.routes[b"/products"] = lambda _: reply(
            fields=[b"Cache-Control: max-age=60"], body=b"catalogue\n"
        )
        service = self.start_balancer(
            [origin.address], waf=WafConfig(mode="block"), cache=CacheConfig(size=1 << 20)
        )
        assert service.cache is not None
        counters = service.cache.counters
        attack = await self.fetch(build_request(target=b"/products" + SQL_INJECTION[9:]))
        self.assertEqual(attack.status, 403)
        self.assertEqual((counters.misses, counters.stored, counters.hits), (0, 0, 0))
        self.assertEqual(origin.requests, [])
        first = await self.fetch(build_request(target=b"/products"))
        second = await self.fetch(build_request(target=b"/products"))
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual(second.body, b"catalogue\n")
        self.assertEqual((counters.misses, counters.stored, counters.hits), (1, 1, 1))
        self.assertEqual(len(origin.requests), 1)
