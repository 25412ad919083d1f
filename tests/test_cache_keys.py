"""
Tests for L{balancebeam.cache.keys}: primary keys, Vary names
and secondary keys, and same-origin resolution of Location.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.keys import (
    primary_key,
    same_origin_key,
    secondary_key,
    vary_names,
)
from balancebeam.http1.heads import parse_request_head


def fields_of(*lines: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """
    The parsed fields of a GET request with these header lines.
    """
    head = b"\r\n".join([b"GET / HTTP/1.1", b"Host: h", *lines])
    return parse_request_head(head, 100).fields


class PrimaryKeyTests(SynchronousTestCase):
    """
    Tests for L{primary_key}.
    """

    def test_scheme_host_target(self) -> None:
        """
        The key holds the scheme, the host and the full target with its query.
        """
        self.assertEqual(primary_key(b"https", b"example.com", b"/a?b=1"),
                         b"https://example.com/a?b=1")
        self.assertNotEqual(primary_key(b"http", b"h", b"/a?b=1"),
                            primary_key(b"http", b"h", b"/a?b=2"))
        self.assertNotEqual(primary_key(b"http", b"h", b"/a"), primary_key(b"https", b"h", b"/a"))

    def test_host_normalised(self) -> None:
        """
        Host case, the scheme's default port and an empty port do not matter.
        """
        expected = b"http://example.com/"
        for host in (b"EXAMPLE.com", b"example.com:80", b"example.com:"):
            self.assertEqual(primary_key(b"http", host, b"/"), expected, host)
        self.assertEqual(primary_key(b"https", b"example.com:443", b"/"), b"https://example.com/")
        self.assertEqual(primary_key(b"https", b"example.com:80", b"/"),
                         b"https://example.com:80/")
        self.assertEqual(primary_key(b"http", b"example.com:8080", b"/"),
                         b"http://example.com:8080/")

    def test_missing_host(self) -> None:
        """
        An HTTP/1.0 request without Host has an empty host.
        """
        self.assertEqual(primary_key(b"http", None, b"/x"), b"http:///x")

    def test_target_kept_as_sent(self) -> None:
        """
        The target is the one sent upstream, byte for byte: targets an
        upstream may answer differently never share an entry, whatever
        RFC 3986 calls equivalent.
        """
        targets = (b"/a/b~c?q=%2F", b"/a/b%7ec?q=%2f", b"/a/./b%7Ec?q=%2F",
                   b"/x/../a/b~c?q=%2f", b"/?b=2&a=1", b"/?a=1&b=2")
        keys = {primary_key(b"http", b"h", target) for target in targets}
        self.assertEqual(len(keys), len(targets))
        for target in targets:
            self.assertEqual(primary_key(b"http", b"h", target), b"http://h" + target)


class VaryTests(SynchronousTestCase):
    """
    Tests for L{vary_names} and L{secondary_key}.
    """

    def test_names(self) -> None:
        """
        Names are lower-cased, deduplicated and sorted, from every Vary line.
        """
        self.assertEqual(
            vary_names([b"Accept-Encoding, accept-language", b"ACCEPT-ENCODING"]),
            (b"accept-encoding", b"accept-language"),
        )
        self.assertEqual(vary_names([]), ())
        self.assertEqual(vary_names([b" , "]), ())

    def test_star_and_invalid(self) -> None:
        """
        Vary: * and names that are not tokens make the response unstorable (None).
        """
        self.assertIsNone(vary_names([b"*"]))
        self.assertIsNone(vary_names([b"accept, *"]))
        self.assertIsNone(vary_names([b"accept encoding"]))
        self.assertIsNone(vary_names([b"a@b"]))

    def test_repeated_and_spaced_values(self) -> None:
        """
        Repeated fields, differently spaced lists and case give one secondary key.
        """
        names = (b"accept-encoding",)
        expected = secondary_key(fields_of(b"Accept-Encoding: gzip, br"), names)
        for lines in (
            (b"Accept-Encoding: gzip", b"Accept-Encoding: br"),
            (b"accept-encoding: gzip,br",),
            (b"ACCEPT-ENCODING:   gzip ,   br  ",),
            (b"Accept-Encoding: GZIP, BR",),
            (b"Accept-Encoding: gzip,, br",),
        ):
            self.assertEqual(secondary_key(fields_of(*lines), names), expected, lines)
        self.assertEqual(expected, (b"gzip, br",))

    def test_different_values_differ(self) -> None:
        """
        Different values, and an absent field, give different secondary keys.
        """
        names = (b"accept-encoding",)
        keys = {
            secondary_key(fields_of(b"Accept-Encoding: gzip"), names),
            secondary_key(fields_of(b"Accept-Encoding: br"), names),
            secondary_key(fields_of(b"Accept-Encoding: br, gzip"), names),
            secondary_key(fields_of(), names),
        }
        self.assertEqual(len(keys), 4)
        self.assertIn((None,), keys)

    def test_whitespace_collapsed_case_kept(self) -> None:
        """
        Inside a member, runs of whitespace become one space; case matters for other fields.
        """
        names = (b"x-mode",)
        self.assertEqual(
            secondary_key(fields_of(b"X-Mode: a  \t b"), names),
            secondary_key(fields_of(b"X-Mode: a b"), names),
        )
        self.assertNotEqual(
            secondary_key(fields_of(b"X-Mode: A"), names),
            secondary_key(fields_of(b"X-Mode: a"), names),
        )

    def test_several_names(self) -> None:
        """
        The key has one value per name, in name order.
        """
        names = (b"accept-encoding", b"accept-language")
        self.assertEqual(
            secondary_key(fields_of(b"Accept-Language: de", b"Accept-Encoding: gzip"), names),
            (b"gzip", b"de"),
        )


class SameOriginTests(SynchronousTestCase):
    """
    Tests for L{same_origin_key}.
    """

    def test_relative_and_absolute(self) -> None:
        """
        Relative references resolve against the target; same-origin absolute ones are kept.
        """
        self.assertEqual(same_origin_key(b"http", b"h", b"/a/b", b"c"), b"http://h/a/c")
        self.assertEqual(same_origin_key(b"http", b"h", b"/a/b", b"/x?y"), b"http://h/x?y")
        self.assertEqual(
            same_origin_key(b"http", b"h", b"/a", b"http://H:80/z"), b"http://h/z"
        )

    def test_other_origin(self) -> None:
        """
        Another host or scheme is not invalidated (None).
        """
        self.assertIsNone(same_origin_key(b"http", b"h", b"/a", b"http://other/z"))
        self.assertIsNone(same_origin_key(b"http", b"h", b"/a", b"https://h/z"))
        self.assertIsNone(same_origin_key(b"http", b"h", b"/a", b"//other/z"))

    def test_garbage_never_raises(self) -> None:
        """
        Unparseable references give None or a key, never an exception.
        """
        for reference in (b"http://[::1", b"http://[zz]/", b"\xff\xfe", b"", b"::::"):
            result = same_origin_key(b"http", b"h", b"/a", reference)
            self.assertTrue(result is None or result.startswith(b"http://h/"), reference)
