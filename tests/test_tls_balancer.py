"""
TLS wired into the balancer (issue 12): HTTPS listeners and TLS upstreams
through a real L{BalancerService} on loopback sockets, with C{trustme}
certificates; the service tree and startup errors on a memory reactor; and
C{openssl s_client} against a real C{twistd -n balancebeam --tls-bind ...}.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam import tap
from balancebeam.config import BalancerConfig, Timeouts, TlsConfig, UpstreamSpec
from balancebeam.relay.client import ClientConnection
from balancebeam.relay.deadlines import DeadlineTimer
from balancebeam.service import BalancerService, ListenerService
from balancebeam.tls.layer import DirectTLSFactory, DirectTLSProtocol
from balancebeam.tls.store import CertificateStore
from tests.helpers import unused_port, wait_until
from tests.test_integration import HOST, IntegrationTestCase, build_request, reactor
from tests.test_tls_support import InspectingClient, bundle, write
from tests.test_twistd import REPO_ROOT, TWISTD, TwistdProcess
from tests.upstreams import (
    RawClient,
    UpstreamProtocol,
    UpstreamServer,
    _ClientFactory,
    connect_client,
)

UPGRADE = [HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]


def server_options(
    ca: trustme.CA, *names: str, client_ca: trustme.CA | None = None, **extra: Any
) -> CertificateOptions:
    """
    Twisted's own server options with a certificate of C{ca} for C{names}
    (for the upstreams, which are not under test); with C{client_ca}, a
    client certificate from it is required.
    """
    leaf = ca.issue_cert(*names, common_name=names[0])
    if client_ca is not None:
        extra["trustRoot"] = trustRootFromCertificates(
            [Certificate.loadPEM(client_ca.cert_pem.bytes())]
        )
    return CertificateOptions(
        privateKey=load_pem_private_key(leaf.private_key_pem.bytes(), None),  # type: ignore[arg-type]  # twisted's stubs want pyOpenSSL keys; cryptography ones are accepted
        certificate=x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()),  # type: ignore[arg-type]  # as above
        **extra,
    )


class _RecordingTLSProtocol(UpstreamProtocol):
    """
    An upstream connection that also counts the application bytes it
    receives and records the client certificate it was shown.
    """

    def dataReceived(self, data: bytes) -> None:
        """
        Count, record the peer's certificate once, then answer as usual.
        """
        server = self.server
        assert isinstance(server, TLSUpstreamServer)
        if not server.bytes_received and isinstance(self.transport, TLSMemoryBIOProtocol):
            peer = self.transport.getHandle().get_peer_certificate(as_cryptography=True)
            server.client_certificates.append(peer)
        server.bytes_received += len(data)
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Record why the connection ended, then forget it as usual.
        """
        server = self.server
        assert isinstance(server, TLSUpstreamServer)
        server.lost_reasons.append(reason)
        super().connectionLost(reason)


class TLSUpstreamServer(UpstreamServer):
    """
    A recording upstream (L{UpstreamServer}: same modes and paths) that
    speaks TLS with the given server options.

    @ivar bytes_received: application bytes received on every connection.
    @ivar client_certificates: the client certificate of each connection
        that sent data (C{None} when the client showed none).
    @ivar lost_reasons: why each closed connection ended.
    """

    def __init__(self, options: CertificateOptions, name: str, mode: str = "ok") -> None:
        super().__init__(reactor, name, mode)
        self.options = options
        self.bytes_received = 0
        self.client_certificates: list[Any] = []
        self.lost_reasons: list[Failure] = []

    def start(self) -> None:
        """
        Listen with TLS on a new port the first time, on the same port after.
        """
        assert self._listening is None
        server = self

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> UpstreamProtocol:
                return _RecordingTLSProtocol(server, server.accepted + 1)

        factory = TLSMemoryBIOFactory(self.options, False, _Factory())
        factory.noisy = False
        self._listening = self.reactor.listenTCP(self.port, factory, interface=self.interface)
        address = self._listening.getHost()
        assert isinstance(address, IPv4Address)
        self.port = address.port

    @property
    def https(self) -> str:
        """
        C{https://127.0.0.1:PORT}, as given to C{--upstream}.
        """
        return f"https://{self.address}"


def common_name(client: RawClient) -> str:
    """
    The common name of the certificate the balancer showed C{client}.
    """
    transport = client.transport
    assert isinstance(transport, TLSMemoryBIOProtocol)
    certificate = transport.getHandle().get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


class TLSBalancerTestCase(IntegrationTestCase):
    """
    Certificate authorities, TLS upstreams, a balancer with an HTTPS
    listener, and TLS clients, all cleaned up.

    @ivar ca: the authority of the listener's and the upstreams' certificates.
    @ivar ca_file: its certificate, as given to C{--upstream-ca}.
    @ivar tls_port: the balancer's HTTPS port, once started.
    """

    timeout = 20

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.directory = os.path.abspath(self.mktemp())
        self.ca_file = write(self.directory, "ca.pem", self.ca.cert_pem.bytes())
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def certificate(self, name: str, *names: str, common: str | None = None) -> str:
        """
        A listener certificate file (chain and key) for C{name} and C{names}.
        """
        return write(
            self.directory, f"{name}.pem", bundle(self.ca, name, *names, common_name=common)
        )

    def start_tls_upstream(
        self,
        name: str,
        *names: str,
        client_ca: trustme.CA | None = None,
        ca: trustme.CA | None = None,
        **extra: Any,
    ) -> TLSUpstreamServer:
        """
        Start a TLS upstream whose certificate (from C{ca}, by default
        L{ca}) names C{names}; stopped when the test ends.
        """
        options = server_options(ca or self.ca, *names, client_ca=client_ca, **extra)
        server = TLSUpstreamServer(options, name)
        server.start()
        self.addCleanup(server.stop)
        return server

    def start_tls_balancer(
        self,
        upstreams: Sequence[UpstreamServer | str],
        certificates: Sequence[str] = (),
        **tls: Any,
    ) -> BalancerService:
        """
        Start a balancer with a plain and an HTTPS listener on loopback
        (L{port} and L{tls_port}) in front of C{upstreams} (TLS ones as
        C{https://}), trusting L{ca} for upstreams.

        @param tls: other L{TlsConfig} fields, or, under C{options}, other
            L{BalancerConfig} fields.
        """
        options: dict[str, Any] = tls.pop("options", {})
        addresses = [
            u.https if isinstance(u, TLSUpstreamServer) else u for u in upstreams
        ]
        tls.setdefault("upstream_ca", self.ca_file)
        if not certificates:
            certificates = (self.certificate("a.example"),)
        options["tls"] = TlsConfig(
            listen=("tcp:0:interface=127.0.0.1",), certificates=tuple(certificates), **tls
        )
        service = self.start_balancer(addresses, **options)
        port = service.tls_ports[0].getHost()
        assert isinstance(port, IPv4Address)
        self.tls_port = port.port
        return service

    async def connect_tls(
        self, creator: IOpenSSLClientConnectionCreator | None = None, port: int | None = None
    ) -> RawClient:
        """
        A new TLS client connection to the balancer's HTTPS port, verifying
        it as C{a.example} unless another C{creator} is given.
        """
        if creator is None:
            authority = Certificate.loadPEM(self.ca.cert_pem.bytes())
            creator = optionsForClientTLS(
                "a.example", trustRoot=trustRootFromCertificates([authority])
            )
        client = RawClient(True, reactor)
        factory = TLSMemoryBIOFactory(creator, True, _ClientFactory(client))
        reactor.connectTCP("127.0.0.1", port or self.tls_port, factory, timeout=5)
        await client.ready

        def close() -> Deferred[None]:
            transport: Any = client.transport
            if not client.is_closed and transport is not None:
                transport.abortConnection()
            return client.closed

        self.addCleanup(close)
        return client

    async def fetch_tls(self, data: bytes, client: RawClient | None = None) -> Any:
        """
        Send one request over TLS (on C{client}, or a new connection) and
        return its response.
        """
        if client is None:
            client = await self.connect_tls()
        [answer] = await self.exchange(client, data, b"GET")
        return answer

    def tls_errors(self) -> list[dict[str, Any]]:
        """
        The error events about upstream TLS verification logged so far.
        """
        return [
            event
            for event in self.events
            if event.get("log_level") == LogLevel.error
            and "TLS verification of upstream" in event.get("log_format", "")
        ]


class ListenerTests(TLSBalancerTestCase):
    """
    The HTTPS listener: SNI, X-Forwarded-Proto, the plain port beside it.
    """

    async def test_forwarded_proto(self) -> None:
        """
        A request over the HTTPS listener reaches the upstream with
        C{X-Forwarded-Proto: https}, one over the plain listener with
        C{http}; both count in the same stats.
        """
        upstream = self.start_upstream("plain-upstream")
        service = self.start_tls_balancer([upstream])
        secure = await self.fetch_tls(build_request(target=b"/secure"))
        plain = await self.fetch(build_request(target=b"/plain"))
        self.assertEqual((secure.status, plain.status), (200, 200))
        self.assertEqual(
            [(r.target, r.header_values(b"x-forwarded-proto")) for r in upstream.requests],
            [(b"/secure", [b"https"]), (b"/plain", [b"http"])],
        )
        self.assertEqual(service.stats.snapshot()["requests"], 2)
        assert service.https_factory is not None
        self.assertEqual(service.https_factory.scheme, b"https")

    async def test_client_forwarded_proto_replaced(self) -> None:
        """
        A client's own C{X-Forwarded-Proto: http} sent over TLS is replaced
        by C{https}.
        """
        upstream = self.start_upstream("plain-upstream")
        self.start_tls_balancer([upstream])
        headers = [HOST, (b"X-Forwarded-Proto", b"http")]
        answer = await self.fetch_tls(build_request(target=b"/", headers=headers))
        self.assertEqual(answer.status, 200)
        self.assertEqual(upstream.requests[0].header_values(b"x-forwarded-proto"), [b"https"])

    async def test_sni_through_the_balancer(self) -> None:
        """
        The balancer shows each client the certificate of the name it asked
        for (two names and a wildcard), the first one without SNI or for an
        unknown name, and relays the request either way.
        """
        upstream = self.start_upstream("plain-upstream")
        files = [
            self.certificate("a.example", common="first"),
            self.certificate("b.example", common="second"),
            self.certificate("*.w.example", common="wildcard"),
        ]
        self.start_tls_balancer([upstream], files)
        seen = {}
        for name in (b"a.example", b"b.example", b"x.w.example", b"w.example", None):
            client = await self.connect_tls(InspectingClient(name))
            answer = await self.fetch_tls(build_request(target=b"/sni"), client)
            self.assertEqual(answer.status, 200)
            seen[name] = common_name(client)
        self.assertEqual(
            seen,
            {
                b"a.example": "first",
                b"b.example": "second",
                b"x.w.example": "wildcard",
                b"w.example": "first",
                None: "first",
            },
        )
        self.assertEqual(len(upstream.requests), 5)

    async def test_balancer_closes_tls_connections(self) -> None:
        """
        The balancer closes an HTTPS connection itself: after a response to
        C{Connection: close}, and when an idle connection's time is up.
        """
        upstream = self.start_upstream("plain-upstream")
        # The idle timeout also runs from the handshake to the first request:
        # long enough for a loaded machine to send it, short enough to wait out.
        self.start_tls_balancer([upstream], options={"timeouts": Timeouts(client_idle=2.0)})
        client = await self.connect_tls()
        headers = [HOST, (b"Connection", b"close")]
        answer = await self.fetch_tls(build_request(headers=headers), client)
        self.assertEqual(answer.status, 200)
        await client.wait_for(lambda: client.is_closed, timeout=5)
        self.assertTrue(client.is_closed)
        idle = await self.connect_tls()
        self.assertEqual((await self.fetch_tls(build_request(), idle)).status, 200)
        await idle.wait_for(lambda: idle.is_closed, timeout=15)
        self.assertTrue(idle.is_closed)

    async def test_stalled_handshake_gets_the_header_timeout(self) -> None:
        """
        A connection to the HTTPS port that sends half a ClientHello and
        stalls is closed at C{--client-header-timeout}, not held for the
        idle timeout; one that completes its handshake waits for its first
        request for the idle timeout.
        """
        upstream = self.start_upstream("plain-upstream")
        self.start_tls_balancer(
            [upstream], options={"timeouts": Timeouts(client_header=0.5, client_idle=30)}
        )
        # Handshaken first: it is still open when the stalled one, opened
        # after it, has been closed at its header timeout.
        handshaken = await self.connect_tls()
        stalled = await connect_client(self, reactor, self.tls_port)
        stalled.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET")
        await stalled.wait_for(lambda: stalled.is_closed, timeout=10)
        self.assertTrue(stalled.is_closed)
        self.assertFalse(handshaken.is_closed)
        answer = await self.fetch_tls(build_request(), handshaken)
        self.assertEqual(answer.status, 200)

    async def test_plain_http_to_the_https_port(self) -> None:
        """
        A plain HTTP request sent to the HTTPS port gets a plain, dated 400
        saying so, and the connection closes (as nginx answers); it is
        logged as a bad request; nothing reaches the upstream.
        """
        upstream = self.start_upstream("plain-upstream")
        self.start_tls_balancer([upstream])
        with capturedLogs() as events:
            client = await connect_client(self, reactor, self.tls_port)
            client.send(build_request(), b"GET")
            await client.wait_for(lambda: client.is_closed, timeout=10)
        self.assertEqual([r.status for r in client.responses], [400])
        self.assertIn(b"plain HTTP request was sent to an HTTPS port", client.responses[0].body)
        self.assertEqual(len(client.responses[0].header_values(b"Date")), 1)
        self.assertEqual(
            [e["reason"] for e in events if e.get("log_format", "").startswith("bad request")],
            ["a plain HTTP request was sent to an HTTPS port"],
        )
        self.assertEqual(upstream.requests, [])

    async def test_plain_port_answers_client_hello(self) -> None:
        """
        The plain-HTTP port beside an HTTPS one still answers a TLS
        ClientHello with a clean 400 and closes.
        """
        upstream = self.start_upstream("plain-upstream")
        self.start_tls_balancer([upstream])
        client = await self.connect()
        client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, b"GET")
        await client.wait_for(lambda: client.is_closed)
        self.assertEqual([r.status for r in client.responses], [400])
        self.assertEqual(upstream.requests, [])

    async def test_sighup_reloads_listener_certificate(self) -> None:
        """
        SIGHUP makes the running balancer serve a renewed certificate to new
        handshakes, while a connection opened before keeps working.
        """
        upstream = self.start_upstream("plain-upstream")
        path = self.certificate("a.example", common="old")
        service = self.start_tls_balancer([upstream], [path])
        before = await self.connect_tls()
        self.assertEqual((await self.fetch_tls(build_request(), before)).status, 200)
        self.assertEqual(common_name(before), "old")
        write(self.directory, "a.example.pem", bundle(self.ca, "a.example", common_name="new"))
        os.kill(os.getpid(), signal.SIGHUP)
        store = service.certificates
        assert store is not None
        await wait_until(reactor, lambda: store.reloads == 1, "the SIGHUP reload")
        after = await self.connect_tls()
        self.assertEqual((await self.fetch_tls(build_request(), after)).status, 200)
        self.assertEqual(common_name(after), "new")
        self.assertEqual((await self.fetch_tls(build_request(), before)).status, 200)
        self.assertEqual(service.snapshot()["tls_certificate_reloads"], 1)


class UpstreamTests(TLSBalancerTestCase):
    """
    TLS upstreams: verification, private CA, mutual TLS, pool and probes.
    """

    async def test_private_ca_upstream(self) -> None:
        """
        A TLS upstream whose certificate (for its IP address) comes from
        the private CA given as C{upstream_ca} answers; the request arrives
        whole over TLS.
        """
        upstream = self.start_tls_upstream("tls-upstream", "127.0.0.1")
        self.start_tls_balancer([upstream])
        answer = await self.fetch(build_request(b"POST", b"/form", body=b"a=1&b=2"))
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.body.startswith(b"tls-upstream POST /form HTTP/1.1 7 "))
        self.assertEqual(upstream.requests[0].body, b"a=1&b=2")

    async def test_upstream_tls_name(self) -> None:
        """
        With C{upstream_name}, an upstream addressed by IP must carry that
        name, which is also sent as SNI.
        """
        upstream = self.start_tls_upstream("tls-upstream", "api.internal")
        service = self.start_tls_balancer([upstream], upstream_name="api.internal")
        self.assertEqual((await self.fetch(build_request())).status, 200)
        assert service.upstream_tls is not None
        [creator] = service.upstream_tls.creators
        self.assertEqual((creator.name, creator.handshakes), ("api.internal", 1))

    async def test_wrong_host_gets_nothing_and_502(self) -> None:
        """
        An upstream whose certificate names another host gets no byte of
        the request; the client gets 502; the failure is one error line
        naming the upstream and the reason, and a connect failure for
        passive health (the upstream is marked down).
        """
        upstream = self.start_tls_upstream("impostor", "other.example")
        service = self.start_tls_balancer([upstream], upstream_name="api.internal")
        answer = await self.fetch_tls(build_request(target=b"/secret?token=1"))
        self.assertEqual(answer.status, 502)
        self.assertEqual(upstream.accepted, 1)
        self.assertEqual((upstream.bytes_received, upstream.requests), (0, []))
        [error] = self.tls_errors()
        self.assertEqual(error["upstream"], upstream.address)
        self.assertEqual(error["reason"], "the certificate names other.example, not api.internal")
        snapshot = service.snapshot()
        self.assertEqual(snapshot["connect_failures"], 1)
        self.assertEqual(snapshot["tls_upstream_verification_failures"], 1)
        self.assertEqual(snapshot["upstreams_down"], [upstream.address])

    async def test_untrusted_upstream_fails_over(self) -> None:
        """
        With one upstream from an untrusted CA and one good, every request
        is answered by the good one; the bad one gets no byte, is logged
        once and is taken out of rotation.
        """
        bad = self.start_tls_upstream("untrusted", "127.0.0.1", ca=trustme.CA())
        good = self.start_tls_upstream("trusted", "127.0.0.1")
        service = self.start_tls_balancer(
            [bad, good], options={"strategy": "round-robin", "random_seed": 1}
        )
        for number in range(3):
            answer = await self.fetch(build_request(target=b"/n%d" % number))
            self.assertEqual(answer.status, 200)
            self.assertTrue(answer.body.startswith(b"trusted GET /n%d" % number))
        self.assertEqual((bad.bytes_received, len(good.requests)), (0, 3))
        [error] = self.tls_errors()
        self.assertIn("unable to get local issuer certificate", error["reason"])
        self.assertEqual(service.snapshot()["upstreams_down"], [bad.address])

    async def test_mutual_tls(self) -> None:
        """
        An upstream that requires a client certificate accepts the one
        given as C{upstream_client_cert}, and sees it.
        """
        client_ca = trustme.CA()
        client_file = write(
            self.directory, "client.pem", bundle(client_ca, "balancer.example", common_name="lb")
        )
        upstream = self.start_tls_upstream("mtls", "127.0.0.1", client_ca=client_ca)
        self.start_tls_balancer([upstream], upstream_client_cert=client_file)
        answer = await self.fetch(build_request(target=b"/mtls"))
        self.assertEqual(answer.status, 200)
        [peer] = upstream.client_certificates
        self.assertEqual(peer.subject.rfc4514_string().split(",")[0], "CN=lb")

    async def test_mutual_tls_without_client_certificate(self) -> None:
        """
        Without a client certificate, an upstream that requires one refuses
        the connection before it reads a request byte, and the client gets 502.
        """
        upstream = self.start_tls_upstream("mtls", "127.0.0.1", client_ca=trustme.CA())
        self.start_tls_balancer([upstream])
        answer = await self.fetch(build_request(target=b"/mtls"))
        self.assertEqual(answer.status, 502)
        self.assertEqual((upstream.bytes_received, upstream.requests), (0, []))

    async def test_websocket_over_tls_on_both_sides(self) -> None:
        """
        A WebSocket upgrade from an HTTPS client to a TLS upstream becomes a
        101 tunnel that carries bytes both ways.
        """
        upstream = self.start_tls_upstream("ws", "127.0.0.1")
        self.start_tls_balancer([upstream])
        client = await self.connect_tls()
        client.send(build_request(target=b"/upgrade", headers=UPGRADE))
        await client.wait_responses(1)
        [switch] = client.responses
        self.assertEqual((switch.status, switch.header(b"upgrade")), (101, b"websocket"))
        self.assertEqual(upstream.requests[0].header_values(b"x-forwarded-proto"), [b"https"])
        client.send(b"\x81\x04ping")
        await client.wait_for(lambda: client.tunnel == b"\x81\x04ping")
        big = os.urandom(200_000)
        client.send(big)
        await client.wait_for(lambda: len(client.tunnel) >= 6 + len(big), timeout=15)
        self.assertEqual(client.tunnel, b"\x81\x04ping" + big)
        self.assertEqual(upstream.tunnel_bytes, b"\x81\x04ping" + big)

    async def test_tunnel_half_close_over_tls(self) -> None:
        """
        A client that half-closes a tunnel to a TLS upstream ends that
        tunnel: the upstream's TLS connection is closed cleanly, with a TLS
        close alert (TLS has no half-close of its own, and a bare TCP
        half-close under TLS would look like a truncation).
        """
        upstream = self.start_tls_upstream("ws", "127.0.0.1")
        self.start_tls_balancer([upstream])
        client = await self.connect()
        client.send(build_request(target=b"/upgrade", headers=UPGRADE) + b"hello")
        await client.wait_for(lambda: client.tunnel == b"hello")
        transport: Any = client.transport
        transport.loseWriteConnection()
        await self.eventually(lambda: upstream.closed_connections == 1)
        await client.wait_for(lambda: client.is_closed)
        self.assertTrue(client.is_closed)
        [reason] = upstream.lost_reasons
        self.assertIsInstance(reason.value, ConnectionDone)

    async def test_pool_keeps_tls_connections_warm(self) -> None:
        """
        Requests from two clients, one after the other, share one pooled
        TLS connection: one TCP connection, one handshake.
        """
        upstream = self.start_tls_upstream("pooled", "127.0.0.1")
        service = self.start_tls_balancer([upstream])
        for target in (b"/one", b"/two", b"/three"):
            self.assertEqual((await self.fetch_tls(build_request(target=target))).status, 200)
        self.assertEqual((upstream.accepted, len(upstream.requests)), (1, 3))
        snapshot = service.snapshot()
        self.assertEqual(
            (snapshot["pool_connections_opened"], snapshot["pool_connections_reused"]), (1, 2)
        )
        self.assertEqual(snapshot["tls_upstream_handshakes"], 1)

    async def test_new_connections_resume_the_session(self) -> None:
        """
        Without idle connections to reuse, each request opens a new TLS
        connection, and the second one resumes the first one's session.
        """
        upstream = self.start_tls_upstream(
            "resumed", "127.0.0.1", enableSessions=True, enableSessionTickets=True
        )
        service = self.start_tls_balancer(
            [upstream], options={"pool_max_idle_per_upstream": 0}
        )
        for target in (b"/one", b"/two"):
            self.assertEqual((await self.fetch(build_request(target=target))).status, 200)
        self.assertEqual(upstream.accepted, 2)
        snapshot = service.snapshot()
        self.assertEqual(
            (snapshot["tls_upstream_handshakes"], snapshot["tls_upstream_resumed_handshakes"]),
            (2, 1),
        )

    async def test_probes_over_tls(self) -> None:
        """
        Active health probes reach a TLS upstream over TLS, and mark down
        an upstream that fails verification without sending it a byte.
        """
        good = self.start_tls_upstream("good", "127.0.0.1")
        bad = self.start_tls_upstream("bad", "other.example")
        service = self.start_tls_balancer(
            [good, bad],
            options={"active_health_check_interval": 0.1, "health_check_fall": 2},
        )
        await self.eventually(
            lambda: len(good.probe_requests) >= 2 and bad.accepted >= 2,
            message="no probes over TLS",
        )
        await self.eventually(
            lambda: service.snapshot()["upstreams_down"] == [bad.address],
            message="the unverifiable upstream stayed up",
        )
        self.assertEqual(bad.bytes_received, 0)
        self.assertEqual(service.snapshot()["upstreams_up"], [good.address])
        self.assertEqual(len(self.tls_errors()), 1)


class ServiceTreeTests(SynchronousTestCase):
    """
    The TLS parts of the service tree, on a memory reactor.
    """

    def setUp(self) -> None:
        ca = trustme.CA()
        directory = os.path.abspath(self.mktemp())
        self.certificate = write(directory, "a.pem", bundle(ca, "a.example"))
        self.directory = directory
        self.ca = ca

    def service(self, **options: Any) -> tuple[BalancerService, MemoryReactorClock]:
        """
        A balancer with a plain and an HTTPS listener on a memory reactor.
        """
        reactor = MemoryReactorClock()
        config = BalancerConfig(
            upstreams=(UpstreamSpec("127.0.0.1", 8081),),
            listen=("tcp:8080:interface=127.0.0.1",),
            tls=TlsConfig(
                listen=("tcp:8443:interface=127.0.0.1",), certificates=(self.certificate,)
            ),
            active_health_check_interval=0.0,
            **options,
        )
        return BalancerService(config, reactor), reactor

    def test_tree(self) -> None:
        """
        The certificate store starts first; the HTTPS listener comes after
        the plain one and serves the HTTPS factory behind TLS; the deadline
        timer covers both factories.
        """
        service, reactor = self.service()
        children = list(service)
        self.assertEqual(children[0].name, "tls certificates")
        listeners = [c for c in children if isinstance(c, ListenerService)]
        self.assertEqual(children[-2:], listeners)
        self.assertEqual(
            [listener.name for listener in listeners],
            [
                "listener tcp:8080:interface=127.0.0.1",
                "https listener tcp:8443:interface=127.0.0.1",
            ],
        )
        self.assertIs(listeners[0].factory, service.factory)
        self.assertIs(listeners[1].factory, service.https_factory)
        [timer] = [c for c in children if isinstance(c, DeadlineTimer)]
        self.assertEqual(timer._factories, (service.factory, service.https_factory))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        servers = {port: factory for port, factory, _, _ in reactor.tcpServers}
        self.assertEqual(sorted(servers), [8080, 8443])
        wrapper = servers[8443]
        assert isinstance(wrapper, TLSMemoryBIOFactory)
        self.assertIs(wrapper.wrappedFactory, service.https_factory)
        # Each write is encrypted and sent at once (the relay batches its writes).
        self.assertIs(wrapper.protocol, DirectTLSProtocol)
        self.assertIs(servers[8080], service.factory)
        self.assertEqual((len(service.ports), len(service.tls_ports)), (1, 1))

    def test_no_tls_no_tls_objects(self) -> None:
        """
        Without TLS in the configuration there is no HTTPS factory, store or
        upstream TLS, and only the plain factory's deadlines are watched.
        """
        service = BalancerService(
            BalancerConfig(upstreams=(UpstreamSpec("127.0.0.1", 8081),), listen=("tcp:8080",)),
            MemoryReactorClock(),
        )
        self.assertEqual(
            (service.https_factory, service.certificates, service.upstream_tls), (None, None, None)
        )
        self.assertEqual(service.relay_factories, (service.factory,))

    def test_sighup_handler_installed_and_restored(self) -> None:
        """
        While the service runs, SIGHUP asks the reactor to reload the
        certificates; stopping puts the previous handler back.
        """
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)

        class Reactor(MemoryReactorClock):
            def __init__(self) -> None:
                super().__init__()
                self.from_threads: list[Any] = []

            def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
                self.from_threads.append((f, args))

        reactor = Reactor()
        config = BalancerConfig(
            upstreams=(UpstreamSpec("127.0.0.1", 8081),),
            listen=(),
            tls=TlsConfig(listen=("tcp:8443",), certificates=(self.certificate,)),
            active_health_check_interval=0.0,
        )
        service = BalancerService(config, reactor)
        service.privilegedStartService()
        service.startService()
        handler = signal.getsignal(signal.SIGHUP)
        self.assertNotEqual(handler, previous)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        store = service.certificates
        assert store is not None
        self.assertEqual(reactor.from_threads, [(store.reload, ())])
        self.successResultOf(service.stopService())
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_drain_covers_https_connections(self) -> None:
        """
        Stopping waits for the HTTPS factory's connections too: an idle one
        is closed, and the stop completes once it is gone.
        """
        service, _ = self.service()
        service.privilegedStartService()
        service.startService()
        https = service.https_factory
        assert https is not None
        protocol = https.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        assert isinstance(protocol, ClientConnection)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        protocol.makeConnection(transport)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)

    def test_https_listener_backlog(self) -> None:
        """
        The HTTPS listener's socket listens with C{--listen-backlog}, as the
        plain one does.
        """
        service, reactor = self.service(listen_backlog=2048)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            sorted((port, backlog) for port, _, backlog, _ in reactor.tcpServers),
            [(8080, 2048), (8443, 2048)],
        )

    def test_per_client_cap_is_shared(self) -> None:
        """
        C{max_connections_per_client} counts an address's plain and HTTPS
        connections together.
        """
        service, _ = self.service(max_connections_per_client=1)
        https = service.https_factory
        assert https is not None
        address = IPv4Address("TCP", "192.0.2.7", 5555)
        protocol = service.factory.buildProtocol(address)
        assert isinstance(protocol, ClientConnection)
        protocol.makeConnection(StringTransport(peerAddress=address))
        refused = https.buildProtocol(address)
        self.assertNotIsInstance(refused, ClientConnection)
        self.assertEqual(service.stats.refused_per_client, 1)

    def test_connection_cap_is_shared(self) -> None:
        """
        C{max_client_connections} counts plain and HTTPS connections
        together: with a cap of 2, the third connection is refused on
        either listener.
        """
        service, _ = self.service(max_client_connections=2)
        https = service.https_factory
        assert https is not None
        address = IPv4Address("TCP", "127.0.0.1", 5555)
        for factory in (service.factory, https):
            protocol = factory.buildProtocol(address)
            assert isinstance(protocol, ClientConnection)
            protocol.makeConnection(StringTransport(peerAddress=address))
        for factory in (service.factory, https):
            refused = factory.buildProtocol(address)
            self.assertNotIsInstance(refused, ClientConnection)
            transport = StringTransport(peerAddress=address)
            refused.makeConnection(transport)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertEqual(service.stats.refused_connections, 2)

    def test_upstream_endpoints_use_tls(self) -> None:
        """
        A C{https://} upstream's endpoints (pool and probe alike) do the
        verified TLS handshake; a plain upstream's are plain TCP.
        """
        from balancebeam.tls import UpstreamTLSEndpoint

        reactor = MemoryReactorClock()
        tls_spec = UpstreamSpec("127.0.0.1", 8443, tls=True)
        plain_spec = UpstreamSpec("127.0.0.1", 8081)
        ca_file = write(self.directory, "ca.pem", self.ca.cert_pem.bytes())
        config = BalancerConfig(
            upstreams=(tls_spec, plain_spec),
            listen=("tcp:8080",),
            tls=TlsConfig(upstream_ca=ca_file),
            active_health_check_interval=0.0,
        )
        service = BalancerService(config, reactor)
        self.assertIsNone(service.certificates)
        self.assertIsInstance(service._endpoint_for(tls_spec), UpstreamTLSEndpoint)
        self.assertIsInstance(service._probe_endpoint_for(tls_spec), UpstreamTLSEndpoint)
        self.assertNotIsInstance(service._endpoint_for(plain_spec), UpstreamTLSEndpoint)
        assert service.upstream_tls is not None
        self.assertEqual(
            [creator.upstream for creator in service.upstream_tls.creators], ["127.0.0.1:8443"]
        )


class _Answer(Protocol):
    """
    Answers every piece of data with C{b"answer"}.
    """

    def dataReceived(self, data: bytes) -> None:
        """Answer at once."""
        assert self.transport is not None
        self.transport.write(b"answer")


class _Collect(Protocol):
    """
    Collects what arrives.
    """

    received = b""

    def dataReceived(self, data: bytes) -> None:
        """Keep it."""
        self.received += data


class TLSLayerTests(SynchronousTestCase):
    """
    L{DirectTLSFactory}: what a TLS connection writes is encrypted and
    handed to the transport below at once, not on a later reactor turn.
    """

    def test_write_reaches_transport_at_once(self) -> None:
        """
        After the handshake, the server's answer to a request is on its TCP
        transport before the clock moves, and the client decrypts it.
        """
        ca = trustme.CA()
        path = write(os.path.abspath(self.mktemp()), "a.pem", bundle(ca, "a.example"))
        clock = MemoryReactorClock()
        server_factory = DirectTLSFactory(
            CertificateStore(clock, [path]), False, Factory.forProtocol(_Answer), clock=clock
        )
        client_factory = TLSMemoryBIOFactory(
            InspectingClient(b"a.example"), True, Factory.forProtocol(_Collect), clock=clock
        )
        server = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        assert server is not None and client is not None
        server_wire, client_wire = StringTransport(), StringTransport()
        server.makeConnection(server_wire)
        client.makeConnection(client_wire)

        def pump() -> None:
            while client_wire.value() or server_wire.value():
                to_server, to_client = client_wire.value(), server_wire.value()
                client_wire.clear()
                server_wire.clear()
                if to_server:
                    server.dataReceived(to_server)
                if to_client:
                    client.dataReceived(to_client)

        pump()
        client.write(b"request")
        client_factory_protocol = client.wrappedProtocol
        assert isinstance(client_factory_protocol, _Collect)
        request = client_wire.value()
        if not request:
            clock.advance(0)  # Twisted's client side aggregates its small writes
            request = client_wire.value()
        client_wire.clear()
        server.dataReceived(request)
        answer = server_wire.value()
        self.assertNotEqual(answer, b"")
        self.assertNotIn(b"answer", answer)
        server_wire.clear()
        client.dataReceived(answer)
        self.assertEqual(client_factory_protocol.received, b"answer")


class StartupErrorTests(SynchronousTestCase):
    """
    A certificate or key that cannot be used stops C{makeService} with one
    line naming the flag and the file.
    """

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.directory = os.path.abspath(self.mktemp())

    def make(self, *arguments: str) -> str:
        """
        Build the service from C{arguments}; return the C{SystemExit} message.
        """
        options = tap.Options()
        options.parseOptions(list(arguments))
        error = self.assertRaises(SystemExit, tap.makeService, options, MemoryReactorClock())
        message = str(error.code)
        self.assertNotIn("\n", message)
        return message

    def test_bad_listener_certificate(self) -> None:
        """
        A C{--tls-cert} file without a certificate is a startup error naming it.
        """
        path = write(self.directory, "bad.pem", b"not a certificate\n")
        message = self.make("-u", "a:1", "--tls-bind", "127.0.0.1:8443", "--tls-cert", path)
        self.assertEqual(
            message, f"balancebeam: --tls-cert {path}: no PEM certificate in the file"
        )

    def test_key_does_not_match(self) -> None:
        """
        A certificate followed by another certificate's key is refused.
        """
        one = self.ca.issue_cert("a.example")
        other = self.ca.issue_cert("b.example")
        data = one.cert_chain_pems[0].bytes() + other.private_key_pem.bytes()
        path = write(self.directory, "mixed.pem", data)
        message = self.make("-u", "a:1", "--tls-bind", "127.0.0.1:8443", "--tls-cert", path)
        self.assertEqual(
            message,
            f"balancebeam: --tls-cert {path}: the private key does not match the "
            "certificate (the first in the file)",
        )

    def test_empty_certificate_directory(self) -> None:
        """
        A C{--tls-cert-dir} without any C{*.pem} file is a startup error.
        """
        os.makedirs(self.directory)
        message = self.make(
            "-u", "a:1", "--tls-bind", "127.0.0.1:8443", "--tls-cert-dir", self.directory
        )
        self.assertEqual(
            message,
            f"balancebeam: --tls-cert-dir {self.directory}: no certificate (*.pem) to load",
        )

    def test_bad_upstream_ca(self) -> None:
        """
        An C{--upstream-ca} file without a certificate is a startup error naming it.
        """
        path = write(self.directory, "ca.pem", b"-----BEGIN NOTHING-----\n")
        message = self.make("-u", "https://a:1", "--upstream-ca", path)
        self.assertEqual(
            message, f"balancebeam: --upstream-ca {path}: no PEM certificate in the file"
        )

    def test_bad_client_certificate(self) -> None:
        """
        An C{--upstream-client-cert} file without a key is a startup error naming it.
        """
        path = write(
            self.directory, "client.pem", self.ca.issue_cert("c").cert_chain_pems[0].bytes()
        )
        message = self.make("-u", "https://a:1", "--upstream-client-cert", path)
        self.assertEqual(
            message, f"balancebeam: --upstream-client-cert {path}: no PEM private key in the file"
        )

    def test_verify_none_warns(self) -> None:
        """
        C{--upstream-tls-verify none} builds the service and logs a warning at startup.
        """
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        options = tap.Options()
        options.parseOptions(["-u", "https://a:1", "--upstream-tls-verify", "none"])
        service = tap.makeService(options, MemoryReactorClock())
        assert isinstance(service, BalancerService)
        assert service.upstream_tls is not None
        warnings = [
            e for e in events
            if e["log_level"] == LogLevel.warn and "verification is off" in e["log_format"]
        ]
        self.assertEqual(len(warnings), 1)


class _OpenSSL(ProcessProtocol):
    """
    Runs C{openssl s_client}, writes C{data} to it, and collects its output.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.output = b""
        self.done: Deferred[str] = Deferred()

    def connectionMade(self) -> None:
        """Send the request; keep stdin open so that -ign_eof waits for the answer."""
        assert self.transport is not None
        self.transport.write(self.data)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        """Collect stdout."""
        self.output += data

    def errReceived(self, data: bytes) -> None:
        """Collect stderr."""
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        """Fire L{done} with the output."""
        self.done.callback(self.output.decode("utf-8", "replace"))


class TwistdTests(TLSBalancerTestCase):
    """
    A real C{twistd -n balancebeam --tls-bind ...}, checked with C{openssl s_client}.
    """

    timeout = 40

    def spawn(self, *arguments: str) -> tuple[TwistdProcess, Any]:
        """
        Start C{twistd -n --pidfile= balancebeam ARGUMENTS}; killed at cleanup.
        """
        process = TwistdProcess()
        process.listening.addErrback(lambda _: None)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
        )
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + ["-n", "--pidfile=", "balancebeam", *arguments],
            env=environment,
            path=tempfile.mkdtemp(prefix="balancebeam-tls-twistd-"),
        )

        async def stop() -> None:
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(stop)
        return process, transport

    async def s_client(self, port: int, request: bytes = b"") -> str:
        """
        Run C{openssl s_client} against C{port} as C{a.example}, verifying
        it with L{ca} and offering C{h2} and C{http/1.1}; send C{request}.
        """
        openssl = shutil.which("openssl")
        if openssl is None:
            self.fail("the openssl command is not installed (.ci/run installs it)")
        protocol = _OpenSSL(request)
        arguments = [
            openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.example",
            "-verify_hostname", "a.example", "-CAfile", self.ca_file, "-alpn", "h2,http/1.1",
        ]
        if request:
            arguments.append("-ign_eof")
        reactor.spawnProcess(protocol, openssl, arguments, env=dict(os.environ))
        return await protocol.done

    async def test_openssl_s_client_through_twistd(self) -> None:
        """
        C{openssl s_client} verifies the HTTPS listener of a real twistd,
        negotiates http/1.1 (never h2), and gets the TLS upstream's answer
        with C{X-Forwarded-Proto: https}; after the certificate file is
        renewed, SIGHUP makes new handshakes get the new certificate.
        """
        upstream = self.start_tls_upstream("tls-upstream", "api.internal")
        path = self.certificate("a.example", common="first-issue")
        port = unused_port()
        process, transport = self.spawn(
            "--tls-bind", f"127.0.0.1:{port}", "--tls-cert", path,
            "--upstream", upstream.https, "--upstream-ca", self.ca_file,
            "--upstream-tls-name", "api.internal", "--active-health-check-interval", "0",
        )
        await process.listening
        self.assertIn(b"Listening for requests on 127.0.0.1:%d (HTTPS)" % port, process.output)
        self.assertNotIn(b"1100", process.output)
        output = await self.s_client(
            port, b"GET /via-openssl HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
        )
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("ALPN protocol: http/1.1", output)
        self.assertRegex(output, r"(?m)^subject=.*\bCN\s*=\s*first-issue$")
        self.assertIn("HTTP/1.1 200 ", output)
        self.assertIn("tls-upstream GET /via-openssl HTTP/1.1 0 ", output)
        [received] = upstream.requests
        self.assertEqual(received.header_values(b"x-forwarded-proto"), [b"https"])

        write(self.directory, "a.example.pem", bundle(self.ca, "a.example", common_name="renewed"))
        transport.signalProcess("HUP")
        await wait_until(reactor, lambda: b"renewed" in process.output, "the reload's log line")
        renewed = await self.s_client(port)
        self.assertRegex(renewed, r"(?m)^subject=.*\bCN\s*=\s*renewed$")
        transport.signalProcess("TERM")
        # twistd ends itself with the signal once stopped (see tests.test_twistd).
        self.assertIn(await process.ended, (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down.", process.output)
        self.assertNotIn(b"Traceback", process.output)
