"""
The cache and the firewall on reload, and the admin's cache purge, on a
memory reactor.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.config import CacheConfig, WafConfig
from balancebeam.waf.build import unavailable_reason
from tests.operations_helpers import harness_config
from tests.test_reload import reloadable

CACHEABLE = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello"


class CacheReloadTests(SynchronousTestCase):
    """
    A reload that changes the cache's settings gives new requests a new,
    empty cache; turning it off removes it from the chain.
    """

    def test_new_size_new_cache(self) -> None:
        """
        After a reload with another C{--cache-size}, the cache filter is a
        new one of that size, last in the chain, its counters going on, and
        the admin purges the new one.
        """
        harness, loader, reloader = reloadable(
            harness_config(cache=CacheConfig(size=1 << 20), admin_bind="tcp:9100")
        )
        service = harness.service
        old = service.cache
        assert old is not None
        old.counters.hits = 7
        loader.config = harness.reconfigured(cache=CacheConfig(size=2 << 20))
        self.assertTrue(reloader.reload())
        new = service.cache
        assert new is not None
        self.assertIsNot(new, old)
        self.assertEqual(new.store.max_bytes, 2 << 20)
        self.assertIs(service.filters[-1], new)
        chain = service.factory.settings.filters
        assert chain is not None
        self.assertIs(chain.filters[-1], new)
        self.assertEqual(new.counters.hits, 7)
        self.assertEqual(service.config.cache.size, 2 << 20)
        purge = harness.admin("/cache/purge?url=/x", method=b"POST")
        self.assertEqual(purge.status, 200)

    def test_cache_turned_off(self) -> None:
        """
        A reload with C{--cache-size 0} takes the cache out of the chain and
        out of the admin's purge endpoint.
        """
        harness, loader, reloader = reloadable(
            harness_config(cache=CacheConfig(size=1 << 20), admin_bind="tcp:9100")
        )
        loader.config = harness.reconfigured(cache=CacheConfig(size=0))
        self.assertTrue(reloader.reload())
        self.assertIsNone(harness.service.cache)
        self.assertEqual(harness.service.filters, ())
        self.assertIsNone(harness.service.factory.settings.filters)
        self.assertEqual(harness.admin("/cache/purge?url=/x", method=b"POST").status, 404)


class ListenerFieldsTests(SynchronousTestCase):
    """
    What a reload cannot change stays as it was.
    """

    def test_process_model_kept(self) -> None:
        """
        A changed C{--workers} is left as it was, and the rest applies.
        """
        harness, loader, reloader = reloadable()
        loader.config = harness.reconfigured(workers=4, strategy="p2c")
        self.assertTrue(reloader.reload())
        self.assertEqual(harness.service.config.workers, 1)
        self.assertEqual(harness.service.config.strategy, "p2c")


class FirewallReloadTests(SynchronousTestCase):
    """
    Firewall settings are checked before a reload changes anything.
    """

    def setUp(self) -> None:
        """
        The engine must be installed: a missing one fails, it is not skipped.
        """
        reason = unavailable_reason()
        if reason is not None:
            self.fail(f"the WAF engine is missing ({reason}); run bash .ci/install-waf.sh")

    def test_broken_rules_refuse_the_reload(self) -> None:
        """
        Turning the firewall on with a rule file that fails to load refuses
        the whole reload: nothing changes and the failure is counted.
        """
        harness, loader, reloader = reloadable()
        strategy = harness.service.config.strategy
        broken = self.mktemp()
        with open(broken, "w") as rules:
            rules.write('SecRule ARGS "@rx a" "id:1,phase:2,deny,nosuchaction"\n')
        loader.config = harness.reconfigured(
            waf=WafConfig(mode="block", rules=(broken,)),
            strategy="p2c" if strategy != "p2c" else "random",
        )
        reloaded = reloader.reload()
        service = harness.service
        if service.waf is not None:
            service.waf.stopService()
        self.assertFalse(reloaded)
        self.assertIsNone(service.waf)
        self.assertEqual(service.config.strategy, strategy)
        self.assertEqual(service.reloads.failure, 1)
        self.assertIn(broken, service.reloads.last_error or "")

    def test_firewall_turned_on(self) -> None:
        """
        Turning the firewall on puts its filter in the chain for new
        requests, before the cache.
        """
        harness, loader, reloader = reloadable(harness_config(cache=CacheConfig(size=1 << 20)))
        loader.config = harness.reconfigured(waf=WafConfig(mode="detect"))
        self.assertTrue(reloader.reload())
        service = harness.service
        assert service.waf is not None
        self.assertEqual(list(service.filters), [service.waf.filter, service.cache])
        service.waf.stopService()
