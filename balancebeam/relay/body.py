"""
A request body on its way upstream (L{RequestBody}).

Made only for requests that have a body. It holds what must outlive the
moment a piece arrives: the pieces received while no upstream connection is
ready, the copy kept so that an idempotent request can be replayed on
another upstream, the trailers, and a filter's wait for the whole body
(L{IExchange.read_body <balancebeam.interfaces.IExchange.read_body>}).
"""

from __future__ import annotations

from typing import Final

from twisted.internet.defer import Deferred, succeed

from balancebeam.http1.framing import LAST_CHUNK, chunk, forwardable_trailers, last_chunk

#: Request body bytes kept so an idempotent request can be replayed.
MAX_REPLAY_BODY: Final = 64 * 1024


class RequestBody:
    """
    The upstream-bound state of one request body.

    @ivar chunked: whether the body is sent chunked upstream (as it came).
    @ivar held_size: bytes held while no upstream connection is ready.
    @ivar replayable: whether every byte sent so far is still kept for a
        replay (only for idempotent requests, up to L{MAX_REPLAY_BODY}).
    @ivar complete: whether the whole body has been received.
    @ivar continue_sent: whether C{100 Continue} was sent to the client.
    @ivar inspected: whether a filter asked for the whole body (the
        firewall): then the trailers, which it does not see, are not
        forwarded.
    """

    __slots__ = (
        "chunked",
        "held_size",
        "replayable",
        "complete",
        "continue_sent",
        "inspected",
        "_held",
        "_replay",
        "_replay_size",
        "_trailers",
        "_waiter",
        "_limit",
    )

    def __init__(self, chunked: bool, replayable: bool) -> None:
        self.chunked = chunked
        self.held_size = 0
        self.replayable = replayable
        self.complete = False
        self.continue_sent = False
        self.inspected = False
        self._held: list[bytes] = []
        self._replay: list[bytes] = []
        self._replay_size = 0
        self._trailers = b""
        self._waiter: Deferred[bytes | None] | None = None
        self._limit = 0

    @property
    def hold_limit(self) -> int:
        """
        How much a filter waiting for the whole body asked to hold.
        """
        return self._limit

    def hold(self, piece: bytes) -> int:
        """
        Keep C{piece} until a connection is ready.

        @return: the bytes now held.
        """
        self._held.append(piece)
        size = self.held_size = self.held_size + len(piece)
        waiter = self._waiter
        if waiter is not None and size > self._limit:
            self._waiter = None
            waiter.callback(None)
        return size

    def frame(self, piece: bytes) -> bytes:
        """
        C{piece} framed for the upstream hop, keeping a copy while the
        request can still be replayed.
        """
        if self.replayable:
            size = self._replay_size + len(piece)
            if size > MAX_REPLAY_BODY:
                self.replayable = False
                self._replay = []
            else:
                self._replay_size = size
                self._replay.append(piece)
        return b"".join(chunk(piece)) if self.chunked else piece

    def release(self) -> bytes:
        """
        Everything to send on a new upstream connection: on a retry the body
        sent on the failed attempt, then what was held, then the end of a
        chunked body when it is complete.
        """
        pieces = self._replay + self._held
        self._replay = []
        self._replay_size = 0
        self._held = []
        self.held_size = 0
        framed = b"".join([self.frame(piece) for piece in pieces])
        if self.complete and self.chunked:
            framed += self.end()
        return framed

    def end(self) -> bytes:
        """
        The last chunk of a chunked body, with the trailers that may be
        forwarded (none after a filter inspected the body: it did not see
        them; C{b""} for a Content-Length body).
        """
        if not self.chunked:
            return b""
        trailers = self._trailers
        if not trailers or self.inspected:
            return LAST_CHUNK
        return last_chunk(forwardable_trailers(trailers))

    def finished(self, trailers: bytes) -> None:
        """
        The whole body was received, with C{trailers} (field lines as received).
        """
        self.complete = True
        self._trailers = trailers
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.callback(b"".join(self._held))

    def wait_whole(self, limit: int, announced: int | None) -> Deferred[bytes | None]:
        """
        Fire with the whole body once received when it is at most C{limit}
        bytes, or with C{None} as soon as it is known to be larger.

        @param announced: the Content-Length, when the body has one.
        """
        self.inspected = True
        if self.complete:
            return succeed(b"".join(self._held) if self.held_size <= limit else None)
        if (announced is not None and announced > limit) or self.held_size > limit:
            return succeed(None)
        waiter: Deferred[bytes | None] = Deferred()
        self._waiter = waiter
        self._limit = limit
        return waiter

    def cancel_wait(self) -> None:
        """
        The exchange ended: a filter waiting for the body waits no more.
        """
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.cancel()
