"""
TLS to upstreams: verified connections, reused sessions, and failures that
say what went wrong.

L{UpstreamTLS} holds what every TLS upstream shares (the trust anchors, an
optional client certificate, the verification switch and name override) in
one OpenSSL context. L{UpstreamTLS.creator} gives one
L{UpstreamConnectionCreator} per upstream, which remembers that upstream's
last TLS session and verifies its certificate inside the handshake
(L{balancebeam.tls.upstream_verify}), and L{UpstreamTLS.endpoint} wraps a TCP
endpoint so that its connection attempt fires only once the handshake has
completed and the upstream's certificate has been verified
(L{balancebeam.tls.upstream_endpoint}); a failed verification fails the
connection with L{UpstreamVerificationError}.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from balancebeam.tls.contexts import client_context
from balancebeam.tls.pem import load_ca_file, load_pem_bundle
from balancebeam.tls.upstream_endpoint import UpstreamTLSEndpoint
from balancebeam.tls.upstream_verify import (
    UpstreamConnectionCreator,
    UpstreamTLSError,
    UpstreamVerificationError,
    is_verification_failure,
    parse_verify,
)

__all__ = [
    "UpstreamConnectionCreator",
    "UpstreamTLS",
    "UpstreamTLSEndpoint",
    "UpstreamTLSError",
    "UpstreamVerificationError",
    "is_verification_failure",
    "parse_verify",
]


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
