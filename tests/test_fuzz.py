"""
Seeded random mutation of requests and responses through the whole relay in
memory: whatever arrives, in whatever pieces, the balancer must not raise,
must not log a bug, and must give back every upstream's in-flight count.
"""

from __future__ import annotations

import random
import re
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers import Harness, response

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET http://h:1/x?y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]
RESPONSES = [
    response(b"hello"),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxyz",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
]
FRAGMENTS = [
    b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"0", b"chunked", b"Content-Length: ",
    b"Transfer-Encoding: ", b"Host: ", b"Connection: close\r\n", b"-1", b"ffffffffffffffff",
    b";", b",", b"\x80", b"HTTP/1.1", b"\r\n\r\n",
]  # fmt: skip


def _mutate(rng: random.Random, data: bytes) -> bytes:
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        position = rng.randint(0, len(mutated))
        choice = rng.random()
        if choice < 0.3 and mutated:
            del mutated[position : position + rng.randint(1, 5)]
        elif choice < 0.6:
            mutated[position:position] = rng.choice(FRAGMENTS)
        elif choice < 0.8 and mutated:
            mutated[min(position, len(mutated) - 1)] = rng.randint(0, 255)
        else:
            start = rng.randint(0, len(mutated))
            mutated[position:position] = mutated[start : start + rng.randint(0, 40)]
    return bytes(mutated)


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    pieces = []
    while data:
        size = rng.randint(1, len(data))
        pieces.append(data[:size])
        data = data[size:]
    return pieces


def _exercise(seed: int) -> Harness:
    """
    One random conversation: mutated requests in random pieces, upstreams
    that accept, refuse, answer mutated responses or close, and time passing.
    """
    rng = random.Random(seed)
    harness = Harness(upstream_count=2)
    client, client_transport = harness.client()
    stream = b"".join(
        _mutate(rng, rng.choice(REQUESTS)) if rng.random() < 0.8 else rng.choice(REQUESTS)
        for _ in range(rng.randint(1, 3))
    )
    for piece in _pieces(rng, stream):
        client.dataReceived(piece)
        while harness.pending_connects():
            if rng.random() < 0.15:
                harness.refuse()
                continue
            upstream, _, _ = harness.accept()
            answer = rng.choice(RESPONSES)
            if rng.random() < 0.5:
                answer = _mutate(rng, answer)
            for part in _pieces(rng, answer):
                upstream.dataReceived(part)
            if rng.random() < 0.3:
                upstream.connectionLost(Failure(ConnectionDone()))
        if rng.random() < 0.1:
            harness.reactor.advance(rng.choice([0.5, 5, 11, 61]))
    harness.reactor.advance(120)
    if rng.random() < 0.3 or client_transport.disconnecting:
        client.connectionLost(Failure(ConnectionDone()))
        for upstream_state in harness.registry.upstreams:
            assert upstream_state.in_flight == 0, f"seed {seed}: {upstream_state!r} leaked"
    return harness


class FuzzTests(SynchronousTestCase):
    """
    The relay survives malformed and truncated traffic in both directions.
    """

    def test_random_conversations(self) -> None:
        """
        1500 seeded random conversations raise nothing, log no bug and leak
        no in-flight count.
        """
        bugs: list[LogEvent] = []

        @implementer(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_failure") is not None:
                bugs.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for seed in range(1500):
            _exercise(seed)
            self.assertEqual(bugs, [], f"seed {seed} logged a failure")


class CrossTalkTests(SynchronousTestCase):
    """
    Responses never reach the wrong client, however requests interleave.
    """

    def test_interleaved_clients_get_their_own_answers(self) -> None:
        """
        Three clients sending pipelined requests in a seeded random order over
        shared, reused upstream connections, answered in a random order,
        receive exactly the answers to their own requests, in order.
        """
        for seed in range(200):
            self._conversation(seed)

    def _conversation(self, seed: int) -> None:
        """
        One seeded interleaving (see L{test_interleaved_clients_get_their_own_answers}).
        """
        rng = random.Random(seed)
        harness = Harness(upstream_count=2)
        clients = [harness.client(40000 + n) for n in range(3)]
        sent: list[list[bytes]] = [[], [], []]
        upstreams: list[tuple[Any, StringTransport]] = []
        waiting: list[tuple[Any, bytes]] = []

        def collect() -> None:
            while harness.pending_connects():
                protocol, transport, _ = harness.accept()
                upstreams.append((protocol, transport))
            for protocol, transport in upstreams:
                data = transport.value()
                if data:
                    transport.clear()
                    waiting.append((protocol, data.split(b" ", 2)[1]))

        def answer(count: int) -> None:
            rng.shuffle(waiting)
            for protocol, requested in waiting[:count]:
                waiting.remove((protocol, requested))
                protocol.dataReceived(response(b"answer for " + requested + b"\n"))

        for step in range(30):
            number = rng.randrange(3)
            target = b"/c%d-r%d" % (number, step)
            clients[number][0].dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            sent[number].append(target)
            collect()
            answer(rng.randint(0, len(waiting)))
            collect()
        while waiting or harness.pending_connects():
            collect()
            answer(len(waiting))
            collect()
        for number, (_, transport) in enumerate(clients):
            answers = re.findall(rb"answer for (/c\d-r\d+)\n", transport.value())
            self.assertEqual(answers, sent[number], f"seed {seed}, client {number}")
