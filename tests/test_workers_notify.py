"""
Tests for L{balancebeam.workers.notify} and the master's C{sd_notify}
messages (C{--workers N} under C{Type=notify}): the master on a memory
reactor with fake workers (L{tests.test_workers_master.MasterScenario}),
its messages read from a real C{AF_UNIX} datagram socket
(L{tests.test_systemd.NotifySocket}).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.systemd import Notifier
from balancebeam.workers.launch import SYSTEMD_ENVIRONMENT, without_systemd, worker_environment
from balancebeam.workers.master import Master, make_master_service
from balancebeam.workers.notify import MasterNotifications
from tests.test_systemd import NotifySocket
from tests.test_tap import PortAssigningReactor
from tests.test_workers_master import BASE, MasterScenario
from tests.test_workers_pending_reload import C_UPSTREAM, D_UPSTREAM

SYSTEMD_VARIABLES = {
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "LISTEN_PID": "1",
    "LISTEN_FDS": "1",
    "LISTEN_FDNAMES": "http",
}


def kinds(messages: list[list[str]]) -> list[str]:
    """
    The first line of each message (C{READY=1}, C{RELOADING=1}, ...), or
    C{STATUS} for a message that is only a status line.
    """
    return ["STATUS" if m[0].startswith("STATUS=") else m[0] for m in messages]


def status_of(message: list[str]) -> str:
    """
    The C{STATUS=} value of a message.
    """
    [status] = [line[len("STATUS=") :] for line in message if line.startswith("STATUS=")]
    return status


class NotifyingScenario(MasterScenario):
    """
    A L{MasterScenario} whose master notifies a real datagram socket.

    @ivar socket: systemd's stand-in.
    """

    def __init__(self, test: SynchronousTestCase, **values: object) -> None:
        super().__init__(test, **values)
        self.socket = NotifySocket(test)
        notifier = Notifier(self.socket.address)
        test.addCleanup(notifier.close)
        self.master.systemd.notifier = notifier

    def messages(self) -> list[list[str]]:
        """
        The messages received since the last call.
        """
        return self.socket.messages()

    def ready_new(self) -> None:
        """
        Every worker started and not ready yet says it is ready.
        """
        for worker in self.launcher.live():
            if worker.pid in [w.pid for w in self.master.workers() if w.state == "starting"]:
                worker.ready()


class SystemdEnvironmentScenario(NotifyingScenario):
    """
    A master given an environment that has systemd's variables.
    """

    environment = {"PATH": "/usr/bin", "LANG": "C.UTF-8", **SYSTEMD_VARIABLES}


class FirstStartTests(SynchronousTestCase):
    """
    C{READY=1} once the first generation serves, never before.
    """

    def test_ready_once_every_worker_is_ready(self) -> None:
        """
        Nothing but a status while the workers start; C{READY=1} with
        C{N workers ready, generation 1} when the last one is ready; no
        second C{READY=1} when a replacement becomes ready later.
        """
        scenario = NotifyingScenario(self)
        launched = scenario.start(ready=False)
        self.assertEqual(
            scenario.messages(), [["STATUS=starting 2 workers (generation 1)"]]
        )
        launched[0].ready()
        self.assertEqual(scenario.messages(), [])
        launched[1].ready()
        self.assertEqual(
            scenario.messages(), [["READY=1", "STATUS=2 workers ready, generation 1"]]
        )
        self.assertEqual(scenario.master.systemd.state, "ready")
        launched[0].exit(1)
        scenario.reactor.advance(0)
        scenario.launcher.launched[2].ready()
        self.assertEqual(scenario.messages(), [])

    def test_crash_before_ready_holds_ready_back(self) -> None:
        """
        A first-generation worker that dies before it is ready is replaced,
        and C{READY=1} waits for its replacement.
        """
        scenario = NotifyingScenario(self)
        launched = scenario.start(ready=False)
        scenario.messages()
        launched[0].ready()
        launched[1].exit(1)
        scenario.reactor.advance(0)
        self.assertEqual(len(scenario.launcher.launched), 3)
        self.assertEqual(scenario.messages(), [])
        scenario.launcher.launched[2].ready()
        self.assertEqual(
            scenario.messages(), [["READY=1", "STATUS=2 workers ready, generation 1"]]
        )

    def test_reload_before_first_ready(self) -> None:
        """
        A SIGHUP while the first generation starts sends no C{RELOADING=1}
        (systemd is still waiting for the start); the one C{READY=1} comes
        once the generation that takes over is ready.
        """
        scenario = NotifyingScenario(self)
        launched = scenario.start(ready=False)
        launched[0].ready()
        scenario.master.reload_from_signal()
        self.assertEqual(len(scenario.launcher.launched), 4)
        launched[1].ready()
        scenario.launcher.launched[2].ready()
        self.assertNotIn("READY=1", kinds(scenario.messages()))
        scenario.launcher.launched[3].ready()
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["READY=1"])
        self.assertEqual(status_of(messages[0]), "reloaded; 2 workers ready, generation 2")

    def test_failed_reload_before_first_ready(self) -> None:
        """
        A reload that fails while the first generation starts sends only a
        status; C{READY=1} comes once the first generation is ready.
        """
        scenario = NotifyingScenario(self)
        launched = scenario.start(ready=False)
        scenario.master.reload_from_signal()
        scenario.launcher.launched[2].exit(1)
        messages = scenario.messages()
        self.assertNotIn("READY=1", kinds(messages))
        self.assertEqual(
            status_of(messages[-1]),
            "reload failed, generation 2 rolled back: worker 0 exited with status 1;"
            " 0 of 2 workers ready, generation 1",
        )
        launched[0].ready()
        launched[1].ready()
        self.assertEqual(
            scenario.messages(), [["READY=1", "STATUS=2 workers ready, generation 1"]]
        )


class ReloadTests(SynchronousTestCase):
    """
    C{RELOADING=1} when a new generation starts; C{READY=1} once it took
    over, was rolled back or was refused.
    """

    def started(self) -> NotifyingScenario:
        """
        A master whose first generation is ready, its messages read.
        """
        scenario = NotifyingScenario(self)
        scenario.start()
        self.assertEqual(kinds(scenario.messages()), ["STATUS", "READY=1"])
        return scenario

    def test_committed(self) -> None:
        """
        C{RELOADING=1} with C{MONOTONIC_USEC} when the reload starts, then
        C{READY=1} saying C{reloaded} once every new worker is ready.
        """
        scenario = self.started()
        reloaded = scenario.master.reload()
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["RELOADING=1", "STATUS"])
        self.assertTrue(messages[0][1].startswith("MONOTONIC_USEC="))
        self.assertEqual(status_of(messages[0]), "reloading: reading the configuration")
        self.assertEqual(
            status_of(messages[1]), "reloading: starting 2 workers (generation 2)"
        )
        scenario.launcher.launched[2].ready()
        self.assertEqual(scenario.messages(), [])
        scenario.launcher.launched[3].ready()
        self.assertTrue(self.successResultOf(reloaded))
        self.assertEqual(
            scenario.messages(),
            [["READY=1", "STATUS=reloaded; 2 workers ready, generation 2"]],
        )
        self.assertEqual(scenario.master.systemd.state, "ready")

    def test_aborted(self) -> None:
        """
        A new worker that dies before it is ready rolls the reload back:
        C{READY=1} says so, and that the old generation serves.
        """
        scenario = self.started()
        reloaded = scenario.master.reload()
        scenario.messages()
        scenario.launcher.launched[2].ready()
        scenario.launcher.launched[3].exit(3)
        self.assertFalse(self.successResultOf(reloaded))
        self.assertEqual(
            scenario.messages(),
            [
                [
                    "READY=1",
                    "STATUS=reload failed, generation 2 rolled back: worker 1 exited with"
                    " status 3; 2 workers ready, generation 1",
                ]
            ],
        )

    def test_refused(self) -> None:
        """
        A configuration that is refused gives C{RELOADING=1} then at once
        C{READY=1} saying why, as in one process.
        """
        scenario = self.started()
        scenario.next_values = {**BASE, "strategy": "fastest"}
        self.assertFalse(self.successResultOf(scenario.master.reload()))
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["RELOADING=1", "READY=1"])
        status = status_of(messages[1])
        self.assertTrue(status.startswith("reload refused: "), status)
        self.assertIn("fastest", status)
        self.assertTrue(status.endswith("; 2 workers ready, generation 1"), status)

    def test_deferred(self) -> None:
        """
        A SIGHUP while generation 2 starts is deferred: one C{RELOADING=1}
        covers generations 2 and 3, and C{READY=1} comes only once
        generation 3 is ready (status lines in between).
        """
        scenario = self.started()
        scenario.master.reload_from_signal()
        scenario.master.reload_from_signal()
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["RELOADING=1", "STATUS", "STATUS"])
        self.assertEqual(
            status_of(messages[2]),
            "reloading: generation 2 is starting; one more reload runs after it",
        )
        scenario.next_values = {**BASE, "upstream": [C_UPSTREAM]}
        scenario.ready_new()
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["STATUS"])
        self.assertEqual(
            status_of(messages[0]),
            "reloaded; 2 workers ready, generation 2; the reload asked meanwhile runs next",
        )
        scenario.reactor.advance(0)
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["STATUS", "STATUS"])
        self.assertEqual(
            status_of(messages[1]), "reloading: starting 2 workers (generation 3)"
        )
        scenario.launcher.launched[-2].ready()
        self.assertEqual(scenario.messages(), [])
        scenario.launcher.launched[-1].ready()
        self.assertEqual(
            scenario.messages(),
            [["READY=1", "STATUS=reloaded; 2 workers ready, generation 3"]],
        )

    def test_deferred_after_a_rollback(self) -> None:
        """
        A reload deferred while generation 2 starts runs after generation 2
        fails: C{READY=1} waits for it too.
        """
        scenario = self.started()
        scenario.master.reload_from_signal()
        scenario.master.reload_from_signal()
        scenario.messages()
        scenario.launcher.launched[2].exit(1)
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["STATUS"])
        self.assertIn("rolled back", status_of(messages[0]))
        scenario.reactor.advance(0)
        self.assertNotIn("READY=1", kinds(scenario.messages()))
        scenario.ready_new()
        self.assertEqual(
            scenario.messages(),
            [["READY=1", "STATUS=reloaded; 2 workers ready, generation 3"]],
        )

    def test_deferred_then_refused(self) -> None:
        """
        A deferred reload whose configuration is refused when its turn
        comes ends the reload: C{READY=1} with the reason.
        """
        scenario = self.started()
        scenario.master.reload_from_signal()
        scenario.master.reload_from_signal()
        scenario.next_values = {**BASE, "strategy": "fastest"}
        scenario.ready_new()
        scenario.messages()
        scenario.reactor.advance(0)
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["STATUS", "READY=1"])
        self.assertTrue(status_of(messages[1]).startswith("reload refused: "))
        self.assertTrue(
            status_of(messages[1]).endswith("; 2 workers ready, generation 2")
        )

    def test_reload_before_the_deferred_turn(self) -> None:
        """
        A reload asked after generation 2 is ready, before the deferred one
        had its turn, stands for it: still one C{READY=1}, once its
        generation is ready.
        """
        scenario = self.started()
        scenario.master.reload_from_signal()
        scenario.master.reload_from_signal()
        scenario.ready_new()
        scenario.next_values = {**BASE, "upstream": [D_UPSTREAM]}
        scenario.master.reload_from_signal()
        scenario.reactor.advance(0)
        self.assertNotIn("READY=1", kinds(scenario.messages()))
        self.assertEqual(len(scenario.launcher.launched), 6)
        scenario.ready_new()
        messages = scenario.messages()
        self.assertEqual(kinds(messages), ["READY=1"])
        self.assertEqual(status_of(messages[0]), "reloaded; 2 workers ready, generation 3")


class StopTests(SynchronousTestCase):
    """
    C{STOPPING=1} when the master stops, and nothing after.
    """

    def test_stopping(self) -> None:
        """
        C{STOPPING=1} with the number of workers draining; no message
        while they drain and exit.
        """
        scenario = NotifyingScenario(self)
        launched = scenario.start()
        scenario.messages()
        stopped = scenario.master.stopService()
        self.assertEqual(
            scenario.messages(), [["STOPPING=1", "STATUS=stopping: draining 2 workers"]]
        )
        for worker in launched:
            worker.exit(0)
        self.successResultOf(stopped)
        self.assertEqual(scenario.messages(), [])
        self.assertEqual(scenario.master.systemd.state, "stopping")

    def test_stopping_during_a_reload(self) -> None:
        """
        Stopping while a new generation starts sends C{STOPPING=1} and no
        C{READY=1} for the reload it abandons; a deferred reload is dropped
        silently.
        """
        scenario = NotifyingScenario(self)
        scenario.start()
        scenario.master.reload_from_signal()
        scenario.master.reload_from_signal()
        scenario.messages()
        stopped = scenario.master.stopService()
        self.assertEqual(kinds(scenario.messages()), ["STOPPING=1"])
        for worker in scenario.launcher.live():
            worker.exit(0)
        scenario.reactor.advance(1)
        self.successResultOf(stopped)
        self.assertEqual(scenario.messages(), [])

    def test_stopping_before_ready(self) -> None:
        """
        Stopping before the first generation is ready sends C{STOPPING=1},
        and a worker that becomes ready meanwhile sends no C{READY=1}.
        """
        scenario = NotifyingScenario(self)
        launched = scenario.start(ready=False)
        scenario.messages()
        scenario.master.stopService()
        launched[0].ready()
        launched[1].ready()
        self.assertEqual(kinds(scenario.messages()), ["STOPPING=1"])


class WatchdogTests(SynchronousTestCase):
    """
    The master feeds systemd's watchdog from its reactor.
    """

    def test_fed_until_stopping(self) -> None:
        """
        C{WATCHDOG=1} at start, then every interval on the master's clock,
        before and after C{READY=1}, and no more once it stops.
        """
        scenario = NotifyingScenario(self)
        scenario.master.systemd.watchdog_interval = 2.0
        launched = scenario.start(ready=False)
        self.assertEqual(kinds(scenario.messages()), ["WATCHDOG=1", "STATUS"])
        scenario.reactor.advance(1.9)
        self.assertEqual(scenario.messages(), [])
        scenario.reactor.advance(0.1)
        self.assertEqual(scenario.messages(), [["WATCHDOG=1"]])
        for worker in launched:
            worker.ready()
        scenario.reactor.advance(2.0)
        self.assertEqual(kinds(scenario.messages()), ["READY=1", "WATCHDOG=1"])
        scenario.master.stopService()
        scenario.reactor.advance(4.0)
        self.assertEqual(kinds(scenario.messages()), ["STOPPING=1"])

    def test_off_without_interval(self) -> None:
        """
        Without C{WATCHDOG_USEC} no C{WATCHDOG=1} is sent.
        """
        scenario = NotifyingScenario(self)
        scenario.start()
        scenario.reactor.advance(60)
        self.assertNotIn("WATCHDOG=1", kinds(scenario.messages()))


class OrderTests(SynchronousTestCase):
    """
    L{MasterNotifications} alone: which message may follow which.
    """

    def notifications(self) -> tuple[MasterNotifications, NotifySocket]:
        """
        Notifications to a real socket.
        """
        listener = NotifySocket(self)
        notifications = MasterNotifications(Clock())
        notifications.notifier = Notifier(listener.address)
        self.addCleanup(notifications.notifier.close)
        return notifications, listener

    def test_order(self) -> None:
        """
        C{READY=1} only while starting or reloading; C{RELOADING=1} only
        when ready (a status otherwise); nothing after C{STOPPING=1}.
        """
        notifications, listener = self.notifications()
        notifications.reloading("early")
        self.assertTrue(notifications.ready("up"))
        self.assertFalse(notifications.ready("again"))
        notifications.reloading("one")
        notifications.reloading("two")
        self.assertTrue(notifications.ready("done"))
        notifications.stopping("bye")
        notifications.stopping("bye again")
        notifications.reloading("late")
        notifications.status("late")
        self.assertFalse(notifications.ready("late"))
        self.assertEqual(
            kinds(listener.messages()),
            ["STATUS", "READY=1", "RELOADING=1", "STATUS", "READY=1", "STOPPING=1"],
        )

    def test_silent_without_socket(self) -> None:
        """
        The default notifier sends nothing, and the order is kept anyway.
        """
        notifications = MasterNotifications(Clock())
        self.assertFalse(notifications.notifier.enabled)
        self.assertTrue(notifications.ready("up"))
        self.assertEqual(notifications.notifier.sent, 0)


class EnvironmentTests(SynchronousTestCase):
    """
    Only the master talks to systemd: the workers are started without its
    variables, and the master reads them.
    """

    def test_workers_environment(self) -> None:
        """
        Workers are started without C{NOTIFY_SOCKET}, the watchdog's and
        socket activation's variables, even when the environment given to
        the master has them; the rest is kept.
        """
        scenario = SystemdEnvironmentScenario(self)
        scenario.start()
        scenario.master.reload()
        scenario.ready_new()
        scenario.launcher.launched[2].exit(9)
        scenario.reactor.advance(0)
        self.assertEqual(len(scenario.launcher.launched), 5)
        for worker in scenario.launcher.launched:
            self.assertEqual(worker.env, {"PATH": "/usr/bin", "LANG": "C.UTF-8"})

    def test_without_systemd(self) -> None:
        """
        L{without_systemd} removes exactly systemd's variables; the default
        environment of the workers has none of them.
        """
        self.assertEqual(
            without_systemd({"HOME": "/root", **SYSTEMD_VARIABLES}), {"HOME": "/root"}
        )
        self.assertEqual(set(SYSTEMD_ENVIRONMENT), set(SYSTEMD_VARIABLES))
        self.assertFalse(set(worker_environment()) & set(SYSTEMD_ENVIRONMENT))

    def test_master_reads_the_environment(self) -> None:
        """
        L{make_master_service} gives the master the notifier of
        C{NOTIFY_SOCKET} and a watchdog of half C{WATCHDOG_USEC}.
        """
        service = make_master_service(
            {**BASE},
            PortAssigningReactor(),
            environ={"NOTIFY_SOCKET": "@balancebeam-test", "WATCHDOG_USEC": "3000000"},
        )
        assert isinstance(service, Master)
        self.assertEqual(service.systemd.notifier.address, "\0balancebeam-test")
        self.assertEqual(service.systemd.watchdog_interval, 1.5)
        service = make_master_service({**BASE}, PortAssigningReactor(), environ={})
        assert isinstance(service, Master)
        self.assertFalse(service.systemd.notifier.enabled)
        self.assertIsNone(service.systemd.watchdog_interval)
