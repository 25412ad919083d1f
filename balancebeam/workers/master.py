# -*- test-case-name: tests.test_workers_master -*-
"""
The master process of C{--workers N}: binds the listening sockets, starts
and supervises the worker processes, and serves no request itself.

  - B{Start}: the sockets are bound in C{privilegedStartService} (before
    twistd drops privileges), or taken from systemd; then N workers start
    (L{balancebeam.workers.worker}), each given the sockets, two pipes and
    a seat in the shared table (C{spawnProcess(..., childFDs=...)}).
  - B{Crash}: a worker that exits unasked is replaced at once; one that
    keeps dying within L{STABLE_AFTER} seconds of its start is replaced
    after a growing delay (L{restart_delay}). Every exit is logged with its
    status.
  - B{SIGHUP} (L{Master.reload}): a new generation starts on the same
    sockets with the configuration read again; once every new worker is
    ready, the old ones stop accepting and drain; those still running after
    C{--shutdown-timeout} (and L{KILL_GRACE}) are killed. If a new worker
    fails first, the new generation is stopped and the old one serves on.
    A SIGHUP while a generation starts is deferred until that start is
    over, then runs once (L{balancebeam.workers.pending_reload}).
  - B{SIGTERM} (C{stopService}): every worker drains (up to
    C{--shutdown-timeout}, then it is killed), then the master exits.
  - B{Health}: the master probes the upstreams and sends their state to the
    workers (L{balancebeam.workers.health}).
  - B{Counters}: L{Master.snapshot} adds up those the workers report, with
    those of the workers gone; L{Master.collect} asks for fresh ones first.
  - B{systemd}: C{READY=1} once every worker of the first generation is
    ready; C{RELOADING=1} when a reload starts and C{READY=1} once no
    generation starts and no reload waits; C{STOPPING=1}; the watchdog
    (L{balancebeam.workers.notify}). The workers never notify.

Here: the decisions (L{Master}) and the twistd service
(L{make_master_service}). Beside it, and importable from here too:
L{balancebeam.workers.fleet} (what the master holds, and the mechanics:
L{WorkerFleet}, the base of L{Master}), L{balancebeam.workers.counters},
L{balancebeam.workers.processes} (L{WorkerProcess}, L{Generation}),
L{balancebeam.workers.launch} (what a worker is started with),
L{balancebeam.workers.notify} (what systemd is told),
L{balancebeam.workers.supervision} (the timings, L{describe_exit}) and
L{balancebeam.workers.spec} (L{WorkerSpec}).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from balancebeam.config import build_config
from balancebeam.systemd import Notifier, watchdog_interval
from balancebeam.workers.control import DOWN, PURGED, READY, STATS, Message
from balancebeam.workers.counters import MasterSnapshot, add_counters
from balancebeam.workers.fleet import WorkerFleet
from balancebeam.workers.launch import (
    CONTROL_IN,
    CONTROL_OUT,
    FIRST_SHARED_FD,
    STATS_INTERVAL,
    WorkerLauncher,
    spawn_launcher,
    twistd_log_options,
    worker_values,
)
from balancebeam.workers.pending_reload import relay
from balancebeam.workers.processes import Generation, WorkerProcess, WorkerStatus
from balancebeam.workers.spec import ListenerFd, WorkerSpec
from balancebeam.workers.supervision import (
    KILL_GRACE,
    READY_TIMEOUT,
    RESTART_BASE,
    RESTART_CAP,
    STABLE_AFTER,
    describe_exit,
    restart_delay,
)

__all__ = [
    "CONTROL_IN",
    "CONTROL_OUT",
    "KILL_GRACE",
    "READY_TIMEOUT",
    "RESTART_BASE",
    "RESTART_CAP",
    "STABLE_AFTER",
    "STATS_INTERVAL",
    "Generation",
    "ListenerFd",
    "Master",
    "MasterSnapshot",
    "WorkerLauncher",
    "WorkerProcess",
    "WorkerSpec",
    "WorkerStatus",
    "add_counters",
    "describe_exit",
    "make_master_service",
    "restart_delay",
    "spawn_launcher",
    "twistd_log_options",
    "watch_reload_signal",
    "worker_values",
]


class Master(WorkerFleet):
    """
    The master of C{--workers N}: what it does when it starts, when a worker
    reports or exits, on SIGHUP and on SIGTERM. What it holds (the sockets,
    the generations, the counters) and the mechanics of binding, stopping
    workers and counting are L{WorkerFleet}'s.
    """

    # Starting

    def startService(self) -> None:
        """
        Start the first generation of workers.
        """
        super().startService()
        self.started_at = self._reactor.seconds()
        if not self.sockets:
            self.privilegedStartService()
        generation = self._new_generation(self.config.workers, self._values)
        self.generation = generation
        generation.health.startService()
        self.log.info(
            "master {pid}: starting {count} workers (generation 1)",
            pid=os.getpid(),
            count=len(generation.workers),
        )
        self.systemd.start()
        self.systemd.status(f"starting {len(generation.workers)} workers (generation 1)")
        for slot in range(len(generation.workers)):
            self._spawn(generation, slot)

    def _spawn(self, generation: Generation, slot: int) -> WorkerProcess | None:
        """
        Start the worker of C{slot} in C{generation}.
        """
        generation.restarts[slot] = None
        try:
            seat = self.table.claim() if self.table is not None else slot
        except RuntimeError:
            self.log.error(
                "no free seat for worker {slot} of generation {generation} (too many workers"
                " still draining)",
                slot=slot,
                generation=generation.number,
            )
            self._spawn_failed(generation, slot, "no free seat")
            return None
        worker = WorkerProcess(self, generation, slot, seat)
        child_fds: dict[int, int | str] = {CONTROL_IN: "w", 1: 1, 2: 2, CONTROL_OUT: "r"}
        fd = FIRST_SHARED_FD
        seat_fd = None
        if self.table is not None and self._table_fd is not None:
            child_fds[fd] = self._table_fd
            seat_fd, fd = fd, fd + 1
        listeners = []
        for listener, opened in zip(self.specs, self.sockets):
            chosen = opened[slot % len(opened)]
            child_fds[fd] = chosen.fileno()
            listeners.append(
                ListenerFd(
                    fd,
                    listener.family,
                    listener.description,
                    tls=listener.tls is not None,
                    https=listener.https,
                )
            )
            fd += 1
        spec = WorkerSpec(
            values=generation.values,
            listeners=tuple(listeners),
            slot=slot,
            generation=generation.number,
            seat=seat,
            seat_fd=seat_fd,
            control_in=CONTROL_IN,
            control_out=CONTROL_OUT,
            stats_interval=STATS_INTERVAL,
            reactor=self._reactor_module,
            logger=self._logger,
            logfile=self._logfile,
        )
        args = [self._python, "-m", "balancebeam.workers.worker", "--spec", spec.to_json()]
        worker.started = self._reactor.seconds()
        generation.workers[slot] = worker
        try:
            self._launch(worker, self._python, args, dict(self._environment), child_fds)
        except Exception:
            generation.workers[slot] = None
            if self.table is not None:
                self.table.release(seat)
            self.log.failure("starting worker {slot} failed", slot=slot)
            self._spawn_failed(generation, slot, "it could not be started")
            return None
        self.worker_starts += 1
        worker.send(generation.health.message())
        self.admin.started(worker)
        worker.timer = self._reactor.callLater(READY_TIMEOUT, self._not_ready, worker)
        self.log.info(
            "started worker {slot} of generation {generation}: pid {pid}",
            slot=slot,
            generation=generation.number,
            pid=worker.pid,
        )
        return worker

    def _spawn_failed(self, generation: Generation, slot: int, why: str) -> None:
        """
        A worker could not be started: end a reload that was starting it,
        or try again later (L{restart_delay}).
        """
        if generation is self._pending:
            self._abort_reload(f"worker {slot}: {why}")
        else:
            self._schedule_restart(generation, slot, quick=True)

    # Messages and exits

    def message_received(self, worker: WorkerProcess, message: Message) -> None:
        """
        Act on one message from a worker.
        """
        kind = message["type"]
        if kind == STATS:
            self._stats_received(worker, message)
        elif kind == READY:
            self._ready(worker)
        elif kind == PURGED:
            self.admin.purged(worker, message)
        elif kind == DOWN:
            name, reason = message.get("upstream"), message.get("reason")
            if isinstance(name, str):
                worker.generation.health.passive_failure(name, str(reason), worker.pid)
        else:
            self.log.warn(
                "unknown message {kind} from worker {pid}", kind=kind, pid=worker.pid
            )

    def _ready(self, worker: WorkerProcess) -> None:
        if worker.state != "starting":
            return
        worker.state = "ready"
        worker.ready_at = self._reactor.seconds()
        worker.cancel_timer()
        self._heard_from(worker)
        self.log.info(
            "worker {slot} of generation {generation} is ready (pid {pid})",
            slot=worker.slot,
            generation=worker.generation.number,
            pid=worker.pid,
        )
        pending = self._pending
        if pending is not None and worker.generation is pending:
            if all(w is not None and w.state == "ready" for w in pending.workers):
                self._commit_reload()
        elif worker.generation is self.generation:
            self._settle(None)

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        A worker process ended: count it out, log its status and replace it
        when it was not asked to stop.
        """
        if worker.state == "gone":
            return
        was_ready = worker.state in ("ready", "stopping")
        worker.state = "gone"
        worker.cancel_timer()
        generation = worker.generation
        if generation.workers[worker.slot] is worker:
            generation.workers[worker.slot] = None
        if self.table is not None:
            self.table.release(worker.seat)
        add_counters(self._retired, worker.counters)
        worker.counters = {}
        worker.gauges = {}
        status = describe_exit(reason)
        fields = {
            "slot": worker.slot,
            "generation": generation.number,
            "pid": worker.pid,
            "status": status,
        }
        if worker.stop_requested or self._stopping:
            self.log.info(
                "worker {slot} of generation {generation} (pid {pid}) {status}", **fields
            )
        elif generation is self._pending:
            self.log.error(
                "worker {slot} of generation {generation} (pid {pid}) {status} before it was"
                " ready",
                **fields,
            )
            self._abort_reload(f"worker {worker.slot} {status}")
        else:
            self.worker_crashes += 1
            self.log.warn(
                "worker {slot} of generation {generation} (pid {pid}) {status} unexpectedly",
                **fields,
            )
            lived = self._reactor.seconds() - worker.started
            self._schedule_restart(
                generation, worker.slot, quick=not was_ready or lived < STABLE_AFTER
            )
        self._check_collected()
        self.admin.worker_gone(worker)
        self._forget_finished()

    def _schedule_restart(self, generation: Generation, slot: int, quick: bool) -> None:
        """
        Replace the worker of C{slot} at once, or after a delay when it
        keeps dying quickly (L{restart_delay}); not while stopping, nor in a
        generation that no longer serves.
        """
        if self._stopping or generation is not self.generation:
            return
        generation.streaks[slot] = generation.streaks[slot] + 1 if quick else 1
        delay = restart_delay(generation.streaks[slot])
        if delay:
            self.log.warn(
                "worker {slot} of generation {generation} died {streak} times in a row within"
                " {stable} s of starting: replacing it in {delay} s",
                slot=slot,
                generation=generation.number,
                streak=generation.streaks[slot],
                stable=STABLE_AFTER,
                delay=delay,
            )
        generation.restarts[slot] = self._reactor.callLater(
            delay, self._restart, generation, slot
        )

    def _restart(self, generation: Generation, slot: int) -> None:
        generation.restarts[slot] = None
        if self._stopping or generation is not self.generation:
            return
        if generation.workers[slot] is None:
            self._spawn(generation, slot)

    # Reloading

    def reload(self, values: Mapping[str, object] | None = None) -> Deferred[bool]:
        """
        Start a new generation of workers on the same sockets, and once all
        of them are ready, stop the current one (it drains).

        Asked while a generation is starting, the reload waits for that
        start to be over (ready, or failed and rolled back), then runs once
        however many times it was asked meanwhile, on the configuration read
        then (L{balancebeam.workers.pending_reload}).

        @param values: the option values of the new generation; by default
            those C{reload_values} gives (read when the reload starts).
        @return: fires with whether the new generation took over (C{False}
            when the values are bad, change what needs a restart, or a new
            worker failed before it was ready; the current generation then
            serves on; or when the master stops before a deferred reload
            runs).
        """
        current = self.generation
        if self._stopping or current is None:
            return succeed(False)
        if self._pending is not None:
            number = self._pending.number
            self.systemd.status(
                f"reloading: generation {number} is starting; one more reload runs after it"
            )
            return self._reload_later.ask(number, values)
        # A reload still due from the last start (its turn has not come
        # yet): this one reads the configuration now, so it stands for it.
        joined = self._reload_later.take()
        return relay(self._start_reload(current, values), joined)

    def _start_reload(
        self, current: Generation, values: Mapping[str, object] | None
    ) -> Deferred[bool]:
        """
        Read the configuration and start its generation beside C{current}
        (L{reload}, when no generation is starting).
        """
        self.systemd.reloading("reloading: reading the configuration")
        try:
            new_values = dict(self._reload_values() if values is None else values)
            config = build_config(new_values)
            self._reload_applies = [check(config) for check in self.reload_checks]
        except ValueError as error:
            self.log.error("reload refused: {error}; the workers serve on", error=str(error))
            self._reload_ended(str(error))
            self._settle(f"reload refused: {error}")
            return succeed(False)
        problem = self._needs_restart(config)
        if problem is not None:
            self.log.error("reload refused: {problem}; the workers serve on", problem=problem)
            self._reload_ended(problem)
            self._settle(f"reload refused: {problem}")
            return succeed(False)
        generation = self._new_generation(config.workers, new_values)
        if generation.health is not current.health:
            generation.health.startService()
        self._values = new_values
        self._pending = generation
        reloaded: Deferred[bool] = Deferred()
        self._reloaded = reloaded
        self.log.info(
            "reloading: starting {count} workers (generation {generation})",
            count=len(generation.workers),
            generation=generation.number,
        )
        self.systemd.status(
            f"reloading: starting {len(generation.workers)} workers"
            f" (generation {generation.number})"
        )
        for slot in range(len(generation.workers)):
            if self._pending is generation:
                self._spawn(generation, slot)
        return reloaded

    def reload_from_signal(self) -> None:
        """
        SIGHUP: L{reload} with C{reload_values}.
        """
        self.log.info("Received SIGHUP: reloading")
        self.reload()

    def _commit_reload(self) -> None:
        pending, old = self._pending, self.generation
        assert pending is not None and old is not None
        self._pending = None
        self.generation = pending
        self._reload_ended(None)
        applies, self._reload_applies = self._reload_applies, []
        for apply in applies:
            apply()
        old.cancel_restarts()
        self._retiring.append(old)
        grace = old.config.shutdown_timeout
        self.log.info(
            "generation {generation} is ready: generation {old} stops accepting and drains"
            " (for up to {grace} s)",
            generation=pending.number,
            old=old.number,
            grace=grace,
        )
        self._stop_workers(old.live(), grace)
        self._forget_finished()
        reloaded, self._reloaded = self._reloaded, None
        if reloaded is not None:
            reloaded.callback(True)
        self._reload_later.start_over(pending.number, "is ready", self.reload)
        self._settle("reloaded")

    def _abort_reload(self, why: str) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._reload_ended(why)
        pending.cancel_restarts()
        current = self.generation
        self.log.error(
            "reload failed ({why}): generation {current} serves on",
            why=why,
            current=current.number if current is not None else 0,
        )
        if pending.live():
            self._retiring.append(pending)
            self._stop_workers(pending.live(), pending.config.shutdown_timeout)
        elif current is None or pending.health is not current.health:
            self._stop_health(pending.health)
        self._forget_finished()
        reloaded, self._reloaded = self._reloaded, None
        if reloaded is not None:
            reloaded.callback(False)
        if not self._stopping:
            self._reload_later.start_over(pending.number, "failed", self.reload)
        self._settle(f"reload failed, generation {pending.number} rolled back: {why}")

    def _settle(self, outcome: str | None) -> None:
        """
        Tell systemd C{READY=1} (L{MasterNotifications.ready
        <balancebeam.workers.notify.MasterNotifications.ready>}) once
        nothing is starting or waiting: no generation starting beside the
        serving one, no reload deferred, and, before the first C{READY=1},
        every worker of the serving generation ready. Otherwise only say
        C{outcome} (C{STATUS=}).

        @param outcome: how a reload ended (C{"reloaded"}, C{"reload
            failed, ..."}, C{"reload refused: ..."}), or C{None} when a
            worker of the serving generation became ready.
        """
        generation = self.generation
        if self._stopping or generation is None:
            return
        count = len(generation.workers)
        ready = sum(1 for w in generation.workers if w is not None and w.state == "ready")
        status = (
            f"{ready} workers ready" if ready == count else f"{ready} of {count} workers ready"
        ) + f", generation {generation.number}"
        if outcome is not None:
            status = f"{outcome}; {status}"
        if self._pending is not None or self._reload_later.asks:
            if outcome is not None:
                self.systemd.status(f"{status}; the reload asked meanwhile runs next")
        elif self.systemd.state == "starting" and ready < count:
            if outcome is not None:
                self.systemd.status(status)
        else:
            self.systemd.ready(status)

    # Stopping

    def stopService(self) -> Deferred[None]:
        """
        Stop listening (the workers stop accepting as they start draining),
        drain every worker (each for up to its C{--shutdown-timeout}), then
        stop probing and close the seat table.

        @return: fires once every worker has exited.
        """
        super().stopService()
        if self._stopping:
            return succeed(None)
        self._stopping = True
        self.systemd.stopping(f"stopping: draining {len(self.workers())} workers")
        self._reload_later.drop("the master is stopping")
        if self._pending is not None:
            self._abort_reload("the master is stopping")
        workers = [w for g in self._generations() for w in g.live()]
        for generation in self._generations():
            generation.cancel_restarts()
        self.log.info("stopping: draining {count} workers", count=len(workers))
        stopped: Deferred[None] = Deferred()
        self._stopped = stopped
        for generation in self._generations():
            self._stop_workers(generation.live(), generation.config.shutdown_timeout)
        self._stop_listening()
        self._forget_finished()
        return stopped


def watch_reload_signal(reactor: Any, master: Master) -> None:
    """
    Make SIGHUP reload the master (L{Master.reload_from_signal}). Call it
    once the reactor runs.
    """

    def handle(number: int, frame: object) -> None:
        reactor.callFromThread(master.reload_from_signal)

    signal.signal(signal.SIGHUP, handle)


def make_master_service(
    values: Mapping[str, object],
    reactor: Any,
    *,
    demo: bool = False,
    argv: Sequence[str] = (),
    reload_values: Callable[[], Mapping[str, object]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> IService:
    """
    The service of a twistd process that is the master of C{--workers N}.

    @param values: the option values (C{Options.config_values()}).
    @param demo: start the demo upstreams here, and give them to the workers.
    @param argv: twistd's command line, to log in the workers as twistd
        does here (L{twistd_log_options}).
    @param reload_values: what SIGHUP reloads (by default C{values}).
    @param environ: where systemd's C{NOTIFY_SOCKET} and C{WATCHDOG_USEC}
        are read (by default C{os.environ}).
    @return: the L{Master}, or with C{demo} or C{--admin-bind} a service
        holding the demo upstreams, the master, then its admin listener
        (L{balancebeam.workers.master_admin}), which stops first.
    """
    logger, logfile = twistd_log_options(argv)
    extra: list[str] = []
    demo_service: IService | None = None
    if demo:
        from balancebeam.demo import start_demo_upstreams

        specs, demo_service = start_demo_upstreams(reactor)
        extra = [spec.name for spec in specs]
    master = Master(
        values,
        reactor,
        extra_upstreams=extra,
        reload_values=reload_values,
        logger=logger,
        logfile=logfile,
        reactor_module=type(reactor).__module__,
        exit_on_listen_failure=True,
    )
    environ = os.environ if environ is None else environ
    master.systemd.notifier = Notifier.from_environment(environ)
    master.systemd.watchdog_interval = watchdog_interval(environ)
    reactor.callWhenRunning(watch_reload_signal, reactor, master)
    from balancebeam.workers.master_admin import master_admin_service

    admin = master_admin_service(master, master.config, reactor, exit_on_failure=True)
    if demo_service is None and admin is None:
        return master
    root = MultiService()
    for service in (demo_service, master, admin):
        if service is not None:
            service.setServiceParent(root)
    return root
