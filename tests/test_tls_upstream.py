"""
Unit tests for the upstream TLS pieces that need no socket: configuration
errors, per-upstream creators, and the handshake-waiting endpoint's deadline,
cancellation and failure paths on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import trustme
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.tls.pem import CertificateError
from balancebeam.tls.upstream import (
    UpstreamTLS,
    UpstreamTLSEndpoint,
    UpstreamTLSError,
    UpstreamVerificationError,
    is_verification_failure,
    parse_verify,
)
from tests.test_tls_support import write


class Application(Protocol):
    """
    Records whether it was ever connected.
    """

    made = False

    def connectionMade(self) -> None:
        """Record it."""
        self.made = True


class ConfigurationTests(SynchronousTestCase):
    """
    L{UpstreamTLS} settings and L{parse_verify}.
    """

    def test_parse_verify(self) -> None:
        """C{full} verifies, C{none} does not, anything else is refused naming the flag."""
        self.assertTrue(parse_verify("full"))
        self.assertFalse(parse_verify(" None "))
        error = self.assertRaises(ValueError, parse_verify, "maybe")
        self.assertIn("--upstream-tls-verify", str(error))

    def test_bad_ca_file(self) -> None:
        """An unusable CA file is a startup error naming it."""
        path = write(self.mktemp(), "ca.pem", b"nothing")
        error = self.assertRaises(CertificateError, UpstreamTLS, ca_file=path)
        self.assertEqual(error.path, path)

    def test_bad_client_certificate(self) -> None:
        """A client certificate file without its key is a startup error naming it."""
        leaf = trustme.CA().issue_cert("client.example")
        path = write(self.mktemp(), "client.pem", leaf.cert_chain_pems[0].bytes())
        error = self.assertRaises(
            CertificateError, UpstreamTLS, client_certificate_file=path
        )
        self.assertIn("no PEM private key", error.reason)

    def test_one_creator_per_upstream(self) -> None:
        """Each upstream gets one creator, reused, named like the upstream."""
        tls = UpstreamTLS()
        first = tls.creator("10.0.0.1", 443)
        self.assertIs(tls.creator("10.0.0.1", 443), first)
        self.assertIsNot(tls.creator("10.0.0.1", 8443), first)
        self.assertEqual(first.upstream, "10.0.0.1:443")
        self.assertEqual(tls.creator("::1", 443).upstream, "[::1]:443")
        self.assertEqual(len(tls.creators), 3)

    def test_expected_name(self) -> None:
        """The certificate must name the host, or the override when one is given."""
        self.assertEqual(UpstreamTLS().creator("10.0.0.1", 443).name, "10.0.0.1")
        self.assertEqual(UpstreamTLS().creator("api.example", 443).name, "api.example")
        override = UpstreamTLS(server_name="api.internal")
        self.assertEqual(override.creator("10.0.0.1", 443).name, "api.internal")

    def test_errors_are_connect_errors(self) -> None:
        """Both errors are C{ConnectError}s; only one is a verification failure."""
        from twisted.internet.error import ConnectError

        verification = UpstreamVerificationError("a:443", "certificate has expired")
        handshake = UpstreamTLSError("a:443", "handshake timed out after 5 s")
        self.assertIsInstance(verification, ConnectError)
        self.assertIsInstance(handshake, ConnectError)
        self.assertTrue(is_verification_failure(Failure(verification)))
        self.assertFalse(is_verification_failure(Failure(handshake)))
        self.assertFalse(is_verification_failure(Failure(ConnectionRefusedError())))
        self.assertEqual(
            str(verification),
            "TLS verification of the upstream failed: a:443: certificate has expired.",
        )


class EndpointTests(SynchronousTestCase):
    """
    L{UpstreamTLSEndpoint} on a memory reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        ca = trustme.CA()
        ca_file = write(self.mktemp(), "ca.pem", ca.cert_pem.bytes())
        self.tls = UpstreamTLS(ca_file=ca_file, server_name="a.example")
        self.endpoint = UpstreamTLSEndpoint(
            self.reactor,
            self.tls.creator("127.0.0.1", 8443),
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", 8443, timeout=5),
            handshake_timeout=5.0,
        )
        self.applications: list[Application] = []

    def build(self) -> Application:
        self.applications.append(Application())
        return self.applications[-1]

    def accept(self) -> tuple[IProtocol, StringTransport]:
        """
        Complete the pending TCP connection to a transport that never answers.
        """
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8443))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_client_hello_sent_application_waits(self) -> None:
        """Once TCP connects, a ClientHello with SNI goes out, and the application waits."""
        attempt = self.endpoint.connect(Factory.forProtocol(self.build))
        protocol, transport = self.accept()
        hello = transport.value()
        self.assertEqual(hello[:1], b"\x16")  # a TLS handshake record
        self.assertIn(b"a.example", hello)
        self.assertNoResult(attempt)
        self.assertEqual([app.made for app in self.applications], [False])

    def test_handshake_deadline(self) -> None:
        """A handshake that does not finish in time fails as a TLS error and aborts."""
        attempt = self.endpoint.connect(Factory.forProtocol(self.build))
        protocol, transport = self.accept()
        self.reactor.advance(4.9)
        self.assertNoResult(attempt)
        self.reactor.advance(0.1)
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(attempt, UpstreamTLSError)
        self.assertIn("handshake timed out after 5 s", failure.getErrorMessage())
        self.assertFalse(is_verification_failure(failure))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.applications[0].made)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel_before_tcp(self) -> None:
        """Cancelling while TCP connects stops the connector and fails with C{CancelledError}."""
        attempt = self.endpoint.connect(Factory.forProtocol(self.build))
        attempt.cancel()
        self.failureResultOf(attempt, CancelledError)
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)

    def test_cancel_during_handshake(self) -> None:
        """Cancelling during the handshake aborts the connection and stops the deadline."""
        attempt = self.endpoint.connect(Factory.forProtocol(self.build))
        protocol, transport = self.accept()
        attempt.cancel()
        self.failureResultOf(attempt, CancelledError)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.applications[0].made)

    def test_tcp_failure_passes_through(self) -> None:
        """A refused TCP connection fails with the TCP error itself."""
        attempt = self.endpoint.connect(Factory.forProtocol(self.build))
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )
        self.failureResultOf(attempt, ConnectionRefusedError)

    def test_upstream_closes_during_handshake(self) -> None:
        """An upstream that hangs up mid-handshake fails the attempt as a TLS error."""
        from twisted.internet.error import ConnectionDone

        attempt = self.endpoint.connect(Factory.forProtocol(self.build))
        protocol, transport = self.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(attempt, UpstreamTLSError)
        self.assertIn("closed the connection during the handshake", failure.getErrorMessage())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_factory_without_protocol(self) -> None:
        """A factory that builds no protocol fails the attempt with C{NoProtocol}."""
        from twisted.internet.error import NoProtocol

        class Nothing(Factory):
            def buildProtocol(self, addr: object) -> None:
                return None

        attempt = self.endpoint.connect(Nothing())
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8443)))
        self.failureResultOf(attempt, NoProtocol)
