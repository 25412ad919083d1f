"""
Tests for L{balancebeam.cache.freshness}: storability, freshness lifetime
and age (RFC 9111 sections 3, 4.2 and 5.2.2; RFC 5861).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.freshness import HEURISTIC_MAX, Analysis, analyse

from .test_cache_fakes import EPOCH, http_date

NOW = EPOCH + 1000


def run(
    fields: Sequence[tuple[bytes, bytes]],
    status: int = 200,
    request_time: float = NOW,
    response_time: float = NOW,
    authorized: bool = False,
    store_set_cookie: bool = False,
) -> Analysis:
    """
    Analyse a response with C{fields}, dated C{NOW} unless it has a Date.
    """
    names = {name for name, _ in fields}
    if b"date" not in names:
        fields = [(b"date", http_date(NOW)), *fields]
    return analyse(status, fields, request_time, response_time, authorized, store_set_cookie)


class LifetimeTests(SynchronousTestCase):
    """
    The freshness lifetime, in order of precedence (RFC 9111 section 4.2.1).
    """

    def test_s_maxage_first(self) -> None:
        """
        s-maxage wins over max-age and Expires in a shared cache.
        """
        result = run(
            [
                (b"cache-control", b"max-age=10, s-maxage=30"),
                (b"expires", http_date(NOW + 100)),
            ]
        )
        self.assertEqual(result.lifetime, 30)
        self.assertEqual(result.fresh_until, NOW + 30)

    def test_max_age_before_expires(self) -> None:
        """
        max-age wins over Expires.
        """
        result = run([(b"cache-control", b"max-age=10"), (b"expires", http_date(NOW + 100))])
        self.assertEqual(result.lifetime, 10)

    def test_expires_against_date(self) -> None:
        """
        Expires is measured from Date, not from the arrival time.
        """
        result = run(
            [(b"date", http_date(NOW - 50)), (b"expires", http_date(NOW + 50))],
        )
        self.assertEqual(result.lifetime, 100)
        self.assertEqual(result.fresh_until, NOW + 50)

    def test_invalid_expires_is_expired(self) -> None:
        """
        Expires: 0 and other invalid dates mean already expired, but the response is storable
        with a validator.
        """
        for value in (b"0", b"-1", b"never"):
            result = run([(b"expires", value), (b"etag", b'"x"')])
            self.assertEqual(result.lifetime, 0, value)
            self.assertIsNone(result.reason)

    def test_conflicting_expires_is_expired(self) -> None:
        """
        Two differing Expires fields make the response stale.
        """
        result = run([(b"expires", http_date(NOW + 50)), (b"expires", http_date(NOW + 90))])
        self.assertEqual(result.lifetime, 0)

    def test_invalid_max_age_is_stale(self) -> None:
        """
        A max-age that is not delta-seconds, or conflicts, gives a zero lifetime.
        """
        for value in (b"max-age=ten", b"max-age", b"max-age=5, max-age=7", b"s-maxage=-1"):
            result = run([(b"cache-control", value), (b"expires", http_date(NOW + 100))])
            self.assertEqual(result.lifetime, 0, value)

    def test_quoted_max_age(self) -> None:
        """
        A quoted max-age argument is accepted.
        """
        self.assertEqual(run([(b"cache-control", b'max-age="40"')]).lifetime, 40)

    def test_heuristic(self) -> None:
        """
        Without explicit freshness, a heuristically cacheable status gets 10% of the time
        since Last-Modified.
        """
        result = run([(b"last-modified", http_date(NOW - 1000))])
        self.assertEqual(result.lifetime, 100)
        self.assertIsNone(result.reason)

    def test_heuristic_capped(self) -> None:
        """
        Heuristic freshness is capped at one day.
        """
        result = run([(b"last-modified", http_date(NOW - 365 * 86400))])
        self.assertEqual(result.lifetime, HEURISTIC_MAX)

    def test_no_heuristic_with_explicit_freshness(self) -> None:
        """
        An explicit max-age=0 is not replaced by a heuristic.
        """
        result = run([(b"cache-control", b"max-age=0"), (b"last-modified", http_date(NOW - 1000))])
        self.assertEqual(result.lifetime, 0)

    def test_no_heuristic_for_other_statuses(self) -> None:
        """
        A 302 without explicit freshness gets no heuristic and is not stored.
        """
        result = run([(b"last-modified", http_date(NOW - 1000))], status=302)
        self.assertEqual(result.lifetime, 0)
        self.assertEqual(result.reason, "status")

    def test_public_allows_heuristic(self) -> None:
        """
        public makes any final status storable with heuristic freshness.
        """
        result = run(
            [(b"cache-control", b"public"), (b"last-modified", http_date(NOW - 1000))], status=302
        )
        self.assertEqual(result.lifetime, 100)
        self.assertIsNone(result.reason)


class AgeTests(SynchronousTestCase):
    """
    The age calculation (RFC 9111 section 4.2.3), as the time age was 0.
    """

    def test_upstream_age_counts(self) -> None:
        """
        The upstream's Age header makes the response that much older.
        """
        result = run([(b"cache-control", b"max-age=100"), (b"age", b"30")])
        self.assertEqual(result.born, NOW - 30)
        self.assertEqual(result.fresh_until, NOW + 70)

    def test_response_delay_counts(self) -> None:
        """
        The time the request took is added to the upstream's Age.
        """
        result = run([(b"cache-control", b"max-age=100"), (b"age", b"30")], request_time=NOW - 5)
        self.assertEqual(result.born, NOW - 35)

    def test_apparent_age_from_date(self) -> None:
        """
        A Date in the past gives an apparent age when it exceeds the corrected Age.
        """
        result = run([(b"date", http_date(NOW - 40)), (b"age", b"10"), (b"cache-control",
                                                                          b"max-age=100")])
        self.assertEqual(result.born, NOW - 40)

    def test_date_in_future_ignored(self) -> None:
        """
        A Date ahead of the cache's clock gives no negative age.
        """
        result = run([(b"date", http_date(NOW + 500)), (b"cache-control", b"max-age=100")])
        self.assertEqual(result.born, NOW)

    def test_invalid_age_ignored(self) -> None:
        """
        An Age that is not delta-seconds is ignored; a list uses its first member.
        """
        self.assertEqual(run([(b"age", b"abc"), (b"cache-control", b"max-age=9")]).born, NOW)
        self.assertEqual(run([(b"age", b"-5"), (b"cache-control", b"max-age=9")]).born, NOW)
        self.assertEqual(run([(b"age", b"7, 100"), (b"cache-control", b"max-age=9")]).born,
                         NOW - 7)

    def test_invalid_date_uses_arrival(self) -> None:
        """
        An invalid Date is replaced by the arrival time for Expires.
        """
        result = run([(b"date", b"garbage"), (b"expires", http_date(NOW + 60))])
        self.assertEqual(result.date, NOW)
        self.assertEqual(result.lifetime, 60)


class StorableTests(SynchronousTestCase):
    """
    What may be stored (RFC 9111 section 3).
    """

    def test_default_cacheable_statuses(self) -> None:
        """
        The heuristically cacheable statuses are stored with just a validator.
        """
        for status in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501):
            self.assertIsNone(run([(b"etag", b'"v"')], status=status).reason, status)

    def test_other_status_needs_explicit_freshness(self) -> None:
        """
        Any final status is stored when freshness is explicit, not otherwise.
        """
        self.assertEqual(run([(b"etag", b'"v"')], status=500).reason, "status")
        self.assertIsNone(run([(b"cache-control", b"max-age=5")], status=500).reason)
        self.assertIsNone(run([(b"expires", http_date(NOW + 5))], status=302).reason)

    def test_partial_and_not_modified_never(self) -> None:
        """
        206 and 304 responses are never stored.
        """
        self.assertEqual(run([(b"cache-control", b"max-age=5")], status=206).reason, "partial")
        self.assertEqual(run([(b"cache-control", b"max-age=5")], status=304).reason, "status")

    def test_no_store_and_private(self) -> None:
        """
        no-store and private (qualified or not) prevent storing.
        """
        self.assertEqual(run([(b"cache-control", b"max-age=5, no-store")]).reason, "no-store")
        self.assertEqual(run([(b"cache-control", b"max-age=5, private")]).reason, "private")
        self.assertEqual(
            run([(b"cache-control", b'max-age=5, private="x-user"')]).reason, "private"
        )

    def test_must_understand(self) -> None:
        """
        must-understand overrides no-store for an understood status, not for another.
        """
        directives = [(b"cache-control", b"max-age=5, no-store, must-understand")]
        self.assertIsNone(run(directives).reason)
        self.assertEqual(run(directives, status=299).reason, "must-understand")

    def test_authorization(self) -> None:
        """
        A response to a request with Authorization is stored only with public, s-maxage or
        must-revalidate.
        """
        self.assertEqual(
            run([(b"cache-control", b"max-age=5")], authorized=True).reason, "authorization"
        )
        for allowing in (b"public, max-age=5", b"s-maxage=5", b"max-age=5, must-revalidate"):
            result = run([(b"cache-control", allowing)], authorized=True)
            self.assertIsNone(result.reason, allowing)
            self.assertTrue(result.authorized_ok)

    def test_set_cookie(self) -> None:
        """
        A response with Set-Cookie is not stored unless configured otherwise.
        """
        fields = [(b"cache-control", b"max-age=5"), (b"set-cookie", b"a=b")]
        self.assertEqual(run(fields).reason, "set-cookie")
        self.assertIsNone(run(fields, store_set_cookie=True).reason)

    def test_useless_response_not_stored(self) -> None:
        """
        A response that can never be reused (no freshness, no validator) is not stored.
        """
        self.assertEqual(run([]).reason, "not-reusable")
        self.assertEqual(run([(b"cache-control", b"no-cache, max-age=60")]).reason,
                         "not-reusable")
        self.assertIsNone(run([(b"cache-control", b"no-cache"), (b"etag", b'"a"')]).reason)

    def test_invalid_etag_is_no_validator(self) -> None:
        """
        An unquoted ETag is not a validator.
        """
        self.assertIsNone(run([(b"etag", b"abc")]).etag)
        self.assertEqual(run([(b"etag", b"abc")]).reason, "not-reusable")


class StaleWindowTests(SynchronousTestCase):
    """
    The stale windows of RFC 5861 and the directives that forbid them.
    """

    def test_windows(self) -> None:
        """
        stale-while-revalidate and stale-if-error give their windows.
        """
        result = run([(b"cache-control", b"max-age=5, stale-while-revalidate=30, "
                                          b"stale-if-error=600")])
        self.assertEqual(
            (result.stale_while_revalidate, result.stale_if_error), (30.0, 600.0)
        )

    def test_forbidden_by_revalidation_directives(self) -> None:
        """
        must-revalidate, proxy-revalidate, s-maxage and no-cache forbid serving stale.
        """
        for directive in (b"must-revalidate", b"proxy-revalidate", b"s-maxage=5", b"no-cache"):
            result = run([(b"cache-control", b"max-age=5, stale-while-revalidate=30, "
                                              b"stale-if-error=60, " + directive),
                          (b"etag", b'"e"')])
            self.assertEqual(
                (result.stale_while_revalidate, result.stale_if_error), (0.0, 0.0), directive
            )
            self.assertTrue(result.must_revalidate or result.no_cache)

    def test_invalid_windows_ignored(self) -> None:
        """
        An invalid stale window argument gives no window.
        """
        result = run([(b"cache-control", b"max-age=5, stale-while-revalidate=x, stale-if-error")])
        self.assertEqual(
            (result.stale_while_revalidate, result.stale_if_error), (0.0, 0.0)
        )
