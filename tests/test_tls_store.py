"""
Unit tests for the listeners' certificate store and the PEM loader: loading,
choice by server name, reload, the modification-time poll on a L{Clock},
expiry warnings, and C{--check-config} with a file that does not load. No
sockets (the handshakes are in L{tests.test_tls_loopback}).
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout

import trustme
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from balancebeam import tap
from balancebeam.tls.pem import CertificateError, load_ca_file, load_pem_bundle
from balancebeam.tls.store import EXPIRY_WARNING, CertificateStore
from tests.test_tls_support import bundle, touch_later, utc, write


def _events(case: SynchronousTestCase) -> EventLoggingObserver:
    """
    Every log event emitted during the test.
    """
    # Twisted annotates trial's TestCase, but the method only calls addCleanup.
    return EventLoggingObserver.createWithCleanup(
        case, globalLogPublisher  # type: ignore[arg-type]
    )


class PemTests(SynchronousTestCase):
    """
    L{load_pem_bundle} and L{load_ca_file}.
    """

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.directory = self.mktemp()

    def test_certificate_chain_and_key(self) -> None:
        """A HAProxy-style file yields the leaf, its names, its chain and a digest."""
        intermediate = self.ca.create_child_ca()
        path = write(self.directory, "a.pem", bundle(intermediate, "a.example", "*.w.example"))
        loaded = load_pem_bundle(path)
        self.assertEqual(loaded.dns_names, ("a.example", "*.w.example"))
        self.assertEqual(loaded.subject.split(",")[0], "CN=a.example")
        self.assertEqual(len(loaded.chain), 1)
        self.assertEqual(len(loaded.digest), 64)

    def test_key_first(self) -> None:
        """The private key may come before the certificates."""
        leaf = self.ca.issue_cert("a.example")
        data = leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes()
        loaded = load_pem_bundle(write(self.directory, "a.pem", data))
        self.assertEqual(loaded.dns_names, ("a.example",))

    def _error(self, data: bytes) -> CertificateError:
        path = write(self.directory, "bad.pem", data)
        error = self.assertRaises(CertificateError, load_pem_bundle, path)
        self.assertEqual(error.path, path)
        self.assertTrue(str(error).startswith(path + ": "))
        return error

    def test_garbage(self) -> None:
        """A file without a certificate is refused, naming the file."""
        self.assertIn("no PEM certificate", self._error(b"hello\n").reason)

    def test_truncated_certificate(self) -> None:
        """A malformed certificate block is refused."""
        good = bundle(self.ca, "a.example")
        broken = good.replace(good[60:200], b"")
        self.assertIn("bad PEM certificate", self._error(broken).reason)

    def test_no_key(self) -> None:
        """A certificate without its key is refused."""
        leaf = self.ca.issue_cert("a.example")
        self.assertIn("no PEM private key", self._error(leaf.cert_chain_pems[0].bytes()).reason)

    def test_key_does_not_match(self) -> None:
        """A key that belongs to another certificate is refused."""
        one = self.ca.issue_cert("a.example")
        other = self.ca.issue_cert("b.example")
        data = one.cert_chain_pems[0].bytes() + other.private_key_pem.bytes()
        self.assertIn("does not match", self._error(data).reason)

    def test_two_keys(self) -> None:
        """A file with two keys is refused."""
        leaf = self.ca.issue_cert("a.example")
        data = leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes() * 2
        self.assertIn("2 private keys", self._error(data).reason)

    def test_encrypted_key(self) -> None:
        """An encrypted key is refused with a hint."""
        from cryptography.hazmat.primitives import serialization

        leaf = self.ca.issue_cert("a.example")
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.assertIn("encrypted", self._error(leaf.cert_chain_pems[0].bytes() + encrypted).reason)

    def test_missing_file(self) -> None:
        """An unreadable file is refused, naming it."""
        path = os.path.join(self.directory, "missing.pem")
        error = self.assertRaises(CertificateError, load_pem_bundle, path)
        self.assertIn("cannot read", error.reason)

    def test_ca_file(self) -> None:
        """A CA file yields its certificates; one without any is refused."""
        path = write(self.directory, "ca.pem", self.ca.cert_pem.bytes())
        self.assertEqual(len(load_ca_file(path)), 1)
        empty = write(self.directory, "empty.pem", b"")
        self.assertRaises(CertificateError, load_ca_file, empty)


class ChoiceTests(SynchronousTestCase):
    """
    Which certificate a server name gets.
    """

    def setUp(self) -> None:
        ca = trustme.CA()
        directory = self.mktemp()
        self.first = write(directory, "first.pem", bundle(ca, "a.example", "www.a.example"))
        self.second = write(directory, "second.pem", bundle(ca, "b.example"))
        self.wild = write(directory, "wild.pem", bundle(ca, "*.w.example", common_name="wild"))
        self.store = CertificateStore(Clock(), [self.first, self.second, self.wild])

    def chosen(self, name: bytes | None) -> str:
        return self.store.choose(name).path

    def test_exact_names(self) -> None:
        """Each certificate is chosen for each of its names, in any case."""
        self.assertEqual(self.chosen(b"a.example"), self.first)
        self.assertEqual(self.chosen(b"WWW.A.Example"), self.first)
        self.assertEqual(self.chosen(b"b.example"), self.second)

    def test_wildcard_matches_one_label(self) -> None:
        """C{*.w.example} matches C{x.w.example} only, not deeper or the bare name."""
        self.assertEqual(self.chosen(b"x.w.example"), self.wild)
        self.assertEqual(self.chosen(b"x.y.w.example"), self.first)
        self.assertEqual(self.chosen(b"w.example"), self.first)

    def test_default_is_first(self) -> None:
        """No SNI, an unknown name or a non-ASCII one gets the first certificate."""
        self.assertEqual(self.chosen(None), self.first)
        self.assertEqual(self.chosen(b"unknown.example"), self.first)
        self.assertEqual(self.chosen(b"\xff.example"), self.first)

    def test_exact_beats_wildcard(self) -> None:
        """An exact name wins over a wildcard that also matches, whatever the order."""
        ca = trustme.CA()
        directory = self.mktemp()
        wild = write(directory, "1.pem", bundle(ca, "*.e.example"))
        exact = write(directory, "2.pem", bundle(ca, "x.e.example"))
        store = CertificateStore(Clock(), [wild, exact])
        self.assertEqual(store.choose(b"x.e.example").path, exact)
        self.assertEqual(store.choose(b"y.e.example").path, wild)

    def test_directory_in_name_order_after_files(self) -> None:
        """Directory files load in name order, after the explicit files; only C{*.pem}."""
        ca = trustme.CA()
        directory = self.mktemp()
        write(directory, "b.pem", bundle(ca, "b.example"))
        write(directory, "a.pem", bundle(ca, "a.example"))
        write(directory, "notes.txt", b"not a certificate")
        explicit = write(self.mktemp(), "z.pem", bundle(ca, "z.example"))
        store = CertificateStore(Clock(), [explicit], [directory])
        self.assertEqual(
            [os.path.basename(c.path) for c in store.certificates], ["z.pem", "a.pem", "b.pem"]
        )
        self.assertEqual(store.choose(None).path, explicit)

    def test_expiry_times(self) -> None:
        """The expiry of every certificate is exposed by file."""
        times = self.store.expiry_times()
        self.assertEqual(set(times), {self.first, self.second, self.wild})
        self.assertEqual(times[self.first], self.store.certificates[0].not_after)


class StartupTests(SynchronousTestCase):
    """
    A configuration that cannot work stops the program at startup.
    """

    def test_bad_file(self) -> None:
        """A broken file raises, naming it."""
        path = write(self.mktemp(), "bad.pem", b"junk")
        error = self.assertRaises(CertificateError, CertificateStore, Clock(), [path])
        self.assertEqual(error.path, path)

    def test_empty_directory(self) -> None:
        """A directory without C{*.pem} files and no file is an error."""
        directory = self.mktemp()
        os.makedirs(directory)
        error = self.assertRaises(CertificateError, CertificateStore, Clock(), [], [directory])
        self.assertIn("no certificate", error.reason)

    def test_missing_directory(self) -> None:
        """A directory that cannot be listed is an error naming it."""
        directory = os.path.join(self.mktemp(), "nope")
        error = self.assertRaises(CertificateError, CertificateStore, Clock(), [], [directory])
        self.assertEqual(error.path, directory)


class ReloadTests(SynchronousTestCase):
    """
    L{CertificateStore.reload} and the modification-time poll.
    """

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.clock = Clock()
        self.directory = self.mktemp()
        self.path = write(self.directory, "site.pem", bundle(self.ca, "a.example"))
        self.store = CertificateStore(self.clock, [self.path])
        self.events = _events(self)

    def test_changed_file_is_served(self) -> None:
        """After a reload, the renewed certificate is chosen and counted."""
        before = self.store.choose(b"a.example")
        write(self.directory, "site.pem", bundle(self.ca, "a.example", "new.a.example"))
        result = self.store.reload()
        after = self.store.choose(b"a.example")
        self.assertEqual(result.loaded, (self.path,))
        self.assertNotEqual(before.digest, after.digest)
        self.assertEqual(after.names, ("a.example", "new.a.example"))
        self.assertIsNot(before.context, after.context)
        self.assertEqual((self.store.reloads, self.store.certificates_loaded), (1, 2))

    def test_unchanged_file_keeps_its_context(self) -> None:
        """A reload of identical bytes keeps the same context and loads nothing."""
        before = self.store.choose(None)
        result = self.store.reload()
        self.assertEqual(result.loaded, ())
        self.assertIs(self.store.choose(None).context, before.context)

    def test_broken_replacement_keeps_old(self) -> None:
        """A broken file keeps its old certificate, logs an error naming it and counts."""
        before = self.store.choose(None)
        write(self.directory, "site.pem", b"-----BEGIN CERTIFICATE-----\nnope\n")
        result = self.store.reload()
        self.assertIs(self.store.choose(None), before)
        self.assertEqual([path for path, _ in result.failed], [self.path])
        self.assertEqual(self.store.reload_failures, 1)
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["path"], self.path)

    def test_mismatched_key_keeps_old(self) -> None:
        """A replacement whose key belongs to another certificate keeps the old one."""
        before = self.store.choose(None)
        one = self.ca.issue_cert("a.example")
        other = self.ca.issue_cert("a.example")
        write(
            self.directory,
            "site.pem",
            one.cert_chain_pems[0].bytes() + other.private_key_pem.bytes(),
        )
        result = self.store.reload()
        self.assertIs(self.store.choose(None), before)
        self.assertIn("does not match", result.failed[0][1])

    def test_removed_file_keeps_old(self) -> None:
        """An explicitly named file that disappears keeps being served."""
        before = self.store.choose(None)
        os.remove(self.path)
        result = self.store.reload()
        self.assertIs(self.store.choose(None), before)
        self.assertEqual(result.failed[0][0], self.path)

    def test_directory_changes(self) -> None:
        """A file added to a directory is served; one removed is dropped."""
        directory = self.mktemp()
        first = write(directory, "a.pem", bundle(self.ca, "a.example"))
        store = CertificateStore(self.clock, [], [directory])
        added = write(directory, "b.pem", bundle(self.ca, "b.example"))
        self.assertTrue(store.changed())
        self.assertEqual(store.reload().loaded, (added,))
        self.assertEqual(store.choose(b"b.example").path, added)
        os.remove(first)
        self.assertEqual(store.reload().removed, (first,))
        self.assertEqual([c.path for c in store.certificates], [added])

    def test_emptied_directory_keeps_all(self) -> None:
        """A reload that would leave no certificate keeps the current ones."""
        directory = self.mktemp()
        only = write(directory, "a.pem", bundle(self.ca, "a.example"))
        store = CertificateStore(self.clock, [], [directory])
        os.remove(only)
        store.reload()
        self.assertEqual([c.path for c in store.certificates], [only])
        self.assertEqual(store.reload_failures, 1)

    def test_poll_reloads_on_change_only(self) -> None:
        """The poll on the clock reloads every 30 s only when a file changed."""
        self.store.startService()
        self.addCleanup(self.store.stopService)
        self.clock.advance(30)
        self.assertEqual(self.store.reloads, 0)
        write(self.directory, "site.pem", bundle(self.ca, "a.example", "renewed.example"))
        touch_later(self.path)
        self.clock.advance(29)
        self.assertEqual(self.store.reloads, 0)
        self.clock.advance(1)
        self.assertEqual(self.store.reloads, 1)
        self.assertEqual(self.store.choose(b"renewed.example").path, self.path)
        self.clock.advance(30)
        self.assertEqual(self.store.reloads, 1)

    def test_poll_does_not_retry_unchanged_broken_file(self) -> None:
        """A broken file is tried once, then again only when it changes again."""
        self.store.startService()
        self.addCleanup(self.store.stopService)
        write(self.directory, "site.pem", b"broken")
        touch_later(self.path)
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertEqual((self.store.reloads, self.store.reload_failures), (1, 1))
        write(self.directory, "site.pem", bundle(self.ca, "a.example", "fixed.example"))
        touch_later(self.path, 20)
        self.clock.advance(30)
        self.assertEqual((self.store.reloads, self.store.reload_failures), (2, 1))
        self.assertEqual(self.store.choose(b"fixed.example").names[-1], "fixed.example")

    def test_stop_stops_polling(self) -> None:
        """After C{stopService}, changes are no longer picked up."""
        self.store.startService()
        self.store.stopService()
        touch_later(self.path)
        self.clock.advance(60)
        self.assertEqual(self.store.reloads, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ExpiryTests(SynchronousTestCase):
    """
    Expiry logging and warnings, on a clock set to a fixed date.
    """

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.clock = Clock()
        self.clock.advance(utc(2030, 1, 1).timestamp())
        self.directory = self.mktemp()
        self.events = _events(self)

    def store(self, days: int) -> CertificateStore:
        path = write(
            self.directory,
            f"in{days}.pem",
            bundle(
                self.ca,
                "a.example",
                not_before=utc(2029, 12, 1),
                not_after=utc(2030, 1, 1 + days),
            ),
        )
        return CertificateStore(self.clock, [path])

    def warnings(self) -> list[dict[str, object]]:
        return [e for e in self.events if e["log_level"] == LogLevel.warn]

    def test_expiry_logged_at_load(self) -> None:
        """Loading logs each certificate's expiry date."""
        self.store(20)
        infos = [e for e in self.events if e.get("expires") == "2030-01-21T00:00:00Z"]
        self.assertEqual(len(infos), 1)
        self.assertEqual(infos[0]["log_level"], LogLevel.info)

    def test_warns_within_fourteen_days(self) -> None:
        """A certificate expiring in 10 days is warned about at startup; one in 20 is not."""
        self.assertEqual(EXPIRY_WARNING, 14 * 86400)
        quiet = self.store(20)
        quiet.startService()
        self.addCleanup(quiet.stopService)
        self.assertEqual(self.warnings(), [])
        soon = self.store(10)
        soon.startService()
        self.addCleanup(soon.stopService)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 1)
        self.assertAlmostEqual(float(warnings[0]["days"]), 10.0)  # type: ignore[arg-type]

    def test_warning_repeats_daily(self) -> None:
        """The poll repeats the warning once a day, not every 30 s."""
        soon = self.store(10)
        soon.startService()
        self.addCleanup(soon.stopService)
        for _ in range(2879):
            self.clock.advance(30)
        self.assertEqual(len(self.warnings()), 1)
        self.clock.advance(30)
        self.assertEqual(len(self.warnings()), 2)

    def test_expired_is_an_error(self) -> None:
        """A certificate already expired is logged as an error."""
        self.clock.advance(30 * 86400)
        expired = self.store(10)
        expired.startService()
        self.addCleanup(expired.stopService)
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["expires"], "2030-01-11T00:00:00Z")


class CheckConfigTests(SynchronousTestCase):
    """
    C{--check-config} with a certificate that does not load.
    """

    def test_unusable_certificate(self) -> None:
        """
        A TLS certificate file that does not load fails the check with one
        line naming the flag, not a traceback.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            exit = self.assertRaises(
                SystemExit,
                tap.Options().parseOptions,
                ["--check-config", "-u", "a:1", "--tls-bind", "127.0.0.1:8443",
                 "--tls-cert", path],
            )
        self.assertEqual((exit.code, out.getvalue()), (1, ""))
        message = err.getvalue()
        self.assertTrue(
            message.startswith("balancebeam: configuration error: --tls-cert"), message
        )
        self.assertEqual(message.count("\n"), 1, message)
