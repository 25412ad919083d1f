"""
L{balancebeam.relay.transport.acked_bytes} on real loopback TCP sockets:
the count grows as the peer reads, is found under a TLS-like layer, and is
C{-1} where there is no TCP socket.
"""

from __future__ import annotations

import socket
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.relay.transport import acked_bytes


class _TCP:
    """A transport with C{getHandle}, as Twisted's TCP transports have."""

    def __init__(self, handle: object) -> None:
        self._handle = handle

    def getHandle(self) -> object:
        return self._handle


class _Layer:
    """A protocol or TLS layer: its own handle is no socket; its transport is below."""

    def __init__(self, transport: object) -> None:
        self.transport = transport

    def getHandle(self) -> object:
        return object()


class AckedBytesTests(SynchronousTestCase):
    """
    The peer's acknowledged bytes, read from the kernel (Linux).
    """

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise self.skipTest("tcpi_bytes_acked is read on Linux only")
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen()
        self.sender = socket.create_connection(server.getsockname())
        self.addCleanup(self.sender.close)
        self.receiver, _ = server.accept()
        self.addCleanup(self.receiver.close)

    def _acked_at_least(self, transport: object, count: int) -> int:
        deadline = time.monotonic() + 10
        while True:
            acked = acked_bytes(transport)
            if acked >= count or time.monotonic() > deadline:
                return acked
            time.sleep(0.01)

    def test_grows_as_the_peer_reads(self) -> None:
        """
        After the peer received 200000 bytes, at least that many more are
        acknowledged than before they were sent.
        """
        transport = _TCP(self.sender)
        before = acked_bytes(transport)
        self.assertGreaterEqual(before, 0)
        self.sender.sendall(b"x" * 200000)
        received = 0
        while received < 200000:
            received += len(self.receiver.recv(65536))
        self.assertGreaterEqual(self._acked_at_least(transport, before + 200000), before + 200000)

    def test_found_under_layers(self) -> None:
        """
        A protocol over a TLS layer over TCP: the TCP socket is asked.
        """
        layered = _Layer(_Layer(_TCP(self.sender)))
        self.assertEqual(acked_bytes(layered), acked_bytes(_TCP(self.sender)))

    def test_unknown_without_a_tcp_socket(self) -> None:
        """
        No socket, a closed socket, a UDP socket: C{-1}.
        """
        self.assertEqual(acked_bytes(object()), -1)
        self.assertEqual(acked_bytes(_TCP(object())), -1)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(udp.close)
        self.assertEqual(acked_bytes(_TCP(udp)), -1)
        closed = socket.socket()
        closed.close()
        self.assertEqual(acked_bytes(_TCP(closed)), -1)
