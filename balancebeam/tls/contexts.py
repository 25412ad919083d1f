"""
The OpenSSL contexts balancebeam speaks TLS with, built in one place so that
listeners and upstream connections share one reviewed profile.

Listeners follow Mozilla's "intermediate" server-side TLS profile
(guidelines 5.7): TLS 1.2 and 1.3 only, its TLS 1.2 cipher list (TLS 1.3
suites are OpenSSL's defaults, which are the profile's three), the client's
cipher preference, no compression, no session tickets (sessions are resumed
from the server-side cache instead, so no ticket key outlives its process
unrotated), and ALPN that selects C{http/1.1} and nothing else.

The DHE suites of the list need finite-field parameters, which are not
loaded: every client that the profile supports offers ECDHE first, so they
are never chosen. Document rather than ship a parameters file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from OpenSSL import SSL, crypto

from balancebeam.tls.pem import PemBundle, PrivateKey

MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
"""
The TLS 1.2 cipher list of Mozilla's intermediate profile (guidelines 5.7).
"""

HTTP11 = b"http/1.1"
"""
The only application protocol balancebeam negotiates with ALPN. Never C{h2}:
balancebeam does not speak HTTP/2.
"""

SESSION_ID_CONTEXT = b"balancebeam"
"""
The session ID context of every server context, the same on all of them so
that a session survives the switch from the handshake's first context to the
certificate's.
"""

_SERVER_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION


def _select_http11(connection: SSL.Connection, offered: list[bytes]) -> object:
    """
    The server's ALPN choice: C{http/1.1} when offered, otherwise no
    protocol at all (the handshake goes on without ALPN).
    """
    if HTTP11 in offered:
        return HTTP11
    return SSL.NO_OVERLAPPING_PROTOCOLS


def server_context(
    bundle: PemBundle | None = None,
    servername_callback: Callable[[SSL.Connection], None] | None = None,
) -> SSL.Context:
    """
    A listener context in the intermediate profile.

    Every server connection starts on a context without a certificate whose
    C{servername_callback} switches it to the chosen certificate's context.
    OpenSSL keeps the protocol versions, options and cipher list of the
    first context and takes the certificate, its chain and the ALPN
    callback from the second, so both are built here alike.

    @param bundle: the certificate, chain and key to serve, or C{None} for
        the first context.
    @param servername_callback: called with the connection once the
        ClientHello's server name (or its absence) is known.

    @raise SSL.Error: when OpenSSL rejects the key for the certificate.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_SERVER_OPTIONS)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(MOZILLA_INTERMEDIATE_CIPHERS.encode("ascii"))
    context.set_session_id(SESSION_ID_CONTEXT)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_alpn_select_callback(_select_http11)  # type: ignore[arg-type]  # the sentinel is allowed
    if bundle is not None:
        _use_bundle(context, bundle.certificate, bundle.chain, bundle.key)
    if servername_callback is not None:
        context.set_tlsext_servername_callback(servername_callback)
    return context


def client_context(
    trust: Sequence[x509.Certificate] | None,
    verify: bool,
    client_certificate: PemBundle | None = None,
) -> SSL.Context:
    """
    The context of every connection to TLS upstreams: TLS 1.2 minimum,
    OpenSSL's default cipher list, and session tickets accepted.

    It sends no ALPN extension: a server then speaks HTTP/1.1, and some
    servers (Twisted's among them, with OpenSSL 3+) fail the handshake with
    an internal error when offered a protocol list they share nothing with.

    Peer verification is set per connection (see
    L{balancebeam.tls.upstream}); this only loads the trust anchors.

    @param trust: the certificate authorities to trust, or C{None} for the
        system trust store.
    @param verify: whether connections verify the upstream at all.
    @param client_certificate: a certificate to present (mutual TLS).
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if verify:
        if trust is None:
            context.set_default_verify_paths()
        else:
            store = context.get_cert_store()
            assert store is not None
            for authority in trust:
                store.add_cert(crypto.X509.from_cryptography(authority))
        context.set_verify(SSL.VERIFY_PEER)
    else:
        context.set_verify(SSL.VERIFY_NONE)
    if client_certificate is not None:
        _use_bundle(
            context,
            client_certificate.certificate,
            client_certificate.chain,
            client_certificate.key,
        )
    return context


def _use_bundle(
    context: SSL.Context,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    key: PrivateKey,
) -> None:
    context.use_certificate(certificate)
    for intermediate in chain:
        context.add_extra_chain_cert(intermediate)
    context.use_privatekey(key)
    context.check_privatekey()
