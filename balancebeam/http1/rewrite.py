"""
Rewriting heads for the next hop, and the responses the balancer writes itself.

Forwarded heads are spliced from the bytes received: only the fields the
balancer acts on are cut or added, every other line goes on as it came.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Final

from balancebeam.http1.heads import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    CRLF,
    HEAD_END,
    RequestHead,
    ResponseHead,
    _tokens,
)

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

REASONS: Final[dict[int, str]] = {status.value: status.phrase for status in HTTPStatus}
"""Reason phrases for the statuses the balancer writes, RFC 9110's names first."""
REASONS.update({413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"})


_EMPTY_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
"""Methods whose empty body is sent with C{Content-Length: 0} (RFC 9110
section 8.6: a strict upstream may answer 411 without it)."""

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



def request_head_for_upstream(
    request: RequestHead,
    client_ip: str,
    upstream_host: str,
    proto: bytes = b"http",
    remove: frozenset[bytes] = frozenset(),
    add: bytes = b"",
) -> bytes:
    """
    Build the head sent upstream: HTTP/1.1, origin form, hop-by-hop fields
    removed, C{X-Forwarded-For}/C{X-Forwarded-Proto}/C{Via} added, and framing
    headers for the body as it will be sent on this hop.

    @param remove: lower-case names of more fields to leave out (a request
        filter's rewrite).
    @param add: more header lines, each ending with CRLF, appended last.
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
    if remove:
        named = named | remove
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
    elif request.method in _EMPTY_BODY_METHODS:
        lines.append(b"Content-Length: 0")
    if request.upgrade is not None:
        lines.append(b"Connection: upgrade")
        lines.append(b"Upgrade: " + request.upgrade)
    if add:
        lines.append(add[:-2])
    lines.append(CRLF)
    return CRLF.join(lines)


def response_head_for_client(
    response: ResponseHead, client_minor: int, keep_alive: bool, chunked: bool,
    date: bytes = b"",
) -> bytes:
    """
    Build the head sent to the client: hop-by-hop fields removed, C{Via}
    added (and C{Date} when the upstream sent none), and framing and
    C{Connection} headers for the client's hop.

    @param keep_alive: whether the client connection stays open afterwards.
    @param chunked: whether the body is sent chunked on the client's hop.
    @param date: the C{Date} line to add to a final response without one
        (L{balancebeam.http1.dates.DateField.line}), or C{b""} for none.
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
    if date and not response.has_date and response.status >= 200:
        lines.append(date)
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
    status: int,
    message: str,
    keep_alive: bool,
    extra: tuple[tuple[str, str], ...] = (),
    date: bytes = b"",
) -> bytes:
    """
    A complete, short C{text/plain} response generated by the balancer.

    @param date: its C{Date} line (L{balancebeam.http1.dates.DateField.line}),
        or C{b""} for none.
    """
    body = f"{status} {REASONS.get(status, 'Error')}: {message}\n".encode()
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    if date:
        lines.append(date.decode("ascii"))
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def render_response(
    status: int,
    reason: bytes | None,
    fields: Sequence[tuple[bytes, bytes]],
    body: bytes,
    keep_alive: bool,
    head_only: bool,
    extra: bytes = b"",
    date: bytes = b"",
) -> bytes:
    """
    A complete response written by the balancer (a filter's answer, say).

    C{Content-Length} is computed here and must not be among C{fields}; it
    is left out for 1xx, 204 and 304, which never carry a body, and the
    body is left out for those and when C{head_only} (a HEAD request).

    @param reason: the reason phrase, or C{None} for the standard one.
    @param extra: more header lines, each ending with CRLF.
    @param date: the C{Date} line to add unless C{fields} has one
        (L{balancebeam.http1.dates.DateField.line}), or C{b""} for none.
    """
    if reason is None:
        reason = REASONS.get(status, "Unknown").encode("ascii")
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in fields:
        if date and len(name) == 4 and name.lower() == b"date":
            date = b""
        parts.append(name + b": " + value + CRLF)
    if date:
        parts.append(date + CRLF)
    bodiless = status < 200 or status == 204 or status == 304
    if not bodiless:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n")
    parts.append(extra)
    parts.append(CRLF)
    if body and not bodiless and not head_only:
        parts.append(body)
    return b"".join(parts)


