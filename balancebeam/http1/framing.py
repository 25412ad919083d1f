"""
Message body framing: the incremental body reader (Content-Length, chunked,
until close), the chunked encoder, and the trailer section of chunked bodies.

Chunked framing follows RFC 9112 section 7.1 exactly, leaving nothing that a
proxy in front of the balancer could read differently. A chunk-size line is
C{1*HEXDIG}, then only well-formed chunk extensions,
C{*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )}, then
CRLF. Leading zeros are accepted; more than 15 significant hex digits (so
sizes cannot overflow), a bare LF, an empty extension (C{2;}), whitespace not
followed by an extension (C{a }), and anything else outside that grammar are
refused with the reader's error status (400 for requests, 502 for responses).

Trailers, the field lines after the last chunk, are validated as field lines
(no obsolete line folding, bare CR or NUL), bounded, and kept byte-exact in
L{BodyReader.trailers}. L{forwardable_trailers} removes the fields that must
not be taken from a trailer section (RFC 9110 sections 6.5.1 and 6.5.2), and
L{last_chunk} frames the rest for the next chunked hop. A body re-framed for
an HTTP/1.0 client is not chunked, so it has nowhere to carry trailers: they
are dropped on that hop only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from balancebeam.http1.heads import (
    _HEADER_LINE,
    _TOKEN,
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    CRLF,
    HTTPError,
)

# RFC 9112 section 7.1 with RFC 9110 BWS (= OWS = *( SP / HTAB )) and
# quoted-string (section 5.6.4). Token characters exclude ";", "=", DQUOTE
# and whitespace, so every repetition below has one way to match: matching
# time is linear in the (bounded) line length.
_BWS = rb"[ \t]*"
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_EXT_VALUE = _BWS + rb"=" + _BWS + rb"(?:" + _TOKEN + rb"|" + _QUOTED_STRING + rb")"
_CHUNK_EXT_ONE = _BWS + rb";" + _BWS + _TOKEN + rb"(?:" + _CHUNK_EXT_VALUE + rb")?"
_CHUNK_EXT = rb"(?:" + _CHUNK_EXT_ONE + rb")*"
#: A chunk-size line without its CRLF; group 1 is the size without leading
#: zeros, at most 15 hex digits (below 2**60).
_CHUNK_SIZE = re.compile(rb"0*([0-9A-Fa-f]{1,15})" + _CHUNK_EXT)

#: Fields never forwarded from a trailer section, lower-cased (RFC 9110
#: sections 6.5.1 and 6.5.2): framing, routing, request modifiers,
#: authentication, response control data, content processing, hop-by-hop
#: fields, and the forwarding fields the balancer itself writes in the head.
#: Every C{If-*} conditional is dropped too (see L{forwardable_trailers}).
TRAILERS_NOT_FORWARDED: Final = frozenset(
    {
        # Message framing.
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        # Routing.
        b"host",
        # Request modifiers (plus every if-* conditional).
        b"cache-control",
        b"expect",
        b"max-forwards",
        b"pragma",
        b"range",
        b"te",
        # Authentication and state.
        b"authorization",
        b"proxy-authorization",
        b"www-authenticate",
        b"proxy-authenticate",
        b"set-cookie",
        b"cookie",
        # Response control data.
        b"age",
        b"expires",
        b"date",
        b"location",
        b"retry-after",
        b"vary",
        b"warning",
        # Content processing.
        b"content-encoding",
        b"content-type",
        b"content-range",
        # Hop-by-hop.
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        # Written by the balancer in the forwarded head; a trailer must not
        # override them at an upstream that merges trailers into headers.
        b"forwarded",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    }
)


def chunk(data: bytes) -> list[bytes]:
    """
    Frame C{data} (non-empty) as one chunk, as a list for C{writeSequence}.
    """
    return [b"%x\r\n" % len(data), data, CRLF]


#: The last chunk and the end of a chunked body with no trailers.
LAST_CHUNK: Final = b"0\r\n\r\n"


def last_chunk(trailers: bytes) -> bytes:
    """
    The end of a chunked body: the last chunk, C{trailers}, and the final CRLF.

    @param trailers: a trailer section, each field line ending with CRLF
        (C{b""} for none), as returned by L{forwardable_trailers}.
    @return: C{b"0\\r\\n" + trailers + b"\\r\\n"}; L{LAST_CHUNK} when there
        are no trailers.
    """
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + trailers + CRLF


def forwardable_trailers(trailers: bytes) -> bytes:
    """
    The field lines of a trailer section that may be forwarded to the next
    hop, byte-exact and in order.

    Names compare case-insensitively. Dropped: every field in
    L{TRAILERS_NOT_FORWARDED} and every field whose name starts with C{If-}
    (conditional request fields).

    @param trailers: a trailer section as captured in L{BodyReader.trailers}:
        field lines, each ending with CRLF, or C{b""}.
    @return: the kept lines, each ending with CRLF (C{b""} if none).
    @raise ValueError: if C{trailers} is not a sequence of CRLF-terminated
        field lines.
    """
    if not trailers:
        return b""
    if trailers[-2:] != CRLF:
        raise ValueError("a trailer section must end with CRLF")
    lines = trailers[:-2].split(CRLF)
    kept = []
    for line in lines:
        field = _HEADER_LINE.fullmatch(line)
        if field is None:
            raise ValueError(f"not a field line: {line!r}")
        name = field[1].lower()
        if name not in TRAILERS_NOT_FORWARDED and not name.startswith(b"if-"):
            kept.append(line)
    if len(kept) == len(lines):
        return trailers
    return b"".join(line + CRLF for line in kept)


class BodyReader:
    """
    Reads one message body from a byte stream, incrementally.

    L{feed} hands each piece of payload (de-chunked) to C{on_data} and
    returns how many bytes of its input belonged to the body; once L{done}
    is true the rest of the input is the next message.

    A chunked body's trailer section is validated (each line a field line of
    at most C{max_line} bytes, the whole section at most C{4 * max_line}
    bytes) and captured in L{trailers}.

    @ivar done: whether the body is complete.
    @ivar received: payload bytes seen so far.
    @ivar trailers: the trailer section's field lines exactly as received,
        each ending with CRLF; C{b""} when there are none or the body is not
        chunked. Complete once L{done} is true.
    """

    __slots__ = (
        "_kind",
        "_remaining",
        "_on_data",
        "_state",
        "_line",
        "_max_line",
        "_error_status",
        "done",
        "received",
        "trailers",
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
        """
        @param kind: the framing, one of the C{BODY_*} constants.
        @param length: the Content-Length for C{BODY_LENGTH}, else ignored.
        @param on_data: called with each piece of payload.
        @param error_status: the status of the L{HTTPError}s raised (400 for
            a request body, 502 for a response body).
        @param max_line: the longest chunk-size, chunk-end or trailer line,
            CRLF included.
        """
        self._kind = kind
        self._remaining = length
        self._on_data = on_data
        self._state = self._SIZE
        self._line = b""
        self._max_line = max_line
        self._error_status = error_status
        self.done = kind == BODY_NONE or (kind == BODY_LENGTH and length == 0)
        self.received = 0
        self.trailers = b""

    @property
    def kind(self) -> int:
        """
        How the body is framed (L{BODY_LENGTH}, L{BODY_CHUNKED}, ...).
        """
        return self._kind

    def feed(self, data: bytes) -> int:
        """
        Consume body bytes from the start of C{data}.

        @return: the number of bytes consumed.
        @raise HTTPError: on bad chunked framing or trailers, with the
            reader's error status.
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
        """
        L{feed} for a chunked body: a state machine over size lines, chunk
        data, the CRLF after each chunk, and the trailer section.
        """
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
            raw = self._line + data[position : newline + 1]
            self._line = b""
            position = newline + 1
            if len(raw) > self._max_line:
                raise HTTPError(self._error_status, "chunk framing line too long")
            if raw[-2:] != CRLF:
                raise HTTPError(self._error_status, "bare LF in chunked body")
            line = raw[:-2]
            if state == self._SIZE:
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise HTTPError(self._error_status, "invalid chunk size line")
                self._remaining = int(size[1], 16)
                self._state = self._DATA if self._remaining else self._TRAILER
            elif state == self._DATA_END:
                if line:
                    raise HTTPError(self._error_status, "chunk data longer than its size")
                self._state = self._SIZE
            elif not line:
                self.done = True
            else:
                if _HEADER_LINE.fullmatch(line) is None:
                    raise HTTPError(self._error_status, "malformed trailer field")
                trailers = self.trailers + raw
                if len(trailers) > self._max_line * 4:
                    raise HTTPError(self._error_status, "trailer section too large")
                self.trailers = trailers
        return position
