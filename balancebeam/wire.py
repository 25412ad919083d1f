"""
HTTP/1.x on the wire: strict parsing of message heads, body framing, and the
rewriting of heads for the next hop.

Parsing is strict where laxness enables request smuggling (RFC 9112 section
6.3 and 11.2): both Content-Length and Transfer-Encoding, differing
Content-Length values, signed or non-numeric lengths, a Transfer-Encoding
other than C{chunked}, bad chunk sizes, obsolete line folding, bare CR or LF,
whitespace before a header's colon, an invalid C{Host} and framing header
names spelled with underscores are all rejected.

Everything here is pure: bytes in, records or bytes out, L{HTTPError} on bad
input. The protocols in L{balancebeam.frontend} and L{balancebeam.upstream}
drive it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

CRLF: Final = b"\r\n"
HEAD_END: Final = b"\r\n\r\n"

BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_UNTIL_CLOSE: Final = 3

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# RFC 9110 section 7.2: uri-host [ ":" port ]; reg-name without the comma,
# which some servers read as a list separator.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?")
# Names some upstreams (CGI/WSGI style) fold into the framing headers.
_FRAMING_LOOKALIKES = frozenset({b"content_length", b"transfer_encoding"})
# A whole header block (each line preceded by CRLF) checked in one regex
# call: a token, a colon, then only HTAB, visible ASCII, SP and obs-text.
_FIELD_BLOCK = re.compile(rb"(?:\r\n" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*)*")
_HOP_NAMES = rb"connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade"
_HOP_NAMES += rb"|proxy-authenticate|proxy-authorization|content-length"
# The fields the balancer reads or rewrites, found in the lower-cased head;
# every other line is forwarded as it came, without being looked at again.
_REQUEST_SPECIAL = re.compile(
    rb"\r\n(" + _HOP_NAMES + rb"|host|expect|via|x-forwarded-for|x-forwarded-proto"
    rb"|idempotency-key|content_length|transfer_encoding):[ \t]*([^\r]*)"
)
_RESPONSE_SPECIAL = re.compile(rb"\r\n(" + _HOP_NAMES + rb"):[ \t]*([^\r]*)")

#: Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP: Final = frozenset(
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
        b"content-length",  # re-framed for each hop
    }
)

REASONS: Final = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

IDEMPOTENT_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"}
)

#: Request fields never forwarded as they came: hop-by-hop ones, and the
#: ones the balancer writes itself.
_REQUEST_DROPPED: Final = HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"via",
    b"expect",
}
_REQUEST_SPECIAL_NAMES: Final = _REQUEST_DROPPED | {
    b"host",
    b"idempotency-key",
    b"content_length",
    b"transfer_encoding",
}

Field = tuple[bytes, bytes, bytes]
"""A header: lower-cased name, value without surrounding whitespace, the raw line."""


class HTTPError(Exception):
    """
    A message that cannot be relayed.

    @ivar status: the HTTP status to answer with (400, 408, 413, 431, 501, 505, ...).
    @ivar reason: a short human-readable explanation, sent as the body.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class _Head:
    """
    What request and response heads share: the bytes as received, where the
    header block starts, and the few fields the balancer acts on.

    @ivar minor: the HTTP/1 minor version.
    @ivar raw: the head as received.
    @ivar block_start: the offset in C{raw} of the CRLF before the first field.
    @ivar special: the fields the balancer reads or rewrites (see L{Field}),
        with their C{(start, end)} positions in C{raw} in C{spans}.
    @ivar body_kind: how the body is framed (L{BODY_NONE}, L{BODY_LENGTH}, ...).
    @ivar content_length: the body length for L{BODY_LENGTH}.
    @ivar connection_names: lower-cased tokens of the C{Connection} header.
    """

    __slots__ = (
        "minor",
        "raw",
        "block_start",
        "special",
        "spans",
        "_fields",
        "body_kind",
        "content_length",
        "connection_names",
    )

    def __init__(
        self,
        minor: int,
        raw: bytes,
        block_start: int,
        special: list[Field],
        spans: list[tuple[int, int]],
    ) -> None:
        self.minor = minor
        self.raw = raw
        self.block_start = block_start
        self.special = special
        self.spans = spans
        self._fields: list[Field] | None = None
        self.body_kind = BODY_NONE
        self.content_length = 0
        self.connection_names: frozenset[bytes] = frozenset()

    @property
    def fields(self) -> list[Field]:
        """
        Every header field in order (see L{Field}); built on first use.
        """
        if self._fields is None:
            self._fields = self._all_fields()
        return self._fields

    def _all_fields(self) -> list[Field]:
        return _all_fields(self.raw, self.block_start)


class RequestHead(_Head):
    """
    A parsed request head.

    @ivar method: the method token, e.g. C{b"GET"}.
    @ivar target: the request target in origin form (C{b"/path?q"}) or C{b"*"}.
    @ivar fields: the header fields in order (see L{Field}).
    @ivar keep_alive: whether the client wants the connection kept open.
    @ivar upgrade: the C{Upgrade} header value when the client asks to switch
        protocols (C{Connection: upgrade}), else C{None}.
    @ivar expect_continue: whether the client sent C{Expect: 100-continue}.
    @ivar host: the C{Host} value (from an absolute-form target if given), or C{None}.
    @ivar host_replaced: whether C{host} came from an absolute-form target
        and replaces the C{Host} fields.
    """

    __slots__ = (
        "method",
        "target",
        "keep_alive",
        "upgrade",
        "expect_continue",
        "host",
        "host_replaced",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        minor: int,
        raw: bytes,
        block_start: int,
        special: list[Field],
        spans: list[tuple[int, int]],
    ) -> None:
        super().__init__(minor, raw, block_start, special, spans)
        self.method = method
        self.target = target
        self.host_replaced = False
        self.keep_alive = minor >= 1
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.host: bytes | None = None

    @property
    def idempotent(self) -> bool:
        """
        Whether replaying this request is safe (RFC 9110 section 9.2.2, or an
        C{Idempotency-Key} header).
        """
        if self.method in IDEMPOTENT_METHODS:
            return True
        return any(name == b"idempotency-key" for name, _, _ in self.special)

    def _all_fields(self) -> list[Field]:
        fields = super()._all_fields()
        if self.host_replaced:
            assert self.host is not None
            fields = [f for f in fields if f[0] != b"host"]
            fields.append((b"host", self.host, b"Host: " + self.host))
        return fields


class ResponseHead(_Head):
    """
    A parsed response head.

    @ivar status: the status code.
    @ivar status_line: the raw status line.
    @ivar fields: the header fields in order.
    @ivar reusable: whether the upstream connection may carry another request
        once this response is complete.
    @ivar keep_alive_timeout: seconds from C{Keep-Alive: timeout=N}, if sent.
    """

    __slots__ = ("status", "status_line", "reusable", "keep_alive_timeout")

    def __init__(
        self,
        status: int,
        status_line: bytes,
        minor: int,
        raw: bytes,
        block_start: int,
        special: list[Field],
        spans: list[tuple[int, int]],
    ) -> None:
        super().__init__(minor, raw, block_start, special, spans)
        self.status = status
        self.status_line = status_line
        self.reusable = minor >= 1
        self.keep_alive_timeout: float | None = None


def _split_head(
    head: bytes,
    first_line: re.Pattern[bytes],
    special: re.Pattern[bytes],
    max_fields: int,
    error_status: int,
    count_status: int,
) -> tuple[re.Match[bytes] | None, int, list[Field], list[tuple[int, int]]]:
    """
    Check a head's syntax and find its special fields.

    @return: the match of C{first_line}, where the header block starts, the
        special fields and their C{(start, end)} spans in C{head} (each span
        covers the CRLF before the line and the line itself).
    @raise HTTPError: C{error_status} on a malformed field, C{count_status}
        on too many fields.
    """
    block_start = head.find(CRLF)
    if block_start == -1:
        block_start = len(head)
    matched = first_line.fullmatch(head, 0, block_start)
    if matched is None:
        return None, block_start, [], []
    if head.count(CRLF) > max_fields:
        raise HTTPError(count_status, f"more than {max_fields} header fields")
    if _FIELD_BLOCK.fullmatch(head, block_start) is None:
        # Let the line-by-line parser say what is wrong.
        _parse_fields(head[block_start + 2 :].split(CRLF), max_fields, error_status, count_status)
        raise HTTPError(error_status, "malformed header field")
    fields: list[Field] = []
    spans: list[tuple[int, int]] = []
    for found in special.finditer(head.lower(), block_start):
        # The pattern runs to the end of the line ([^\r]*: the block has no bare CR).
        start, end = found.span()
        fields.append((found[1], head[found.start(2) : end].rstrip(b" \t"), head[start + 2 : end]))
        spans.append((start, end))
    return matched, block_start, fields, spans


def _all_fields(head: bytes, block_start: int) -> list[Field]:
    """
    Every field of an already validated head.
    """
    if block_start >= len(head):
        return []
    return _parse_fields(head[block_start + 2 :].split(CRLF), len(head), 400, 400)


def _lines_named(head: bytes, block_start: int, names: frozenset[bytes]) -> list[tuple[int, int]]:
    """
    The spans of every field of C{head} whose lower-cased name is in C{names}.
    """
    lowered = head.lower()
    spans = []
    for name in names:
        needle = CRLF + name + b":"
        start = lowered.find(needle, block_start)
        while start != -1:
            end = head.find(CRLF, start + 2)
            spans.append((start, len(head) if end == -1 else end))
            start = lowered.find(needle, start + 2)
    return spans


def _splice(head: bytes, start: int, cuts: list[tuple[int, int]]) -> list[bytes]:
    """
    The pieces of C{head} from C{start} on, without the C{cuts} spans.
    """
    if not cuts:
        return [head[start:]]
    pieces = []
    for cut_start, cut_end in sorted(cuts):
        if cut_start > start:
            pieces.append(head[start:cut_start])
        start = max(start, cut_end)
    pieces.append(head[start:])
    return pieces


def _parse_fields(
    lines: list[bytes], max_count: int, error_status: int, count_status: int
) -> list[Field]:
    """
    Parse header field lines.

    @param count_status: the status for more than C{max_count} fields.
    @raise HTTPError: with C{error_status} for a malformed line.
    """
    if len(lines) > max_count:
        raise HTTPError(count_status, f"more than {max_count} header fields")
    fields: list[Field] = []
    match = _HEADER_LINE.fullmatch
    for line in lines:
        parsed = match(line)
        if parsed is None:
            raise HTTPError(error_status, "malformed header field")
        fields.append((parsed[1].lower(), parsed[2], line))
    return fields


def _tokens(fields: list[Field], name: bytes) -> list[bytes]:
    """
    The comma-separated, lower-cased tokens of every C{name} field, in order.
    """
    tokens = []
    for field_name, value, _ in fields:
        if field_name == name:
            for token in value.split(b","):
                token = token.strip(b" \t").lower()
                if token:
                    tokens.append(token)
    return tokens


def _content_length(fields: list[Field], error_status: int) -> int | None:
    """
    The one Content-Length of a message, or C{None} if absent.

    @raise HTTPError: on a non-numeric or signed value, or differing values.
    """
    length: int | None = None
    for name, value, _ in fields:
        if name != b"content-length":
            continue
        for item in value.split(b","):
            item = item.strip(b" \t")
            if _DIGITS.fullmatch(item) is None:
                raise HTTPError(error_status, "invalid Content-Length")
            if length is not None and int(item) != length:
                raise HTTPError(error_status, "conflicting Content-Length values")
            length = int(item)
    return length


def parse_request_head(head: bytes, max_fields: int) -> RequestHead:
    """
    Parse a request head (without the blank line ending it).

    @param max_fields: more header fields than this is a 431.
    @raise HTTPError: when the head is malformed or unsupported.
    """
    request_line, block_start, fields, spans = _split_head(
        head, _REQUEST_LINE, _REQUEST_SPECIAL, max_fields, 400, 431
    )
    if request_line is None:
        raise HTTPError(400, "malformed request line")
    method, target, major, minor_text = request_line.groups()
    if major != b"1" or minor_text not in (b"0", b"1"):
        raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    request = RequestHead(method, target, int(minor_text), head, block_start, fields, spans)
    simple = len(fields) == 1 and fields[0][0] == b"host"
    if simple and target[:1] == b"/" and method != b"CONNECT":
        # The common case, a request with no body and no special field but
        # Host: nothing else to decide.
        host = fields[0][1]
        if _HOST.fullmatch(host) is None:
            raise HTTPError(400, "invalid Host header")
        request.host = host
        return request

    if method == b"CONNECT":
        raise HTTPError(501, "CONNECT is not supported")
    hosts = [value for name, value, _ in fields if name == b"host"]
    if len(hosts) > 1:
        raise HTTPError(400, "more than one Host header")
    if hosts and _HOST.fullmatch(hosts[0]) is None:
        raise HTTPError(400, "invalid Host header")
    if any(name in _FRAMING_LOOKALIKES for name, _, _ in fields):
        raise HTTPError(400, "underscore in a framing header name")
    if hosts:
        request.host = hosts[0]
    elif request.minor >= 1:
        raise HTTPError(400, "missing Host header")
    if target[:1] != b"/":
        _absolute_to_origin_form(request)

    connection = _tokens(fields, b"connection")
    request.connection_names = frozenset(connection)
    if request.minor >= 1:
        request.keep_alive = b"close" not in connection
    else:
        request.keep_alive = b"keep-alive" in connection and b"close" not in connection

    length = _content_length(fields, 400)
    codings = _tokens(fields, b"transfer-encoding")
    if codings or any(name == b"transfer-encoding" for name, _, _ in fields):
        if length is not None:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        if codings != [b"chunked"]:
            raise HTTPError(400, "unsupported Transfer-Encoding")
        if request.minor == 0:
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        request.body_kind = BODY_CHUNKED
    elif length:
        request.body_kind = BODY_LENGTH
        request.content_length = length

    expectations = _tokens(fields, b"expect")
    if expectations:
        if expectations != [b"100-continue"]:
            raise HTTPError(417, "only Expect: 100-continue is supported")
        request.expect_continue = request.minor >= 1

    if b"upgrade" in connection and request.minor >= 1:
        upgrades = [value for name, value, _ in fields if name == b"upgrade"]
        if upgrades:
            request.upgrade = b", ".join(upgrades)
    return request


_TOKEN_BYTES: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def check_partial_request_head(data: bytes, checked: int) -> None:
    """
    Reject an incomplete request head as soon as it can never become a valid
    one, instead of waiting for the rest until the header deadline: a first
    byte that cannot start a method (a TLS handshake on the plain port, say),
    a bare LF line ending, or a complete first line that is not a request line.

    @param data: the bytes received so far of this head.
    @param checked: how many of them earlier calls have already checked.
    @raise HTTPError: 400 or 505, as L{parse_request_head} would.
    """
    if checked == 0 and data[0] not in _TOKEN_BYTES:
        raise HTTPError(400, "not an HTTP/1.x request")
    newline = data.find(b"\n", max(checked - 1, 0))
    while newline != -1:
        if data[newline - 1] != 13:
            raise HTTPError(400, "bare LF in request head")
        newline = data.find(b"\n", newline + 1)
    first_line_end = data.find(CRLF)
    if first_line_end != -1 and first_line_end + 2 > checked:
        request_line = _REQUEST_LINE.fullmatch(data, 0, first_line_end)
        if request_line is None:
            raise HTTPError(400, "malformed request line")
        if request_line[3] != b"1" or request_line[4] not in (b"0", b"1"):
            raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are supported")


def _absolute_to_origin_form(request: RequestHead) -> None:
    """
    Rewrite an absolute-form target (C{http://host/path}) to origin form and
    take the host from it (RFC 9112 section 3.2.2); accept C{*} for OPTIONS.
    """
    target = request.target
    if target == b"*":
        if request.method != b"OPTIONS":
            raise HTTPError(400, "asterisk-form target is only valid for OPTIONS")
        return
    lowered = target[:8].lower()
    if lowered.startswith(b"http://"):
        rest = target[7:]
    elif lowered.startswith(b"https://"):
        rest = target[8:]
    else:
        raise HTTPError(400, "invalid request target")
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = min(i for i in (slash, query, len(rest)) if i != -1)
    authority = rest[:cut]
    if not authority or _HOST.fullmatch(authority) is None:
        raise HTTPError(400, "invalid request target")
    path = rest[cut:]
    if path[:1] != b"/":
        path = b"/" + path
    request.target = path
    request.host = authority
    request.host_replaced = True


def parse_response_head(
    head: bytes, request_method: bytes, max_fields: int = 200
) -> ResponseHead:
    """
    Parse a response head (without the blank line ending it) and work out its
    body framing for a request made with C{request_method}.

    @raise HTTPError: with status 502 when the head is malformed.
    """
    status_line, block_start, fields, spans = _split_head(
        head, _STATUS_LINE, _RESPONSE_SPECIAL, max_fields, 502, 502
    )
    if status_line is None or status_line[1] != b"1" or status_line[3][:1] == b"0":
        raise HTTPError(502, "malformed status line from upstream")
    response = ResponseHead(
        int(status_line[3]),
        head[:block_start],
        int(status_line[2]),
        head,
        block_start,
        fields,
        spans,
    )
    # One pass sorts the few special fields; lists are made only when needed.
    connection: list[bytes] = []
    has_codings = has_length = False
    for name, value, _ in fields:
        if name == b"connection":
            connection += _tokens([(name, value, b"")], name)
        elif name == b"keep-alive":
            timeout = _keep_alive_timeout(value)
            if timeout is not None:
                response.keep_alive_timeout = timeout
        elif name == b"transfer-encoding":
            has_codings = True
        elif name == b"content-length":
            has_length = True
    if connection:
        response.connection_names = frozenset(connection)
    if response.minor >= 1:
        response.reusable = b"close" not in connection
    else:
        response.reusable = b"keep-alive" in connection and b"close" not in connection

    status = response.status
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return response
    codings = _tokens(fields, b"transfer-encoding") if has_codings else []
    length = _content_length(fields, 502) if has_length else None
    if codings:
        if codings[-1] == b"chunked":
            response.body_kind = BODY_CHUNKED
        else:
            response.body_kind = BODY_UNTIL_CLOSE
        if length is not None or response.body_kind == BODY_UNTIL_CLOSE:
            response.reusable = False
    elif length is not None:
        response.body_kind = BODY_LENGTH if length else BODY_NONE
        response.content_length = length
    else:
        response.body_kind = BODY_UNTIL_CLOSE
        response.reusable = False
    return response


def _keep_alive_timeout(value: bytes) -> float | None:
    for parameter in value.split(b","):
        name, _, number = parameter.strip().partition(b"=")
        if name.strip().lower() == b"timeout" and _DIGITS.fullmatch(number.strip()):
            return float(number.strip())
    return None


def request_head_for_upstream(
    request: RequestHead,
    client_ip: str,
    upstream_host: str,
    proto: bytes = b"http",
) -> bytes:
    """
    Build the head sent upstream: HTTP/1.1, origin form, hop-by-hop fields
    removed, C{X-Forwarded-For}/C{X-Forwarded-Proto}/C{Via} added, and framing
    headers for the body as it will be sent on this hop.
    """
    forwarded: list[bytes] = []
    vias: list[bytes] = []
    cuts: list[tuple[int, int]] = []
    for (name, value, _), span in zip(request.special, request.spans):
        if name in _REQUEST_DROPPED:
            cuts.append(span)
            if name == b"x-forwarded-for":
                if value:
                    forwarded.append(value)
            elif name == b"via":
                if value:
                    vias.append(value)
        elif name == b"host" and request.host_replaced:
            cuts.append(span)
    # Host is needed by every HTTP/1.1 upstream, whatever Connection says;
    # the other names in Connection are hop-by-hop.
    named = request.connection_names - _REQUEST_SPECIAL_NAMES
    if named:
        cuts += _lines_named(request.raw, request.block_start, named)
    lines = [
        request.method + b" " + request.target + b" HTTP/1.1"
        + b"".join(_splice(request.raw, request.block_start, cuts))
    ]
    if request.host_replaced:
        assert request.host is not None
        lines.append(b"Host: " + request.host)
    elif request.host is None:
        lines.append(b"Host: " + upstream_host.encode("ascii"))
    forwarded.append(client_ip.encode("ascii"))
    lines.append(b"X-Forwarded-For: " + b", ".join(forwarded))
    lines.append(b"X-Forwarded-Proto: " + proto)
    vias.append(b"1.%d balancebeam" % request.minor)
    lines.append(b"Via: " + b", ".join(vias))
    if request.body_kind == BODY_LENGTH:
        lines.append(b"Content-Length: %d" % request.content_length)
    elif request.body_kind == BODY_CHUNKED:
        lines.append(b"Transfer-Encoding: chunked")
    if request.upgrade is not None:
        lines.append(b"Connection: upgrade")
        lines.append(b"Upgrade: " + request.upgrade)
    lines.append(CRLF)
    return CRLF.join(lines)


def response_head_for_client(
    response: ResponseHead, client_minor: int, keep_alive: bool, chunked: bool
) -> bytes:
    """
    Build the head sent to the client: hop-by-hop fields removed, C{Via}
    added, and framing and C{Connection} headers for the client's hop.

    @param keep_alive: whether the client connection stays open afterwards.
    @param chunked: whether the body is sent chunked on the client's hop.
    """
    status_line = b"HTTP/1.1" + response.status_line[8:]
    if len(response.status_line) == 12:
        status_line += b" " + REASONS.get(response.status, "Unknown").encode("ascii")
    special = response.special
    if response.status == 101:
        cuts = [
            span
            for (name, _, _), span in zip(special, response.spans)
            if name == b"content-length"
        ]
        return status_line + b"".join(_splice(response.raw, response.block_start, cuts)) + HEAD_END
    cuts = list(response.spans)
    named = response.connection_names - HOP_BY_HOP
    if named:
        cuts += _lines_named(response.raw, response.block_start, named)
    lines = [
        status_line + b"".join(_splice(response.raw, response.block_start, cuts)),
        b"Via: 1.%d balancebeam" % response.minor,
    ]
    kind = response.body_kind
    if kind == BODY_LENGTH:
        lines.append(b"Content-Length: %d" % response.content_length)
    elif chunked:
        # The upstream's final "chunked" was undone by the body reader; any
        # other transfer coding (gzip, ...) is still applied to the payload.
        codings = _tokens(special, b"transfer-encoding")
        if kind == BODY_CHUNKED:
            codings = codings[:-1]
        codings.append(b"chunked")
        lines.append(b"Transfer-Encoding: " + b", ".join(codings))
    elif kind == BODY_NONE and response.status >= 200 and response.status != 204:
        # HEAD and 304 answers keep the length of the body they describe;
        # 1xx and 204 never carry one (RFC 9110 section 8.6).
        lines.extend(raw for name, _, raw in special if name == b"content-length")
    if response.status >= 200:
        if not keep_alive:
            lines.append(b"Connection: close")
        elif client_minor == 0:
            lines.append(b"Connection: keep-alive")
    lines.append(CRLF)
    return CRLF.join(lines)


def error_response(
    status: int, message: str, keep_alive: bool, extra: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """
    A complete, short C{text/plain} response generated by the balancer.
    """
    body = f"{status} {REASONS.get(status, 'Error')}: {message}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes) -> list[bytes]:
    """
    Frame C{data} (non-empty) as one chunk, as a list for C{writeSequence}.
    """
    return [b"%x\r\n" % len(data), data, CRLF]


LAST_CHUNK: Final = b"0\r\n\r\n"


class BodyReader:
    """
    Reads one message body from a byte stream, incrementally.

    L{feed} hands each piece of payload (de-chunked) to C{on_data} and
    returns how many bytes of its input belonged to the body; once L{done}
    is true the rest of the input is the next message.

    @ivar done: whether the body is complete.
    @ivar received: payload bytes seen so far.
    """

    __slots__ = (
        "_kind",
        "_remaining",
        "_on_data",
        "_state",
        "_line",
        "_max_line",
        "_trailer_bytes",
        "_error_status",
        "done",
        "received",
    )

    _SIZE = 0
    _DATA = 1
    _DATA_END = 2
    _TRAILER = 3

    def __init__(
        self,
        kind: int,
        length: int,
        on_data: Callable[[bytes], object],
        error_status: int = 400,
        max_line: int = 4096,
    ) -> None:
        self._kind = kind
        self._remaining = length
        self._on_data = on_data
        self._state = self._SIZE
        self._line = b""
        self._max_line = max_line
        self._trailer_bytes = 0
        self._error_status = error_status
        self.done = kind == BODY_NONE or (kind == BODY_LENGTH and length == 0)
        self.received = 0

    def feed(self, data: bytes) -> int:
        """
        Consume body bytes from the start of C{data}.

        @return: the number of bytes consumed.
        @raise HTTPError: on bad chunked framing.
        """
        kind = self._kind
        if kind == BODY_LENGTH:
            count = len(data)
            if count >= self._remaining:
                count = self._remaining
                piece = data[:count] if count < len(data) else data
                self.done = True
            else:
                piece = data
            self._remaining -= count
            self.received += count
            if count:
                self._on_data(piece)
            return count
        if kind == BODY_UNTIL_CLOSE:
            self.received += len(data)
            if data:
                self._on_data(data)
            return len(data)
        if kind == BODY_CHUNKED:
            return self._feed_chunked(data)
        return 0

    def _feed_chunked(self, data: bytes) -> int:
        position = 0
        end = len(data)
        while position < end and not self.done:
            state = self._state
            if state == self._DATA:
                count = min(self._remaining, end - position)
                if position == 0 and count == end:
                    piece = data
                else:
                    piece = data[position : position + count]
                position += count
                self._remaining -= count
                self.received += count
                self._on_data(piece)
                if self._remaining == 0:
                    self._state = self._DATA_END
                continue
            newline = data.find(b"\n", position)
            if newline == -1:
                self._line += data[position:]
                if len(self._line) > self._max_line:
                    raise HTTPError(self._error_status, "chunk framing line too long")
                return end
            line = self._line + data[position : newline + 1]
            self._line = b""
            position = newline + 1
            if len(line) > self._max_line:
                raise HTTPError(self._error_status, "chunk framing line too long")
            if line[-2:] != CRLF:
                raise HTTPError(self._error_status, "bare LF in chunked body")
            line = line[:-2]
            if state == self._SIZE:
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise HTTPError(self._error_status, "invalid chunk size")
                self._remaining = int(size[1], 16)
                self._state = self._DATA if self._remaining else self._TRAILER
            elif state == self._DATA_END:
                if line:
                    raise HTTPError(self._error_status, "chunk data longer than its size")
                self._state = self._SIZE
            else:
                if not line:
                    self.done = True
                else:
                    self._trailer_bytes += len(line)
                    if self._trailer_bytes > self._max_line * 4:
                        raise HTTPError(self._error_status, "trailer section too large")
                    if _HEADER_LINE.fullmatch(line) is None:
                        raise HTTPError(self._error_status, "malformed trailer field")
        return position
