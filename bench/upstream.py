"""
A small HTTP/1.1 upstream for the benchmark, on the standard library's asyncio.

nginx cannot add a fixed delay to a response, so the "slow upstream" scenario of
C{bench/run.py} (issue 5: how balancing strategies cope when one of three
upstreams is slow) runs three copies of this server, one of them with
C{--delay-ms 50}. It speaks just enough HTTP/1.1 for a load balancer and wrk:

  - C{GET /} answers a 100-byte body, C{GET /16k} a 16 KiB body, C{GET /100m}
    a streamed body of C{--download-bytes} (100 MiB by default, written as
    the transport drains, never buffered whole), any other path a 404 with a
    short body; C{HEAD} answers the head only; every response has a C{Date},
    as a real origin server's;
  - connections are kept alive unless the request says C{Connection: close}
    or is HTTP/1.0 without C{Connection: keep-alive};
  - pipelined requests are answered in order; a request body announced by
    C{Content-Length} is read and discarded (chunked request bodies are not
    supported and close the connection);
  - with C{--delay-ms N} every response is sent N milliseconds after its
    request arrived, without blocking other connections.

Run: C{python3 bench/upstream.py --port 8081 [--host 127.0.0.1] [--delay-ms 50]
[--name slow]} (the name is sent as an C{X-Upstream} header).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import deque
from email.utils import formatdate

SMALL_BODY = (b"balancebeam benchmark upstream: a small response body of one hundred bytes." +
              b" " * 24 + b"\n")
BIG_BODY = b"x" * (16 * 1024 - 1) + b"\n"
NOT_FOUND_BODY = b"not found\n"
MAX_HEAD = 64 * 1024
STREAM_CHUNK = b"z" * (256 * 1024)


_date_cache: list[object] = [-1, b""]


def date_field() -> bytes:
    """
    The C{Date} header value for now (every origin server sends one, RFC
    9110 section 6.6.1), formatted once per second.
    """
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode("ascii")
    value = _date_cache[1]
    assert isinstance(value, bytes)
    return value


def build_response(status: bytes, body: bytes, keep_alive: bool, head_only: bool,
                   name: bytes = b"upstream") -> bytes:
    """
    Serialise one complete response.

    @param status: the status line's code and reason, such as C{b"200 OK"}.
    @param body: the body, announced by C{Content-Length}.
    @param keep_alive: whether the connection stays open afterwards.
    @param head_only: leave the body out (a C{HEAD} request).
    @param name: the C{X-Upstream} header's value.
    @return: the bytes to write.
    """
    connection = b"keep-alive" if keep_alive else b"close"
    head = (b"HTTP/1.1 " + status + b"\r\nServer: bench-upstream\r\nDate: " + date_field() +
            b"\r\nX-Upstream: " + name + b"\r\n"
            b"Content-Type: text/plain\r\nContent-Length: " + str(len(body)).encode() +
            b"\r\nConnection: " + connection + b"\r\n\r\n")
    return head if head_only else head + body


class UpstreamProtocol(asyncio.Protocol):
    """
    One client connection: parse request heads, answer each in order.

    @ivar _buffer: received bytes not yet parsed.
    @ivar _discard: request body bytes still to skip.
    @ivar _pending: responses waiting for their delay to pass, oldest first;
        each is a list holding the bytes once ready, empty before.
    @ivar _closing: a response said C{Connection: close}; stop after it.
    @ivar _stream_left: bytes of a streamed C{/100m} body still to write;
        requests arriving meanwhile wait in C{_buffer}.
    @ivar _paused: the transport asked us to stop writing.
    """

    def __init__(self, delay: float, download_bytes: int, name: bytes) -> None:
        """
        @param delay: seconds to wait before sending each response.
        @param download_bytes: size of the C{/100m} body.
        @param name: sent as the C{X-Upstream} header, so a client can tell
            which upstream answered.
        """
        self._name = name
        self._delay = delay
        self._download_bytes = download_bytes
        self._stream_left = 0
        self._paused = False
        self._buffer = b""
        self._discard = 0
        self._pending: deque[list[bytes]] = deque()
        self._closing = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Remember the transport.
        """
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        """
        Forget the transport; late delayed responses are dropped.
        """
        self._transport = None

    def data_received(self, data: bytes) -> None:
        """
        Parse as many complete request heads as have arrived and answer them.
        """
        if self._discard:
            skipped = min(self._discard, len(data))
            self._discard -= skipped
            data = data[skipped:]
        self._buffer += data
        while not self._closing and self._transport is not None and not self._stream_left:
            end = self._buffer.find(b"\r\n\r\n")
            if end == -1:
                if len(self._buffer) > MAX_HEAD:
                    self._transport.close()
                return
            head = self._buffer[:end]
            self._buffer = self._buffer[end + 4 :]
            if not self._answer(head):
                self._transport.close()
                return
            if self._discard:
                skipped = min(self._discard, len(self._buffer))
                self._discard -= skipped
                self._buffer = self._buffer[skipped:]
                if self._discard:
                    return

    def _answer(self, head: bytes) -> bool:
        """
        Build the response to one request head and send or schedule it.

        @return: C{False} when the request cannot be handled (bad request line,
            chunked body); the caller closes the connection.
        """
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            return False
        method, target, version = parts
        keep_alive = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"connection":
                if b"close" in value:
                    keep_alive = False
                elif b"keep-alive" in value:
                    keep_alive = True
            elif name == b"content-length":
                if not value.isdigit():
                    return False
                self._discard = int(value)
            elif name == b"transfer-encoding":
                return False
        path = target.split(b"?", 1)[0]
        if path == b"/100m" and method == b"GET" and not self._pending:
            if not keep_alive:
                self._closing = True
            head = build_response(b"200 OK", b"", keep_alive, True, self._name)
            head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % self._download_bytes)
            assert self._transport is not None
            self._transport.write(head)
            self._stream_left = self._download_bytes
            self._pump()
            return True
        if path == b"/":
            status, body = b"200 OK", SMALL_BODY
        elif path == b"/16k":
            status, body = b"200 OK", BIG_BODY
        else:
            status, body = b"404 Not Found", NOT_FOUND_BODY
        response = build_response(status, body, keep_alive, method == b"HEAD", self._name)
        if not keep_alive:
            self._closing = True
        if self._delay > 0:
            slot: list[bytes] = []
            self._pending.append(slot)
            asyncio.get_running_loop().call_later(self._delay, self._ready, slot, response)
        elif self._pending:
            self._pending.append([response])
        else:
            self._send(response)
        return True

    def pause_writing(self) -> None:
        """
        The transport's buffer is full: stop streaming until it drains.
        """
        self._paused = True

    def resume_writing(self) -> None:
        """
        The transport drained: go on streaming.
        """
        self._paused = False
        self._pump()

    def _pump(self) -> None:
        """
        Write streamed body chunks until paused or done; then carry on with
        requests that arrived meanwhile, or close if asked to.
        """
        while (self._stream_left and not self._paused and self._transport is not None
               and not self._transport.is_closing()):
            size = min(self._stream_left, len(STREAM_CHUNK))
            self._transport.write(STREAM_CHUNK if size == len(STREAM_CHUNK)
                                  else STREAM_CHUNK[:size])
            self._stream_left -= size
        if self._stream_left or self._transport is None or self._transport.is_closing():
            return
        if self._closing:
            self._transport.close()
        elif self._buffer:
            self.data_received(b"")

    def _ready(self, slot: list[bytes], response: bytes) -> None:
        """
        A delayed response is due: send it and every ready one queued behind it.
        """
        slot.append(response)
        while self._pending and self._pending[0]:
            self._send(self._pending.popleft()[0])

    def _send(self, response: bytes) -> None:
        """
        Write one response; close after the last one of a closing connection.
        """
        if self._transport is None:
            return
        self._transport.write(response)
        if self._closing and not self._pending:
            self._transport.close()


async def serve(host: str, port: int, delay: float, download_bytes: int, name: str) -> None:
    """
    Listen until SIGTERM or SIGINT.
    """
    loop = asyncio.get_running_loop()
    encoded = name.encode("ascii")
    server = await loop.create_server(
        lambda: UpstreamProtocol(delay, download_bytes, encoded), host, port,
        reuse_address=True, backlog=4096)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with server:
        await stop


def main() -> None:
    """
    Parse the command line and serve.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="milliseconds to wait before each response")
    parser.add_argument("--download-bytes", type=int, default=100 * 1024 * 1024,
                        help="size of the body streamed on /100m")
    parser.add_argument("--name", default="upstream",
                        help="the X-Upstream header's value (ASCII, no spaces)")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.delay_ms / 1000.0, args.download_bytes,
                      args.name))


if __name__ == "__main__":
    main()
