"""
The listeners' certificate store: certificates loaded from PEM files, chosen
per handshake by SNI, reloaded without a restart.

L{CertificateStore} is the server side of a TLS wrapper (an
L{IOpenSSLServerConnectionCreator}): every connection starts on one
long-lived context whose server-name callback looks the name up in the
store's current index and switches the connection to that certificate's
context. A reload builds a new index and swaps it in one assignment, so
handshakes that start afterwards see the new certificates while connections
already open keep the context they were switched to.

As a service, the store polls the files' modification times on the injected
clock (every 30 s by default) and reloads when one changed, and it warns
about certificates close to their expiry.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IReactorFromThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from balancebeam.tls.contexts import server_context
from balancebeam.tls.layer import TLSServerEndpoint
from balancebeam.tls.pem import CertificateError, PemBundle, load_pem_bundle

POLL_INTERVAL = 30.0
"""
Seconds between two checks of the certificate files' modification times.
"""

EXPIRY_WARNING = 14 * 86400.0
"""
A certificate that expires within this many seconds is warned about.
"""

EXPIRY_REWARN = 86400.0
"""
While a certificate stays close to its expiry, the warning is repeated this
often (seconds).
"""

_Signature = tuple[int, int, int]


@dataclass(frozen=True)
class ServerCertificate:
    """
    One loaded certificate, as served to clients.

    @ivar path: the PEM file it was loaded from.
    @ivar names: its SubjectAltName DNS names, lower-cased.
    @ivar subject: its subject, as an RFC 4514 string.
    @ivar not_after: its expiry, in POSIX seconds.
    @ivar digest: SHA-256 of the file it was loaded from.
    @ivar context: the OpenSSL context that serves it.
    """

    path: str
    names: tuple[str, ...]
    subject: str
    not_after: float
    digest: str
    context: SSL.Context = field(compare=False, repr=False)


@dataclass(frozen=True)
class ReloadResult:
    """
    What one L{CertificateStore.reload} changed.

    @ivar loaded: files whose new or changed content is now served.
    @ivar removed: files that left a certificate directory and are no longer served.
    @ivar failed: C{(path, reason)} for every file or directory that could
        not be read; what was served from it before is still served.
    """

    loaded: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


class _Index:
    """
    An immutable lookup from server names to certificates.

    @ivar certificates: every certificate, in configuration order.
    @ivar default: the first certificate, served without SNI or without a match.
    """

    __slots__ = ("certificates", "default", "_exact", "_wildcard")

    def __init__(self, certificates: Sequence[ServerCertificate]) -> None:
        self.certificates = tuple(certificates)
        self.default = self.certificates[0]
        self._exact: dict[str, ServerCertificate] = {}
        self._wildcard: dict[str, ServerCertificate] = {}
        for certificate in self.certificates:
            for name in certificate.names:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], certificate)
                elif "*" not in name:
                    self._exact.setdefault(name, certificate)

    def choose(self, server_name: bytes | None) -> ServerCertificate:
        """
        The certificate for C{server_name}: an exact SubjectAltName match
        first, then a wildcard one (C{*.example.com} matches exactly one
        label more than C{example.com}), else the default.
        """
        if not server_name:
            return self.default
        try:
            name = server_name.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            return self.default
        found = self._exact.get(name)
        if found is None:
            _, dot, parent = name.partition(".")
            if dot and parent:
                found = self._wildcard.get(parent)
        return self.default if found is None else found


def _signature(path: str) -> _Signature | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore(Service):
    """
    The certificates of every TLS listener, chosen by SNI and reloadable.

    The first load happens in the constructor, so that a configuration
    error stops the program before it listens. Later loads (L{reload}, the
    poll, SIGHUP) never stop it: a file that fails keeps serving what it
    served before.

    Counters and expiry times are public for metrics.

    @ivar reloads: reload passes run (explicit, by signal or by the poll).
    @ivar reload_failures: files or directories that failed to load in a
        reload pass (each counted once per pass).
    @ivar certificates_loaded: certificates loaded, at startup or as new or
        changed files.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        files: Sequence[str] = (),
        directories: Sequence[str] = (),
        *,
        poll_interval: float = POLL_INTERVAL,
        expiry_warning: float = EXPIRY_WARNING,
    ) -> None:
        """
        Load every certificate.

        @param clock: schedules the poll and tells the time for expiry warnings.
        @param files: PEM files (certificate, chain and key), in order; the
            first certificate loaded is the default one.
        @param directories: directories whose C{*.pem} files are loaded, in
            name order, after C{files}.
        @param poll_interval: seconds between modification-time checks, or
            0 for none.
        @param expiry_warning: warn about certificates expiring within this
            many seconds.

        @raise CertificateError: when a file or directory cannot be loaded,
            or when there is no certificate at all.
        """
        super().__init__()
        self._clock = clock
        self._files = tuple(files)
        self._directories = tuple(directories)
        self._poll_interval = poll_interval
        self._expiry_warning = expiry_warning
        self._warned: dict[str, float] = {}
        self._signatures: dict[str, _Signature | None] = {}
        self._listing: tuple[str, ...] = ()
        self._loop: LoopingCall | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.certificates_loaded = 0
        self._dispatch = server_context(servername_callback=self._switch_context)
        paths, failures = self._list_paths()
        if failures:
            raise CertificateError(*failures[0])
        if not paths:
            raise CertificateError(
                ", ".join(self._directories) or "(none)", "no certificate (*.pem) to load"
            )
        loaded = []
        for path in paths:
            signature = _signature(path)
            loaded.append(self._load(path))
            self._signatures[path] = signature
        self._listing = paths
        self._index = _Index(loaded)

    # Choosing, per handshake

    @property
    def certificates(self) -> tuple[ServerCertificate, ...]:
        """
        Every certificate served now, the default one first.
        """
        return self._index.certificates

    def choose(self, server_name: bytes | None) -> ServerCertificate:
        """
        The certificate a handshake that starts now gets for C{server_name}.
        """
        return self._index.choose(server_name)

    def expiry_times(self) -> dict[str, float]:
        """
        The expiry (POSIX seconds) of every certificate served, by file.
        """
        return {certificate.path: certificate.not_after for certificate in self.certificates}

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        A server connection that picks its certificate once the client's
        server name is known.
        """
        return SSL.Connection(self._dispatch, None)

    def _switch_context(self, connection: SSL.Connection) -> None:
        try:
            chosen = self._index.choose(connection.get_servername())
            connection.set_context(chosen.context)
        except Exception:
            # Leaving the certificate-less context fails this handshake only.
            self.log.failure("choosing a TLS certificate failed")

    # Loading

    def _list_paths(self) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        """
        The files to load now: C{files}, then each directory's C{*.pem}
        files; a directory that cannot be listed keeps the files it had.
        """
        paths: list[str] = list(self._files)
        failures: list[tuple[str, str]] = []
        for directory in self._directories:
            try:
                names = sorted(os.listdir(directory))
            except OSError as error:
                failures.append((directory, f"cannot list: {error.strerror or error}"))
                prefix = os.path.join(directory, "")
                paths.extend(p for p in self._listing if p.startswith(prefix))
                continue
            for name in names:
                path = os.path.join(directory, name)
                if name.endswith(".pem") and os.path.isfile(path):
                    paths.append(path)
        return tuple(dict.fromkeys(paths)), failures

    def _load(self, path: str) -> ServerCertificate:
        return self._serve(load_pem_bundle(path))

    def _serve(self, bundle: PemBundle) -> ServerCertificate:
        try:
            context = server_context(bundle)
        except SSL.Error as error:
            raise CertificateError(bundle.path, f"OpenSSL refused it: {error}") from None
        certificate = ServerCertificate(
            path=bundle.path,
            names=bundle.dns_names,
            subject=bundle.subject,
            not_after=bundle.not_after,
            digest=bundle.digest,
            context=context,
        )
        self.certificates_loaded += 1
        if not certificate.names:
            self.log.warn(
                "TLS certificate {path} has no DNS SubjectAltName: it is served only as "
                "the default certificate",
                path=bundle.path,
            )
        self.log.info(
            "TLS certificate {path} for {names} ({subject}) expires {expires}",
            path=bundle.path,
            names=", ".join(certificate.names) or "(no names)",
            subject=certificate.subject,
            expires=_iso(certificate.not_after),
        )
        return certificate

    def reload(self) -> ReloadResult:
        """
        Re-read every certificate file (and re-list every directory).

        A file whose content changed is served to handshakes that start
        from now on; connections already open keep theirs. A file that
        fails (unreadable, bad PEM, a key that does not match) keeps what
        it served before, is logged as an error naming it, and counts in
        L{reload_failures}. If nothing at all could be loaded, the store
        keeps every certificate it had.
        """
        self.reloads += 1
        old = {certificate.path: certificate for certificate in self.certificates}
        paths, failed = self._list_paths()
        loaded: list[str] = []
        served: list[ServerCertificate] = []
        signatures: dict[str, _Signature | None] = {}
        for path in paths:
            signatures[path] = _signature(path)
            previous = old.get(path)
            try:
                bundle = load_pem_bundle(path)
                if previous is not None and bundle.digest == previous.digest:
                    served.append(previous)
                    continue
                certificate = self._serve(bundle)
            except CertificateError as error:
                failed.append((error.path, error.reason))
                if previous is not None:
                    served.append(previous)
                continue
            served.append(certificate)
            loaded.append(path)
        for path, reason in failed:
            self.reload_failures += 1
            self.log.error(
                "TLS certificate {path} failed to load: {reason}; {outcome}",
                path=path,
                reason=reason,
                outcome="it is not served"
                if path not in old and path not in self._directories
                else "what it served before is still served",
            )
        if not served:
            self.reload_failures += 1
            self.log.error("no TLS certificate could be loaded; keeping the current ones")
            return ReloadResult(failed=tuple(failed))
        removed = tuple(path for path in old if path not in paths)
        for path in removed:
            self.log.info("TLS certificate {path} is gone and no longer served", path=path)
        self._signatures = signatures
        self._listing = paths
        self._index = _Index(served)
        self._check_expiry()
        return ReloadResult(loaded=tuple(loaded), removed=removed, failed=tuple(failed))

    # Polling and expiry

    def changed(self) -> bool:
        """
        Whether a file's modification time, size or inode, or a directory's
        list of C{*.pem} files, differs from the last load.
        """
        paths, _ = self._list_paths()
        if paths != self._listing:
            return True
        return any(_signature(path) != self._signatures.get(path) for path in paths)

    def poll(self) -> None:
        """
        Reload if anything changed on disk, and repeat due expiry warnings.
        """
        try:
            if self.changed():
                self.reload()
            else:
                self._check_expiry()
        except Exception:
            self.log.failure("checking the TLS certificate files failed")

    def _check_expiry(self) -> None:
        now = self._clock.seconds()
        for certificate in self.certificates:
            remaining = certificate.not_after - now
            if remaining >= self._expiry_warning:
                continue
            last = self._warned.get(certificate.digest)
            if last is not None and now - last < EXPIRY_REWARN:
                continue
            self._warned[certificate.digest] = now
            if remaining <= 0:
                self.log.error(
                    "TLS certificate {path} ({subject}) expired on {expires}",
                    path=certificate.path,
                    subject=certificate.subject,
                    expires=_iso(certificate.not_after),
                )
            else:
                self.log.warn(
                    "TLS certificate {path} ({subject}) expires in {days:.1f} days, on {expires}",
                    path=certificate.path,
                    subject=certificate.subject,
                    days=remaining / 86400,
                    expires=_iso(certificate.not_after),
                )

    def startService(self) -> None:
        """
        Warn about certificates close to expiry and start the poll.
        """
        super().startService()
        self._check_expiry()
        if self._poll_interval > 0:
            self._loop = LoopingCall(self.poll)
            self._loop.clock = self._clock
            self._loop.start(self._poll_interval, now=False).addErrback(
                lambda failure: self.log.failure("TLS certificate poll stopped", failure)
            )

    def stopService(self) -> Deferred[None]:
        """
        Stop the poll.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return succeed(None)


def tls_server_endpoint(
    reactor: IReactorTime, store: CertificateStore, endpoint: IStreamServerEndpoint
) -> IStreamServerEndpoint:
    """
    C{endpoint} with TLS from C{store} layered on it (Twisted's TLS layer,
    without its small-write aggregation: see L{balancebeam.tls.layer}).
    """
    return TLSServerEndpoint(store, endpoint, reactor)


def reload_on_sighup(reactor: IReactorFromThreads, store: CertificateStore) -> Callable[[], None]:
    """
    Reload C{store} when the process receives C{SIGHUP}.

    The signal handler only asks the reactor to call L{CertificateStore.reload}
    on its next turn, so a reload never runs in the middle of other work.

    @return: a function that puts the previous C{SIGHUP} handler back.
    """

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(store.reload)

    previous = signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
