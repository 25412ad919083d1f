"""
TLS over real loopback sockets, with C{trustme} certificates: the listeners'
certificate store (SNI, reload, protocol versions, ALPN, C{openssl s_client})
and verified connections to TLS upstreams (wrong host, private CA, mutual
TLS, session reuse). Tiny echo servers and clients, not the balancer.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from balancebeam.tls.store import CertificateStore, reload_on_sighup
from balancebeam.tls.upstream import (
    UpstreamTLS,
    UpstreamTLSError,
    UpstreamVerificationError,
    is_verification_failure,
)
from tests.test_tls_support import (
    EchoServer,
    InspectingClient,
    Recorder,
    _close,
    bundle,
    connect_recorder,
    handshake,
    touch_later,
    utc,
    wait_for,
    write,
)

reactor: Any = _reactor


def _options(ca: trustme.CA, *names: str, **extra: Any) -> CertificateOptions:
    """
    Twisted's own server options for a certificate of C{ca} (for servers
    that are not under test).
    """
    leaf = ca.issue_cert(*names, common_name=names[0])
    return CertificateOptions(
        privateKey=load_pem_private_key(leaf.private_key_pem.bytes(), None),  # type: ignore[arg-type]
        certificate=x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()),  # type: ignore[arg-type]
        **extra,
    )


class ListenerTests(TestCase):
    """
    A TLS echo server whose certificates come from a L{CertificateStore}.
    """

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.directory = self.mktemp()
        self.a = write(self.directory, "a.pem", bundle(self.ca, "a.example", common_name="a-old"))
        self.b = write(self.directory, "b.pem", bundle(self.ca, "b.example"))
        self.wild = write(
            self.directory, "w.pem", bundle(self.ca, "*.w.example", common_name="wildcard")
        )
        self.clock = Clock()
        self.store = CertificateStore(self.clock, [self.a, self.b, self.wild])
        self.server = EchoServer()

    async def listen(self) -> int:
        return await self.server.listen_with_store(self, self.store)

    async def common_name(self, port: int, name: bytes | None) -> str:
        recorder = await handshake(self, port, InspectingClient(name))
        return recorder.peer_common_name()

    async def test_sni_chooses_certificate(self) -> None:
        """Two names and a wildcard each get their certificate; no SNI gets the first."""
        port = await self.listen()
        self.assertEqual(await self.common_name(port, b"a.example"), "a-old")
        self.assertEqual(await self.common_name(port, b"b.example"), "b.example")
        self.assertEqual(await self.common_name(port, b"x.w.example"), "wildcard")
        self.assertEqual(await self.common_name(port, b"unknown.example"), "a-old")
        self.assertEqual(await self.common_name(port, None), "a-old")

    async def _renewal(self, renew: Any) -> None:
        port = await self.listen()
        before = await handshake(self, port, InspectingClient(b"a.example"))
        self.assertEqual(before.peer_common_name(), "a-old")
        write(self.directory, "a.pem", bundle(self.ca, "a.example", common_name="a-new"))
        renew()
        self.assertEqual(await self.common_name(port, b"a.example"), "a-new")
        # The connection opened before keeps its certificate and keeps working.
        before.transport.write(b"still here")  # type: ignore[union-attr]
        self.assertEqual(await before.read_until(10), b"still here")
        self.assertEqual(before.peer_common_name(), "a-old")

    async def test_reload_serves_new_certificate_to_new_handshakes(self) -> None:
        """After C{reload()}, new handshakes get the new certificate; open connections work on."""
        await self._renewal(self.store.reload)

    async def test_poll_serves_new_certificate(self) -> None:
        """The 30 s modification-time poll on the clock picks up a renewed file."""
        self.store.startService()
        self.addCleanup(self.store.stopService)

        def renew() -> None:
            touch_later(self.a)
            self.clock.advance(30)
            self.assertEqual(self.store.reloads, 1)

        await self._renewal(renew)

    async def test_sighup_reloads(self) -> None:
        """C{SIGHUP} makes the reactor reload the store."""
        restore = reload_on_sighup(reactor, self.store)
        self.addCleanup(restore)
        port = await self.listen()
        write(self.directory, "a.pem", bundle(self.ca, "a.example", common_name="a-hup"))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: self.store.reloads == 1)
        self.assertEqual(await self.common_name(port, b"a.example"), "a-hup")

    async def test_broken_replacement_keeps_old(self) -> None:
        """A broken replacement file leaves the old certificate in service."""
        port = await self.listen()
        write(self.directory, "a.pem", b"-----BEGIN CERTIFICATE-----\ntruncated")
        result = self.store.reload()
        self.assertEqual(result.failed[0][0], self.a)
        self.assertEqual(await self.common_name(port, b"a.example"), "a-old")

    async def _try_version(self, port: int, version: int) -> Recorder:
        client = InspectingClient(
            b"a.example", max_version=version, cipher_list=b"DEFAULT:@SECLEVEL=0"
        )
        recorder = await connect_recorder(port, client)
        self.addCleanup(lambda: recorder.lost)
        return recorder

    async def test_tls10_and_tls11_refused(self) -> None:
        """TLS 1.0 and 1.1 clients are refused; the same clients reach a permissive server."""
        port = await self.listen()
        permissive = EchoServer()
        options = _options(
            self.ca, "a.example", insecurelyLowerMinimumTo=TLSVersion.TLSv1_0
        )
        options.getContext().set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        control_port = await permissive.listen_with(self, options)
        for version, name in ((SSL.TLS1_VERSION, "TLSv1"), (SSL.TLS1_1_VERSION, "TLSv1.1")):
            control = await self._try_version(control_port, version)
            try:
                await control.handshake
            except Exception as error:
                raise SkipTest(f"this OpenSSL cannot speak {name} at all: {error}") from None
            self.assertEqual(control.tls.getHandle().get_protocol_version_name(), name)
            control.transport.loseConnection()  # type: ignore[union-attr]
            refused = await self._try_version(port, version)
            failure = await self.assertFailure(refused.handshake, SSL.Error)
            self.assertIn("protocol version", str(failure))
        self.assertEqual(self.server.received, [])

    async def test_tls12_and_tls13_accepted(self) -> None:
        """TLS 1.2 and 1.3 clients complete the handshake."""
        port = await self.listen()
        old = await handshake(self, port, InspectingClient(b"a.example", SSL.TLS1_2_VERSION))
        new = await handshake(self, port, InspectingClient(b"a.example"))
        self.assertEqual(old.tls.getHandle().get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(new.tls.getHandle().get_protocol_version_name(), "TLSv1.3")

    async def test_alpn_http11_never_h2(self) -> None:
        """ALPN selects http/1.1 over h2; an h2-only offer gets no protocol, not h2."""
        port = await self.listen()
        offer = [b"h2", b"http/1.1"]
        both = await handshake(self, port, InspectingClient(b"a.example", alpn=offer))
        self.assertEqual(both.tls.negotiatedProtocol, b"http/1.1")
        h2 = await handshake(self, port, InspectingClient(b"a.example", alpn=[b"h2"]))
        self.assertIsNone(h2.tls.negotiatedProtocol)
        none = await handshake(self, port, InspectingClient(b"a.example"))
        self.assertIsNone(none.tls.negotiatedProtocol)

    async def test_server_transport_is_ssl(self) -> None:
        """The server side's transport provides C{ISSLTransport} (for C{X-Forwarded-Proto})."""
        port = await self.listen()
        await handshake(self, port, InspectingClient(b"a.example"))
        await wait_for(lambda: bool(self.server.transports))
        self.assertTrue(ISSLTransport.providedBy(self.server.transports[0]))

    async def test_openssl_s_client(self) -> None:
        """C{openssl s_client} gets the certificate chosen by its SNI, verified, with http/1.1."""
        openssl = shutil.which("openssl")
        if openssl is None:
            self.fail("the openssl command is not installed (.ci/run must install it)")
        port = await self.listen()
        ca_file = write(self.directory, "ca.crt", self.ca.cert_pem.bytes())
        output = await _run(
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "b.example",
            "-verify_hostname",
            "b.example",
            "-CAfile",
            ca_file,
            "-alpn",
            "h2,http/1.1",
        )
        self.assertRegex(output, r"(?m)^subject=.*\bCN\s*=\s*b\.example$")
        self.assertIn("ALPN protocol: http/1.1", output)
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertRegex(output, r"Protocol\s*:\s*TLSv1\.3|New, TLSv1\.3")
        wildcard = await _run(
            openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "x.w.example"
        )
        self.assertRegex(wildcard, r"(?m)^subject=.*\bCN\s*=\s*wildcard$")


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(self.output)


async def _run(executable: str, *arguments: str) -> str:
    """
    Run a command with stdin closed; return its stdout and stderr.
    """
    protocol = _Output()
    reactor.spawnProcess(protocol, executable, [executable, *arguments], env=dict(os.environ))
    output = await protocol.done
    return output.decode("utf-8", "replace")


class UpstreamTests(TestCase):
    """
    Connections through L{UpstreamTLS} endpoints to TLS echo servers.
    """

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.directory = self.mktemp()
        self.ca_file = write(self.directory, "ca.crt", self.ca.cert_pem.bytes())
        self.server = EchoServer()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    async def serve(self, *names: str, ca: trustme.CA | None = None, **extra: Any) -> int:
        if extra:
            return await self.server.listen_with(self, _options(ca or self.ca, *names, **extra))
        path = write(self.directory, "server.pem", bundle(ca or self.ca, *names))
        return await self.server.listen_with_store(self, CertificateStore(Clock(), [path]))

    async def connect(self, tls: UpstreamTLS, port: int, host: str = "127.0.0.1") -> Recorder:
        endpoint = tls.endpoint(
            reactor, host, port, TCP4ClientEndpoint(reactor, "127.0.0.1", port), 5.0
        )
        protocol = await endpoint.connect(Factory.forProtocol(Recorder))
        assert isinstance(protocol, Recorder)
        self.addCleanup(_close, protocol)
        return protocol

    async def echo(self, recorder: Recorder, data: bytes = b"hello") -> None:
        assert recorder.transport is not None
        recorder.transport.write(data)
        self.assertEqual(await recorder.read_until(len(data)), data)

    async def refused(self, tls: UpstreamTLS, port: int, host: str = "127.0.0.1") -> Failure:
        built: list[Recorder] = []

        def build() -> Recorder:
            built.append(Recorder())
            return built[-1]

        endpoint = tls.endpoint(
            reactor, host, port, TCP4ClientEndpoint(reactor, "127.0.0.1", port), 5.0
        )
        attempt = endpoint.connect(Factory.forProtocol(build))
        error = await self.assertFailure(attempt, UpstreamTLSError)
        # The application protocol never saw a connection.
        self.assertEqual([recorder.transport for recorder in built], [None])
        await wait_for(lambda: len(self.server.lost) == 1)
        self.assertEqual(self.server.received, [])
        return Failure(error)

    async def test_private_ca(self) -> None:
        """An upstream with a certificate from the configured private CA works."""
        port = await self.serve("a.example")
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        recorder = await self.connect(tls, port)
        await self.echo(recorder)
        self.assertEqual(self.server.received, [b"hello"])
        # No ALPN offer, so the upstream cannot pick anything but HTTP/1.1.
        self.assertIsNone(recorder.tls.negotiatedProtocol)
        self.assertEqual(tls.creator("127.0.0.1", port).handshakes, 1)

    async def test_host_name_checked_by_default(self) -> None:
        """Without an override, the upstream's own host name is checked (and sent as SNI)."""
        port = await self.serve("localhost")
        recorder = await self.connect(UpstreamTLS(ca_file=self.ca_file), port, host="localhost")
        await self.echo(recorder)
        self.assertEqual(recorder.tls.getHandle().get_servername(), b"localhost")

    async def test_ip_address_upstream(self) -> None:
        """An upstream addressed by IP needs the IP in its certificate, or the name override."""
        port = await self.serve("127.0.0.1")
        await self.echo(await self.connect(UpstreamTLS(ca_file=self.ca_file), port))

    async def test_wrong_host_gets_nothing(self) -> None:
        """A certificate for another host fails verification; the upstream gets no byte."""
        port = await self.serve("b.example")
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        failure = await self.refused(tls, port)
        self.assertTrue(is_verification_failure(failure))
        error = failure.value
        assert isinstance(error, UpstreamVerificationError)
        self.assertEqual(error.upstream, f"127.0.0.1:{port}")
        self.assertEqual(error.reason, "the certificate names b.example, not a.example")
        self.assertIn(f"127.0.0.1:{port}", failure.getErrorMessage())
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(
            [(e["upstream"], e["reason"]) for e in errors], [(error.upstream, error.reason)]
        )
        self.assertEqual(tls.creator("127.0.0.1", port).verification_failures, 1)

    async def test_ip_upstream_with_named_certificate(self) -> None:
        """An IP-addressed upstream whose certificate only has a DNS name is refused."""
        port = await self.serve("a.example")
        failure = await self.refused(UpstreamTLS(ca_file=self.ca_file), port)
        self.assertIn("not 127.0.0.1", failure.value.reason)

    async def test_untrusted_authority(self) -> None:
        """A certificate from an authority not trusted fails with OpenSSL's reason."""
        port = await self.serve("a.example", ca=trustme.CA())
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        failure = await self.refused(tls, port)
        self.assertTrue(is_verification_failure(failure))
        self.assertIn("unable to get local issuer certificate", failure.value.reason)

    async def test_expired_certificate(self) -> None:
        """An expired certificate fails verification, saying so."""
        path = write(
            self.directory,
            "old.pem",
            bundle(self.ca, "a.example", not_before=utc(2020, 1, 1), not_after=utc(2021, 1, 1)),
        )
        port = await self.server.listen_with_store(self, CertificateStore(Clock(), [path]))
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        failure = await self.refused(tls, port)
        self.assertIn("certificate has expired", failure.value.reason)

    async def test_system_trust_store_rejects_private_ca(self) -> None:
        """Without C{--upstream-ca}, a private CA is not trusted."""
        port = await self.serve("a.example")
        failure = await self.refused(UpstreamTLS(server_name="a.example"), port)
        self.assertTrue(is_verification_failure(failure))

    async def test_verify_none(self) -> None:
        """With verification off, any certificate is accepted, and a warning is logged."""
        port = await self.serve("b.example", ca=trustme.CA())
        tls = UpstreamTLS(verify=False, server_name="a.example")
        warnings = [e for e in self.events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("verification is off", str(warnings[0]["log_format"]))
        await self.echo(await self.connect(tls, port))

    async def test_not_tls(self) -> None:
        """A plain-TCP upstream fails the handshake, not as a verification failure."""
        port_object = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.server.factory()
        )
        self.addCleanup(port_object.stopListening)
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        endpoint = tls.endpoint(
            reactor,
            "127.0.0.1",
            port_object.getHost().port,
            TCP4ClientEndpoint(reactor, "127.0.0.1", port_object.getHost().port),
            5.0,
        )
        attempt = endpoint.connect(Factory.forProtocol(Recorder))
        error = await self.assertFailure(attempt, UpstreamTLSError)
        self.assertFalse(is_verification_failure(Failure(error)))

    async def _mutual(self) -> tuple[int, str]:
        client_ca = trustme.CA()
        client_file = write(
            self.directory,
            "client.pem",
            bundle(client_ca, "client.example", common_name="balancer"),
        )
        port = await self.serve(
            "a.example",
            trustRoot=trustRootFromCertificates([Certificate.loadPEM(client_ca.cert_pem.bytes())]),
        )
        return port, client_file

    async def test_mutual_tls(self) -> None:
        """With C{--upstream-client-cert}, an upstream requiring client certificates accepts us."""
        port, client_file = await self._mutual()
        tls = UpstreamTLS(
            ca_file=self.ca_file, server_name="a.example", client_certificate_file=client_file
        )
        await self.echo(await self.connect(tls, port))
        peer = self.server.transports[0].getPeerCertificate().to_cryptography()
        self.assertEqual(peer.subject.rfc4514_string().split(",")[0], "CN=balancer")

    async def test_missing_client_certificate_refused(self) -> None:
        """Without a client certificate, an upstream requiring one refuses us and gets nothing."""
        port, _ = await self._mutual()
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        endpoint = tls.endpoint(
            reactor, "127.0.0.1", port, TCP4ClientEndpoint(reactor, "127.0.0.1", port), 5.0
        )
        try:
            recorder = await endpoint.connect(Factory.forProtocol(Recorder))
        except UpstreamTLSError:
            pass  # TLS 1.2: the handshake itself fails
        else:
            # TLS 1.3: the client finishes first; the server's alert ends the connection.
            assert isinstance(recorder, Recorder)
            recorder.transport.write(b"hello")  # type: ignore[union-attr]
            await recorder.lost
            assert recorder.lost_reason is not None
            self.assertIn("certificate required", str(recorder.lost_reason.value))
        await wait_for(lambda: len(self.server.lost) == 1)
        self.assertEqual(self.server.received, [])

    async def test_session_resumed_tls13(self) -> None:
        """A second connection resumes the first one's TLS 1.3 session."""
        port = await self.serve("a.example")
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        first = await self.connect(tls, port)
        await self.echo(first)
        self.assertEqual(first.tls.getHandle().get_protocol_version_name(), "TLSv1.3")
        second = await self.connect(tls, port)
        await self.echo(second)
        creator = tls.creator("127.0.0.1", port)
        self.assertEqual((creator.handshakes, creator.resumed_handshakes), (2, 1))

    async def test_session_resumed_tls12(self) -> None:
        """A second connection resumes the first one's TLS 1.2 session."""
        port = await self.serve(
            "a.example", lowerMaximumSecurityTo=TLSVersion.TLSv1_2, enableSessions=True
        )
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        first = await self.connect(tls, port)
        self.assertEqual(first.tls.getHandle().get_protocol_version_name(), "TLSv1.2")
        second = await self.connect(tls, port)
        await self.echo(second)
        creator = tls.creator("127.0.0.1", port)
        self.assertEqual((creator.handshakes, creator.resumed_handshakes), (2, 1))

    async def test_no_resumption_across_upstreams(self) -> None:
        """Each upstream keeps its own session: a new upstream gets a full, verified handshake."""
        port = await self.serve("a.example")
        tls = UpstreamTLS(ca_file=self.ca_file, server_name="a.example")
        await self.echo(await self.connect(tls, port))
        await self.echo(await self.connect(tls, port, host="localhost"))
        self.assertEqual(tls.creator("localhost", port).resumed_handshakes, 0)


