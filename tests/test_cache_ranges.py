"""
Tests for L{balancebeam.cache.ranges}: single byte ranges (RFC 9110 section 14).
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.ranges import (
    PASS_THROUGH,
    UNSATISFIABLE,
    content_range,
    parse_range,
    unsatisfied_range,
)


class ParseRangeTests(SynchronousTestCase):
    """
    Tests for L{parse_range}.
    """

    def test_forms(self) -> None:
        """
        first-last, first- and -suffix select inclusive ranges, clamped to the length.
        """
        self.assertEqual(parse_range(b"bytes=0-9", 100), (0, 9))
        self.assertEqual(parse_range(b"bytes=90-", 100), (90, 99))
        self.assertEqual(parse_range(b"bytes=90-500", 100), (90, 99))
        self.assertEqual(parse_range(b"bytes=-10", 100), (90, 99))
        self.assertEqual(parse_range(b"bytes=-500", 100), (0, 99))
        self.assertEqual(parse_range(b"Bytes = 5 - 6 ", 100), (5, 6))

    def test_unsatisfiable(self) -> None:
        """
        A first position at or past the end, a zero suffix, or any first
        position on an empty body are unsatisfiable.
        """
        self.assertIs(parse_range(b"bytes=100-", 100), UNSATISFIABLE)
        self.assertIs(parse_range(b"bytes=-0", 100), UNSATISFIABLE)
        self.assertIs(parse_range(b"bytes=0-", 0), UNSATISFIABLE)
        self.assertIs(parse_range(b"bytes=99999999999999999999999-", 100), UNSATISFIABLE)

    def test_suffix_of_an_empty_body(self) -> None:
        """
        A non-zero suffix on an empty body is satisfiable (RFC 9110 section
        14.1.1) but has no Content-Range: the Range is ignored (200).
        """
        self.assertIsNone(parse_range(b"bytes=-5", 0))

    def test_pass_through(self) -> None:
        """
        Several ranges and other units pass through to the upstream.
        """
        self.assertIs(parse_range(b"bytes=0-1,5-6", 100), PASS_THROUGH)
        self.assertIs(parse_range(b"items=0-5", 100), PASS_THROUGH)

    def test_invalid_ignored(self) -> None:
        """
        Syntactically invalid ranges are ignored (None): the whole response is sent.
        """
        for value in (b"bytes=5-2", b"bytes=", b"bytes=a-b", b"bytes=-", b"0-5", b"=0-5",
                      b"bytes=1-2-3"):
            self.assertIsNone(parse_range(value, 100), value)

    def test_huge_numbers(self) -> None:
        """
        Numbers too long to convert cheaply are treated as past any end.
        """
        self.assertEqual(parse_range(b"bytes=0-" + b"9" * 5000, 10), (0, 9))
        self.assertEqual(parse_range(b"bytes=-" + b"9" * 5000, 10), (0, 9))

    def test_random_values_never_raise(self) -> None:
        """
        Random values give a valid result for a 50-byte body.
        """
        rng = random.Random(4)
        alphabet = b"bytes=-,0123456789 x"
        for _ in range(3000):
            value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(16)))
            result = parse_range(value, 50)
            if isinstance(result, tuple):
                first, last = result
                self.assertTrue(0 <= first <= last < 50, (value, result))

    def test_content_range(self) -> None:
        """
        Content-Range values for 206 and 416.
        """
        self.assertEqual(content_range(0, 9, 100), b"bytes 0-9/100")
        self.assertEqual(unsatisfied_range(100), b"bytes */100")
