"""
Tests for L{balancebeam.tls.fast}: the TLS layer's direct steady state
behaves exactly as Twisted's protocol does (every test runs against both),
and is chosen only on the checked versions.

In memory and deterministic: the server is the balancebeam TLS protocol on a
L{StringTransport}, the client a pyOpenSSL connection on memory BIOs, and
bytes move between them only when a test moves them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import OpenSSL
import trustme
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import twisted
from balancebeam.tls import fast
from balancebeam.tls.fast import (
    PYOPENSSL_CHECKED_VERSIONS,
    TWISTED_CHECKED_VERSIONS,
    FastTLSProtocol,
    TwistedTLSProtocol,
    choose_fast,
)
from balancebeam.tls.layer import DirectTLSFactory
from balancebeam.tls.store import CertificateStore
from balancebeam.twisted_internals import SWITCH_VARIABLE
from tests.test_tls_support import bundle, write


class Application(Protocol):
    """
    Records what it receives; optionally answers or closes on data.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.on_data = lambda data: None

    def tls(self) -> Any:
        """The TLS protocol this application runs on, as its transport."""
        return self.transport

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.on_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class Pair:
    """
    A balancebeam TLS server protocol of class C{protocol} and a pyOpenSSL
    client, handshaken.
    """

    def __init__(self, protocol: type[TwistedTLSProtocol], directory: str) -> None:
        ca = trustme.CA()
        path = write(directory, "site.pem", bundle(ca, "example.test"))
        self.clock = Clock()
        store = CertificateStore(self.clock, [path])
        self.app = Application()
        factory = DirectTLSFactory(store, False, Factory.forProtocol(lambda: self.app))
        factory.protocol = protocol
        self.below = StringTransport()
        self.server = factory.buildProtocol(None)
        assert isinstance(self.server, protocol)
        self.server.makeConnection(self.below)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_verify(SSL.VERIFY_PEER)
        ca_file = write(directory, "ca.pem", ca.cert_pem.bytes())
        context.load_verify_locations(ca_file)
        self.client = SSL.Connection(context, None)
        self.client.set_tlsext_host_name(b"example.test")
        self.client.set_connect_state()

    def handshake(self) -> None:
        """
        Run the handshake to its end on both sides.
        """
        for _ in range(10):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            self.to_server()
            self.to_client()
        assert self.server._handshakeDone

    def to_server(self) -> None:
        """
        Deliver what the client has to send, in one read.
        """
        data = self.client_output()
        if data:
            self.server.dataReceived(data)

    def client_output(self) -> bytes:
        """
        The encrypted bytes the client has to send.
        """
        try:
            return self.client.bio_read(1 << 20)
        except SSL.WantReadError:
            return b""

    def to_client(self) -> None:
        """
        Deliver what the server wrote to the client's incoming BIO.
        """
        data = self.below.value()
        self.below.clear()
        if data:
            self.client.bio_write(data)

    def client_reads(self) -> bytes:
        """
        All cleartext the client can read now.
        """
        self.to_client()
        pieces = []
        while True:
            try:
                pieces.append(self.client.recv(1 << 16))
            except SSL.WantReadError:
                return b"".join(pieces)

    def request(self, data: bytes) -> bytes:
        """
        Encrypt C{data} as the client and return the records.
        """
        self.client.sendall(data)
        return self.client_output()


class SteadyStateMixin:
    """
    What both protocols must do alike once the handshake is done.
    """

    protocol: type[TwistedTLSProtocol]

    def setUp(self) -> None:
        self.pair = Pair(self.protocol, tempfile.mkdtemp())
        self.pair.handshake()

    def test_protocol_in_use(self) -> None:
        """
        The server protocol is the class under test (not silently the other).
        """
        self.assertIs(type(self.pair.server), self.protocol)  # type: ignore[attr-defined]

    def test_requests_in_one_read(self) -> None:
        """
        Several records in one read reach the application, in order, whole.
        """
        records = b"".join(self.pair.request(b"GET /%d HTTP/1.1\r\n\r\n" % n) for n in range(3))
        self.pair.server.dataReceived(records)
        self.assertEqual(  # type: ignore[attr-defined]
            b"".join(self.pair.app.received),
            b"GET /0 HTTP/1.1\r\n\r\nGET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        )

    def test_record_split_across_reads(self) -> None:
        """
        A record that arrives a byte at a time is delivered once, when whole.
        """
        record = self.pair.request(b"hello, split record")
        for index in range(len(record) - 1):
            self.pair.server.dataReceived(record[index : index + 1])
        self.assertEqual(self.pair.app.received, [])  # type: ignore[attr-defined]
        self.pair.server.dataReceived(record[-1:])
        self.assertEqual(self.pair.app.received, [b"hello, split record"])  # type: ignore[attr-defined]

    def test_response_reaches_client(self) -> None:
        """
        What the application writes is what the client decrypts.
        """
        self.pair.app.on_data = lambda data: self.pair.app.tls().write(b"answer:" + data)
        self.pair.server.dataReceived(self.pair.request(b"ping"))
        self.assertEqual(self.pair.client_reads(), b"answer:ping")  # type: ignore[attr-defined]

    def test_large_write(self) -> None:
        """
        A write larger than a record (and than the shared output buffer)
        arrives whole and in order.
        """
        body = bytes(range(256)) * 600 + b"tail"
        self.pair.server.write(body)
        self.assertEqual(self.pair.client_reads(), body)  # type: ignore[attr-defined]

    def test_buffer_types(self) -> None:
        """
        C{memoryview} and C{bytearray} writes are sent like C{bytes}.
        """
        self.pair.server.write(memoryview(b"view "))
        self.pair.server.write(bytearray(b"array"))
        self.assertEqual(self.pair.client_reads(), b"view array")  # type: ignore[attr-defined]

    def test_close_notify_from_client(self) -> None:
        """
        The client's close_notify is answered with ours and the connection
        below is closed.
        """
        self.pair.client.shutdown()
        self.pair.to_server()
        self.assertTrue(self.pair.below.disconnecting)  # type: ignore[attr-defined]
        self.pair.to_client()
        self.assertRaises(SSL.ZeroReturnError, self.pair.client.recv, 100)  # type: ignore[attr-defined]

    def test_data_then_close_notify_in_one_read(self) -> None:
        """
        Data followed by close_notify in the same read: the data is
        delivered, then the connection closes.
        """
        records = self.pair.request(b"last words")
        self.pair.client.shutdown()
        self.pair.server.dataReceived(records + self.pair.client_output())
        self.assertEqual(self.pair.app.received, [b"last words"])  # type: ignore[attr-defined]
        self.assertTrue(self.pair.below.disconnecting)  # type: ignore[attr-defined]

    def test_corrupt_record(self) -> None:
        """
        A record that fails its integrity check is not delivered; the
        connection is closed and the application learns why.
        """
        record = bytearray(self.pair.request(b"tampered"))
        record[-1] ^= 0x01
        self.pair.server.dataReceived(bytes(record))
        self.assertEqual(self.pair.app.received, [])  # type: ignore[attr-defined]
        self.assertTrue(self.pair.below.disconnecting)  # type: ignore[attr-defined]
        self.pair.server.connectionLost(Failure(ConnectionError("closed below")))
        [reason] = self.pair.app.lost
        self.assertTrue(reason.check(SSL.Error))  # type: ignore[attr-defined]

    def test_abort_during_delivery(self) -> None:
        """
        Once the application aborts, the rest of the read is not delivered.
        """
        self.pair.app.on_data = lambda data: self.pair.app.tls().abortConnection()
        records = self.pair.request(b"first") + self.pair.request(b"second")
        self.pair.server.dataReceived(records)
        self.assertEqual(self.pair.app.received, [b"first"])  # type: ignore[attr-defined]

    def test_write_after_lose_connection_dropped(self) -> None:
        """
        After C{loseConnection}, writes are dropped and the client gets only
        the close_notify.
        """
        self.pair.server.loseConnection()
        self.pair.server.write(b"too late")
        self.pair.to_client()
        self.assertRaises(SSL.ZeroReturnError, self.pair.client.recv, 100)  # type: ignore[attr-defined]

    def test_first_request_with_the_finished_message(self) -> None:
        """
        The client's last handshake flight and its first request in one read
        (TLS 1.3 clients send them together): the request is delivered.
        """
        pair = Pair(self.protocol, tempfile.mkdtemp())
        try:
            pair.client.do_handshake()
        except SSL.WantReadError:
            pass
        pair.to_server()
        pair.to_client()
        try:
            pair.client.do_handshake()
        except SSL.WantReadError:
            pass
        pair.client.sendall(b"early request")
        pair.to_server()
        self.assertEqual(b"".join(pair.app.received), b"early request")  # type: ignore[attr-defined]
        pair.server.dataReceived(pair.request(b" then another"))
        self.assertEqual(  # type: ignore[attr-defined]
            b"".join(pair.app.received), b"early request then another"
        )


class FastTests(SteadyStateMixin, SynchronousTestCase):
    """
    L{FastTLSProtocol}.
    """

    protocol = FastTLSProtocol

    def test_connection_lost_leaves_fast_path(self) -> None:
        """
        After the connection is lost the protocol keeps no reference to the
        pyOpenSSL connection (Twisted drops its own to break a cycle).
        """
        self.pair.server.dataReceived(self.pair.request(b"x"))
        self.assertIsNotNone(self.pair.server._fast)
        self.pair.server.connectionLost(connectionDone)
        self.assertIsNone(self.pair.server._fast)
        self.assertIsNone(self.pair.server._tlsConnection)


class TwistedTests(SteadyStateMixin, SynchronousTestCase):
    """
    L{TwistedTLSProtocol}, the fallback.
    """

    protocol = TwistedTLSProtocol


class ChoiceTests(SynchronousTestCase):
    """
    The fast path is chosen only on checked versions and without the switch.
    """

    def test_checked_versions(self) -> None:
        """
        Every pair of checked versions allows the fast path.
        """
        for twisted_version in TWISTED_CHECKED_VERSIONS:
            for pyopenssl_version in PYOPENSSL_CHECKED_VERSIONS:
                self.assertIsNone(choose_fast(twisted_version, pyopenssl_version, {}))

    def test_unchecked_twisted(self) -> None:
        """
        An unchecked Twisted falls back, and the reason names it.
        """
        reason = choose_fast("99.1.0", PYOPENSSL_CHECKED_VERSIONS[-1], {})
        assert reason is not None
        self.assertIn("Twisted 99.1.0", reason)

    def test_unchecked_pyopenssl(self) -> None:
        """
        An unchecked pyOpenSSL falls back, and the reason names it.
        """
        reason = choose_fast(TWISTED_CHECKED_VERSIONS[-1], "99.0.0", {})
        assert reason is not None
        self.assertIn("pyOpenSSL 99.0.0", reason)

    def test_switch_off(self) -> None:
        """
        C{BALANCEBEAM_TWISTED_INTERNALS=off} turns it off on checked versions.
        """
        reason = choose_fast(
            TWISTED_CHECKED_VERSIONS[-1], PYOPENSSL_CHECKED_VERSIONS[-1], {SWITCH_VARIABLE: "off"}
        )
        self.assertEqual(reason, f"{SWITCH_VARIABLE}=off")

    def test_installed_versions_are_checked(self) -> None:
        """
        The installed Twisted and pyOpenSSL are among the checked versions,
        so this process (and CI) runs the fast path. An upgrade fails this
        test: compare the new release's code (see L{balancebeam.tls.fast})
        and add it to the list.
        """
        self.assertIn(twisted.__version__, TWISTED_CHECKED_VERSIONS)
        self.assertIn(OpenSSL.__version__, PYOPENSSL_CHECKED_VERSIONS)

    def test_protocol_follows_the_choice(self) -> None:
        """
        L{fast.DirectTLSProtocol} is the fast protocol exactly when no
        fallback reason applies in this process.
        """
        expected = FastTLSProtocol if fast.FAST_TLS_FALLBACK is None else TwistedTLSProtocol
        self.assertIs(fast.DirectTLSProtocol, expected)
        self.assertEqual(
            fast.FAST_TLS_FALLBACK,
            choose_fast(twisted.__version__, OpenSSL.__version__, os.environ),
        )
