"""
Purging stored responses by URL or by path (the admin's C{POST /cache/purge}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.keys import primary_key
from balancebeam.cache.purge import CachePurger


class _Store:
    """
    A store holding keys, recording what is invalidated.
    """

    def __init__(self, keys: list[bytes]) -> None:
        self.held = keys
        self.invalidated: list[bytes] = []

    def keys(self) -> list[bytes]:
        return list(self.held)

    def invalidate(self, primary: bytes) -> int:
        self.invalidated.append(primary)
        if primary in self.held:
            self.held.remove(primary)
            return 1
        return 0


class PurgeTests(SynchronousTestCase):
    """
    A purge names what it drops.
    """

    def setUp(self) -> None:
        self.store = _Store(
            [
                primary_key(b"http", b"a.example", b"/page?x=1"),
                primary_key(b"https", b"b.example", b"/page?x=1"),
                primary_key(b"http", b"a.example", b"/other/page?x=1"),
            ]
        )
        self.purger = CachePurger(self.store)  # type: ignore[arg-type]  # a fake store

    def test_absolute_url_drops_that_resource(self) -> None:
        """
        An absolute URL drops its host's resource only, its host matched
        without case or default port.
        """
        self.assertEqual(self.purger.purge("http://A.example:80/page?x=1"), 1)
        self.assertEqual(len(self.store.held), 2)

    def test_path_drops_it_on_every_host(self) -> None:
        """
        A path drops that exact path and query on every host and scheme,
        and nothing that merely ends the same way.
        """
        self.assertEqual(self.purger.purge("/page?x=1"), 2)
        self.assertEqual(self.store.held, [primary_key(b"http", b"a.example", b"/other/page?x=1")])

    def test_anything_else_is_an_error(self) -> None:
        """
        Neither an absolute http(s) URL nor a path is refused.
        """
        self.assertRaises(ValueError, self.purger.purge, "ftp://x/y")
        self.assertRaises(ValueError, self.purger.purge, "page")
        self.assertRaises(ValueError, self.purger.purge, "http://[::1")
        self.assertRaises(ValueError, self.purger.purge, "http://a..b/")
