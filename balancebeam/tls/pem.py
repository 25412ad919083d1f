"""
Reading certificate material from PEM files, with errors that name the file.

A listener's certificate file holds, like HAProxy's C{crt}, the certificate
first, then its chain (intermediates, leaf to root), and one unencrypted
private key anywhere in the file. L{load_pem_bundle} parses such a file with
C{cryptography} and checks that the key belongs to the certificate; nothing
here touches OpenSSL contexts or the reactor.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timezone
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

PrivateKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
]

_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----\r?\n"
    rb".*?-----END \1-----",
    re.DOTALL,
)


class CertificateError(Exception):
    """
    A certificate, key or CA file could not be used.

    @ivar path: the file.
    @ivar reason: why, for a log line or a startup error.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class PemBundle:
    """
    A certificate, its chain and its private key, as read from one file.

    @ivar path: the file it came from.
    @ivar certificate: the leaf certificate (the first in the file).
    @ivar chain: the certificates after it, in file order.
    @ivar key: the private key matching C{certificate}.
    @ivar digest: SHA-256 of the file's bytes, to tell a changed file from a
        re-written identical one.
    """

    path: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    digest: str

    @property
    def dns_names(self) -> tuple[str, ...]:
        """
        The certificate's SubjectAltName DNS names, lower-cased (wildcards as
        written, such as C{*.example.com}).
        """
        return dns_names(self.certificate)

    @property
    def not_after(self) -> float:
        """
        The certificate's expiry as POSIX seconds.
        """
        return not_after(self.certificate)

    @property
    def subject(self) -> str:
        """
        The certificate's subject as an RFC 4514 string, such as C{CN=a.example}.
        """
        return self.certificate.subject.rfc4514_string()


def dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The SubjectAltName DNS names of C{certificate}, lower-cased, in order.

    @return: an empty tuple when the certificate has no SubjectAltName.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in extension.value.get_values_for_type(x509.DNSName))


def not_after(certificate: x509.Certificate) -> float:
    """
    The end of C{certificate}'s validity as POSIX seconds.
    """
    when = getattr(certificate, "not_valid_after_utc", None)
    if when is None:  # cryptography < 42
        when = certificate.not_valid_after.replace(tzinfo=timezone.utc)
    return float(when.timestamp())


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as pem:
            return pem.read()
    except OSError as error:
        raise CertificateError(path, f"cannot read: {error.strerror or error}") from None


def _certificates(path: str, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(path, "no PEM certificate in the file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CertificateError(path, f"bad PEM certificate: {error}") from None


def _public_der(key: object) -> bytes:
    public_bytes = key.public_bytes  # type: ignore[attr-defined]  # every public key type has it
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def load_pem_bundle(path: str) -> PemBundle:
    """
    Read a certificate, its chain and its private key from one PEM file.

    @raise CertificateError: when the file cannot be read, holds no
        certificate, holds a malformed one, holds no private key or more
        than one, holds an encrypted key, or a key that does not belong to
        the first certificate.
    """
    data = _read(path)
    certificates = _certificates(path, data)
    blocks = [match.group(0) for match in _KEY_BLOCK.finditer(data)]
    if not blocks:
        raise CertificateError(path, "no PEM private key in the file")
    if len(blocks) > 1:
        raise CertificateError(path, f"{len(blocks)} private keys in the file; put exactly one")
    if b"ENCRYPTED" in blocks[0].split(b"\n", 1)[0]:
        raise CertificateError(path, "the private key is encrypted; store it unencrypted")
    try:
        key = serialization.load_pem_private_key(blocks[0], password=None)
    except (ValueError, TypeError) as error:
        raise CertificateError(path, f"bad PEM private key: {error}") from None
    except Exception as error:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise CertificateError(path, f"unusable private key: {error}") from None
    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            dsa.DSAPrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise CertificateError(path, f"unsupported private key type {type(key).__name__}")
    leaf = certificates[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise CertificateError(
            path, "the private key does not match the certificate (the first in the file)"
        )
    return PemBundle(
        path=path,
        certificate=leaf,
        chain=tuple(certificates[1:]),
        key=key,
        digest=hashlib.sha256(data).hexdigest(),
    )


def load_ca_file(path: str) -> tuple[x509.Certificate, ...]:
    """
    Read the certificate authorities of a C{--upstream-ca} file.

    @raise CertificateError: when the file cannot be read or holds no
        well-formed certificate.
    """
    return tuple(_certificates(path, _read(path)))
