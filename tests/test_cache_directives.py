"""
Tests for L{balancebeam.cache.directives} and the date and validator parsing
of L{balancebeam.cache.freshness}: malformed values give defined results and
never raise.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.directives import (
    CONFLICT,
    DELTA_SECONDS_MAX,
    delta_seconds,
    parse_cache_control,
    split_list,
    unquote,
)
from balancebeam.cache.freshness import entity_tag, parse_http_date

from .test_cache_fakes import EPOCH

NOV_6_1994 = 784111777.0


class SplitListTests(SynchronousTestCase):
    """
    Tests for L{split_list}.
    """

    def test_members_of_several_lines(self) -> None:
        """
        Members of every field line come in order, stripped, empty ones dropped.
        """
        self.assertEqual(
            split_list([b" gzip ,, br", b"", b"\tdeflate\t"]), [b"gzip", b"br", b"deflate"]
        )

    def test_commas_in_quoted_strings(self) -> None:
        """
        A comma inside a quoted string does not split, even after an escaped quote.
        """
        self.assertEqual(
            split_list([b'no-cache="a, b", x="q\\", r", max-age=5']),
            [b'no-cache="a, b"', b'x="q\\", r"', b"max-age=5"],
        )

    def test_unterminated_quote(self) -> None:
        """
        An unterminated quoted string runs to the end of its line only.
        """
        self.assertEqual(split_list([b'a="x, y', b"b"]), [b'a="x, y', b"b"])


class CacheControlTests(SynchronousTestCase):
    """
    Tests for L{parse_cache_control} and L{delta_seconds}.
    """

    def test_directives(self) -> None:
        """
        Names are lower-cased, arguments unquoted, valueless directives map to None.
        """
        self.assertEqual(
            parse_cache_control([b'Max-Age=60, PUBLIC', b'no-cache="Set-Cookie, X"']),
            {b"max-age": b"60", b"public": None, b"no-cache": b"Set-Cookie, X"},
        )

    def test_repeated_same_value(self) -> None:
        """
        A directive repeated with the same argument keeps it.
        """
        self.assertEqual(parse_cache_control([b"max-age=5", b"max-age=5"]), {b"max-age": b"5"})

    def test_repeated_conflicting_value(self) -> None:
        """
        A directive repeated with different arguments becomes CONFLICT, which is invalid.
        """
        directives = parse_cache_control([b"max-age=5, max-age=50"])
        self.assertEqual(directives, {b"max-age": CONFLICT})
        self.assertIsNone(delta_seconds(directives[b"max-age"]))

    def test_garbage_members_ignored(self) -> None:
        """
        Members that are not tokens are ignored; the rest are kept.
        """
        self.assertEqual(
            parse_cache_control([b"@@@, =5, max-age=3, {x}=1"]), {b"max-age": b"3"}
        )

    def test_delta_seconds(self) -> None:
        """
        Only digits are delta-seconds; huge values are capped at 2^31.
        """
        self.assertEqual(delta_seconds(b"0"), 0)
        self.assertEqual(delta_seconds(b"120"), 120)
        self.assertEqual(delta_seconds(b"99999999999999999999999"), DELTA_SECONDS_MAX)
        self.assertEqual(delta_seconds(b"3000000000"), DELTA_SECONDS_MAX)
        for invalid in (None, b"", b"-1", b"1.5", b" 5", b"5s", b"0x10"):
            self.assertIsNone(delta_seconds(invalid), invalid)

    def test_unquote(self) -> None:
        """
        Quoted strings lose their quotes and escapes; other values are unchanged.
        """
        self.assertEqual(unquote(b'"a\\"b"'), b'a"b')
        self.assertEqual(unquote(b"60"), b"60")
        self.assertEqual(unquote(b'"'), b'"')

    def test_random_bytes_never_raise(self) -> None:
        """
        Random field values parse to a dict of bytes keys without raising.
        """
        rng = random.Random(10)
        alphabet = b'abc=,;" \t\\-max-age0123456789\x80\xff'
        for _ in range(2000):
            value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(30)))
            directives = parse_cache_control([value])
            for name, argument in directives.items():
                self.assertIsInstance(name, bytes)
                delta_seconds(argument)


class HTTPDateTests(SynchronousTestCase):
    """
    Tests for L{parse_http_date} and L{entity_tag}.
    """

    def test_three_formats(self) -> None:
        """
        IMF-fixdate, RFC 850 and asctime give the same time.
        """
        for value in (
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ):
            self.assertEqual(parse_http_date(value, EPOCH), NOV_6_1994, value)

    def test_rfc850_century(self) -> None:
        """
        A two-digit year more than 50 years ahead is taken from the past century.
        """
        self.assertEqual(parse_http_date(b"Tuesday, 01-Jan-80 00:00:00 GMT", EPOCH), 315532800.0)
        self.assertEqual(
            parse_http_date(b"Tuesday, 01-Jan-70 00:00:00 GMT", EPOCH), 3155760000.0
        )
        self.assertEqual(
            parse_http_date(b"Monday, 01-Jan-24 00:00:00 GMT", EPOCH), 1704067200.0
        )

    def test_invalid_dates(self) -> None:
        """
        Invalid dates, "0" among them, are None.
        """
        for value in (
            b"0",
            b"-1",
            b"",
            b"yesterday",
            b"Sun, 30 Feb 2020 00:00:00 GMT",
            b"Sun, 06 Nov 1994 25:00:00 GMT",
            b"Sun, 06 Xyz 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 PST",
            b"\xff\xfe",
        ):
            self.assertIsNone(parse_http_date(value, EPOCH), value)

    def test_random_dates_never_raise(self) -> None:
        """
        Mutated dates either parse to a float or give None.
        """
        rng = random.Random(11)
        base = bytearray(b"Sun, 06 Nov 1994 08:49:37 GMT")
        for _ in range(2000):
            value = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                value[rng.randrange(len(value))] = rng.randrange(256)
            parsed = parse_http_date(bytes(value), EPOCH)
            self.assertTrue(parsed is None or isinstance(parsed, float))

    def test_entity_tags(self) -> None:
        """
        Strong and weak entity-tags are accepted; unquoted ones are not.
        """
        self.assertEqual(entity_tag(b' "abc" '), b'"abc"')
        self.assertEqual(entity_tag(b'W/"abc"'), b'W/"abc"')
        for invalid in (b"abc", b'"a"b"', b'w/"x"', b""):
            self.assertIsNone(entity_tag(invalid), invalid)
