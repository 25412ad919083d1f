"""
TLS to upstreams: verified connections, reused sessions, and failures that
say what went wrong.

L{UpstreamTLS} holds what every TLS upstream shares (the trust anchors, an
optional client certificate, the verification switch and name override) in
one OpenSSL context. L{UpstreamTLS.creator} gives one
L{UpstreamConnectionCreator} per upstream, which remembers that upstream's
last TLS session, and L{UpstreamTLS.endpoint} wraps a TCP endpoint so that
its connection attempt fires only once the handshake has completed and the
upstream's certificate has been verified.

Verification happens inside the handshake, in OpenSSL's verify callback:
the chain against the trust anchors, then the leaf's SubjectAltNames against
the expected name with C{service_identity} (DNS names, or IP addresses when
the upstream is addressed by IP and no name override is given). A failure
aborts the handshake, so the upstream gets no byte of application data, and
the connection fails with L{UpstreamVerificationError}. This mirrors
Twisted's C{optionsForClientTLS}, whose callback reports only "certificate
verify failed" for chain errors; ours keeps OpenSSL's reason ("certificate
has expired", "unable to get local issuer certificate", ...) for the log.
"""

from __future__ import annotations

import weakref
from typing import Any

from OpenSSL import SSL, crypto
from service_identity import CertificateError as NoNamesError
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam.tls.contexts import client_context
from balancebeam.tls.layer import DirectTLSFactory
from balancebeam.tls.pem import load_ca_file, load_pem_bundle

_X509_ERRORS = {
    2: "unable to get issuer certificate",
    4: "unable to decrypt certificate's signature",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    13: "format error in certificate's notBefore field",
    14: "format error in certificate's notAfter field",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "issuer certificate doesn't have a public key",
    26: "unsuitable certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
    66: "EE certificate key too weak",
}
"""
OpenSSL's texts for the X.509 verification errors a misconfigured upstream
usually meets (pyOpenSSL does not expose C{X509_verify_cert_error_string}).
"""


class UpstreamTLSError(ConnectError):
    """
    The TLS handshake with an upstream failed (refused, reset, timed out,
    no common protocol version or cipher, ...).

    A L{ConnectError}, so that the pool, passive health and the health
    checker treat it as a failed connect.

    @ivar upstream: the upstream, as C{host:port}.
    @ivar reason: what went wrong, for a log line.
    """

    MESSAGE = "TLS handshake with the upstream failed"

    def __init__(self, upstream: str, reason: str) -> None:
        super().__init__(string=f"{upstream}: {reason}")
        self.upstream = upstream
        self.reason = reason


class UpstreamVerificationError(UpstreamTLSError):
    """
    The upstream's certificate failed verification: its chain does not lead
    to a trusted authority, it has expired, or it does not name the
    upstream. The upstream received no application data.
    """

    MESSAGE = "TLS verification of the upstream failed"


def is_verification_failure(reason: Failure) -> bool:
    """
    Whether a failed connect failed because the upstream's certificate did
    not verify (as opposed to refused, timed out, or another TLS error).
    """
    return reason.check(UpstreamVerificationError) is not None


def parse_verify(text: str) -> bool:
    """
    Parse an C{--upstream-tls-verify} value: C{full} (the default) or C{none}.

    @return: whether upstreams are verified.
    @raise ValueError: on any other value.
    """
    value = text.strip().lower()
    if value in ("full", "required"):
        return True
    if value == "none":
        return False
    raise ValueError(f"--upstream-tls-verify must be 'full' or 'none', not {text!r}")


class _Handshake:
    """
    What one connection's verify callback saw.
    """

    __slots__ = ("verified",)

    def __init__(self) -> None:
        self.verified = False


@implementer(IOpenSSLClientConnectionCreator)
class UpstreamConnectionCreator:
    """
    Client connections to one upstream, for Twisted's TLS layer.

    Each connection sends the expected name as SNI (unless it is an IP
    address), verifies the upstream during the handshake, and offers the
    last session this upstream gave us, so that a new connection can skip
    the certificate exchange and the key agreement's signature.

    @ivar upstream: the upstream, as C{host:port}, for errors and logs.
    @ivar name: the name (or IP address) the certificate must carry.
    @ivar handshakes: handshakes completed.
    @ivar resumed_handshakes: of those, how many resumed a session (only
        known when verifying: a resumed handshake skips verification).
    @ivar verification_failures: handshakes refused by verification.
    @ivar last_failure: the reason of the last verification failure, until
        a handshake succeeds again.
    """

    log = Logger()

    def __init__(self, context: SSL.Context, upstream: str, name: str, verify: bool) -> None:
        self._context = context
        self._verify = verify
        self.upstream = upstream
        self.name = name
        self._is_ip = bool(isIPAddress(name) or isIPv6Address(name))
        self._sni = None if self._is_ip else name.encode("idna")
        self._session: SSL.Session | None = None
        self._handshakes: weakref.WeakKeyDictionary[SSL.Connection, _Handshake] = (
            weakref.WeakKeyDictionary()
        )
        self.handshakes = 0
        self.resumed_handshakes = 0
        self.verification_failures = 0
        self.last_failure: str | None = None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        A connection with SNI, verification and the remembered session set.
        """
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        record = _Handshake()
        self._handshakes[connection] = record
        if self._verify:
            connection.set_verify(SSL.VERIFY_PEER, self._verifier(record))
        if self._session is not None:
            try:
                connection.set_session(self._session)
            except (SSL.Error, ValueError):
                self._session = None
        return connection

    def _verifier(self, record: _Handshake) -> Any:
        def verify(
            connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
        ) -> bool:
            record.verified = True
            reason: str | None
            try:
                leaf = certificate.to_cryptography()
                if not ok:
                    text = _X509_ERRORS.get(error, f"X.509 verification error {error}")
                    reason = f"{text} (certificate {leaf.subject.rfc4514_string()!r})"
                elif depth == 0:
                    reason = self._check_name(leaf)
                else:
                    return True
                if reason is None:
                    return True
            except Exception:
                self.log.failure("verifying upstream {upstream} failed", upstream=self.upstream)
                reason = "internal error while verifying the certificate"
            self._refuse(connection, reason)
            return False

        return verify

    def _check_name(self, leaf: Any) -> str | None:
        try:
            if self._is_ip:
                verify_certificate_ip_address(leaf, self.name)
            else:
                verify_certificate_hostname(leaf, self.name)
        except (VerificationError, NoNamesError):
            from cryptography import x509

            try:
                names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                listed = [str(value) for value in names.value.get_values_for_type(x509.DNSName)]
                listed += [
                    str(value) for value in names.value.get_values_for_type(x509.IPAddress)
                ]
            except x509.ExtensionNotFound:
                listed = []
            return (
                f"the certificate names {', '.join(listed) or 'nothing (no SubjectAltName)'}, "
                f"not {self.name}"
            )
        return None

    def _refuse(self, connection: SSL.Connection, reason: str) -> None:
        self.verification_failures += 1
        if reason != self.last_failure:
            self.log.error(
                "TLS verification of upstream {upstream} failed: {reason}",
                upstream=self.upstream,
                reason=reason,
            )
        else:
            self.log.debug(
                "TLS verification of upstream {upstream} failed again: {reason}",
                upstream=self.upstream,
                reason=reason,
            )
        self.last_failure = reason
        error = UpstreamVerificationError(self.upstream, reason)
        tls = connection.get_app_data()
        if tls is not None:
            tls.failVerification(Failure(error))

    def handshake_completed(self, connection: SSL.Connection) -> None:
        """
        Count a completed handshake, and remember its session when it is
        already resumable (TLS 1.2; a TLS 1.3 session becomes resumable
        with the ticket that follows the handshake, see L{remember_session}).
        """
        self.handshakes += 1
        record = self._handshakes.pop(connection, None)
        if self._verify and record is not None and not record.verified:
            self.resumed_handshakes += 1
        if self.last_failure is not None:
            self.log.info("TLS upstream {upstream} verified again", upstream=self.upstream)
            self.last_failure = None
        if connection.get_protocol_version_name() == "TLSv1.2":
            self.remember_session(connection)

    def remember_session(self, connection: SSL.Connection) -> None:
        """
        Offer C{connection}'s session to the next connections.
        """
        session = connection.get_session()
        if session is not None:
            self._session = session


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    Sits between Twisted's TLS layer and the application protocol until the
    handshake completes, so that the application sees a connection only
    once the upstream has been verified.

    @ivar _state: one of:
        - C{"handshaking"}: TCP connected, TLS handshake in progress; the
          application protocol has no transport.
        - C{"open"}: handshake done; bytes and events pass through.
        - C{"closed"}: the connection ended before the handshake completed.
    """

    def __init__(
        self,
        application: IProtocol,
        creator: UpstreamConnectionCreator,
        clock: IReactorTime,
        timeout: float,
        result: Deferred[IProtocol],
    ) -> None:
        self._application = application
        self._creator = creator
        self._clock = clock
        self._timeout = timeout
        self._result = result
        self._state = "handshaking"
        self._timer: IDelayedCall | None = None
        self._timed_out = False
        self.cancelled = False

    def connectionMade(self) -> None:
        """
        Start the handshake deadline.
        """
        if self._timeout > 0:
            self._timer = self._clock.callLater(self._timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._timed_out = True
        self.abort()

    def abort(self) -> None:
        """
        Drop the connection at once (a cancelled or expired handshake).
        """
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # TLS transports have it

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def handshakeCompleted(self) -> None:
        """
        Hand the verified connection to the application protocol.
        """
        self._stop_timer()
        if self._state != "handshaking" or self._result.called:
            return
        tls = self.transport
        assert isinstance(tls, TLSMemoryBIOProtocol)
        self._creator.handshake_completed(tls.getHandle())
        self._state = "open"
        self._application.makeConnection(tls)
        if IHandshakeListener.providedBy(self._application):
            self._application.handshakeCompleted()
        self._result.callback(self._application)

    def dataReceived(self, data: bytes) -> None:
        """
        The first application bytes: a TLS 1.3 session ticket has been
        processed by now, so remember the session, then pass bytes straight
        to the application from here on.
        """
        tls = self.transport
        if isinstance(tls, TLSMemoryBIOProtocol):
            self._creator.remember_session(tls.getHandle())
        self.dataReceived = self._application.dataReceived  # type: ignore[method-assign]  # hot path: skip this layer
        self._application.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Pass the loss on once open; before that, fail the connection attempt.
        """
        self._stop_timer()
        if self._state == "open":
            self._state = "closed"
            self._application.connectionLost(reason)
            return
        self._state = "closed"
        if self._result.called:
            return
        upstream = self._creator.upstream
        if self.cancelled:
            self._result.errback(CancelledError())
        elif reason.check(UpstreamTLSError):
            self._result.errback(reason)
        elif self._timed_out:
            self._result.errback(
                UpstreamTLSError(upstream, f"handshake timed out after {self._timeout:g} s")
            )
        else:
            self._result.errback(UpstreamTLSError(upstream, _describe(reason)))


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, SSL.Error):
        queue = value.args[0] if value.args and isinstance(value.args[0], list) else []
        texts = [entry[2] for entry in queue if isinstance(entry, tuple) and len(entry) == 3]
        return "; ".join(texts) or "the TLS layer failed"
    if reason.check(ConnectionDone, ConnectionLost):
        return "the upstream closed the connection during the handshake"
    return f"{type(value).__name__}: {value}"


class _GateFactory(Factory):
    """
    Builds the one L{_HandshakeGate} of one connection attempt.
    """

    def __init__(self, application: IProtocolFactory, make_gate: Any) -> None:
        self._application = application
        self._make_gate = make_gate
        self.gate: _HandshakeGate | None = None

    def doStart(self) -> None:
        """Start the application factory too."""
        self._application.doStart()

    def doStop(self) -> None:
        """Stop the application factory too."""
        self._application.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """
        A gate in front of the application's protocol for C{addr}.

        @raise NoProtocol: when the application's factory builds none (the
            TCP endpoint then fails the connection attempt with it).
        """
        assert addr is not None, "stream endpoints always pass the peer's address"
        application = self._application.buildProtocol(addr)
        if application is None:
            raise NoProtocol()
        self.gate = self._make_gate(application)
        return self.gate


@implementer(IStreamClientEndpoint)
class UpstreamTLSEndpoint:
    """
    A client endpoint that connects over C{endpoint}, performs the TLS
    handshake with C{creator}, and fires only once it completed.

    The Deferred of L{connect} fails with L{UpstreamVerificationError} when
    the upstream's certificate does not verify, with L{UpstreamTLSError}
    for other handshake failures (including the deadline), and with the TCP
    endpoint's own error when the TCP connection fails. Cancelling it
    cancels the TCP attempt or aborts the handshake.
    """

    def __init__(
        self,
        clock: IReactorTime,
        creator: UpstreamConnectionCreator,
        endpoint: IStreamClientEndpoint,
        handshake_timeout: float,
    ) -> None:
        self._clock = clock
        self._creator = creator
        self._endpoint = endpoint
        self._timeout = handshake_timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect, handshake, verify, then connect C{protocolFactory}'s protocol.
        """
        gates = _GateFactory(
            protocolFactory,
            lambda application: _HandshakeGate(
                application, self._creator, self._clock, self._timeout, result
            ),
        )

        cancelled: list[bool] = []

        def cancel(_: Deferred[IProtocol]) -> None:
            cancelled.append(True)
            if gates.gate is None:
                # Deferred.cancel then fails the result with CancelledError.
                connecting.cancel()
            else:
                gates.gate.cancelled = True
                gates.gate.abort()

        result: Deferred[IProtocol] = Deferred(cancel)
        tls = DirectTLSFactory(self._creator, True, gates, clock=self._clock)
        connecting = self._endpoint.connect(tls)

        def failed(reason: Failure) -> None:
            if not result.called and not cancelled:
                result.errback(reason)

        connecting.addErrback(failed)
        return result


class UpstreamTLS:
    """
    What every TLS upstream shares: trust anchors, client certificate,
    verification switch and name override, in one OpenSSL context.

    Build it once at startup; ask it for one creator (or endpoint) per
    upstream.
    """

    log = Logger()

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        verify: bool = True,
        server_name: str | None = None,
        client_certificate_file: str | None = None,
    ) -> None:
        """
        @param ca_file: PEM file of the authorities to trust
            (C{--upstream-ca}), or C{None} for the system trust store.
        @param verify: C{False} for C{--upstream-tls-verify none}: no chain
            or name check at all (logged as a warning here).
        @param server_name: C{--upstream-tls-name}: the name sent as SNI and
            required in every TLS upstream's certificate, instead of each
            upstream's host (use it when upstreams are addressed by IP).
        @param client_certificate_file: PEM file with a certificate, its
            chain and its key to present (C{--upstream-client-cert}).

        @raise balancebeam.tls.pem.CertificateError: when a file cannot be
            used.
        """
        trust = load_ca_file(ca_file) if ca_file is not None else None
        client = (
            load_pem_bundle(client_certificate_file)
            if client_certificate_file is not None
            else None
        )
        self._context = client_context(trust, verify, client)
        self._verify = verify
        self._server_name = server_name
        self._creators: dict[tuple[str, int], UpstreamConnectionCreator] = {}
        if not verify:
            self.log.warn(
                "upstream TLS verification is off (--upstream-tls-verify none): any "
                "certificate is accepted, so upstream connections can be intercepted"
            )

    @property
    def creators(self) -> tuple[UpstreamConnectionCreator, ...]:
        """
        Every creator handed out so far (for metrics).
        """
        return tuple(self._creators.values())

    def creator(self, host: str, port: int) -> UpstreamConnectionCreator:
        """
        The connection creator of the upstream at C{host}:C{port}, the same
        object on every call so that its remembered session is shared by the
        pool and the health probes.
        """
        key = (host, port)
        creator = self._creators.get(key)
        if creator is None:
            upstream = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            creator = UpstreamConnectionCreator(
                self._context, upstream, self._server_name or host, self._verify
            )
            self._creators[key] = creator
        return creator

    def endpoint(
        self,
        clock: IReactorTime,
        host: str,
        port: int,
        tcp_endpoint: IStreamClientEndpoint,
        handshake_timeout: float,
    ) -> UpstreamTLSEndpoint:
        """
        C{tcp_endpoint} (to C{host}:C{port}) with a verified TLS handshake on
        top; see L{UpstreamTLSEndpoint}.
        """
        return UpstreamTLSEndpoint(
            clock, self.creator(host, port), tcp_endpoint, handshake_timeout
        )
