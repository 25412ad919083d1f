"""
HTTP/1.x message heads: strict parsing of request and response heads.

Parsing is strict where laxness enables request smuggling (RFC 9112 section
6.3 and 11.2): both Content-Length and Transfer-Encoding, differing
Content-Length values, signed or non-numeric lengths, a Transfer-Encoding
other than C{chunked}, obsolete line folding, bare CR or LF, whitespace
before a header's colon, an invalid C{Host} and framing header names spelled
with underscores are all rejected.

Everything here is pure: bytes in, records out, L{HTTPError} on bad input.
"""

from __future__ import annotations

import re
from typing import Final

CRLF: Final = b"\r\n"
HEAD_END: Final = b"\r\n\r\n"

BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_UNTIL_CLOSE: Final = 3

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f#]+) HTTP/([0-9])\.([0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# RFC 9110 section 7.2: uri-host [ ":" port ]; reg-name without the comma,
# which some servers read as a list separator.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?")


def _underscore_spellings(*names: bytes) -> frozenset[bytes]:
    """
    Every spelling of C{names} (lower case) with one or more of their
    hyphens written as underscores.
    """
    spellings = set()
    for name in names:
        parts = name.split(b"-")
        for mask in range(1, 2 ** (len(parts) - 1)):
            spelled = parts[0]
            for index, part in enumerate(parts[1:]):
                spelled += (b"_" if mask >> index & 1 else b"-") + part
            spellings.add(spelled)
    return frozenset(spellings)


# Names CGI/WSGI-style upstreams fold into the framing headers, and into the
# forwarding headers the balancer vouches for (a client's X_Forwarded_Proto,
# or X-Forwarded_Proto, reaches a WSGI application as X-Forwarded-Proto).
_FRAMING_LOOKALIKES = _underscore_spellings(b"content-length", b"transfer-encoding")
_FORWARDING_LOOKALIKES = _underscore_spellings(b"x-forwarded-for", b"x-forwarded-proto")
# A whole header block (each line preceded by CRLF) checked in one regex
# call: a token, a colon, then only HTAB, visible ASCII, SP and obs-text.
_FIELD_BLOCK = re.compile(rb"(?:\r\n" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*)*")
_HOP_NAMES = rb"connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade"
_HOP_NAMES += rb"|proxy-authenticate|proxy-authorization|content-length"
# The fields the balancer reads or rewrites, found in the lower-cased head;
# every other line is forwarded as it came, without being looked at again.
_REQUEST_SPECIAL = re.compile(
    rb"\r\n(" + _HOP_NAMES + rb"|host|expect|via|x-forwarded-for|x-forwarded-proto"
    rb"|idempotency-key|" + b"|".join(sorted(_FRAMING_LOOKALIKES | _FORWARDING_LOOKALIKES))
    + rb"):[ \t]*([^\r]*)"
)
_RESPONSE_SPECIAL = re.compile(rb"\r\n(" + _HOP_NAMES + rb"):[ \t]*([^\r]*)")

IDEMPOTENT_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"}
)

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
    @ivar has_date: whether the head has a C{Date} field (when C{False}, the
        balancer adds one before forwarding it).
    """

    __slots__ = ("status", "status_line", "reusable", "keep_alive_timeout", "has_date")

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
        self.has_date = True


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
    for name, _, _ in fields:
        if name in _FRAMING_LOOKALIKES:
            raise HTTPError(400, "underscore in a framing header name")
        if name in _FORWARDING_LOOKALIKES:
            raise HTTPError(400, "underscore in a forwarding header name")
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


def has_bare_lf(data: bytes, start: int) -> bool:
    """
    Whether C{data} has, from C{start} on, an LF line ending without its CR
    (a head that would never end with CRLF CRLF).
    """
    newline = data.find(b"\n", start)
    while newline != -1:
        if newline == 0 or data[newline - 1] != 13:
            return True
        newline = data.find(b"\n", newline + 1)
    return False


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
    if has_bare_lf(data, max(checked - 1, 0)):
        raise HTTPError(400, "bare LF in request head")
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
    if status_line is None or status_line[1] != b"1":
        raise HTTPError(502, "malformed status line from upstream")
    status = int(status_line[3])
    if not 100 <= status <= 599:
        # RFC 9110 section 15: three digits, the first 1 to 5.
        raise HTTPError(502, f"invalid status code {status} from upstream")
    response = ResponseHead(
        status,
        head[:block_start],
        int(status_line[2]),
        head,
        block_start,
        fields,
        spans,
    )
    # The usual spelling first; the lower-cased head only when it is not there.
    # (find, not "in": CPython's bytes "in" first tries the operand as an
    # integer and formats the TypeError it discards, 1,600 instructions.)
    response.has_date = (
        head.find(b"\r\nDate:") != -1 or head.lower().find(b"\r\ndate:") != -1
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


