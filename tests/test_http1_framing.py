"""
Tests for L{balancebeam.http1.framing}: the chunk-size line grammar of RFC
9112 section 7.1, trailer capture in L{BodyReader}, and the trailer helpers
L{forwardable_trailers} and L{last_chunk}.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.http1.framing import (
    LAST_CHUNK,
    TRAILERS_NOT_FORWARDED,
    BodyReader,
    chunk,
    forwardable_trailers,
    last_chunk,
)
from balancebeam.http1.heads import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    HTTPError,
)


def read(
    data: Iterable[bytes], error_status: int = 400, max_line: int = 4096
) -> tuple[bytes, bytes, bytes, bool]:
    """
    Feed pieces of a chunked body to a L{BodyReader}, keeping unconsumed
    bytes buffered as the protocols do.

    @return: the payload, the trailers, the bytes left over, and whether the
        body is done.
    """
    received: list[bytes] = []
    reader = BodyReader(BODY_CHUNKED, 0, received.append, error_status, max_line)
    buffer = b""
    for piece in data:
        buffer += piece
        if not reader.done:
            buffer = buffer[reader.feed(buffer) :]
    return b"".join(received), reader.trailers, buffer, reader.done


def cuts(data: bytes) -> list[list[bytes]]:
    """
    C{data} whole, cut in two at every point, and in one-byte pieces.
    """
    result = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    result.append([data[i : i + 1] for i in range(len(data))])
    return result


def error_of(data: bytes, error_status: int = 400, max_line: int = 4096) -> list[object]:
    """
    The outcome of reading C{data} cut every way: for each cut, the status
    of the L{HTTPError} raised, or the result when none was raised.
    """
    outcomes: list[object] = []
    for pieces in cuts(data):
        try:
            outcomes.append(read(pieces, error_status, max_line))
        except HTTPError as error:
            outcomes.append(error.status)
    return outcomes


#: Chunk-size lines (without CRLF) outside the RFC 9112 grammar, each with
#: why it is refused.
REJECTED_SIZE_LINES: list[tuple[bytes, str]] = [
    (b"2;", "an empty chunk extension"),
    (b"2; ", "an empty chunk extension followed by whitespace"),
    (b"a ", "whitespace after the size with no extension"),
    (b"3\t", "a tab after the size with no extension"),
    (b";x", "an extension without a size"),
    (b"2;=v", "an extension without a name"),
    (b"2;a=", "an extension with '=' and no value"),
    (b'2;a="unterminated', "an unterminated quoted string"),
    (b'2;a="x\\"', "a quoted string whose closing quote is escaped"),
    (b"2 ;", "whitespace and ';' with no extension name"),
    (b"2\n", "a bare LF inside the size line"),
    (b"0x5", "a 0x prefix"),
    (b"0X5", "a 0X prefix"),
    (b"+5", "a plus sign"),
    (b"-5", "a minus sign"),
    (b"5 5", "two sizes"),
    (b"", "an empty line"),
    (b" 5", "whitespace before the size"),
    (b"5;a ", "whitespace after an extension name"),
    (b"5;a=b\t", "whitespace after an extension value"),
    (b"5;a b", "two names without ';'"),
    (b"5;;a", "two ';' in a row"),
    (b"5;a;", "a trailing ';'"),
    (b"5;a=b=c", "two '=' in one extension"),
    (b"5;a=b c", "a space inside a token value"),
    (b'5;a="x"y', "text after a quoted string"),
    (b'5;"q"', "a quoted string as the extension name"),
    (b"5;a@b", "a non-token character in a name"),
    (b"5;a=b,c", "a non-token character in a token value"),
    (b'5;a="\x7f"', "DEL inside a quoted string"),
    (b'5;a="\x00"', "NUL inside a quoted string"),
    (b'5;a="x\rb"', "a bare CR inside a quoted string"),
    (b"5;a\x00", "NUL in an extension"),
    (b"5\r", "a bare CR before the CRLF"),
    (b"5\x0b", "a vertical tab after the size"),
    (b"1_0", "an underscore between digits"),
    (b"zz", "non-hex digits"),
    (b"\xd9\xa5", "a non-ASCII digit"),
    (b"1" * 16, "16 significant hex digits"),
    (b"0" + b"f" * 16, "16 significant hex digits after a leading zero"),
    (b"f" * 17, "17 significant hex digits"),
]

#: Chunk-size lines (without CRLF) in the grammar, each with its size.
ACCEPTED_SIZE_LINES: list[tuple[bytes, int]] = [
    (b"5", 5),
    (b"05", 5),
    (b"0" * 30 + b"5", 5),
    (b"5;a", 5),
    (b"5 ; a = b", 5),
    (b"5\t;\ta\t=\tb", 5),
    (b'5;a="q\\"x";b=c', 5),
    (b"A;ext", 10),
    (b"a", 10),
    (b"1f", 31),
    (b'5;a=""', 5),
    (b'5;a="b c;d=e"', 5),
    (b'5;a="\t\\\t\x80\xff"', 5),
    (b"5;a=b;c;d=\"e\" ; f = g", 5),
    (b"5;!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~09AZaz", 5),
    (b"1" + b"0" * 14, 1 << 56),
]


class ChunkSizeLineTests(SynchronousTestCase):
    """
    Chunk-size lines are read by the RFC 9112 section 7.1 grammar exactly.
    """

    def test_rejected(self) -> None:
        """
        Every size line outside the grammar is refused with the reader's
        error status, wherever the body is cut.
        """
        for line, why in REJECTED_SIZE_LINES:
            data = line + b"\r\nhello\r\n0\r\n\r\n"
            for status in (400, 502):
                outcomes = error_of(data, status)
                self.assertEqual(
                    outcomes,
                    [status] * len(outcomes),
                    f"size line {line!r} ({why}) must be refused with {status}",
                )

    def test_accepted(self) -> None:
        """
        Every size line in the grammar frames a chunk of its size, wherever
        the body is cut.
        """
        for line, size in ACCEPTED_SIZE_LINES:
            if size > 64:
                result = read([line + b"\r\nabc"])
                self.assertEqual(
                    result, (b"abc", b"", b"", False), f"size line {line!r} must be accepted"
                )
                continue
            payload = bytes(range(65, 65 + size))
            data = line + b"\r\n" + payload + b"\r\n0\r\n\r\nNEXT"
            outcomes = error_of(data)
            self.assertEqual(
                outcomes,
                [(payload, b"", b"NEXT", True)] * len(outcomes),
                f"size line {line!r} must frame a chunk of {size} bytes",
            )

    def test_last_chunk_lines(self) -> None:
        """
        The last chunk may have leading zeros and extensions, and is refused
        by the same grammar as any chunk.
        """
        for line in (b"0", b"000", b"0;a", b'0 ; a = "b"'):
            self.assertEqual(
                read([b"2\r\nok\r\n" + line + b"\r\n\r\n"]),
                (b"ok", b"", b"", True),
                f"last chunk {line!r} must be accepted",
            )
        for line in (b"0;", b"0 ", b"0;a=", b"-0", b"0x0"):
            self.assertRaises(HTTPError, read, [b"2\r\nok\r\n" + line + b"\r\n\r\n"])

    def test_long_lines_refused(self) -> None:
        """
        Size lines within the length limit that leave the grammar only at
        their last byte are refused.
        """
        for line in (
            b"5" + b";a=b" * 1023 + b"@",
            b"5" + b' ; a = "\\"' * 408 + b"!",
            b"0" * 4093 + b"g",
            b"5;" + b"a" * 4091 + b" ",
        ):
            self.assertLessEqual(len(line), 4094, line[:10])
            error = self.assertRaises(HTTPError, read, [line + b"\r\n"])
            self.assertEqual(error.status, 400)


class TrailerCaptureTests(SynchronousTestCase):
    """
    L{BodyReader.trailers} holds a chunked body's trailer section as received.
    """

    def test_captured_byte_exact(self) -> None:
        """
        Trailer lines are captured exactly as received, CRLF-terminated and
        in order, and the bytes after the body are left over.
        """
        data = b"2\r\nok\r\n0\r\nX-Checksum: abc\r\nx-other:1 \r\nEmpty:\r\n\r\nNEXT"
        self.assertEqual(
            error_of(data),
            [(b"ok", b"X-Checksum: abc\r\nx-other:1 \r\nEmpty:\r\n", b"NEXT", True)]
            * len(cuts(data)),
        )

    def test_none(self) -> None:
        """
        A chunked body without trailers, and bodies of the other framings,
        capture C{b""}.
        """
        self.assertEqual(read([b"2\r\nok\r\n0\r\n\r\n"]), (b"ok", b"", b"", True))
        for kind, length, data in (
            (BODY_LENGTH, 5, b"0\r\nX: 1\r\n\r\n"),
            (BODY_UNTIL_CLOSE, 0, b"0\r\nX: 1\r\n\r\n"),
            (BODY_NONE, 0, b"0\r\nX: 1\r\n\r\n"),
        ):
            reader = BodyReader(kind, length, lambda data: None)
            reader.feed(data)
            self.assertEqual(reader.trailers, b"", kind)

    def test_not_complete_before_done(self) -> None:
        """
        Before the blank line, the reader is not done and holds only the
        lines received so far.
        """
        received: list[bytes] = []
        reader = BodyReader(BODY_CHUNKED, 0, received.append)
        self.assertEqual(reader.feed(b"0\r\nA: 1\r\nB: 2"), 13)
        self.assertEqual((reader.done, reader.trailers), (False, b"A: 1\r\n"))
        self.assertEqual(reader.feed(b"\r\n\r\n"), 4)
        self.assertEqual((reader.done, reader.trailers, received), (True, b"A: 1\r\nB: 2\r\n", []))

    def test_malformed_refused(self) -> None:
        """
        Obsolete line folding, bare CR, NUL and other malformed trailer lines
        are refused with the reader's error status.
        """
        for trailer, why in (
            (b"X: a\r\n b", "obs-fold with a space"),
            (b"X: a\r\n\tb", "obs-fold with a tab"),
            (b" X: a", "a line starting with whitespace"),
            (b"X: a\rb", "a bare CR in a value"),
            (b"X: a\r", "a bare CR before the CRLF"),
            (b"X\r: a", "a bare CR in a name"),
            (b"X: a\x00b", "NUL in a value"),
            (b"X\x00: a", "NUL in a name"),
            (b"X: a\nY: b", "a bare LF"),
            (b"X : a", "whitespace before the colon"),
            (b": a", "an empty name"),
            (b"no-colon", "no colon"),
            (b"X: \x7f", "DEL in a value"),
        ):
            data = b"0\r\n" + trailer + b"\r\n\r\n"
            for status in (400, 502):
                outcomes = error_of(data, status)
                self.assertEqual(
                    outcomes,
                    [status] * len(outcomes),
                    f"trailer {trailer!r} ({why}) must be refused with {status}",
                )

    def test_section_bounded(self) -> None:
        """
        A trailer section up to four times C{max_line} bytes is captured; one
        byte more is refused.
        """
        at_limit = b"X: 1234567\r\n" * 4
        self.assertEqual(len(at_limit), 48)
        self.assertEqual(
            read([b"0\r\n" + at_limit + b"\r\n"], max_line=12), (b"", at_limit, b"", True)
        )
        over = b"0\r\n" + at_limit + b"Y:\r\n\r\n"
        self.assertEqual(error_of(over, max_line=12), [400] * len(cuts(over)))

    def test_line_bounded(self) -> None:
        """
        A trailer line longer than C{max_line} is refused even when the
        section is small.
        """
        self.assertEqual(read([b"0\r\nX: 123456789\r\n\r\n"], max_line=15)[1], b"X: 123456789\r\n")
        data = b"0\r\nX: 12345678901\r\n\r\n"
        self.assertEqual(error_of(data, max_line=15), [400] * len(cuts(data)))


class ForwardableTrailersTests(SynchronousTestCase):
    """
    L{forwardable_trailers} keeps the trailer fields that may be forwarded.
    """

    def test_kept_byte_exact(self) -> None:
        """
        Allowed fields are kept byte-exact and in order, duplicates included.
        """
        trailers = b"X-Checksum: abc\r\nServer-Timing:db;dur=53 \r\nX-Checksum: def\r\n"
        self.assertEqual(forwardable_trailers(trailers), trailers)

    def test_empty(self) -> None:
        """
        No trailers give no trailers.
        """
        self.assertEqual(forwardable_trailers(b""), b"")

    def test_documented_names_dropped(self) -> None:
        """
        Each documented name is dropped in any case, and the fields around it
        are kept.
        """
        required = {
            b"content-length", b"transfer-encoding", b"trailer", b"host",
            b"cache-control", b"expect", b"max-forwards", b"pragma", b"range", b"te",
            b"authorization", b"proxy-authorization", b"www-authenticate",
            b"proxy-authenticate", b"set-cookie", b"cookie",
            b"age", b"expires", b"date", b"location", b"retry-after", b"vary", b"warning",
            b"content-encoding", b"content-type", b"content-range",
            b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
        }  # fmt: skip
        self.assertEqual(required - TRAILERS_NOT_FORWARDED, set())
        for name in sorted(TRAILERS_NOT_FORWARDED):
            for spelling in (name, name.upper(), name.title()):
                trailers = b"A: 1\r\n" + spelling + b": v\r\nB: 2\r\n"
                self.assertEqual(
                    forwardable_trailers(trailers),
                    b"A: 1\r\nB: 2\r\n",
                    f"{spelling!r} must not be forwarded",
                )

    def test_conditionals_dropped(self) -> None:
        """
        Every C{If-*} field is dropped, in any case.
        """
        for name in (
            b"If-Match",
            b"if-none-match",
            b"IF-MODIFIED-SINCE",
            b"If-Unmodified-Since",
            b"If-Range",
            b"If-Schedule-Tag-Match",
        ):
            self.assertEqual(
                forwardable_trailers(name + b": x\r\nA: 1\r\n"),
                b"A: 1\r\n",
                f"{name!r} must not be forwarded",
            )

    def test_lookalike_names_kept(self) -> None:
        """
        Names that only contain or extend a dropped name are kept.
        """
        trailers = (
            b"X-Host: a\r\nHostname: b\r\nContent-Length-Hint: 3\r\nIf: c\r\n"
            b"Iffy: d\r\nX-If-Match: e\r\nDates: f\r\nCookie2x: g\r\n"
        )
        self.assertEqual(forwardable_trailers(trailers), trailers)

    def test_all_dropped(self) -> None:
        """
        A section of only dropped fields gives no trailers.
        """
        self.assertEqual(forwardable_trailers(b"Host: h\r\nContent-Length: 5\r\n"), b"")

    def test_malformed_input(self) -> None:
        """
        Anything but CRLF-terminated field lines is a programming error.
        """
        for trailers in (b"A: 1", b"A: 1\r\n\r\n", b"A: 1\r\nno-colon\r\n", b"A: 1\n", b"\r\n"):
            self.assertRaises(ValueError, forwardable_trailers, trailers)


class LastChunkTests(SynchronousTestCase):
    """
    L{last_chunk} ends a chunked body, with trailers.
    """

    def test_without_trailers(self) -> None:
        """
        No trailers give L{LAST_CHUNK}.
        """
        self.assertEqual((last_chunk(b""), LAST_CHUNK), (b"0\r\n\r\n", b"0\r\n\r\n"))

    def test_with_trailers(self) -> None:
        """
        Trailers go between the last chunk and the final CRLF.
        """
        self.assertEqual(last_chunk(b"A: 1\r\nB: 2\r\n"), b"0\r\nA: 1\r\nB: 2\r\n\r\n")

    def test_round_trip(self) -> None:
        """
        A body re-framed with L{chunk} and L{last_chunk} of the forwardable
        trailers reads back as the same payload and those trailers.
        """
        original = (
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n"
            b"X-Sum: 1\r\nHost: evil\r\nx-sum:2\r\nIf-Match: *\r\nTransfer-Encoding: x\r\n\r\n"
        )
        payload, trailers, _, done = read([original])
        self.assertTrue(done)
        forwarded = forwardable_trailers(trailers)
        self.assertEqual(forwarded, b"X-Sum: 1\r\nx-sum:2\r\n")
        reframed = b"".join(chunk(payload)) + last_chunk(forwarded)
        self.assertEqual(read([reframed + b"NEXT"]), (b"abcde", forwarded, b"NEXT", True))
