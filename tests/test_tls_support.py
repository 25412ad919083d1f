"""
Shared fixtures for the TLS tests: certificate files made with C{trustme}, a
TLS echo server, and a small inspecting TLS client. No tests here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import trustme
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from balancebeam.tls.store import CertificateStore, tls_server_endpoint


def write(directory: str, name: str, data: bytes) -> str:
    """
    Write C{data} to C{directory}/C{name} and return the path.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "wb") as out:
        out.write(data)
    return path


def bundle(
    ca: trustme.CA,
    *names: str,
    common_name: str | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> bytes:
    """
    A HAProxy-style PEM: certificate and chain, then the private key.
    """
    leaf = ca.issue_cert(
        *names,
        common_name=common_name or names[0],
        not_before=not_before,
        not_after=not_after,
    )
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return chain + leaf.private_key_pem.bytes()


def utc(year: int, month: int, day: int) -> datetime:
    """
    Midnight UTC on the given day.
    """
    return datetime(year, month, day, tzinfo=timezone.utc)


def touch_later(path: str, seconds: float = 10.0) -> None:
    """
    Move C{path}'s modification time forward, so that a poll sees a change
    even on file systems with coarse timestamps.
    """
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + int(seconds * 1e9)))


class Echo(Protocol):
    """
    Echoes every byte and records them, with the TLS details of its peer.
    """

    def __init__(self, received: list[bytes], transports: list[Any], lost: list[Failure]) -> None:
        self._received = received
        self._transports = transports
        self._lost = lost

    def connectionMade(self) -> None:
        """Record the transport so tests can inspect it."""
        self._transports.append(self.transport)

    def dataReceived(self, data: bytes) -> None:
        """Record and echo."""
        self._received.append(data)
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Record the loss."""
        self._lost.append(reason)


class EchoServer:
    """
    A TLS echo server on 127.0.0.1 for one test.

    @ivar received: every application byte string any connection received.
    @ivar transports: the TLS transport of every connection.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transports: list[Any] = []
        self.lost: list[Failure] = []
        self.port: IListeningPort | None = None

    def factory(self) -> Factory:
        """A factory of echo protocols recording into this server."""
        return Factory.forProtocol(lambda: Echo(self.received, self.transports, self.lost))

    async def listen_with_store(self, case: TestCase, store: CertificateStore) -> int:
        """
        Listen with TLS from C{store}; return the port number.
        """
        from twisted.internet import reactor

        endpoint = tls_server_endpoint(
            reactor, store, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        )
        return await self._listen(case, endpoint)

    async def listen_with(self, case: TestCase, creator: IOpenSSLServerConnectionCreator) -> int:
        """
        Listen with TLS from any server connection creator; return the port.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import wrapServerTLS

        endpoint = wrapServerTLS(
            creator, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), clock=reactor
        )
        return await self._listen(case, endpoint)

    async def _listen(self, case: TestCase, endpoint: Any) -> int:
        port: IListeningPort = await endpoint.listen(self.factory())
        self.port = port
        case.addCleanup(port.stopListening)
        number: int = port.getHost().port  # type: ignore[attr-defined]  # a TCP address
        return number


@implementer(IOpenSSLClientConnectionCreator)
class InspectingClient:
    """
    A client connection creator that verifies nothing and lets a test choose
    SNI, protocol versions, cipher list and ALPN offers.
    """

    def __init__(
        self,
        server_name: bytes | None = None,
        max_version: int | None = None,
        cipher_list: bytes | None = None,
        alpn: Sequence[bytes] = (),
    ) -> None:
        self._context = SSL.Context(SSL.TLS_METHOD)
        if max_version is not None:
            self._context.set_min_proto_version(SSL.TLS1_VERSION)
            self._context.set_max_proto_version(max_version)
        if cipher_list is not None:
            self._context.set_cipher_list(cipher_list)
        if alpn:
            self._context.set_alpn_protos(list(alpn))
        self._server_name = server_name

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A connection with the chosen SNI."""
        connection = SSL.Connection(self._context, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    A client protocol that records the handshake's outcome and what it
    receives.

    @ivar handshake: fires with this protocol once the handshake completed,
        or fails with the reason the connection was lost before.
    @ivar lost: fires once the connection is gone; the reason is then in
        L{lost_reason}.
    """

    def __init__(self) -> None:
        self.handshake: Deferred[Recorder] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.lost_reason: Failure | None = None
        self.received = b""
        self._waiting: tuple[int, Deferred[bytes]] | None = None

    def handshakeCompleted(self) -> None:
        """Fire L{handshake}."""
        self.handshake.callback(self)

    def dataReceived(self, data: bytes) -> None:
        """Collect; fire a pending L{read_until}."""
        self.received += data
        if self._waiting is not None and len(self.received) >= self._waiting[0]:
            waiting = self._waiting[1]
            self._waiting = None
            waiting.callback(self.received)

    def read_until(self, size: int) -> Deferred[bytes]:
        """Fires once at least C{size} bytes have arrived in all."""
        waiting: Deferred[bytes] = Deferred()
        if len(self.received) >= size:
            waiting.callback(self.received)
        else:
            self._waiting = (size, waiting)
        return waiting

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail a pending handshake; fire L{lost}."""
        self.lost_reason = reason
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.lost.callback(None)

    @property
    def tls(self) -> TLSMemoryBIOProtocol:
        """The TLS transport."""
        assert isinstance(self.transport, TLSMemoryBIOProtocol)
        return self.transport

    def peer_common_name(self) -> str:
        """The common name of the certificate the server presented."""
        certificate = self.tls.getHandle().get_peer_certificate(as_cryptography=True)
        assert certificate is not None
        from cryptography.x509.oid import NameOID

        value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return value if isinstance(value, str) else value.decode()


async def connect_recorder(port: int, creator: IOpenSSLClientConnectionCreator) -> Recorder:
    """
    Connect a L{Recorder} over TLS to 127.0.0.1:C{port} (the TCP connection
    only; wait on its C{handshake} for TLS).
    """
    from twisted.internet import reactor

    endpoint = wrapClientTLS(
        creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), clock=reactor
    )
    protocol = await endpoint.connect(Factory.forProtocol(Recorder))
    assert isinstance(protocol, Recorder)
    return protocol


async def handshake(
    case: TestCase, port: int, creator: IOpenSSLClientConnectionCreator
) -> Recorder:
    """
    Connect and complete a handshake; the connection is closed at cleanup.
    """
    recorder = await connect_recorder(port, creator)
    case.addCleanup(_close, recorder)
    await recorder.handshake
    return recorder


def _close(recorder: Recorder) -> Deferred[None]:
    if not recorder.lost.called and recorder.transport is not None:
        recorder.transport.loseConnection()
    return recorder.lost


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    """
    Poll C{condition()} on the real reactor until it is true.

    @raise AssertionError: when it is still false after C{timeout} seconds.
    """
    import time

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        await deferLater(reactor, 0.01)
