"""
Message body framing: the incremental body reader (Content-Length, chunked,
until close) and the chunked encoder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from balancebeam.http1.heads import (
    _HEADER_LINE,
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    CRLF,
    HTTPError,
)

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")


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


def forwardable_trailers(trailers: bytes) -> bytes:
    """
    Interim: every trailer line (the http1 helper's version filters them).
    """
    return trailers


def last_chunk(trailers: bytes) -> bytes:
    """
    The last chunk with C{trailers} (field lines, each ending with CRLF).
    """
    return b"0\r\n" + trailers + b"\r\n"
