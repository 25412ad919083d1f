"""
TLS on both sides (issue 12).

Listeners: L{CertificateStore} loads PEM files (certificate, chain and key
in one file, or every C{*.pem} of a directory), chooses a certificate per
handshake by SNI, and reloads on demand, on C{SIGHUP}
(L{reload_on_sighup}) and when a file's modification time changes.
L{tls_server_endpoint} puts it in front of a server endpoint.

Upstreams: L{UpstreamTLS} builds verified connections to TLS upstreams;
L{UpstreamTLSEndpoint} fires only after a verified handshake and fails with
L{UpstreamVerificationError} otherwise.

See C{doc/tls.md}.
"""

from balancebeam.tls.contexts import HTTP11, MOZILLA_INTERMEDIATE_CIPHERS
from balancebeam.tls.pem import CertificateError, PemBundle, load_ca_file, load_pem_bundle
from balancebeam.tls.store import (
    EXPIRY_WARNING,
    POLL_INTERVAL,
    CertificateStore,
    ReloadResult,
    ServerCertificate,
    reload_on_sighup,
    tls_server_endpoint,
)
from balancebeam.tls.upstream import (
    UpstreamConnectionCreator,
    UpstreamTLS,
    UpstreamTLSEndpoint,
    UpstreamTLSError,
    UpstreamVerificationError,
    is_verification_failure,
    parse_verify,
)

__all__ = [
    "EXPIRY_WARNING",
    "HTTP11",
    "MOZILLA_INTERMEDIATE_CIPHERS",
    "POLL_INTERVAL",
    "CertificateError",
    "CertificateStore",
    "PemBundle",
    "ReloadResult",
    "ServerCertificate",
    "UpstreamConnectionCreator",
    "UpstreamTLS",
    "UpstreamTLSEndpoint",
    "UpstreamTLSError",
    "UpstreamVerificationError",
    "is_verification_failure",
    "load_ca_file",
    "load_pem_bundle",
    "parse_verify",
    "reload_on_sighup",
    "tls_server_endpoint",
]
