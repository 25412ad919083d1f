"""
Tests for L{balancebeam.systemd}: C{sd_notify} messages read from a real
C{AF_UNIX} datagram socket, the watchdog on a fake clock, and the balancer's
READY/STOPPING notifications.
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.systemd import Notifier, WatchdogService, monotonic_usec, watchdog_interval
from tests.operations_helpers import ServiceHarness, harness_config


class NotifySocket:
    """
    A bound C{AF_UNIX} datagram socket standing in for systemd's.
    """

    def __init__(self, case: SynchronousTestCase, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"balancebeam-test-{os.getpid()}-{id(self)}"
            self.socket.bind("\0" + name)
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp(prefix="balancebeam-notify-")
            self.address = os.path.join(directory, "notify")
            self.socket.bind(self.address)
            case.addCleanup(os.rmdir, directory)
            case.addCleanup(os.remove, self.address)
        self.socket.setblocking(False)
        case.addCleanup(self.socket.close)

    def messages(self) -> list[list[str]]:
        """
        Every datagram received so far, as its lines.
        """
        received: list[list[str]] = []
        while True:
            try:
                data = self.socket.recv(4096)
            except BlockingIOError:
                return received
            received.append(data.decode("utf-8").split("\n"))


class NotifierTests(SynchronousTestCase):
    """
    L{Notifier} on a real datagram socket.
    """

    def test_messages(self) -> None:
        """
        Each call sends one datagram of C{KEY=VALUE} lines.
        """
        listener = NotifySocket(self)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
        self.addCleanup(notifier.close)
        notifier.ready("serving")
        notifier.reloading("again")
        notifier.stopping("bye")
        notifier.watchdog()
        notifier.status("one\nline")
        messages = listener.messages()
        self.assertEqual(messages[0], ["READY=1", "STATUS=serving"])
        self.assertEqual(messages[1][0], "RELOADING=1")
        self.assertTrue(messages[1][1].startswith("MONOTONIC_USEC="))
        self.assertEqual(messages[1][2], "STATUS=again")
        self.assertEqual(
            messages[2:], [["STOPPING=1", "STATUS=bye"], ["WATCHDOG=1"], ["STATUS=one line"]]
        )
        self.assertEqual(notifier.sent, 5)

    def test_monotonic_usec(self) -> None:
        """
        C{MONOTONIC_USEC} is C{CLOCK_MONOTONIC} in microseconds, as systemd
        reads it.
        """
        listener = NotifySocket(self)
        notifier = Notifier(listener.address)
        self.addCleanup(notifier.close)
        before = monotonic_usec()
        notifier.reloading()
        after = monotonic_usec()
        [[_, stamp, _]] = listener.messages()
        value = int(stamp.partition("=")[2])
        self.assertTrue(before <= value <= after, (before, value, after))

    def test_abstract_socket(self) -> None:
        """
        An address starting with C{@} is an abstract socket.
        """
        listener = NotifySocket(self, abstract=True)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.watchdog())
        self.assertEqual(listener.messages(), [["WATCHDOG=1"]])

    def test_no_socket(self) -> None:
        """
        Without C{NOTIFY_SOCKET} nothing is sent.
        """
        notifier = Notifier.from_environment({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready("x"))
        self.assertEqual(notifier.sent, 0)

    def test_unreachable_socket_warns_once(self) -> None:
        """
        A socket that cannot be reached is logged once at warn, and sending
        goes on without raising.
        """
        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]  # the method only calls addCleanup
            globalLogPublisher,
        )
        notifier = Notifier("/nonexistent/notify")
        self.addCleanup(notifier.close)
        self.assertFalse(notifier.ready("x"))
        self.assertFalse(notifier.watchdog())
        warnings = [e for e in events if "cannot notify systemd" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["address"], "/nonexistent/notify")


class WatchdogTests(SynchronousTestCase):
    """
    The watchdog interval and its loop.
    """

    def test_interval(self) -> None:
        """
        The interval is half C{WATCHDOG_USEC}, for this process only.
        """
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "10000000"}, pid=5), 5.0)
        self.assertEqual(
            watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "5"}, pid=5), 1.5
        )
        self.assertIsNone(
            watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "6"}, pid=5)
        )
        self.assertIsNone(watchdog_interval({}, pid=5))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "0"}, pid=5))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=5))

    def test_loop(self) -> None:
        """
        C{WATCHDOG=1} goes out at start and then every interval, until stopped.
        """
        listener = NotifySocket(self)
        notifier = Notifier(listener.address)
        self.addCleanup(notifier.close)
        clock = Clock()
        service = WatchdogService(notifier, clock, 5.0)
        service.startService()
        self.assertEqual(len(listener.messages()), 1)
        clock.advance(4.9)
        self.assertEqual(listener.messages(), [])
        clock.advance(0.1)
        clock.advance(5.0)
        self.assertEqual(listener.messages(), [["WATCHDOG=1"], ["WATCHDOG=1"]])
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class BalancerNotificationTests(SynchronousTestCase):
    """
    The balancer tells systemd when it is ready and when it stops.
    """

    def test_ready_then_stopping(self) -> None:
        """
        C{READY=1} with a status line once every listener (the admin's too)
        is up; C{STOPPING=1} when it stops; the watchdog in between.
        """
        listener = NotifySocket(self)
        harness = ServiceHarness(
            harness_config(admin_bind="tcp:9100:interface=127.0.0.1"), start=False
        )
        notifier = Notifier(listener.address)
        self.addCleanup(notifier.close)
        harness.service.systemd.notifier = notifier
        harness.service.systemd.watchdog_interval = 2.0
        self.assertEqual(listener.messages(), [])
        harness.start()
        messages = listener.messages()
        self.assertEqual(messages[1], ["WATCHDOG=1"])
        self.assertEqual(
            messages[0],
            [
                "READY=1",
                "STATUS=listening on 0.0.0.0:8080; 2/2 upstreams serving; "
                "0 connections; 0 requests",
            ],
        )
        harness.reactor.advance(2.0)
        self.assertEqual(listener.messages(), [["WATCHDOG=1"]])
        harness.service.stopService()
        [stopping] = listener.messages()
        self.assertEqual(stopping[0], "STOPPING=1")
        self.assertTrue(stopping[1].startswith("STATUS=draining; "))
        harness.reactor.advance(10.0)
        self.assertEqual(listener.messages(), [])
