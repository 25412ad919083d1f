"""
Tests for L{balancebeam.workers.control}: the master-worker message framing.
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.workers.control import HEALTH, STATS, MessageDecoder, encode


class EncodeTests(SynchronousTestCase):
    """
    L{encode} writes one compact JSON line per message.
    """

    def test_one_line(self) -> None:
        """
        A message becomes compact ASCII JSON ending in one newline.
        """
        line = encode({"type": STATS, "requests": 3, "name": "caf\u00e9"})
        self.assertEqual(line, b'{"type":"stats","requests":3,"name":"caf\\u00e9"}\n')
        self.assertEqual(line.count(b"\n"), 1)

    def test_type_required(self) -> None:
        """
        A message without a string type is refused.
        """
        self.assertRaises(ValueError, encode, {"requests": 3})
        self.assertRaises(ValueError, encode, {"type": 3})


class DecoderTests(SynchronousTestCase):
    """
    L{MessageDecoder} splits a byte stream into messages, whatever the chunks.
    """

    def test_round_trip_in_pieces(self) -> None:
        """
        Messages cut anywhere come out whole, in order.
        """
        stream = encode({"type": HEALTH, "upstreams": {"a:1": [True, "x"]}}) + encode(
            {"type": STATS, "requests": 7}
        )
        for cut in range(len(stream) + 1):
            decoder = MessageDecoder()
            messages = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
            self.assertEqual(
                messages,
                [
                    {"type": HEALTH, "upstreams": {"a:1": [True, "x"]}},
                    {"type": STATS, "requests": 7},
                ],
                cut,
            )

    def test_bad_lines_dropped_and_logged(self) -> None:
        """
        Lines that are not JSON objects with a string type are dropped,
        counted and logged; the messages around them still arrive.
        """
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        decoder = MessageDecoder()
        messages = decoder.feed(
            b"not json\n[1,2]\n{\"type\":1}\n" + encode({"type": STATS, "requests": 1})
        )
        self.assertEqual(messages, [{"type": STATS, "requests": 1}])
        self.assertEqual(decoder.dropped, 3)
        self.assertEqual(len([e for e in events if "dropped" in e["log_format"]]), 3)

    def test_long_line_skipped(self) -> None:
        """
        A line longer than the limit is dropped, even before its end
        arrives, and the next line is read normally.
        """
        decoder = MessageDecoder(max_line=50)
        self.assertEqual(decoder.feed(b"x" * 60), [])
        self.assertEqual(decoder.dropped, 1)
        self.assertEqual(decoder.feed(b"y" * 100), [])
        self.assertEqual(decoder.feed(b"zz\n" + encode({"type": STATS})), [{"type": STATS}])
        self.assertEqual(decoder.dropped, 1)
