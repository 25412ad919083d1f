"""
Verifying an upstream's certificate inside the TLS handshake, and the errors
a failed handshake is reported with.

L{UpstreamConnectionCreator} builds each upstream's OpenSSL connection: SNI,
the remembered session, and OpenSSL's verify callback, which checks the chain
against the trust anchors, then the leaf's SubjectAltNames against the
expected name with C{service_identity} (DNS names, or IP addresses when the
upstream is addressed by IP and no name override is given). A failure aborts
the handshake, so the upstream gets no byte of application data. This mirrors
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
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

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

    log = Logger(namespace="balancebeam.tls.upstream")

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
                listed += [str(value) for value in names.value.get_values_for_type(x509.IPAddress)]
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
