"""
Tests for L{balancebeam.http1}: strict HTTP/1.x head parsing, body framing and
the rewriting of heads for the next hop, including request smuggling attempts.
The chunk-size grammar and trailer helpers have their own tables in
L{tests.test_http1_framing}.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.http1.dates import DateField
from balancebeam.http1.framing import (
    LAST_CHUNK,
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
    HEAD_END,
    IDEMPOTENT_METHODS,
    HTTPError,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
)
from balancebeam.http1.rewrite import (
    HOP_BY_HOP,
    error_response,
    render_response,
    request_head_for_upstream,
    response_head_for_client,
)

MAX_FIELDS = 100


def head(*lines: bytes) -> bytes:
    """
    Join lines into a message head without its final blank line.
    """
    return b"\r\n".join(lines)


def get(*fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    """
    A request head with C{Host: example.com} followed by C{fields}.
    """
    return head(line, b"Host: example.com", *fields)


def parse(data: bytes, max_fields: int = MAX_FIELDS) -> RequestHead:
    """
    Parse a request head with the default field limit.
    """
    return parse_request_head(data, max_fields)


def upstream_head(data: bytes, client_ip: str = "127.0.0.1", proto: bytes = b"http") -> bytes:
    """
    Parse a request head and rewrite it for an upstream at C{10.0.0.1:8081}.
    """
    return request_head_for_upstream(parse(data), client_ip, "10.0.0.1:8081", proto)


def read_body(
    kind: int,
    length: int,
    pieces: Iterable[bytes],
    error_status: int = 400,
    max_line: int = 4096,
) -> tuple[bytes, bytes, bool]:
    """
    Feed C{pieces} to a L{BodyReader} the way the protocols do: unconsumed
    bytes stay buffered and are offered again with the next piece.

    @return: the payload delivered, the bytes left over, and whether the body
        is done.
    """
    received: list[bytes] = []
    reader = BodyReader(kind, length, received.append, error_status, max_line)
    buffer = b""
    for piece in pieces:
        buffer += piece
        if reader.done:
            continue
        consumed = reader.feed(buffer)
        buffer = buffer[consumed:]
    return b"".join(received), buffer, reader.done


def splits(data: bytes) -> list[list[bytes]]:
    """
    Every way of cutting C{data} in two, plus one-byte pieces.
    """
    result = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    result.append([data[i : i + 1] for i in range(len(data))])
    return result


def parse_stream(pieces: Iterable[bytes]) -> tuple[list[tuple[bytes, bytes, bytes]], bytes]:
    """
    Read pipelined requests from a byte stream as the client protocol does:
    find the head, parse it, then read exactly its body with L{BodyReader}.

    @return: C{(method, target, body)} for each complete request, and the
        bytes left unparsed.
    @raise HTTPError: as soon as the stream is found malformed.
    """
    requests: list[tuple[bytes, bytes, bytes]] = []
    buffer = b""
    current: RequestHead | None = None
    reader: BodyReader | None = None
    body: list[bytes] = []
    for piece in pieces:
        buffer += piece
        while True:
            if reader is None:
                end = buffer.find(HEAD_END)
                if end == -1:
                    break
                current = parse(buffer[:end])
                buffer = buffer[end + 4 :]
                body = []
                reader = BodyReader(current.body_kind, current.content_length, body.append)
            else:
                consumed = reader.feed(buffer)
                buffer = buffer[consumed:]
            if reader.done:
                assert current is not None
                requests.append((current.method, current.target, b"".join(body)))
                reader = None
            elif not buffer:
                break
    return requests, buffer


def forward(data: bytes) -> bytes:
    """
    What the balancer sends upstream for one complete request: the rewritten
    head and the body re-framed for the upstream hop, with its forwardable
    trailers.
    """
    end = data.index(HEAD_END)
    request = parse(data[:end])
    pieces: list[bytes] = []
    reader = BodyReader(request.body_kind, request.content_length, pieces.append)
    reader.feed(data[end + 4 :])
    out = request_head_for_upstream(request, "127.0.0.1", "10.0.0.1:8081")
    if request.body_kind == BODY_CHUNKED:
        for piece in pieces:
            out += b"".join(chunk(piece))
        out += last_chunk(forwardable_trailers(reader.trailers))
    else:
        out += b"".join(pieces)
    return out


class WireTestCase(SynchronousTestCase):
    """
    A test case with assertions for inputs that must be refused with a
    given status; it has no tests of its own.
    """

    def assert_request_rejected(self, status: int, data: bytes) -> HTTPError:
        """
        Assert that parsing the request head C{data} raises L{HTTPError}
        with C{status}.
        """
        error = self.assertRaises(HTTPError, parse, data)
        self.assertEqual((error.status, data), (status, data))
        return error

    def assert_response_rejected(self, data: bytes, method: bytes = b"GET") -> HTTPError:
        """
        Assert that parsing the response head C{data} raises a 502.
        """
        error = self.assertRaises(HTTPError, parse_response_head, data, method)
        self.assertEqual((error.status, data), (502, data))
        return error


class RequestLineTests(WireTestCase):
    """
    Tests for the request line in L{parse_request_head}.
    """

    def test_methods(self) -> None:
        """
        Any token is accepted as a method and kept as sent.
        """
        for method in (
            b"GET",
            b"HEAD",
            b"POST",
            b"PUT",
            b"DELETE",
            b"OPTIONS",
            b"PATCH",
            b"TRACE",
            b"PURGE",
            b"M-SEARCH",
            b"get",
        ):
            request = parse(get(line=method + b" / HTTP/1.1"))
            self.assertEqual(request.method, method)

    def test_method_not_a_token(self) -> None:
        """
        Methods with separators or non-ASCII bytes are a 400.
        """
        for method in (b"G@T", b"GE(T", b"G\xc3\xa9T", b"", b"GET:"):
            self.assert_request_rejected(400, get(line=method + b" / HTTP/1.1"))

    def test_origin_form(self) -> None:
        """
        An origin-form target is kept verbatim, query included.
        """
        request = parse(get(line=b"GET /a/b%20c?x=1&y=%2F HTTP/1.1"))
        self.assertEqual(
            (request.method, request.target, request.minor, request.host),
            (b"GET", b"/a/b%20c?x=1&y=%2F", 1, b"example.com"),
        )

    def test_double_slash_origin_form(self) -> None:
        """
        A target starting with two slashes is an origin-form path, not an authority.
        """
        request = parse(get(line=b"GET //evil.example/x HTTP/1.1"))
        self.assertEqual((request.target, request.host), (b"//evil.example/x", b"example.com"))

    def test_absolute_form(self) -> None:
        """
        An absolute-form target becomes origin form and its authority replaces
        the Host header.
        """
        request = parse(
            head(
                b"GET http://origin.example:8080/p?q=1 HTTP/1.1",
                b"Host: other.example",
                b"Accept: */*",
            )
        )
        self.assertEqual(request.target, b"/p?q=1")
        self.assertEqual(request.host, b"origin.example:8080")
        self.assertEqual(
            request.fields,
            [
                (b"accept", b"*/*", b"Accept: */*"),
                (b"host", b"origin.example:8080", b"Host: origin.example:8080"),
            ],
        )

    def test_absolute_form_without_path(self) -> None:
        """
        An absolute-form target without a path gets C{/}, before any query.
        """
        for target, expected in (
            (b"http://origin.example", b"/"),
            (b"http://origin.example?x=1", b"/?x=1"),
            (b"HTTPS://Origin.Example/a", b"/a"),
        ):
            request = parse(get(line=b"GET " + target + b" HTTP/1.1"))
            self.assertEqual(request.target, expected)
        self.assertEqual(
            parse(get(line=b"GET HTTPS://Origin.Example/a HTTP/1.1")).host, b"Origin.Example"
        )

    def test_absolute_form_http10_without_host(self) -> None:
        """
        An HTTP/1.0 absolute-form request needs no Host header: the target names it.
        """
        request = parse(b"GET http://origin.example/x HTTP/1.0")
        self.assertEqual((request.target, request.host), (b"/x", b"origin.example"))

    def test_bad_absolute_forms(self) -> None:
        """
        Unknown schemes, empty authorities, userinfo and invalid hosts are a 400.
        """
        for target in (
            b"ftp://origin.example/",
            b"http:///path",
            b"http://user@evil.example/",
            b"http://user:pw@evil.example/",
            b"http://a,b/",
            b"http:/origin.example/",
            b"origin.example/x",
            b"origin.example:80",
            b"x",
        ):
            self.assert_request_rejected(400, get(line=b"GET " + target + b" HTTP/1.1"))

    def test_asterisk_form_options(self) -> None:
        """
        C{OPTIONS *} is accepted with the target kept as C{*}.
        """
        request = parse(get(line=b"OPTIONS * HTTP/1.1"))
        self.assertEqual((request.method, request.target), (b"OPTIONS", b"*"))

    def test_asterisk_form_other_methods(self) -> None:
        """
        An asterisk-form target with any method but OPTIONS is a 400.
        """
        for method in (b"GET", b"POST", b"options"):
            self.assert_request_rejected(400, get(line=method + b" * HTTP/1.1"))

    def test_connect(self) -> None:
        """
        CONNECT is not implemented: 501.
        """
        self.assert_request_rejected(
            501, head(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443")
        )

    def test_unsupported_versions(self) -> None:
        """
        Well-formed versions other than 1.0 and 1.1 are a 505.
        """
        for version in (b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0", b"HTTP/9.9"):
            self.assert_request_rejected(505, get(line=b"GET / " + version))

    def test_malformed_request_lines(self) -> None:
        """
        Missing or malformed versions, extra or odd whitespace, bad target
        bytes and garbage are a 400.
        """
        for line in (
            b"GET /",
            b"GET / ",
            b"GET",
            b"",
            b"/ HTTP/1.1",
            b"GET / HTTP/1",
            b"GET / HTTP/1.10",
            b"GET / HTTP/11",
            b"GET / HTTP/2",
            b"GET / http/1.1",
            b"GET / Http/1.1",
            b"GET / HTTP /1.1",
            b"GET  / HTTP/1.1",
            b"GET /  HTTP/1.1",
            b" GET / HTTP/1.1",
            b"GET / HTTP/1.1 ",
            b"GET\t/ HTTP/1.1",
            b"GET /\tHTTP/1.1",
            b"GET /a b HTTP/1.1",
            b"GET /a\x00b HTTP/1.1",
            b"GET /a\x7fb HTTP/1.1",
            b"GET /a\rb HTTP/1.1",
            b"GET / HTTP/1.1\n",
            b"GET / HTTP/1.1\r",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ):
            self.assert_request_rejected(400, get(line=line))

    def test_bare_lf_line_endings(self) -> None:
        """
        A head whose lines end with a bare LF is a 400, not a differently split head.
        """
        self.assert_request_rejected(400, b"GET / HTTP/1.1\nHost: example.com")
        self.assert_request_rejected(400, b"GET / HTTP/1.1\r\nHost: example.com\nX: y")

    def test_versions(self) -> None:
        """
        HTTP/1.0 and HTTP/1.1 give minor versions 0 and 1.
        """
        self.assertEqual(parse(b"GET / HTTP/1.0").minor, 0)
        self.assertEqual(parse(get()).minor, 1)


class HeaderFieldTests(WireTestCase):
    """
    Tests for header field parsing in L{parse_request_head}.
    """

    def test_fields_in_order(self) -> None:
        """
        Fields keep their order, repeats included, with lower-cased names,
        trimmed values and the raw line.
        """
        request = parse(
            get(
                b"Accept:  text/html \t",
                b"X-Custom-Header:value",
                b"accept: application/json",
                b"Cookie: a=1",
                b"Cookie: b=2",
            )
        )
        self.assertEqual(
            request.fields,
            [
                (b"host", b"example.com", b"Host: example.com"),
                (b"accept", b"text/html", b"Accept:  text/html \t"),
                (b"x-custom-header", b"value", b"X-Custom-Header:value"),
                (b"accept", b"application/json", b"accept: application/json"),
                (b"cookie", b"a=1", b"Cookie: a=1"),
                (b"cookie", b"b=2", b"Cookie: b=2"),
            ],
        )

    def test_value_contents(self) -> None:
        """
        Empty values, inner tabs and obs-text bytes are valid field values.
        """
        request = parse(get(b"X-Empty:", b"X-Tab: a\tb", b"X-Text: caf\xc3\xa9", b"X-Sp:   "))
        self.assertEqual(
            [(name, value) for name, value, _ in request.fields[1:]],
            [(b"x-empty", b""), (b"x-tab", b"a\tb"), (b"x-text", b"caf\xc3\xa9"), (b"x-sp", b"")],
        )

    def test_obs_fold(self) -> None:
        """
        A line starting with a space or tab (obsolete line folding) is a 400.
        """
        self.assert_request_rejected(400, get(b"X-Long: a", b" b"))
        self.assert_request_rejected(400, get(b"X-Long: a", b"\tb"))
        self.assert_request_rejected(400, head(b"GET / HTTP/1.1", b" Host: example.com"))

    def test_whitespace_before_colon(self) -> None:
        """
        Whitespace between a field name and its colon is a 400.
        """
        for line in (
            b"X-Name : v",
            b"X-Name\t: v",
            b"Content-Length : 5",
            b"Transfer-Encoding\t: chunked",
            b"Host : example.com",
        ):
            self.assert_request_rejected(400, get(line))

    def test_control_characters_in_values(self) -> None:
        """
        NUL, bare CR, bare LF, other controls and DEL in a value are a 400.
        """
        for value in (
            b"a\x00b",
            b"a\rb",
            b"a\nb",
            b"a\x0bb",
            b"a\x0cb",
            b"a\x1bb",
            b"a\x7fb",
            b"a\r",
        ):
            self.assert_request_rejected(400, get(b"X-Name: " + value))

    def test_bad_names(self) -> None:
        """
        Empty names, names with separators or non-ASCII and lines without a
        colon are a 400.
        """
        for line in (
            b": v",
            b":v",
            b"X Name: v",
            b"X(Name): v",
            b"X\xc3\xa9: v",
            b"X-Name",
            b"X-Name v",
            b"\x00: v",
            b"[X]: v",
            b"X/Y: v",
        ):
            self.assert_request_rejected(400, get(line))

    def test_empty_line_in_head(self) -> None:
        """
        An empty line inside the head is a 400.
        """
        self.assert_request_rejected(400, get(b"", b"X-Name: v"))

    def test_field_count_limit(self) -> None:
        """
        Up to C{max_fields} fields are accepted; one more is a 431.
        """
        fields = [b"X-%d: v" % i for i in range(4)]
        self.assertEqual(len(parse(get(*fields[:3]), max_fields=4).fields), 4)
        raised = self.assertRaises(HTTPError, parse, get(*fields), 4)
        self.assertEqual(raised.status, 431)

    def test_missing_host_http11(self) -> None:
        """
        An HTTP/1.1 request without Host is a 400.
        """
        self.assert_request_rejected(400, b"GET / HTTP/1.1")
        self.assert_request_rejected(400, head(b"GET / HTTP/1.1", b"Accept: */*"))
        self.assert_request_rejected(400, b"GET http://origin.example/ HTTP/1.1")

    def test_two_host_headers(self) -> None:
        """
        Two Host fields are a 400, even when equal, and even in absolute form.
        """
        self.assert_request_rejected(400, get(b"Host: other.example"))
        self.assert_request_rejected(400, get(b"Host: example.com"))
        self.assert_request_rejected(
            400, get(b"host: example.com", line=b"GET http://x/ HTTP/1.1")
        )
        self.assert_request_rejected(400, head(b"GET / HTTP/1.0", b"Host: a", b"Host: b"))

    def test_http10_without_host(self) -> None:
        """
        An HTTP/1.0 request without Host is fine and has no host.
        """
        request = parse(head(b"GET /x HTTP/1.0", b"Accept: */*"))
        self.assertEqual((request.host, request.target), (None, b"/x"))

    def test_valid_hosts(self) -> None:
        """
        Names, ports, IPv4 and bracketed IPv6 literals and an empty Host are accepted.
        """
        for value in (
            b"example.com",
            b"example.com:8080",
            b"127.0.0.1:1100",
            b"[::1]:8081",
            b"[2001:db8::1]",
            b"xn--bcher-kva.example",
            b"under_score.example",
            b"example.com:",
            b"",
        ):
            self.assertEqual(parse(head(b"GET / HTTP/1.1", b"Host: " + value)).host, value)

    def test_invalid_hosts(self) -> None:
        """
        A Host with a path, userinfo, spaces, a comma or a bad port is a 400.
        """
        for value in (
            b"evil.example/x",
            b"user@example.com",
            b"a b",
            b"a,b",
            b"a\tb",
            b"example.com:80x",
            b"example.com:-1",
            b"[::1",
            b"caf\xc3\xa9.example",
            b"example.com?x",
            b"example.com#x",
            b"a\\b",
        ):
            self.assert_request_rejected(400, head(b"GET / HTTP/1.1", b"Host: " + value))

    def test_idempotent(self) -> None:
        """
        Safe and idempotent methods, and any request with an Idempotency-Key,
        are idempotent; POST and PATCH otherwise are not.
        """
        self.assertEqual(
            IDEMPOTENT_METHODS,
            frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"}),
        )
        for method in IDEMPOTENT_METHODS:
            self.assertTrue(parse(get(line=method + b" / HTTP/1.1")).idempotent)
        self.assertFalse(parse(get(line=b"POST / HTTP/1.1")).idempotent)
        self.assertFalse(parse(get(line=b"PATCH / HTTP/1.1")).idempotent)
        self.assertTrue(parse(get(b"Idempotency-Key: k1", line=b"POST / HTTP/1.1")).idempotent)


class RequestFramingTests(WireTestCase):
    """
    Tests for request body framing in L{parse_request_head}, including
    request smuggling attempts.
    """

    def test_no_body(self) -> None:
        """
        Without Content-Length or Transfer-Encoding there is no body, and
        C{Content-Length: 0} is the same.
        """
        for data in (get(), get(b"Content-Length: 0"), get(b"Content-Length: 000")):
            request = parse(data)
            self.assertEqual((request.body_kind, request.content_length), (BODY_NONE, 0))

    def test_content_length(self) -> None:
        """
        A Content-Length gives a length-framed body, surrounding whitespace ignored.
        """
        for value, length in (
            (b"5", 5),
            (b" 5\t", 5),
            (b"0012", 12),
            (b"999999999999999999", 999999999999999999),
        ):
            request = parse(get(b"Content-Length:" + value, line=b"POST / HTTP/1.1"))
            self.assertEqual((request.body_kind, request.content_length), (BODY_LENGTH, length))

    def test_identical_duplicate_content_length(self) -> None:
        """
        Repeated identical Content-Length values, as fields or as a list, are accepted.
        """
        for fields in (
            (b"Content-Length: 5", b"Content-Length: 5"),
            (b"Content-Length: 5, 5",),
            (b"Content-Length: 5,5", b"content-length: 05"),
        ):
            request = parse(get(*fields))
            self.assertEqual((request.body_kind, request.content_length), (BODY_LENGTH, 5))

    def test_differing_content_length(self) -> None:
        """
        Differing Content-Length values are a 400 in any arrangement.
        """
        for fields in (
            (b"Content-Length: 5", b"Content-Length: 6"),
            (b"Content-Length: 5, 6",),
            (b"Content-Length: 0", b"Content-Length: 5"),
            (b"Content-Length: 5", b"Content-Length: 5, 6"),
        ):
            self.assert_request_rejected(400, get(*fields))

    def test_invalid_content_length(self) -> None:
        """
        Signed, hex, fractional, spaced, empty, non-ASCII-digit or over-long
        lengths are a 400.
        """
        for value in (
            b"+5",
            b"-1",
            b"-0",
            b"0x10",
            b"0x",
            b"5.0",
            b"1e3",
            b"5 5",
            b"5\t5",
            b"",
            b"   ",
            b"5,",
            b",5",
            b"5,,5",
            b"five",
            b"5a",
            b"\xd9\xa5",
            b"1_000",
            b"9999999999999999999",
            b'"5"',
        ):
            self.assert_request_rejected(400, get(b"Content-Length: " + value))

    def test_chunked(self) -> None:
        """
        C{Transfer-Encoding: chunked}, in any case and with whitespace,
        gives a chunked body.
        """
        for value in (
            b"chunked",
            b"Chunked",
            b"CHUNKED",
            b"\tchunked \t",
            b"chunked,",
            b", chunked",
        ):
            request = parse(get(b"Transfer-Encoding:" + value, line=b"POST / HTTP/1.1"))
            self.assertEqual(request.body_kind, BODY_CHUNKED)

    def test_content_length_and_transfer_encoding(self) -> None:
        """
        Content-Length with Transfer-Encoding is a 400, in either order (CL.TE, TE.CL).
        """
        for fields in (
            (b"Content-Length: 6", b"Transfer-Encoding: chunked"),
            (b"Transfer-Encoding: chunked", b"Content-Length: 6"),
            (b"Transfer-Encoding: chunked", b"Content-Length: 0"),
            (b"Content-Length: 3", b"Transfer-Encoding: identity"),
            (b"Content-Length: 3", b"Transfer-Encoding:"),
        ):
            self.assert_request_rejected(400, get(*fields, line=b"POST / HTTP/1.1"))

    def test_unsupported_transfer_encodings(self) -> None:
        """
        Any Transfer-Encoding other than exactly chunked (TE.TE obfuscations
        included) is a 400.
        """
        for value in (
            b"gzip, chunked",
            b"chunked, gzip",
            b"identity",
            b"chunked, chunked",
            b"xchunked",
            b"chunk",
            b"chunked;q=1",
            b'"chunked"',
            b"chunked identity",
            b"gzip",
            b"",
            b"ch\xc3\xbcnked",
            b"chunked\x0b",
            b"\x0bchunked",
            b"chunked\x0c",
            b"identity, chunked",
        ):
            self.assert_request_rejected(400, get(b"Transfer-Encoding: " + value))

    def test_repeated_transfer_encoding(self) -> None:
        """
        Transfer-Encoding repeated as separate fields is a 400, even if both say chunked.
        """
        for second in (
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: identity",
            b"transfer-encoding: x",
        ):
            self.assert_request_rejected(400, get(b"Transfer-Encoding: chunked", second))

    def test_obfuscated_framing_names(self) -> None:
        """
        Framing header names hidden by whitespace, folding, bare CR or LF, or
        underscores (which CGI-style upstreams fold into hyphens) are a 400.
        """
        for fields in (
            (b"Transfer-Encoding : chunked", b"Content-Length: 4"),
            (b"Transfer-Encoding\t: chunked",),
            (b" Transfer-Encoding: chunked", b"Content-Length: 4"),
            (b"X: y", b" Transfer-Encoding: chunked"),
            (b"X: y\nTransfer-Encoding: chunked", b"Content-Length: 4"),
            (b"X: y\rTransfer-Encoding: chunked",),
            (b"Transfer-Encoding\r: chunked",),
            (b"Transfer_Encoding: chunked", b"Content-Length: 4"),
            (b"Content_Length: 4", b"Transfer-Encoding: chunked"),
            (b"content_length: 4",),
            (b"Content-Length\x00: 4",),
            (b"Content-Length: 4\x00",),
            (b"\x0bContent-Length: 4",),
        ):
            self.assert_request_rejected(400, get(*fields, line=b"POST / HTTP/1.1"))

    def test_forwarding_header_lookalikes(self) -> None:
        """
        Underscore spellings of the forwarding headers the balancer sets are
        a 400: a WSGI upstream would read a client's C{X_Forwarded_Proto}
        as the balancer's C{X-Forwarded-Proto}.
        """
        for field in (b"X_Forwarded_Proto: https", b"x_forwarded_for: 6.6.6.6",
                      b"X_FORWARDED_FOR: 6.6.6.6", b"X-Forwarded_Proto: https",
                      b"x_forwarded-for: 6.6.6.6"):
            self.assert_request_rejected(400, get(field))
        # Other names with underscores are forwarded as they are.
        request = parse(get(b"X_Custom: 1"))
        self.assertIn(b"X_Custom: 1", request_head_for_upstream(request, "127.0.0.1", "u:80"))

    def test_transfer_encoding_http10(self) -> None:
        """
        Transfer-Encoding in an HTTP/1.0 request is a 400.
        """
        self.assert_request_rejected(400, head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked"))

    def test_http10_content_length(self) -> None:
        """
        An HTTP/1.0 request may carry a length-framed body.
        """
        request = parse(head(b"POST / HTTP/1.0", b"Content-Length: 3"))
        self.assertEqual((request.body_kind, request.content_length), (BODY_LENGTH, 3))


class ConnectionOptionTests(WireTestCase):
    """
    Tests for C{Connection}, C{Expect} and C{Upgrade} in L{parse_request_head}.
    """

    def test_keep_alive_defaults(self) -> None:
        """
        HTTP/1.1 is keep-alive unless it says close; HTTP/1.0 only if it says keep-alive.
        """
        cases = (
            (get(), True),
            (get(b"Connection: close"), False),
            (get(b"Connection: Keep-Alive, CLOSE"), False),
            (get(b"Connection: keep-alive"), True),
            (b"GET / HTTP/1.0", False),
            (head(b"GET / HTTP/1.0", b"Connection: Keep-Alive"), True),
            (head(b"GET / HTTP/1.0", b"Connection: x", b"Connection: keep-alive"), True),
            (head(b"GET / HTTP/1.0", b"Connection: close"), False),
            (head(b"GET / HTTP/1.0", b"Connection: keep-alive, close"), False),
        )
        for data, keep_alive in cases:
            self.assertEqual((data, parse(data).keep_alive), (data, keep_alive))

    def test_connection_names(self) -> None:
        """
        Connection tokens from every Connection field are lower-cased and collected.
        """
        request = parse(get(b"Connection: Keep-Alive, X-Foo,, ", b"connection: x-bar"))
        self.assertEqual(request.connection_names, frozenset({b"keep-alive", b"x-foo", b"x-bar"}))

    def test_expect_continue(self) -> None:
        """
        C{Expect: 100-continue}, in any case, sets C{expect_continue} on HTTP/1.1.
        """
        self.assertFalse(parse(get()).expect_continue)
        for value in (b"100-continue", b"100-Continue", b" 100-CONTINUE "):
            self.assertTrue(parse(get(b"Expect:" + value)).expect_continue)

    def test_expect_continue_http10(self) -> None:
        """
        C{Expect: 100-continue} from an HTTP/1.0 client is ignored.
        """
        self.assertFalse(parse(head(b"POST / HTTP/1.0", b"Expect: 100-continue")).expect_continue)

    def test_other_expectations(self) -> None:
        """
        Any other expectation is a 417.
        """
        for fields in (
            (b"Expect: 200-ok",),
            (b"Expect: 100-continue, foo",),
            (b"Expect: 100-continue; x=1",),
            (b"Expect: 100-continue", b"Expect: x"),
        ):
            self.assert_request_rejected(417, get(*fields))

    def test_upgrade(self) -> None:
        """
        Upgrade is recorded only when Connection names upgrade, on HTTP/1.1.
        """
        self.assertEqual(
            parse(get(b"Connection: Upgrade", b"Upgrade: websocket")).upgrade, b"websocket"
        )
        self.assertEqual(
            parse(
                get(b"Connection: keep-alive, upgrade", b"Upgrade: h2c", b"Upgrade: foo/2")
            ).upgrade,
            b"h2c, foo/2",
        )
        self.assertIsNone(parse(get(b"Upgrade: websocket")).upgrade)
        self.assertIsNone(parse(get(b"Connection: upgrade")).upgrade)
        self.assertIsNone(
            parse(head(b"GET / HTTP/1.0", b"Connection: upgrade", b"Upgrade: websocket")).upgrade
        )


class RequestForUpstreamTests(SynchronousTestCase):
    """
    Tests for L{request_head_for_upstream}.
    """

    def test_plain_request(self) -> None:
        """
        End-to-end fields pass unchanged and in order, and the forwarding
        fields are added after them.
        """
        self.assertEqual(
            upstream_head(
                get(
                    b"user-AGENT:  curl/8  ",
                    b"Accept: a",
                    b"X-Custom: 1",
                    b"Accept: b",
                    line=b"GET /p?q=1 HTTP/1.1",
                )
            ),
            b"GET /p?q=1 HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"user-AGENT:  curl/8  \r\n"
            b"Accept: a\r\n"
            b"X-Custom: 1\r\n"
            b"Accept: b\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"\r\n",
        )

    def test_always_http11(self) -> None:
        """
        An HTTP/1.0 request goes upstream as HTTP/1.1 with the upstream as
        Host and a 1.0 Via.
        """
        self.assertEqual(
            upstream_head(head(b"GET /x HTTP/1.0", b"Accept: */*"), client_ip="::1"),
            b"GET /x HTTP/1.1\r\n"
            b"Accept: */*\r\n"
            b"Host: 10.0.0.1:8081\r\n"
            b"X-Forwarded-For: ::1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.0 balancebeam\r\n"
            b"\r\n",
        )

    def test_http10_keeps_its_host(self) -> None:
        """
        An HTTP/1.0 request that sent Host keeps it and gets no second one.
        """
        data = upstream_head(head(b"GET / HTTP/1.0", b"Host: example.com"))
        self.assertEqual(data.count(b"Host:"), 1)
        self.assertIn(b"\r\nHost: example.com\r\n", data)

    def test_absolute_form(self) -> None:
        """
        An absolute-form request goes upstream in origin form with the
        target's authority as its only Host.
        """
        self.assertEqual(
            upstream_head(
                head(b"GET http://origin.example/x?y HTTP/1.1", b"Host: other", b"Accept: */*")
            ),
            b"GET /x?y HTTP/1.1\r\n"
            b"Accept: */*\r\n"
            b"Host: origin.example\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"\r\n",
        )

    def test_asterisk_form(self) -> None:
        """
        C{OPTIONS *} goes upstream as C{OPTIONS * HTTP/1.1}.
        """
        self.assertTrue(
            upstream_head(get(line=b"OPTIONS * HTTP/1.1")).startswith(
                b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n"
            )
        )

    def test_x_forwarded_for_appended(self) -> None:
        """
        The client address is appended to an existing X-Forwarded-For.
        """
        self.assertIn(
            b"\r\nX-Forwarded-For: a, b, 127.0.0.1\r\n",
            upstream_head(get(b"X-Forwarded-For: a, b")),
        )

    def test_x_forwarded_for_combined(self) -> None:
        """
        Several X-Forwarded-For fields become one list, in order, with the
        client last; empty ones are skipped.
        """
        data = upstream_head(
            get(
                b"X-Forwarded-For: 10.1.1.1",
                b"x-forwarded-for: 10.2.2.2, 10.3.3.3",
                b"X-Forwarded-For:",
            ),
            client_ip="192.0.2.9",
        )
        self.assertEqual(data.lower().count(b"x-forwarded-for"), 1)
        self.assertIn(b"\r\nX-Forwarded-For: 10.1.1.1, 10.2.2.2, 10.3.3.3, 192.0.2.9\r\n", data)

    def test_x_forwarded_proto_replaced(self) -> None:
        """
        The client's X-Forwarded-Proto is replaced by the listener's scheme.
        """
        data = upstream_head(get(b"X-Forwarded-Proto: https", b"x-forwarded-proto: ftp"))
        self.assertEqual(data.lower().count(b"x-forwarded-proto"), 1)
        self.assertIn(b"\r\nX-Forwarded-Proto: http\r\n", data)
        self.assertIn(b"\r\nX-Forwarded-Proto: https\r\n", upstream_head(get(), proto=b"https"))

    def test_via_appended(self) -> None:
        """
        Via gets this hop appended to the client's list.
        """
        data = upstream_head(get(b"Via: 1.0 fred", b"via: 1.1 p.example"))
        self.assertEqual(data.lower().count(b"via:"), 1)
        self.assertIn(b"\r\nVia: 1.0 fred, 1.1 p.example, 1.1 balancebeam\r\n", data)

    def test_hop_by_hop_dropped(self) -> None:
        """
        Connection, the fields it names, and the standard hop-by-hop fields
        are not forwarded.
        """
        self.assertEqual(
            upstream_head(
                get(
                    b"Connection: keep-alive, X-Secret",
                    b"Keep-Alive: timeout=5",
                    b"Proxy-Connection: keep-alive",
                    b"TE: trailers",
                    b"Trailer: X-Checksum",
                    b"Upgrade: websocket",
                    b"Proxy-Authenticate: Basic",
                    b"Proxy-Authorization: Basic dXNlcjpwdw==",
                    b"X-Secret: s",
                    b"x-secret: t",
                    b"Authorization: Bearer t",
                    b"X-Keep: k",
                )
            ),
            b"GET / HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"Authorization: Bearer t\r\n"
            b"X-Keep: k\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"\r\n",
        )

    def test_hop_by_hop_set(self) -> None:
        """
        L{HOP_BY_HOP} names the RFC 9110 connection fields and the framing
        field re-made for each hop.
        """
        self.assertEqual(
            HOP_BY_HOP,
            frozenset(
                {
                    b"connection",
                    b"keep-alive",
                    b"proxy-connection",
                    b"te",
                    b"trailer",
                    b"transfer-encoding",
                    b"upgrade",
                    b"proxy-authenticate",
                    b"proxy-authorization",
                    b"content-length",
                }
            ),
        )

    def test_connection_cannot_strip_host_or_forwarding(self) -> None:
        """
        Naming Host or the forwarding fields in Connection does not remove
        them from the upstream request.
        """
        data = upstream_head(
            get(
                b"Connection: host, x-forwarded-for, via, x-forwarded-proto, content-length",
                b"X-Forwarded-For: 10.1.1.1",
                b"Content-Length: 2",
                line=b"POST / HTTP/1.1",
            )
        )
        self.assertEqual(
            data,
            b"POST / HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"X-Forwarded-For: 10.1.1.1, 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"Content-Length: 2\r\n"
            b"\r\n",
        )

    def test_content_length_reframed(self) -> None:
        """
        The client's Content-Length fields become one canonical field at the end.
        """
        self.assertEqual(
            upstream_head(
                get(
                    b"content-length:  05, 5",
                    b"X-A: 1",
                    b"Content-Length: 5",
                    line=b"PUT /r HTTP/1.1",
                )
            ),
            b"PUT /r HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"X-A: 1\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"Content-Length: 5\r\n"
            b"\r\n",
        )

    def test_zero_content_length_dropped(self) -> None:
        """
        A request with C{Content-Length: 0} has no body and is sent without framing.
        """
        self.assertNotIn(b"Content-Length", upstream_head(get(b"Content-Length: 0")))

    def test_chunked_reframed(self) -> None:
        """
        A chunked request is sent with one canonical C{Transfer-Encoding: chunked}.
        """
        self.assertEqual(
            upstream_head(get(b"Transfer-Encoding: \tCHUNKED,", line=b"POST / HTTP/1.1")),
            b"POST / HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"\r\n",
        )

    def test_expect_dropped(self) -> None:
        """
        Expect is not forwarded: the balancer answers 100-continue itself.
        """
        data = upstream_head(
            get(b"Expect: 100-continue", b"Content-Length: 3", line=b"POST / HTTP/1.1")
        )
        self.assertNotIn(b"xpect", data)
        self.assertTrue(data.endswith(b"\r\nContent-Length: 3\r\n\r\n"))

    def test_upgrade_forwarded(self) -> None:
        """
        An upgrade request carries C{Connection: upgrade} and its Upgrade
        value, and other end-to-end fields unchanged.
        """
        self.assertEqual(
            upstream_head(
                get(
                    b"Connection: Upgrade",
                    b"Upgrade: websocket",
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                    b"Sec-WebSocket-Version: 13",
                    line=b"GET /ws HTTP/1.1",
                )
            ),
            b"GET /ws HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"Connection: upgrade\r\n"
            b"Upgrade: websocket\r\n"
            b"\r\n",
        )

    def test_upgrade_without_connection_dropped(self) -> None:
        """
        An Upgrade field without C{Connection: upgrade} is not forwarded.
        """
        data = upstream_head(get(b"Upgrade: websocket"))
        self.assertNotIn(b"pgrade", data)
        self.assertNotIn(b"Connection", data)

    def test_equivalent_requests_forward_identically(self) -> None:
        """
        Differently spelled but equivalent requests produce the same upstream head.
        """
        spellings = [
            head(b"POST /x HTTP/1.1", b"Host: example.com", b"Content-Length: 4"),
            head(b"POST /x HTTP/1.1", b"Host:example.com", b"Content-Length: 4, 4"),
            head(
                b"POST /x HTTP/1.1",
                b"Host: \texample.com ",
                b"content-length: 004",
                b"Content-Length: 4",
            ),
            head(b"POST http://example.com/x HTTP/1.1", b"Host: other", b"Content-Length: 4"),
        ]
        self.assertEqual(
            {upstream_head(data) for data in spellings},
            {
                b"POST /x HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 127.0.0.1\r\n"
                b"X-Forwarded-Proto: http\r\nVia: 1.1 balancebeam\r\nContent-Length: 4\r\n\r\n",
                b"POST /x HTTP/1.1\r\nHost:example.com\r\nX-Forwarded-For: 127.0.0.1\r\n"
                b"X-Forwarded-Proto: http\r\nVia: 1.1 balancebeam\r\nContent-Length: 4\r\n\r\n",
                b"POST /x HTTP/1.1\r\nHost: \texample.com \r\nX-Forwarded-For: 127.0.0.1\r\n"
                b"X-Forwarded-Proto: http\r\nVia: 1.1 balancebeam\r\nContent-Length: 4\r\n\r\n",
            },
        )
        self.assertEqual(upstream_head(spellings[0]), upstream_head(spellings[3]))


class DateFieldTests(SynchronousTestCase):
    """
    The C{Date} line: formatted from the clock once per second, added to a
    response the balancer writes unless it already has one.
    """

    def test_formatted_once_per_second(self) -> None:
        now = [1_764_566_400.25]
        date = DateField(lambda: now[0])
        first = date.line()
        self.assertEqual(first, b"Date: Mon, 01 Dec 2025 05:20:00 GMT")
        now[0] += 0.5
        self.assertIs(date.line(), first)
        now[0] += 1
        self.assertEqual(date.line(), b"Date: Mon, 01 Dec 2025 05:20:01 GMT")

    def test_render_response_keeps_a_given_date(self) -> None:
        given = ((b"date", b"Sun, 30 Nov 2025 00:00:00 GMT"),)
        rendered = render_response(200, None, given, b"x", True, False, date=b"Date: now")
        self.assertEqual(rendered.lower().count(b"\r\ndate: "), 1)
        self.assertIn(b"\r\ndate: Sun, 30 Nov 2025 00:00:00 GMT\r\n", rendered)
        rendered = render_response(200, None, (), b"x", True, False, date=b"Date: now")
        self.assertIn(b"\r\nDate: now\r\n", rendered)

    def test_error_response_dated(self) -> None:
        self.assertTrue(
            error_response(400, "bad", False, date=b"Date: now").startswith(
                b"HTTP/1.1 400 Bad Request\r\nDate: now\r\n"
            )
        )


class BodyReaderLengthTests(SynchronousTestCase):
    """
    Tests for L{BodyReader} with Content-Length framing.
    """

    def test_one_feed(self) -> None:
        """
        The whole body in one feed is delivered as is and completes the reader.
        """
        received: list[bytes] = []
        reader = BodyReader(BODY_LENGTH, 5, received.append)
        self.assertEqual(reader.feed(b"hello"), 5)
        self.assertEqual((received, reader.done, reader.received), ([b"hello"], True, 5))

    def test_many_feeds(self) -> None:
        """
        A body spread over one-byte feeds is delivered piece by piece and
        completes on its last byte.
        """
        received: list[bytes] = []
        reader = BodyReader(BODY_LENGTH, 3, received.append)
        self.assertEqual([reader.feed(b"a"), reader.feed(b"b")], [1, 1])
        self.assertFalse(reader.done)
        self.assertEqual(reader.feed(b"c"), 1)
        self.assertEqual((received, reader.done, reader.received), ([b"a", b"b", b"c"], True, 3))

    def test_leftover_not_consumed(self) -> None:
        """
        Bytes after the body (a pipelined request) are neither consumed nor delivered.
        """
        received: list[bytes] = []
        reader = BodyReader(BODY_LENGTH, 4, received.append)
        self.assertEqual(reader.feed(b"ab"), 2)
        self.assertEqual(reader.feed(b"cdGET / HTTP/1.1\r\n"), 2)
        self.assertEqual((received, reader.done), ([b"ab", b"cd"], True))
        self.assertEqual(reader.feed(b"more"), 0)
        self.assertEqual(received, [b"ab", b"cd"])

    def test_zero_length(self) -> None:
        """
        A zero length, and no body at all, are done at once and consume nothing.
        """
        for kind in (BODY_LENGTH, BODY_NONE):
            received: list[bytes] = []
            reader = BodyReader(kind, 0, received.append)
            self.assertTrue(reader.done)
            self.assertEqual((reader.feed(b"GET /"), received), (0, []))

    def test_empty_feed(self) -> None:
        """
        Feeding nothing delivers nothing.
        """
        received: list[bytes] = []
        reader = BodyReader(BODY_LENGTH, 2, received.append)
        self.assertEqual((reader.feed(b""), received, reader.done), (0, [], False))

    def test_until_close(self) -> None:
        """
        An until-close body takes every byte and is never done.
        """
        received: list[bytes] = []
        reader = BodyReader(BODY_UNTIL_CLOSE, 0, received.append)
        self.assertEqual(
            [reader.feed(b"abc"), reader.feed(b""), reader.feed(b"0\r\n\r\n")], [3, 0, 5]
        )
        self.assertEqual(
            (received, reader.done, reader.received), ([b"abc", b"0\r\n\r\n"], False, 8)
        )


class BodyReaderChunkedTests(SynchronousTestCase):
    """
    Tests for L{BodyReader} with chunked framing.
    """

    def assert_chunked_rejected(
        self, data: bytes, status: int = 400, max_line: int = 4096
    ) -> None:
        """
        Assert that C{data} is refused with C{status} however it is split.
        """
        for pieces in splits(data):
            error = self.assertRaises(
                HTTPError, read_body, BODY_CHUNKED, 0, pieces, status, max_line
            )
            self.assertEqual((error.status, pieces), (status, pieces))

    def test_chunks(self) -> None:
        """
        Chunks are de-chunked, and bytes after the last chunk are left over.
        """
        data = b"5\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n"
        self.assertEqual(
            read_body(BODY_CHUNKED, 0, [data]),
            (b"hello 0123456789", b"GET / HTTP/1.1\r\n", True),
        )

    def test_consumed_count(self) -> None:
        """
        C{feed} returns exactly the length of the chunked body, and nothing after it.
        """
        body = b"3\r\nabc\r\n0\r\n\r\n"
        received: list[bytes] = []
        reader = BodyReader(BODY_CHUNKED, 0, received.append)
        self.assertEqual(reader.feed(body + b"3\r\nxyz\r\n0\r\n\r\n"), len(body))
        self.assertEqual((received, reader.done, reader.received), ([b"abc"], True, 3))
        self.assertEqual(reader.feed(b"3\r\nxyz"), 0)

    def test_upper_and_lower_hex(self) -> None:
        """
        Chunk sizes are hex in either case, leading zeros allowed (beyond the
        15 significant digits too).
        """
        data = b"a\r\n" + b"x" * 10 + b"\r\nB\r\n" + b"y" * 11 + b"\r\n00\r\n\r\n"
        self.assertEqual(read_body(BODY_CHUNKED, 0, [data]), (b"x" * 10 + b"y" * 11, b"", True))
        data = b"0" * 16 + b"3\r\nabc\r\n" + b"0" * 20 + b"\r\n\r\n"
        self.assertEqual(read_body(BODY_CHUNKED, 0, [data]), (b"abc", b"", True))

    def test_extensions(self) -> None:
        """
        Chunk extensions, with whitespace before them, are ignored.
        """
        data = b'5;name=value\r\nhello\r\n6 ; a="b;c"\r\n world\r\n0;last\r\n\r\n'
        self.assertEqual(read_body(BODY_CHUNKED, 0, [data]), (b"hello world", b"", True))

    def test_trailers_not_payload(self) -> None:
        """
        Trailer fields are captured in C{trailers}, never delivered as payload.
        """
        data = b"2\r\nok\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\nNEXT"
        self.assertEqual(read_body(BODY_CHUNKED, 0, [data]), (b"ok", b"NEXT", True))
        received: list[bytes] = []
        reader = BodyReader(BODY_CHUNKED, 0, received.append)
        self.assertEqual(reader.feed(data), len(data) - 4)
        self.assertEqual(
            (received, reader.trailers), ([b"ok"], b"X-Checksum: abc\r\nX-Other: 1\r\n")
        )

    def test_malformed_trailer(self) -> None:
        """
        A malformed trailer line is a 400.
        """
        for trailer in (b" folded", b"X : v", b"no-colon", b"X: a\x00b"):
            self.assert_chunked_rejected(b"0\r\n" + trailer + b"\r\n\r\n")

    def test_trailer_size_limit(self) -> None:
        """
        Trailers totalling more than four framing lines are a 400.
        """
        self.assertEqual(
            read_body(BODY_CHUNKED, 0, [b"0\r\n" + b"X: 1234567\r\n" * 4 + b"\r\n"], max_line=12),
            (b"", b"", True),
        )
        self.assert_chunked_rejected(b"0\r\n" + b"X: 1234567\r\n" * 5 + b"\r\n", max_line=12)

    def test_bad_chunk_sizes(self) -> None:
        """
        Non-hex, signed, prefixed, empty or spaced chunk sizes, and sizes with
        16 significant hex digits, are a 400.
        """
        for size in (
            b"zz",
            b"-1",
            b"+1",
            b"0x10",
            b"0X1",
            b"",
            b" 5",
            b"5 5",
            b"1_0",
            b"\t5",
            b"1" * 16,
            b"1" + b"0" * 15,
            b"f" * 17,
            b"5\x00",
            b"\xd9\xa5",
            b"5\r",
        ):
            self.assert_chunked_rejected(size + b"\r\n" + b"x" * 5 + b"\r\n0\r\n\r\n")

    def test_largest_chunk_size(self) -> None:
        """
        A 15-digit chunk size is accepted and waits for that much data.
        """
        self.assertEqual(
            read_body(BODY_CHUNKED, 0, [b"fffffffffffffff\r\nabc"]), (b"abc", b"", False)
        )

    def test_bare_lf(self) -> None:
        """
        A bare LF ending a size line, a chunk or the last line is a 400.
        """
        for data in (
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
        ):
            self.assert_chunked_rejected(data)

    def test_missing_crlf_after_data(self) -> None:
        """
        Chunk data not followed by CRLF (data longer than its size) is a 400.
        """
        for data in (
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\r\nabc0\r\n\r\n",
            b"3\r\nabc\r\r\n0\r\n\r\n",
            b"3\r\nabc \r\n0\r\n\r\n",
            b"2\r\nabc\r\n0\r\n\r\n",
        ):
            self.assert_chunked_rejected(data)

    def test_error_status(self) -> None:
        """
        Framing errors carry the status given to the reader (502 upstream).
        """
        self.assert_chunked_rejected(b"zz\r\n", status=502)

    def test_line_length_limit(self) -> None:
        """
        A size line longer than C{max_line} is a 400, with or without its
        newline arriving; one at the limit is fine.
        """
        at_limit = b"5;" + b"a" * 12 + b"\r\n"
        self.assertEqual(len(at_limit), 16)
        self.assertEqual(
            read_body(BODY_CHUNKED, 0, [at_limit + b"hello\r\n0\r\n\r\n"], max_line=16),
            (b"hello", b"", True),
        )
        self.assert_chunked_rejected(b"5;" + b"a" * 13 + b"\r\nhello\r\n0\r\n\r\n", max_line=16)
        self.assert_chunked_rejected(b"5;" + b"a" * 20, max_line=16)

    def test_endless_line_bounded(self) -> None:
        """
        Size-line bytes without a newline are refused once over the limit,
        so memory stays bounded.
        """
        received: list[bytes] = []
        reader = BodyReader(BODY_CHUNKED, 0, received.append, max_line=8)
        self.assertEqual(reader.feed(b"0" * 8), 8)
        error = self.assertRaises(HTTPError, reader.feed, b"0")
        self.assertEqual((error.status, received), (400, []))

    def test_round_trip_with_chunk(self) -> None:
        """
        What L{chunk} and L{LAST_CHUNK} produce reads back as the same payload.
        """
        pieces = [b"a", b"b" * 15, b"c" * 16, b"d" * 255, b"e" * 4096]
        data = b"".join(b"".join(chunk(piece)) for piece in pieces) + LAST_CHUNK
        self.assertEqual(read_body(BODY_CHUNKED, 0, [data]), (b"".join(pieces), b"", True))


class BodyReaderSplitTests(SynchronousTestCase):
    """
    Feeding a body in pieces gives the same result as feeding it at once,
    wherever it is cut.
    """

    MESSAGES: list[tuple[int, int, bytes, bytes, bytes]] = [
        (BODY_LENGTH, 5, b"helloGET / HTTP/1.1\r\n\r\n", b"hello", b"GET / HTTP/1.1\r\n\r\n"),
        (BODY_LENGTH, 1, b"xy", b"x", b"y"),
        (BODY_CHUNKED, 0, b"5\r\nhello\r\n0\r\n\r\nNEXT", b"hello", b"NEXT"),
        (
            BODY_CHUNKED,
            0,
            b"3;a=b\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\n0\r\n\r\n",
            b"abc0123456789",
            b"0\r\n\r\n",
        ),
        (BODY_CHUNKED, 0, b"1\r\n\n\r\n1\r\n\r\r\n0\r\n\r\n", b"\n\r", b""),
    ]

    def test_every_split_point(self) -> None:
        """
        Every two-piece split and one-byte feeding give the same payload,
        leftover and completion as a single feed.
        """
        for kind, length, data, payload, leftover in self.MESSAGES:
            self.assertEqual(read_body(kind, length, [data]), (payload, leftover, True))
            for pieces in splits(data):
                self.assertEqual(
                    (pieces, read_body(kind, length, pieces)),
                    (pieces, (payload, leftover, True)),
                )

    def test_errors_at_every_split_point(self) -> None:
        """
        A bad chunked body is refused wherever it is cut.
        """
        for data in (
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n-0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nbad\r\n\r\n",
        ):
            for pieces in splits(data):
                error = self.assertRaises(HTTPError, read_body, BODY_CHUNKED, 0, pieces)
                self.assertEqual(error.status, 400)


class PipelineTests(WireTestCase):
    """
    Request smuggling corpora read as a stream of pipelined requests: what
    the balancer sees as one request is one request, however the bytes arrive.
    """

    def assert_stream(
        self, data: bytes, expected: list[tuple[bytes, bytes, bytes]], rest: bytes = b""
    ) -> None:
        """
        Assert that C{data} reads as C{expected} requests, cut anywhere.
        """
        for pieces in splits(data):
            self.assertEqual((pieces, parse_stream(pieces)), (pieces, (expected, rest)))

    def assert_stream_rejected(self, data: bytes, status: int = 400) -> None:
        """
        Assert that C{data} is refused with C{status}, cut anywhere.
        """
        for pieces in splits(data):
            error = self.assertRaises(HTTPError, parse_stream, pieces)
            self.assertEqual((pieces, error.status), (pieces, status))

    def test_pipelined_requests(self) -> None:
        """
        Pipelined requests with length-framed and chunked bodies are separated exactly.
        """
        self.assert_stream(
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n0\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /d HTTP/1.1\r\n",
            [(b"POST", b"/a", b"abc"), (b"POST", b"/b", b"de"), (b"GET", b"/c", b"")],
            b"GET /d HTTP/1.1\r\n",
        )

    def test_cl_te(self) -> None:
        """
        The CL.TE attack (front end by length, back end by chunks) is refused.
        """
        self.assert_stream_rejected(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED"
        )

    def test_te_cl(self) -> None:
        """
        The TE.CL attack (front end by chunks, back end by length) is refused.
        """
        self.assert_stream_rejected(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
        )

    def test_te_te(self) -> None:
        """
        TE.TE obfuscations that one side might ignore are refused.
        """
        for field in (
            b"Transfer-Encoding: xchunked",
            b"Transfer-Encoding : chunked",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
            b"Transfer-Encoding:\x0bchunked",
            b"X: X\r\n Transfer-Encoding: chunked",
            b"Transfer-Encoding\n: chunked",
            b"Transfer_Encoding: chunked",
        ):
            self.assert_stream_rejected(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                + field
                + b"\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"
            )

    def test_chunk_size_tricks(self) -> None:
        """
        Chunk sizes a lax parser would read differently (overflowing,
        prefixed, or trailing junk) are refused.
        """
        for size in (b"1" * 16 + b"3", b"0x3", b"3 x", b"-3", b"+3", b"3\x00"):
            self.assert_stream_rejected(
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                + size
                + b"\r\nabc\r\n0\r\n\r\n"
            )

    def test_smuggled_request_is_seen(self) -> None:
        """
        A request hidden after a chunked body's last chunk is read as a
        request of its own, not as part of the body.
        """
        self.assert_stream(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n",
            [(b"POST", b"/", b""), (b"GET", b"/admin", b"")],
        )

    def test_bad_second_request(self) -> None:
        """
        A malformed pipelined request after a good one is refused.
        """
        self.assert_stream_rejected(
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"
        )

    def test_forwarded_request_reads_the_same(self) -> None:
        """
        The bytes sent upstream read back, by the same strict parser, as
        exactly one request with the same body.
        """
        for data in (
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
            b"POST http://h/c HTTP/1.0\r\nContent-Length: 2\r\n"
            b"Connection: content-length\r\n\r\nhi",
            b"GET /d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ):
            requests, rest = parse_stream([data])
            self.assertEqual(len(requests), 1)
            self.assertEqual((data, parse_stream([forward(data)])), (data, (requests, b"")))

    def test_forwarded_trailers(self) -> None:
        """
        Allowed trailer fields reach the upstream byte-exact after the last
        chunk; framing, routing and credential fields in trailers do not.
        """
        data = (
            b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Checksum: 900150983cd24fb0\r\nContent-Length: 0\r\n"
            b"HOST: evil\r\nAuthorization: Basic eA==\r\nX-Forwarded-For: 10.9.9.9\r\n"
            b"x-checksum-alg:md5\r\n\r\n"
        )
        sent = forward(data)
        self.assertTrue(
            sent.endswith(
                b"\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 900150983cd24fb0\r\n"
                b"x-checksum-alg:md5\r\n\r\n"
            ),
            sent,
        )
        self.assertEqual(parse_stream([sent]), ([(b"POST", b"/t", b"abc")], b""))


class ResponseHeadTests(WireTestCase):
    """
    Tests for L{parse_response_head}.
    """

    def test_fields(self) -> None:
        """
        Status, status line, version and fields are recorded as sent.
        """
        response = parse_response_head(
            head(
                b"HTTP/1.1 404 Not Found", b"Content-Length: 0", b"Set-Cookie: a", b"Set-Cookie: b"
            ),
            b"GET",
        )
        self.assertEqual(
            (response.status, response.status_line, response.minor),
            (404, b"HTTP/1.1 404 Not Found", 1),
        )
        self.assertEqual(
            response.fields,
            [
                (b"content-length", b"0", b"Content-Length: 0"),
                (b"set-cookie", b"a", b"Set-Cookie: a"),
                (b"set-cookie", b"b", b"Set-Cookie: b"),
            ],
        )

    def test_status_line_without_reason(self) -> None:
        """
        A status line with no reason phrase, or an empty one, is accepted.
        """
        for line in (b"HTTP/1.1 200", b"HTTP/1.1 200 "):
            response = parse_response_head(head(line, b"Content-Length: 0"), b"GET")
            self.assertEqual((response.status, response.status_line), (200, line))

    def test_malformed_status_lines(self) -> None:
        """
        Status lines that are not HTTP/1.x with a three-digit status from
        100 to 599 are a 502.
        """
        for line in (
            b"HTTP/1.1 600 Weird",
            b"HTTP/1.1 999 Weird",
            b"",
            b"HTTP/1.1",
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 200OK",
            b"HTTP/2 200 OK",
            b"HTTP/2.0 200 OK",
            b"HTTP/0.9 200 OK",
            b"http/1.1 200 OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/1.1 abc OK",
            b"HTTP/1.1 099 Low",
            b"HTTP/1.1 000 Zero",
            b"ICY 200 OK",
            b"HTTP/1.1 200 O\x00K",
            b"HTTP/1.1 200 OK\r",
            b"<html>",
        ):
            self.assert_response_rejected(head(line, b"Content-Length: 0"))

    def test_malformed_fields(self) -> None:
        """
        Malformed response fields, and too many of them, are a 502 (never a 431).
        """
        for field in (b" folded", b"X : v", b"X: a\x00b", b"no colon"):
            self.assert_response_rejected(head(b"HTTP/1.1 200 OK", b"X: y", field))
        error = self.assertRaises(
            HTTPError,
            parse_response_head,
            head(b"HTTP/1.1 200 OK", b"A: 1", b"B: 2", b"C: 3"),
            b"GET",
            2,
        )
        self.assertEqual(error.status, 502)

    def test_bad_content_length(self) -> None:
        """
        Invalid or conflicting Content-Length values from upstream are a 502.
        """
        for fields in (
            (b"Content-Length: -1",),
            (b"Content-Length: 5, 6",),
            (b"Content-Length: 1", b"Content-Length: 2"),
            (b"Content-Length: x",),
        ):
            self.assert_response_rejected(head(b"HTTP/1.1 200 OK", *fields))

    def test_content_length(self) -> None:
        """
        Content-Length frames the body and the connection stays reusable.
        """
        response = parse_response_head(head(b"HTTP/1.1 200 OK", b"Content-Length: 12, 12"), b"GET")
        self.assertEqual(
            (response.body_kind, response.content_length, response.reusable),
            (BODY_LENGTH, 12, True),
        )

    def test_zero_content_length(self) -> None:
        """
        C{Content-Length: 0} means no body.
        """
        response = parse_response_head(head(b"HTTP/1.1 200 OK", b"Content-Length: 0"), b"GET")
        self.assertEqual((response.body_kind, response.reusable), (BODY_NONE, True))

    def test_chunked(self) -> None:
        """
        A final chunked coding frames the body by chunks.
        """
        for value in (b"chunked", b"gzip, chunked", b"Chunked"):
            response = parse_response_head(
                head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: " + value), b"GET"
            )
            self.assertEqual((response.body_kind, response.reusable), (BODY_CHUNKED, True))

    def test_chunked_with_content_length(self) -> None:
        """
        Transfer-Encoding wins over Content-Length, and the connection is not reused.
        """
        response = parse_response_head(
            head(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked"), b"GET"
        )
        self.assertEqual((response.body_kind, response.reusable), (BODY_CHUNKED, False))

    def test_non_chunked_transfer_encoding(self) -> None:
        """
        A transfer coding not ending in chunked is read until close.
        """
        for value in (b"gzip", b"chunked, gzip"):
            response = parse_response_head(
                head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: " + value), b"GET"
            )
            self.assertEqual((response.body_kind, response.reusable), (BODY_UNTIL_CLOSE, False))

    def test_until_close(self) -> None:
        """
        Without framing the body runs until close and the connection is not reusable.
        """
        response = parse_response_head(
            head(b"HTTP/1.1 200 OK", b"Content-Type: text/plain"), b"GET"
        )
        self.assertEqual((response.body_kind, response.reusable), (BODY_UNTIL_CLOSE, False))

    def test_head_request(self) -> None:
        """
        A response to HEAD has no body whatever its framing headers say.
        """
        for field in (b"Content-Length: 1234", b"Transfer-Encoding: chunked", b"X: y"):
            response = parse_response_head(head(b"HTTP/1.1 200 OK", field), b"HEAD")
            self.assertEqual(
                (response.body_kind, response.content_length, response.reusable),
                (BODY_NONE, 0, True),
            )

    def test_statuses_without_body(self) -> None:
        """
        1xx, 204 and 304 responses have no body even with framing headers.
        """
        for status in (
            b"100 Continue",
            b"101 Switching Protocols",
            b"103 Early Hints",
            b"204 No Content",
            b"304 Not Modified",
        ):
            response = parse_response_head(
                head(b"HTTP/1.1 " + status, b"Content-Length: 10"), b"GET"
            )
            self.assertEqual((response.body_kind, response.reusable), (BODY_NONE, True))

    def test_connection_close(self) -> None:
        """
        C{Connection: close} makes the connection not reusable.
        """
        response = parse_response_head(
            head(b"HTTP/1.1 200 OK", b"Connection: Close", b"Content-Length: 1"), b"GET"
        )
        self.assertEqual(
            (response.reusable, response.connection_names), (False, frozenset({b"close"}))
        )

    def test_http10_reuse(self) -> None:
        """
        An HTTP/1.0 upstream connection is reusable only with C{Connection:
        keep-alive} and without C{close}.
        """
        plain = parse_response_head(head(b"HTTP/1.0 200 OK", b"Content-Length: 1"), b"GET")
        kept = parse_response_head(
            head(b"HTTP/1.0 200 OK", b"Connection: keep-alive", b"Content-Length: 1"), b"GET"
        )
        both = parse_response_head(
            head(b"HTTP/1.0 200 OK", b"Connection: Keep-Alive, close", b"Content-Length: 1"),
            b"GET",
        )
        self.assertEqual(
            (plain.minor, plain.reusable, kept.reusable, both.reusable), (0, False, True, False)
        )

    def test_keep_alive_timeout(self) -> None:
        """
        C{Keep-Alive: timeout=N} gives the upstream's idle timeout in seconds.
        """
        cases = (
            ((b"Keep-Alive: timeout=5, max=100",), 5.0),
            ((b"Keep-Alive: max=100, Timeout = 7",), 7.0),
            ((b"Keep-Alive: timeout=5", b"Keep-Alive: max=9"), 5.0),
            ((b"Keep-Alive: timeout=1.5",), None),
            ((b"Keep-Alive: timeout=-1",), None),
            ((b"Keep-Alive: max=100",), None),
            ((), None),
        )
        for fields, timeout in cases:
            response = parse_response_head(
                head(b"HTTP/1.1 200 OK", b"Content-Length: 0", *fields), b"GET"
            )
            self.assertEqual((fields, response.keep_alive_timeout), (fields, timeout))


def response(data: bytes, method: bytes = b"GET") -> ResponseHead:
    """
    Parse a response head to a request made with C{method}.
    """
    return parse_response_head(data, method)


class ResponseForClientTests(SynchronousTestCase):
    """
    Tests for L{response_head_for_client}.
    """

    def test_length_framed(self) -> None:
        """
        End-to-end fields pass in order with their case; hop-by-hop ones are
        dropped; Via and a canonical Content-Length are added.
        """
        upstream = response(
            head(
                b"HTTP/1.1 200 OK",
                b"content-type: text/plain",
                b"Connection: keep-alive, X-Hop",
                b"Keep-Alive: timeout=5",
                b"Content-Length: 5, 5",
                b"X-Hop: 1",
                b"Set-Cookie: a=1",
                b"Proxy-Authenticate: Basic",
                b"Trailer: X-Sum",
                b"Upgrade: h2",
                b"TE: trailers",
                b"Set-Cookie: b=2",
            )
        )
        self.assertEqual(
            response_head_for_client(upstream, 1, True, False),
            b"HTTP/1.1 200 OK\r\n"
            b"content-type: text/plain\r\n"
            b"Set-Cookie: a=1\r\n"
            b"Set-Cookie: b=2\r\n"
            b"Via: 1.1 balancebeam\r\n"
            b"Content-Length: 5\r\n"
            b"\r\n",
        )

    def test_chunked_reframed(self) -> None:
        """
        A chunked body goes to an HTTP/1.1 client chunked, connection kept.
        """
        upstream = response(head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"X: y"))
        self.assertEqual(
            response_head_for_client(upstream, 1, True, True),
            b"HTTP/1.1 200 OK\r\nX: y\r\nVia: 1.1 balancebeam\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
        )

    def test_until_close_reframed(self) -> None:
        """
        An until-close body goes to an HTTP/1.1 client chunked.
        """
        upstream = response(head(b"HTTP/1.1 200 OK", b"X: y"))
        self.assertEqual(
            response_head_for_client(upstream, 1, True, True),
            b"HTTP/1.1 200 OK\r\nX: y\r\nVia: 1.1 balancebeam\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
        )

    def test_other_transfer_codings_kept(self) -> None:
        """
        Transfer codings other than the upstream's final chunked stay
        declared when the body is re-chunked.
        """
        for value, expected in (
            (b"gzip, chunked", b"gzip, chunked"),
            (b"gzip", b"gzip, chunked"),
            (b"Deflate ,chunked", b"deflate, chunked"),
        ):
            upstream = response(head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: " + value))
            self.assertEqual(
                response_head_for_client(upstream, 1, False, True),
                b"HTTP/1.1 200 OK\r\nVia: 1.1 balancebeam\r\nTransfer-Encoding: "
                + expected
                + b"\r\nConnection: close\r\n\r\n",
            )

    def test_until_close_http10_client(self) -> None:
        """
        A chunked body goes to an HTTP/1.0 client without framing, closing the connection.
        """
        upstream = response(head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"))
        self.assertEqual(
            response_head_for_client(upstream, 0, False, False),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 balancebeam\r\nConnection: close\r\n\r\n",
        )

    def test_http10_client_keep_alive(self) -> None:
        """
        An HTTP/1.0 client kept alive is told so; an HTTP/1.1 one is not.
        """
        upstream = response(head(b"HTTP/1.1 200 OK", b"Content-Length: 2"))
        self.assertEqual(
            response_head_for_client(upstream, 0, True, False),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 balancebeam\r\nContent-Length: 2\r\n"
            b"Connection: keep-alive\r\n\r\n",
        )
        self.assertNotIn(b"Connection", response_head_for_client(upstream, 1, True, False))

    def test_connection_close(self) -> None:
        """
        A connection that will close says C{Connection: close}, once.
        """
        upstream = response(head(b"HTTP/1.1 200 OK", b"Connection: close", b"Content-Length: 2"))
        self.assertEqual(
            response_head_for_client(upstream, 1, False, False),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 balancebeam\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n",
        )

    def test_head_content_length_verbatim(self) -> None:
        """
        A response to HEAD keeps the upstream's Content-Length as sent, and is not chunked.
        """
        upstream = response(
            head(b"HTTP/1.1 200 OK", b"content-length: 1234", b'ETag: "x"'), b"HEAD"
        )
        self.assertEqual(
            response_head_for_client(upstream, 1, True, False),
            b'HTTP/1.1 200 OK\r\nETag: "x"\r\nVia: 1.1 balancebeam\r\n'
            b"content-length: 1234\r\n\r\n",
        )

    def test_no_content_length_on_204_or_1xx(self) -> None:
        """
        A Content-Length an upstream wrongly sent on a 204 or 1xx is not forwarded.
        """
        for line in (b"HTTP/1.1 204 No Content", b"HTTP/1.1 103 Early Hints"):
            upstream = response(head(line, b"Content-Length: 7"))
            self.assertEqual(
                response_head_for_client(upstream, 1, True, False),
                line + b"\r\nVia: 1.1 balancebeam\r\n\r\n",
            )

    def test_not_modified_content_length_verbatim(self) -> None:
        """
        A 304 keeps the upstream's Content-Length as sent.
        """
        upstream = response(head(b"HTTP/1.1 304 Not Modified", b"Content-Length: 99"))
        self.assertEqual(
            response_head_for_client(upstream, 1, True, False),
            b"HTTP/1.1 304 Not Modified\r\nVia: 1.1 balancebeam\r\nContent-Length: 99\r\n\r\n",
        )

    def test_switching_protocols(self) -> None:
        """
        A 101 keeps its Upgrade and Connection fields and gets nothing added.
        """
        upstream = response(
            head(
                b"HTTP/1.1 101 Switching Protocols",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Accept: abc",
            )
        )
        self.assertEqual(
            response_head_for_client(upstream, 1, True, False),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: abc\r\n\r\n",
        )

    def test_informational(self) -> None:
        """
        Other 1xx responses pass their fields and get no Connection field.
        """
        upstream = response(head(b"HTTP/1.1 103 Early Hints", b"Link: </s.css>; rel=preload"))
        self.assertEqual(
            response_head_for_client(upstream, 1, True, False),
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nVia: 1.1 balancebeam\r\n"
            b"\r\n",
        )

    def test_missing_reason(self) -> None:
        """
        A status line without a reason phrase gets the standard one, or
        C{Unknown}.
        """
        for line, expected in (
            (b"HTTP/1.1 404", b"HTTP/1.1 404 Not Found"),
            (b"HTTP/1.0 502", b"HTTP/1.1 502 Bad Gateway"),
            (b"HTTP/1.1 599", b"HTTP/1.1 599 Unknown"),
            (b"HTTP/1.1 200 ", b"HTTP/1.1 200 "),
        ):
            upstream = response(head(line, b"Content-Length: 0"))
            self.assertEqual(
                response_head_for_client(upstream, 1, True, False).split(b"\r\n")[0], expected
            )

    def test_http10_upstream(self) -> None:
        """
        An HTTP/1.0 response goes out as HTTP/1.1 with a 1.0 Via.
        """
        upstream = response(head(b"HTTP/1.0 200 Fine", b"Content-Length: 1"))
        self.assertEqual(
            response_head_for_client(upstream, 1, True, False),
            b"HTTP/1.1 200 Fine\r\nVia: 1.0 balancebeam\r\nContent-Length: 1\r\n\r\n",
        )


class ErrorResponseTests(SynchronousTestCase):
    """
    Tests for L{error_response}.
    """

    def test_close(self) -> None:
        """
        An error response is complete, with a matching Content-Length and
        C{Connection: close}.
        """
        self.assertEqual(
            error_response(400, "malformed request line", False),
            b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 40\r\n"
            b"Connection: close\r\n"
            b"\r\n"
            b"400 Bad Request: malformed request line\n",
        )

    def test_keep_alive_and_extra(self) -> None:
        """
        A kept-alive error response says so and carries the extra fields last.
        """
        data = error_response(503, "no healthy upstream", True, (("Retry-After", "5"),))
        head_part, _, body = data.partition(b"\r\n\r\n")
        self.assertEqual(body, b"503 Service Unavailable: no healthy upstream\n")
        self.assertEqual(
            head_part.split(b"\r\n"),
            [
                b"HTTP/1.1 503 Service Unavailable",
                b"Content-Type: text/plain; charset=utf-8",
                b"Content-Length: %d" % len(body),
                b"Connection: keep-alive",
                b"Retry-After: 5",
            ],
        )

    def test_content_length_matches_utf8(self) -> None:
        """
        Content-Length counts bytes, not characters, and unknown statuses say C{Error}.
        """
        data = error_response(599, "caf\u00e9", False)
        head_part, _, body = data.partition(b"\r\n\r\n")
        self.assertEqual(body, "599 Error: caf\u00e9\n".encode())
        self.assertIn(b"\r\nContent-Length: %d\r\n" % len(body), head_part + b"\r\n")
        self.assertTrue(head_part.startswith(b"HTTP/1.1 599 Error\r\n"))

    def test_parses_as_response(self) -> None:
        """
        Every error response is a valid length-framed response to our own parser.
        """
        for status in (400, 408, 413, 417, 429, 431, 501, 502, 503, 504, 505):
            data = error_response(status, "why", status < 500)
            head_part, _, body = data.partition(b"\r\n\r\n")
            parsed = parse_response_head(head_part, b"GET")
            self.assertEqual(
                (parsed.status, parsed.body_kind, parsed.content_length),
                (status, BODY_LENGTH, len(body)),
            )


class ChunkTests(SynchronousTestCase):
    """
    Tests for L{chunk} and L{LAST_CHUNK}.
    """

    def test_chunk(self) -> None:
        """
        A chunk is its hex size, CRLF, the data and CRLF, as separate pieces.
        """
        self.assertEqual(chunk(b"hello"), [b"5\r\n", b"hello", b"\r\n"])
        self.assertEqual(chunk(b"x" * 255)[0], b"ff\r\n")
        self.assertEqual(chunk(b"x" * 4096)[0], b"1000\r\n")

    def test_last_chunk(self) -> None:
        """
        The last chunk has size zero and no trailers.
        """
        self.assertEqual(LAST_CHUNK, b"0\r\n\r\n")
