"""
A faster steady state for Twisted's TLS layer: once the handshake is done,
L{FastTLSProtocol} moves bytes between the socket, OpenSSL and the
application with direct calls into OpenSSL, where L{TLSMemoryBIOProtocol}
goes through pyOpenSSL's Python wrappers (a C{recv} that ends every read by
raising C{WantReadError}, a C{bio_read} that raises when there is nothing to
send) and several layers of Python calls. On balancebeam's keep-alive HTTPS
path this halves the TLS layer's own CPU per request (C{bench/tls_layer.py}).

Everything that is not the steady state (the handshake, writes buffered
during it, errors, the close) is Twisted's own code: the fast methods hand
over to it, and every error OpenSSL reports goes through pyOpenSSL's own
C{_raise_ssl_error} into the same handlers as Twisted's, so the exceptions,
the failure reasons and the close sequence are Twisted's.

This relies on internals, as L{balancebeam.twisted_internals} does:
Twisted's C{TLSMemoryBIOProtocol} attributes (C{_tlsConnection},
C{_handshakeDone}, C{_lostTLSConnection}, C{_aborted}, C{_appSendBuffer})
and methods (C{_bufferedWrite}, C{_shutdownTLS}, C{_tlsShutdownFinished}),
and pyOpenSSL's C{Connection} (C{_ssl}, C{_into_ssl} and C{_from_ssl}, the
memory BIOs of a connection made without a socket, and
C{_raise_ssl_error}). It is used only on the versions of both it was checked
against (L{TWISTED_CHECKED_VERSIONS}, L{PYOPENSSL_CHECKED_VERSIONS}: the
released wheels, compared with docstrings and annotations stripped), and not
at all with C{BALANCEBEAM_TWISTED_INTERNALS=off}; anywhere else
L{DirectTLSProtocol} is Twisted's protocol, unchanged.

Why skipping pyOpenSSL's checks is safe here: they re-raise exceptions that
Python callbacks (certificate verification, ALPN selection, OCSP) stored
while OpenSSL ran them, and after the handshake OpenSSL runs none of them,
because balancebeam's contexts refuse renegotiation
(C{OP_NO_RENEGOTIATION}, L{balancebeam.tls.contexts}).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import OpenSSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from OpenSSL.SSL import Error as _SSLError
from OpenSSL.SSL import ZeroReturnError as _ZeroReturnError
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from balancebeam.relay.transport import StreamTransport
from balancebeam.twisted_internals import (
    SEND_NOW_CHECKED_VERSIONS,
    TWISTED_VERSION,
    fallback_reason,
    send_now,
)

log = Logger()

TWISTED_CHECKED_VERSIONS: tuple[str, ...] = SEND_NOW_CHECKED_VERSIONS
"""
The Twisted releases (the same as L{send_now}'s) whose
C{TLSMemoryBIOProtocol} was checked: the methods named above,
C{dataReceived}, C{_flushReceiveBIO}, C{_flushSendBIO}, C{write}, C{_write}
and C{connectionLost} are the same code in all of them.
"""

PYOPENSSL_CHECKED_VERSIONS: tuple[str, ...] = (
    "24.3.0",
    "25.0.0",
    "25.1.0",
    "25.2.0",
    "25.3.0",
    "26.0.0",
    "26.1.0",
    "26.2.0",
    "26.3.0",
    "26.4.0",
)
"""
The pyOpenSSL releases whose C{Connection} was checked (24.3 is the oldest
C{setup.cfg} allows): C{recv}, C{send}, C{bio_read}, C{bio_write},
C{_raise_ssl_error} and C{_handle_bio_errors} are the same code in all of
them, and a connection made without a socket keeps its memory BIOs in
C{_into_ssl} and C{_from_ssl}.
"""

PYOPENSSL_VERSION: str = OpenSSL.__version__

_RECORD = 16384
"""The most cleartext one TLS record carries: writes are encrypted in
pieces of this size, as Twisted's C{_write} does."""

_READ_SIZE = 32768
_OUT_SIZE = 65536

_read_buffer: Any = _ffi.new("char[]", _READ_SIZE)
_out_buffer: Any = _ffi.new("char[]", _OUT_SIZE)
"""
Shared by every connection: TLS connections run on the reactor thread only,
and each read copies its bytes out before anything else can run, so one
buffer each way serves the whole process (and a thousand connections do not
hold 96 KiB each).
"""

_WANT_READ: int = _lib.SSL_ERROR_WANT_READ


def choose_fast(
    twisted_version: str, pyopenssl_version: str, environ: Mapping[str, str]
) -> str | None:
    """
    Decide whether the fast path may be used.

    @return: C{None} when it may, else why not, as a phrase for a log line.
    """
    return fallback_reason(TWISTED_CHECKED_VERSIONS, twisted_version, environ) or fallback_reason(
        PYOPENSSL_CHECKED_VERSIONS, pyopenssl_version, environ, "pyOpenSSL"
    )


FAST_TLS_FALLBACK: str | None = choose_fast(TWISTED_VERSION, PYOPENSSL_VERSION, os.environ)
"""
Why this process uses Twisted's TLS protocol unchanged, or C{None} when it
uses L{FastTLSProtocol}.
"""


class SendNowBelow:
    """
    The transport below a TLS connection, as the TLS layer sees it: the
    same transport, except that its writes go through L{send_now}.

    @ivar below: the real transport (TCP).
    """

    def __init__(self, below: ITransport) -> None:
        self.below = below
        directlyProvides(self, providedBy(below))

    def write(self, data: bytes) -> None:
        """
        Send encrypted bytes, at once when the socket takes them.
        """
        send_now(self.stream, data)

    @property
    def stream(self) -> StreamTransport:
        """The real transport, typed for L{send_now}."""
        below: Any = self.below  # TCP transports have every StreamTransport operation
        return below

    def __getattr__(self, name: str) -> Any:
        """
        Everything else is the real transport's.
        """
        return getattr(self.below, name)


PLAIN_HTTP_REASON = "a plain HTTP request was sent to an HTTPS port"
"""Why a client that speaks plain HTTP to an HTTPS listener gets a 400 (as nginx's)."""

_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""First bytes of an HTTP request line; a TLS record starts with 0x16 (0x80 for SSLv2)."""


class TwistedTLSProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS protocol, with its encrypted bytes sent by L{send_now},
    answering a plain HTTP request with a plain C{400} (from its factory's
    C{plain_http_answer}, on a server).
    """

    _first_read = True

    def makeConnection(self, transport: ITransport) -> None:
        """
        Connect on top of C{transport}, writing to it through L{send_now}.
        """
        super().makeConnection(SendNowBelow(transport))

    def dataReceived(self, data: bytes) -> None:
        """
        On the first read of a server connection, a request line instead
        of a TLS record gets a plain 400 (logged like any bad request) and
        the connection closes; everything else is Twisted's.
        """
        if self._first_read and data:
            self._first_read = False
            factory = self.factory
            if not getattr(factory, "answers_plain_http", False) or data[0] not in _METHOD_START:
                super().dataReceived(data)
                return
            below = self.transport
            assert below is not None
            peer = below.getPeer()
            log.info(
                "bad request from {client}: {status} {reason}",
                client=getattr(peer, "host", "-"),
                status=400,
                reason=PLAIN_HTTP_REASON,
            )
            below.write(factory.plain_http_answer())  # type: ignore[attr-defined]  # DirectTLSFactory, as answers_plain_http says
            below.loseConnection()
            return
        super().dataReceived(data)


class FastTLSProtocol(TwistedTLSProtocol):
    """
    L{TwistedTLSProtocol} with a direct steady state (see the module).

    @ivar _fast: after the handshake: the pyOpenSSL connection (kept so that
        the pointers next to it stay valid), its C{SSL *}, its incoming and
        outgoing memory BIOs, and the transport below; C{None} before the
        handshake completed and after the connection was lost.
    """

    _fast: tuple[Any, Any, Any, Any, StreamTransport] | None = None

    def _start_fast(self) -> None:
        connection = self._tlsConnection
        below = self.transport
        assert isinstance(below, SendNowBelow)
        self._fast = (
            connection,
            connection._ssl,
            connection._into_ssl,
            connection._from_ssl,
            below.stream,
        )

    def dataReceived(self, data: bytes) -> None:
        """
        Decrypt C{data} and hand the cleartext to the application, then
        send whatever OpenSSL has to send (an alert, a session ticket).
        """
        fast = self._fast
        if fast is None or self._appSendBuffer or self._lostTLSConnection:
            super().dataReceived(data)
            if fast is None and self._handshakeDone and not self._lostTLSConnection:
                self._start_fast()
            return
        connection, ssl, incoming, outgoing, below = fast
        written = _lib.BIO_write(incoming, data, len(data))
        if written <= 0:
            connection._handle_bio_errors(incoming, written)
        buffer = _read_buffer
        while not self._lostTLSConnection:
            count = _lib.SSL_read(ssl, buffer, _READ_SIZE)
            if count > 0:
                if not self._aborted:
                    self.wrappedProtocol.dataReceived(_ffi.buffer(buffer, count)[:])
                continue
            if _lib.SSL_get_error(ssl, count) == _WANT_READ:
                break
            if not self._failed(connection, ssl, count, reading=True):
                break
        self._send_out(outgoing, below)

    def write(self, data: bytes) -> None:
        """
        Encrypt C{data} and send it at once.
        """
        fast = self._fast
        if fast is None or self.disconnecting or self._lostTLSConnection or self._appSendBuffer:
            super().write(data)
            return
        connection, ssl, _, outgoing, below = fast
        if type(data) is not bytes:
            data = bytes(data)
        total = len(data)
        sent = 0
        while sent < total:
            piece = data if total <= _RECORD else data[sent : sent + _RECORD]
            count = _lib.SSL_write(ssl, piece, len(piece))
            if count > 0:
                sent += count
                continue
            if _lib.SSL_get_error(ssl, count) == _WANT_READ:
                self._bufferedWrite(data[sent:])
                break
            self._failed(connection, ssl, count, reading=False)
            return
        self._send_out(outgoing, below)

    def _failed(self, connection: Any, ssl: Any, count: int, *, reading: bool) -> bool:
        """
        Handle an OpenSSL error as Twisted's C{_flushReceiveBIO} (reading)
        or C{_write} does: pyOpenSSL turns it into its exception.

        @return: whether the caller's loop may go on.
        """
        try:
            connection._raise_ssl_error(ssl, count)
        except _ZeroReturnError:
            if not reading:
                self._tlsShutdownFinished(Failure())
                return False
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        except _SSLError:
            self._tlsShutdownFinished(Failure())
        else:
            return False
        return True

    def _send_out(self, outgoing: Any, below: StreamTransport) -> None:
        buffer = _out_buffer
        count = _lib.BIO_read(outgoing, buffer, _OUT_SIZE)
        if count <= 0:
            return
        data = _ffi.buffer(buffer, count)[:]
        if count == _OUT_SIZE:
            pieces = [data]
            while (count := _lib.BIO_read(outgoing, buffer, _OUT_SIZE)) > 0:
                pieces.append(_ffi.buffer(buffer, count)[:])
            data = b"".join(pieces)
        send_now(below, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Leave the fast path (and the reference cycle it would keep through
        the pyOpenSSL connection), then close as Twisted does.
        """
        self._fast = None
        super().connectionLost(reason)


DirectTLSProtocol: type[TwistedTLSProtocol] = (
    FastTLSProtocol if FAST_TLS_FALLBACK is None else TwistedTLSProtocol
)
"""
The TLS protocol of every balancebeam TLS connection: L{FastTLSProtocol} on
checked versions, L{TwistedTLSProtocol} otherwise.
"""

if FAST_TLS_FALLBACK is not None:
    log.info("the TLS fast path is off: {reason}", reason=FAST_TLS_FALLBACK)
