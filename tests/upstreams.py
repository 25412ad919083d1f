"""
Real upstream servers and raw HTTP clients for the loopback integration tests.

L{UpstreamServer} is a small HTTP/1.1 server on C{127.0.0.1} written as a raw
L{Protocol}, so that tests can assert on the exact bytes the balancer sends:
it records every request (request line, header fields in order with their
original case, body), counts requests and accepted TCP connections, and can
be told to answer 500, to close without answering, to answer slowly, to
stream a large body or to switch protocols and echo bytes. It can be
stopped and started again on the same port.

L{RawClient} is a client protocol that writes whatever bytes a test gives it
and parses the responses incrementally, so tests see exactly what the
balancer sent.

Paths the server understands (in any mode but C{"error"} and C{"close"}):
    - C{/status/NNN}: answer with status NNN (no body for 1xx, 204, 304);
    - C{/large/N} (C{/large/N?chunked}): stream N deterministic pseudo-random
      bytes with a C{Content-Length} (or chunked), under flow control; see
      L{large_body_sha256};
    - C{/hop}: a response carrying hop-by-hop and repeated headers;
    - C{/truncate}: a head promising 1000 bytes, 10 bytes, then a close;
    - C{/legacy}: an HTTP/1.0 response delimited by closing the connection;
    - C{/close-after}: a response with C{Connection: close}, then a close;
    - C{/early}: a 103 Early Hints, then a 200 with body C{ok};
    - C{/cl-te}: a response with both C{Content-Length: 5} and a chunked
      body C{abc};
    - C{/garbage}: bytes that are not an HTTP response;
    - C{/upgrade}: with an C{Upgrade} header, answer 101 and echo every byte;
    - anything else: 200 with a short text body naming the server, the
      request line and the length and SHA-256 of the request body.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IPullProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

#: The C{User-Agent} of the balancer's active health probes.
PROBE_USER_AGENT = b"balancebeam-health-check"

#: Size of each piece of a streamed large body.
LARGE_PIECE = 64 * 1024

#: Seed of the pseudo-random generator behind large bodies.
LARGE_SEED = 20261126


def large_body_pieces(size: int) -> list[int]:
    """
    The sizes of the pieces a large body of C{size} bytes is written in.

    @param size: total body size.
    @return: piece sizes, each at most L{LARGE_PIECE}, summing to C{size}.
    """
    return [min(LARGE_PIECE, size - start) for start in range(0, size, LARGE_PIECE)]


def large_body_sha256(size: int) -> str:
    """
    The SHA-256 hex digest of the body that C{/large/<size>} serves.

    @param size: the body size in bytes.
    @return: the hex digest.
    """
    generator = random.Random(LARGE_SEED)
    digest = hashlib.sha256()
    for piece in large_body_pieces(size):
        digest.update(generator.randbytes(piece))
    return digest.hexdigest()


class _HeaderLookup:
    """
    Case-insensitive header lookup over a C{headers} list of C{(name, value)}.
    """

    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        """
        The first value of a header, matched case-insensitively.

        @param name: the header name.
        @return: its value, or C{None} when absent.
        """
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: bytes) -> list[bytes]:
        """
        Every value of a header, in order, matched case-insensitively.

        @param name: the header name.
        @return: the values.
        """
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


@dataclass
class RecordedRequest(_HeaderLookup):
    """
    One request as an upstream received it.

    @ivar method: the method, e.g. C{b"GET"}.
    @ivar target: the request target, e.g. C{b"/first_url"}.
    @ivar version: the protocol, e.g. C{b"HTTP/1.1"}.
    @ivar request_line: the whole request line.
    @ivar headers: C{(name, value)} pairs in order, names in original case.
    @ivar body: the body bytes (de-chunked when sent chunked).
    @ivar chunked: whether the body came with C{Transfer-Encoding: chunked}.
    @ivar connection_number: which accepted connection (1-based) carried it.
    """

    method: bytes
    target: bytes
    version: bytes
    request_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunked: bool = False
    connection_number: int = 0

    @property
    def is_probe(self) -> bool:
        """
        Whether this is one of the balancer's active health probes.
        """
        return self.header(b"user-agent") == PROBE_USER_AGENT


@implementer(IPullProducer)
class _LargeBodyProducer:
    """
    Writes a large pseudo-random body piece by piece as the transport asks.
    """

    def __init__(self, protocol: UpstreamProtocol, size: int, chunked: bool) -> None:
        self._protocol = protocol
        self._pieces = large_body_pieces(size)
        self._chunked = chunked
        self._generator = random.Random(LARGE_SEED)

    def resumeProducing(self) -> None:
        """
        Write the next piece, or finish the response.
        """
        transport: Any = self._protocol.transport
        assert transport is not None
        if not self._pieces:
            transport.unregisterProducer()
            if self._chunked:
                transport.write(b"0\r\n\r\n")
            self._protocol.response_done()
            return
        data = self._generator.randbytes(self._pieces.pop(0))
        self._protocol.server.body_bytes_written += len(data)
        if self._chunked:
            transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            transport.write(data)

    def stopProducing(self) -> None:
        """
        The connection went away: write nothing more.
        """
        self._pieces = []


class UpstreamProtocol(Protocol):
    """
    One connection to an L{UpstreamServer}: parses requests one at a time
    (pipelined ones wait in the buffer) and answers according to the
    server's mode.

    @ivar _state: C{"head"} (reading a head), C{"body"} (reading a body),
        C{"respond"} (answering), C{"tunnel"} (echoing after a 101) or
        C{"closed"}.
    """

    def __init__(self, server: UpstreamServer, number: int) -> None:
        self.server = server
        self.number = number
        self._state = "head"
        self._buffer = b""
        self._current: RecordedRequest | None = None
        self._body = bytearray()
        self._remaining = 0
        self._chunked = False
        self._delayed: IDelayedCall | None = None
        self._answered = 0
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """
        Count the connection.
        """
        self.server.accepted += 1
        self.server.connections.add(self)
        if self.server.pause_reads:
            transport: Any = self.transport
            transport.pauseProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Forget the connection and cancel any delayed answer.
        """
        self._state = "closed"
        self.server.connections.discard(self)
        self.server.closed_connections += 1
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer bytes and parse as much as the state allows.
        """
        if self._state == "tunnel":
            assert self.transport is not None
            self.server.tunnel_bytes += data
            self.transport.write(data)
            return
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        """
        Parse heads and bodies from the buffer while a whole piece is there.
        """
        while self._state in ("head", "body"):
            if self._state == "head":
                end = self._buffer.find(b"\r\n\r\n")
                if end == -1:
                    return
                head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
                self._start(head)
            elif self._chunked:
                if not self._read_chunk():
                    return
            else:
                take = self._buffer[: self._remaining]
                self._buffer = self._buffer[len(take) :]
                self._body += take
                self._remaining -= len(take)
                if self._remaining:
                    return
                self._request_complete()

    def _start(self, head: bytes) -> None:
        """
        Record a request head and prepare to read its body.
        """
        lines = head.split(b"\r\n")
        request_line = lines[0]
        method, target, version = request_line.split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip()))
        self._current = RecordedRequest(
            method, target, version, request_line, headers, connection_number=self.number
        )
        self._body = bytearray()
        encoding = self._current.header(b"transfer-encoding")
        length = self._current.header(b"content-length")
        self._chunked = encoding is not None and encoding.lower() == b"chunked"
        self._current.chunked = self._chunked
        self._remaining = int(length) if length is not None and not self._chunked else 0
        if self._chunked or self._remaining:
            self._state = "body"
        else:
            self._request_complete()

    def _read_chunk(self) -> bool:
        """
        Consume one chunk (or the last chunk and trailers) from the buffer.

        @return: whether progress was made.
        """
        line_end = self._buffer.find(b"\r\n")
        if line_end == -1:
            return False
        size = int(self._buffer[:line_end].split(b";")[0], 16)
        if size == 0:
            trailer_end = self._buffer.find(b"\r\n\r\n", line_end)
            if self._buffer[line_end : line_end + 4] == b"\r\n\r\n":
                trailer_end = line_end
            if trailer_end == -1:
                return False
            self._buffer = self._buffer[trailer_end + 4 :]
            self._request_complete()
            return True
        start = line_end + 2
        if len(self._buffer) < start + size + 2:
            return False
        self._body += self._buffer[start : start + size]
        self._buffer = self._buffer[start + size + 2 :]
        return True

    def _request_complete(self) -> None:
        """
        Record the finished request and answer it, now or after the delay.
        """
        request = self._current
        assert request is not None
        request.body = bytes(self._body)
        self._body = bytearray()
        self.server.requests.append(request)
        self._state = "respond"
        server = self.server
        mode = server.mode
        if server.delay and not request.is_probe:
            self._delayed = server.reactor.callLater(server.delay, self._answer, request, mode)
        else:
            self._answer(request, mode)

    def _answer(self, request: RecordedRequest, mode: str) -> None:
        """
        Answer C{request} according to C{mode} and its path.
        """
        self._delayed = None
        transport: Any = self.transport
        assert transport is not None
        if self._state == "closed":
            return
        if mode == "close" or (mode == "close_reused" and self._answered):
            transport.loseConnection()
            self._state = "closed"
            return
        if mode == "error":
            self._simple(request, 500, b"upstream failure\n")
            return
        path, _, query = request.target.partition(b"?")
        if path.startswith(b"/status/"):
            self._simple(request, int(path[len(b"/status/") :]), b"status body\n")
            return
        if path.startswith(b"/large/"):
            size = int(path[len(b"/large/") :])
            chunked = query == b"chunked"
            framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + framing
                + b"\r\n\r\n"
            )
            if request.method == b"HEAD":
                self.response_done()
                return
            transport.registerProducer(_LargeBodyProducer(self, size, chunked), False)
            return
        if path == b"/hop":
            transport.write(
                b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: hidden\r\n"
                b"Keep-Alive: timeout=30\r\nX-Repeat: one\r\nX-Repeat: two\r\n"
                b"Proxy-Authenticate: Basic\r\nContent-Length: 3\r\n\r\nhop"
            )
            self.response_done()
            return
        if path == b"/truncate":
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
            transport.loseConnection()
            self._state = "closed"
            return
        if path == b"/legacy":
            transport.write(b"HTTP/1.0 200 OK\r\nX-Legacy: yes\r\n\r\nuntil close body")
            transport.loseConnection()
            self._state = "closed"
            return
        if path == b"/close-after":
            transport.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\nclosed"
            )
            transport.loseConnection()
            self._state = "closed"
            return
        if path == b"/early":
            transport.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            )
            self.response_done()
            return
        if path == b"/cl-te":
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            )
            self.response_done()
            return
        if path == b"/garbage":
            transport.write(b"THIS IS NOT HTTP\r\n\r\n")
            return
        if path == b"/upgrade" and request.header(b"upgrade") is not None:
            transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: " + (request.header(b"upgrade") or b"") + b"\r\n\r\n"
            )
            self._state = "tunnel"
            rest, self._buffer = self._buffer, b""
            if rest:
                self.dataReceived(rest)
            return
        digest = hashlib.sha256(request.body).hexdigest().encode("ascii")
        body = b"%s %s %d %s\n" % (
            self.server.name.encode("ascii"),
            request.request_line,
            len(request.body),
            digest,
        )
        self._simple(request, 200, body)

    def _simple(self, request: RecordedRequest, status: int, body: bytes) -> None:
        """
        Write a complete response with C{status} and C{body}.
        """
        transport = self.transport
        assert transport is not None
        no_body = request.method == b"HEAD" or status in (204, 304) or status < 200
        lines = [
            b"HTTP/1.1 %d Status%d" % (status, status),
            b"X-Upstream: " + self.server.name.encode(),
        ]
        if status not in (204, 304) and not 100 <= status < 200:
            lines.append(b"Content-Length: %d" % len(body))
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if no_body else body))
        self.response_done()

    def response_done(self) -> None:
        """
        The answer is written: go on with the next (pipelined) request.
        """
        self._answered += 1
        if self._state == "closed":
            return
        self._state = "head"
        if self._buffer:
            self._parse()


class _UpstreamFactory(Factory):
    """
    Builds L{UpstreamProtocol}s for one L{UpstreamServer}.
    """

    noisy = False

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> UpstreamProtocol:
        """
        A protocol numbered after the connections accepted so far.
        """
        return UpstreamProtocol(self.server, self.server.accepted + 1)


class UpstreamServer:
    """
    A recording HTTP/1.1 upstream on C{127.0.0.1} (or another loopback
    C{interface}, such as C{::1}).

    @ivar name: a label put in response bodies and C{X-Upstream}.
    @ivar mode: C{"ok"}, C{"error"} (500 to everything), C{"close"} (close
        without answering), or C{"close_reused"} (answer the first request on
        each connection, close without answering any later one: the
        keep-alive race, made certain).
    @ivar delay: seconds to wait before answering client requests (probes
        are answered at once).
    @ivar requests: every request received, probes included, in order.
    @ivar accepted: TCP connections accepted.
    @ivar closed_connections: accepted connections that have closed.
    @ivar connections: the open connections.
    @ivar tunnel_bytes: bytes received after switching protocols.
    @ivar body_bytes_written: bytes of large bodies written so far.
    @ivar pause_reads: when set, new connections are not read from (to
        test backpressure on request bodies).
    @ivar port: the port, once started (kept across restarts).
    """

    def __init__(
        self,
        reactor: Any,
        name: str = "upstream",
        mode: str = "ok",
        delay: float = 0.0,
        interface: str = "127.0.0.1",
    ) -> None:
        self.reactor = reactor
        self.interface = interface
        self.name = name
        self.mode = mode
        self.delay = delay
        self.requests: list[RecordedRequest] = []
        self.accepted = 0
        self.closed_connections = 0
        self.connections: set[UpstreamProtocol] = set()
        self.tunnel_bytes = b""
        self.body_bytes_written = 0
        self.pause_reads = False
        self.port = 0
        self._listening: IListeningPort | None = None

    @property
    def client_requests(self) -> list[RecordedRequest]:
        """
        The requests that were not health probes.
        """
        return [request for request in self.requests if not request.is_probe]

    @property
    def probe_requests(self) -> list[RecordedRequest]:
        """
        The health probes received.
        """
        return [request for request in self.requests if request.is_probe]

    @property
    def address(self) -> str:
        """
        C{HOST:PORT} (C{[IPV6]:PORT}), as given to C{--upstream}.
        """
        if ":" in self.interface:
            return f"[{self.interface}]:{self.port}"
        return f"{self.interface}:{self.port}"

    def start(self) -> None:
        """
        Listen, on a new port the first time and on the same port after.
        """
        assert self._listening is None
        self._listening = self.reactor.listenTCP(
            self.port, _UpstreamFactory(self), interface=self.interface
        )
        address = self._listening.getHost()
        assert isinstance(address, (IPv4Address, IPv6Address))
        self.port = address.port

    def stop(self) -> Deferred[None]:
        """
        Stop listening and drop every open connection.

        @return: fires once the port is closed and every connection is gone.
        """
        waits: list[Deferred[Any]] = []
        if self._listening is not None:
            listening, self._listening = self._listening, None
            stopped = listening.stopListening()
            if stopped is not None:
                waits.append(stopped)
        for connection in list(self.connections):
            waits.append(connection.closed)
            transport: Any = connection.transport
            transport.abortConnection()
        if not waits:
            return succeed(None)
        return gatherResults(waits).addCallback(lambda _: None)


def start_upstream(
    case: TestCase, reactor: Any, name: str = "upstream", mode: str = "ok", delay: float = 0.0
) -> UpstreamServer:
    """
    Start an L{UpstreamServer} and stop it when the test ends.

    @param case: the test; its cleanups stop the server.
    @return: the listening server.
    """
    server = UpstreamServer(reactor, name, mode, delay)
    server.start()
    case.addCleanup(server.stop)
    return server


@dataclass
class RawResponse(_HeaderLookup):
    """
    One response as a client received it.

    @ivar status: the status code.
    @ivar status_line: the whole status line.
    @ivar headers: C{(name, value)} pairs in order.
    @ivar body: the body bytes (de-chunked).
    @ivar raw: the head bytes, up to and including the blank line.
    """

    status: int
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    raw: bytes = b""
    digest: Any = field(default=None, repr=False)


class RawClient(Protocol):
    """
    A client connection that writes raw bytes and parses responses as they
    arrive.

    Tell it which method each expected response answers with L{expect}
    (C{HEAD} responses carry no body). Final responses are appended to
    L{responses}; 1xx ones to L{informational}. After a 101, every byte goes
    to L{tunnel}.

    @ivar keep_bodies: when false, bodies are only hashed (see
        L{RawResponse.digest}), not kept.
    """

    def __init__(self, keep_bodies: bool = True, clock: Any = None) -> None:
        self.keep_bodies = keep_bodies
        self.clock = clock
        self.responses: list[RawResponse] = []
        self.informational: list[RawResponse] = []
        self.tunnel = b""
        self.ready: Deferred[RawClient] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.is_closed = False
        self._methods: list[bytes] = []
        self._buffer = bytearray()
        self._current: RawResponse | None = None
        self._framing = "head"
        self._remaining = 0
        self._tunnelling = False
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def expect(self, *methods: bytes) -> None:
        """
        Note the methods of requests about to be sent, in order.
        """
        self._methods.extend(methods)

    def send(self, data: bytes, *methods: bytes) -> None:
        """
        Write C{data} and note the methods of the requests it holds.
        """
        self.expect(*methods)
        assert self.transport is not None
        self.transport.write(data)

    def connectionMade(self) -> None:
        """
        Fire L{ready}.
        """
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse what arrived and wake waiters whose condition now holds.
        """
        if self._tunnelling:
            self.tunnel += data
        else:
            self._buffer += data
            self._parse()
        self._wake()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Finish an until-close body, then wake every waiter.
        """
        self.is_closed = True
        if self._current is not None and self._framing == "close":
            self._finish()
        self.closed.callback(None)
        self._wake()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> Deferred[None]:
        """
        Fire once C{condition()} holds or the connection has closed.

        @param timeout: with a clock, fail with C{TimeoutError} after this
            many seconds, so that a broken expectation fails the test
            quickly instead of hanging it.
        """
        if condition() or self.is_closed:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        pair = (condition, waiting)
        self._waiters.append(pair)
        if self.clock is not None:

            def forget(result: object) -> object:
                """
                Drop a timed-out waiter.
                """
                if pair in self._waiters:
                    self._waiters.remove(pair)
                return result

            waiting.addTimeout(timeout, self.clock).addErrback(forget)
        return waiting

    def wait_responses(self, count: int, timeout: float = 10.0) -> Deferred[None]:
        """
        Fire once C{count} final responses arrived or the connection closed.
        """
        return self.wait_for(lambda: len(self.responses) >= count, timeout)

    def _wake(self) -> None:
        """
        Fire the waiters whose condition holds (all of them once closed).
        """
        ready = [
            (condition, waiting)
            for condition, waiting in self._waiters
            if self.is_closed or condition()
        ]
        for pair in ready:
            self._waiters.remove(pair)
            pair[1].callback(None)

    def _parse(self) -> None:
        """
        Parse responses from the buffer while a whole piece is there.
        """
        buffer = self._buffer
        while buffer and not self._tunnelling:
            if self._framing == "head":
                end = buffer.find(b"\r\n\r\n")
                if end == -1:
                    return
                raw = bytes(buffer[: end + 4])
                del buffer[: end + 4]
                self._head(raw)
            elif self._framing == "length":
                take = min(self._remaining, len(buffer))
                self._body(bytes(buffer[:take]))
                del buffer[:take]
                self._remaining -= take
                if not self._remaining:
                    self._finish()
            elif self._framing == "close":
                self._body(bytes(buffer))
                del buffer[:]
            else:
                if not self._chunk():
                    return

    def _head(self, raw: bytes) -> None:
        """
        Handle one response head: informational, switching, or final.
        """
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip()))
        response = RawResponse(int(parts[1]), lines[0], headers, raw=raw)
        if response.status == 101:
            self.responses.append(response)
            self._tunnelling = True
            self.tunnel += bytes(self._buffer)
            del self._buffer[:]
            return
        if 100 <= response.status < 200:
            self.informational.append(response)
            return
        method = self._methods.pop(0) if self._methods else b"GET"
        self._current = response
        response.digest = hashlib.sha256()
        length = response.header(b"content-length")
        encoding = response.header(b"transfer-encoding")
        if method == b"HEAD" or response.status in (204, 304):
            self._finish()
        elif encoding is not None and encoding.lower() == b"chunked":
            self._framing = "chunked"
        elif length is not None:
            self._remaining = int(length)
            self._framing = "length"
            if not self._remaining:
                self._finish()
        else:
            self._framing = "close"

    def _chunk(self) -> bool:
        """
        Consume one chunk (or the last chunk and trailers); return whether it could.
        """
        buffer = self._buffer
        line_end = buffer.find(b"\r\n")
        if line_end == -1:
            return False
        size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
        if size == 0:
            if buffer[line_end : line_end + 4] == b"\r\n\r\n":
                del buffer[: line_end + 4]
                self._finish()
                return True
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end == -1:
                return False
            del buffer[: trailer_end + 4]
            self._finish()
            return True
        if len(buffer) < line_end + 2 + size + 2:
            return False
        self._body(bytes(buffer[line_end + 2 : line_end + 2 + size]))
        del buffer[: line_end + 2 + size + 2]
        return True

    def _body(self, data: bytes) -> None:
        """
        Hash (and keep, if asked) a piece of the current body.
        """
        current = self._current
        assert current is not None
        current.digest.update(data)
        if self.keep_bodies:
            current.body += data

    def _finish(self) -> None:
        """
        The current response is complete.
        """
        current = self._current
        assert current is not None
        self.responses.append(current)
        self._current = None
        self._framing = "head"


class _ClientFactory(ClientFactory):
    """
    Hands the reactor one prepared L{RawClient}.
    """

    noisy = False

    def __init__(self, client: RawClient) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> RawClient:
        """
        The prepared client.
        """
        return self.client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """
        Fail the client's L{RawClient.ready}.
        """
        self.client.ready.errback(reason)


async def connect_client(
    case: TestCase, reactor: Any, port: int, keep_bodies: bool = True
) -> RawClient:
    """
    Connect a L{RawClient} to C{127.0.0.1:port}; the test's cleanup closes it
    and waits until it is gone.

    @param case: the test.
    @param port: the balancer's port.
    @param keep_bodies: whether response bodies are kept (else only hashed).
    @return: the connected client.
    """
    client = RawClient(keep_bodies, reactor)
    reactor.connectTCP("127.0.0.1", port, _ClientFactory(client), timeout=5)

    def close() -> Deferred[None]:
        """
        Abort the client unless it is closed already, and wait until it is.
        """
        transport: Any = client.transport
        if not client.is_closed and transport is not None:
            transport.abortConnection()
        return client.closed

    await client.ready
    case.addCleanup(close)
    return client
