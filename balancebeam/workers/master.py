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
  - B{SIGTERM} (C{stopService}): every worker drains (up to
    C{--shutdown-timeout}, then it is killed), then the master exits.
  - B{Health}: the master probes the upstreams and sends their state to the
    workers (L{balancebeam.workers.health}).
  - B{Counters}: each worker reports its counters every second;
    L{Master.snapshot} adds them up, with those of the workers gone, so no
    sum ever goes down; L{Master.collect} asks for fresh ones first.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

import balancebeam
from balancebeam.config import BalancerConfig, build_config
from balancebeam.health.checker import Probe
from balancebeam.workers.accept import SeatTable
from balancebeam.workers.control import DOWN, READY, REPORT, STATS, Message, MessageDecoder, encode
from balancebeam.workers.health import SharedHealth
from balancebeam.workers.sockets import (
    ListenerSpec,
    ListenFailed,
    UnsupportedListener,
    bind_listener,
    describe_socket,
    inspect_listener,
)
from balancebeam.workers.worker import ListenerFd, WorkerSpec

KILL_GRACE = 2.0
"""
Seconds after C{--shutdown-timeout} before a draining worker is killed: the
worker aborts what is left at C{--shutdown-timeout} itself, and needs a
moment to exit after that.
"""

READY_TIMEOUT = 60.0
"""Seconds a new worker has to become ready before it is killed."""

STABLE_AFTER = 10.0
"""Seconds a worker must have run for its exit not to count as a crash loop."""

RESTART_BASE = 0.5
"""The delay before the second replacement in a crash loop, doubled each time."""

RESTART_CAP = 30.0
"""The longest delay between two replacements in a crash loop."""

STATS_INTERVAL = 1.0
"""Seconds between two reports of a worker's counters."""

CONTROL_IN = 0
"""The worker's descriptor the master writes to (its standard input)."""

CONTROL_OUT = 3
"""The worker's descriptor the master reads."""

_FIRST_SHARED_FD = 4
"""The first worker descriptor given to the seat table and the sockets."""

_LISTEN_ENVIRONMENT = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
"""systemd's socket activation variables, meant for the master only."""


def restart_delay(streak: int) -> float:
    """
    How long to wait before replacing a worker that exited unasked.

    @param streak: how many workers of this slot in a row died within
        L{STABLE_AFTER} seconds of starting, this one included (1 for a
        worker that had run longer).
    @return: 0 for the first, then L{RESTART_BASE} doubled each time, at
        most L{RESTART_CAP}.
    """
    if streak <= 1:
        return 0.0
    return float(min(RESTART_CAP, RESTART_BASE * 2 ** (streak - 2)))


def add_counters(total: dict[str, Any], values: Mapping[str, Any]) -> None:
    """
    Add C{values} into C{total}: integers are summed and nested
    dictionaries added the same way; anything else is left out.
    """
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            current = total.get(name, 0)
            total[name] = (current if isinstance(current, int) else 0) + value
        elif isinstance(value, Mapping):
            nested = total.get(name)
            if not isinstance(nested, dict):
                nested = total[name] = {}
            add_counters(nested, value)


def describe_exit(reason: Failure) -> str:
    """
    How a process ended, for logs: C{exited with status 3}, C{was killed by
    signal SIGKILL}.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = str(signal_number)
        return f"was killed by signal {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


def twistd_log_options(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """
    Find twistd's C{--logger} and C{--logfile} (C{-l}) in its command line,
    before the plugin name, so that workers log the same way.

    @return: the logger's name and the log file's path, each C{None} when
        not given (a log file of C{-} means standard output).
    """
    logger: str | None = None
    logfile: str | None = None
    index = 1
    while index < len(argv):
        token = argv[index]
        if token == "balancebeam" or not token.startswith("-"):
            break
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token.startswith("--logger="):
            logger = token.split("=", 1)[1]
        elif token == "--logger" and following is not None:
            logger, index = following, index + 1
        elif token.startswith("--logfile="):
            logfile = token.split("=", 1)[1]
        elif token in ("--logfile", "-l") and following is not None:
            logfile, index = following, index + 1
        elif token.startswith("-l") and not token.startswith("--"):
            logfile = token[2:]
        index += 1
    if logfile in ("", "-"):
        logfile = None
    return logger or None, logfile


class WorkerLauncher(Protocol):
    """
    Starts a worker process (C{reactor.spawnProcess} in production).
    """

    def __call__(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str],
        child_fds: dict[int, int | str],
    ) -> IProcessTransport:
        """
        Start C{executable} with C{args} and C{env}, descriptors as
        C{child_fds} says (C{"w"}: a pipe we write, C{"r"}: a pipe we
        read, a number: that descriptor of ours), connected to C{protocol}.
        """


def spawn_launcher(reactor: Any) -> WorkerLauncher:
    """
    A L{WorkerLauncher} on C{reactor.spawnProcess}.
    """

    def launch(
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str],
        child_fds: dict[int, int | str],
    ) -> IProcessTransport:
        transport: IProcessTransport = reactor.spawnProcess(
            protocol, executable, args, env=env, childFDs=child_fds
        )
        return transport

    return launch


@dataclass(frozen=True)
class WorkerStatus:
    """
    One worker, as the admin's C{/status} shows it.

    @ivar pid: its process id.
    @ivar slot: its place in its generation (0 to N-1).
    @ivar generation: 1 for the first workers, one more per reload.
    @ivar started: clock time it was started.
    @ivar state: C{starting}, C{ready} or C{stopping}.
    @ivar requests: requests it has parsed (as of its last report).
    @ivar connections: client connections it holds (as of its last report).
    """

    pid: int
    slot: int
    generation: int
    started: float
    state: str
    requests: int
    connections: int


@dataclass(frozen=True)
class MasterSnapshot:
    """
    What the master knows of all its workers.

    @ivar counters: the sums of every worker's counters (the keys of
        L{balancebeam.service.BalancerService.snapshot}, C{responses}
        nested), those of workers gone included, plus the master's own:
        C{worker_starts}, C{worker_crashes}, C{reloads}, C{reloads_failed},
        C{health_probes_sent} and C{health_probes_failed}. None ever goes down.
    @ivar workers: one entry per live worker, by generation and slot.
    @ivar generation: the generation serving now.
    @ivar upstreams_up: names of the upstreams in rotation.
    @ivar upstreams_down: names of the upstreams out of rotation.
    """

    counters: dict[str, Any]
    workers: tuple[WorkerStatus, ...]
    generation: int
    upstreams_up: tuple[str, ...]
    upstreams_down: tuple[str, ...]


class WorkerProcess(ProcessProtocol):
    """
    The master's side of one worker process.

    @ivar state: C{starting} (until it says it is ready), C{ready},
        C{stopping} (asked to stop) or C{gone}.
    @ivar counters: its counters as of its last report.
    @ivar stop_requested: whether the master asked it to stop (so its exit
        is no crash).
    """

    def __init__(self, master: Master, generation: Generation, slot: int, seat: int) -> None:
        self.master = master
        self.generation = generation
        self.slot = slot
        self.seat = seat
        self.pid = 0
        self.started = 0.0
        self.ready_at: float | None = None
        self.state = "starting"
        self.counters: dict[str, Any] = {}
        self.requests = 0
        self.connections = 0
        self.serial = 0
        self.stop_requested = False
        self.timer: IDelayedCall | None = None
        self._decoder = MessageDecoder()

    def connectionMade(self) -> None:
        """
        The process started: note its pid.
        """
        self.pid = getattr(self.transport, "pid", None) or 0

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        """
        Messages from the worker arrive on its descriptor L{CONTROL_OUT}.
        """
        if childFD != CONTROL_OUT:
            return
        for message in self._decoder.feed(data):
            self.master.message_received(self, message)

    def processEnded(self, reason: Failure) -> None:
        """
        The process exited and its pipes are closed.
        """
        self.master.worker_ended(self, reason)

    def send(self, message: Mapping[str, object]) -> None:
        """
        Send one message to the worker, unless it is gone.
        """
        if self.state != "gone" and self.transport is not None:
            try:
                self.transport.writeToChild(CONTROL_IN, encode(message))
            except (KeyError, OSError):
                pass

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"TERM"}, C{"KILL"}) unless the process is gone.
        """
        if self.state == "gone" or self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    def cancel_timer(self) -> None:
        """
        Cancel the pending ready or kill deadline.
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def status(self) -> WorkerStatus:
        """
        This worker for C{/status}.
        """
        return WorkerStatus(
            self.pid,
            self.slot,
            self.generation.number,
            self.started,
            self.state,
            self.requests,
            self.connections,
        )


class Generation:
    """
    The workers started from one configuration.

    @ivar number: 1, then one more per reload.
    @ivar config: the configuration its workers build.
    @ivar values: the option values its workers are given.
    @ivar health: the upstreams' state its workers follow.
    @ivar workers: the live worker of each slot, or C{None}.
    @ivar streaks: each slot's count of quick deaths in a row.
    @ivar restarts: each slot's pending replacement.
    """

    def __init__(
        self,
        number: int,
        config: BalancerConfig,
        values: Mapping[str, object],
        health: SharedHealth,
    ) -> None:
        self.number = number
        self.config = config
        self.values = dict(values)
        self.health = health
        count = config.workers
        self.workers: list[WorkerProcess | None] = [None] * count
        self.streaks = [0] * count
        self.restarts: list[IDelayedCall | None] = [None] * count

    def live(self) -> list[WorkerProcess]:
        """
        Its workers that have not exited.
        """
        return [w for w in self.workers if w is not None]

    def cancel_restarts(self) -> None:
        """
        Forget the pending replacements.
        """
        for index, restart in enumerate(self.restarts):
            if restart is not None and restart.active():
                restart.cancel()
            self.restarts[index] = None


_WORKER_ONLY = ("bind", "listen", "workers", "reuse-port", "demo")
"""Options the master applies and its workers are not given."""


def worker_values(
    values: Mapping[str, object], extra_upstreams: Sequence[str] = ()
) -> dict[str, object]:
    """
    The option values a worker builds its balancer from: the master's,
    without the listeners, the process model and C{--demo}, and with the
    demo upstreams the master started as plain C{--upstream}s.
    """
    result = {k: v for k, v in values.items() if k not in _WORKER_ONLY}
    if extra_upstreams:
        upstreams = result.get("upstream", [])
        listed = list(upstreams) if isinstance(upstreams, (list, tuple)) else []
        result["upstream"] = listed + list(extra_upstreams)
    return result


class Master(Service):
    """
    The master of C{--workers N}.

    @ivar generation: the generation serving now (C{None} before start).
    @ivar sockets: the listening sockets, per listener: one shared socket,
        or one per slot with C{--reuse-port}.
    """

    log = Logger()

    def __init__(
        self,
        values: Mapping[str, object],
        reactor: Any,
        *,
        launch: WorkerLauncher | None = None,
        extra_upstreams: Sequence[str] = (),
        reload_values: Callable[[], Mapping[str, object]] | None = None,
        python: str = sys.executable,
        logger: str | None = None,
        logfile: str | None = None,
        reactor_module: str | None = None,
        environment: Mapping[str, str] | None = None,
        probe: Probe | None = None,
        open_listener: Callable[[ListenerSpec, bool, int | None], Any] = bind_listener,
        seat_table: Callable[[], tuple[SeatTable, int]] = SeatTable.create,
        exit_on_listen_failure: bool = False,
    ) -> None:
        """
        @param values: the option values (as L{build_config} takes them),
            with C{workers} above 1.
        @param reactor: runs everything; C{IReactorTime}, C{IReactorProcess}.
        @param launch: starts a worker (default: C{reactor.spawnProcess}).
        @param extra_upstreams: C{HOST:PORT}s added to every generation's
            upstreams (the demo upstreams, which the master runs).
        @param reload_values: the option values of the next generation (on
            SIGHUP); by default C{values} again, so a reload restarts the
            workers on the code and files now on disk.
        @param python: the interpreter the workers run on.
        @param logger: twistd's C{--logger}, for the workers.
        @param logfile: twistd's C{--logfile}, for the workers.
        @param reactor_module: the module whose C{install()} installs this
            reactor, for the workers.
        @param environment: the workers' environment (default: ours,
            without systemd's socket activation variables, with this
            balancebeam first on C{PYTHONPATH}).
        @param probe: probes an upstream (tests; default an HTTP probe).
        @param open_listener: binds a socket (tests replace it).
        @param seat_table: makes the shared seat table (tests replace it).
        @param exit_on_listen_failure: raise C{SystemExit} with one line
            when a socket cannot be bound (as under twistd).
        """
        config = build_config(values)
        if config.workers < 2:
            raise ValueError("a master needs --workers 2 or more")
        self.config = config
        self._values = dict(values)
        self._reactor = reactor
        self._launch = launch or spawn_launcher(reactor)
        self._extra_upstreams = tuple(extra_upstreams)
        self._reload_values = reload_values or (lambda: self._values)
        self._python = python
        self._logger = logger
        self._logfile = logfile
        self._reactor_module = reactor_module
        self._environment = dict(environment) if environment is not None else _environment()
        self._probe = probe
        self._open_listener = open_listener
        self._seat_table = seat_table
        self._exit_on_listen_failure = exit_on_listen_failure
        self.specs: list[ListenerSpec] = []
        self.sockets: list[list[Any]] = []
        self.table: SeatTable | None = None
        self._table_fd: int | None = None
        self.generation: Generation | None = None
        self._pending: Generation | None = None
        self._reloaded: Deferred[bool] | None = None
        self._retiring: list[Generation] = []
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._retired: dict[str, Any] = {}
        self._retired_probes = [0, 0]
        self._serial = 0
        self._generation_count = 0
        self._collecting: list[tuple[int, Deferred[MasterSnapshot], IDelayedCall]] = []
        self.worker_starts = 0
        self.worker_crashes = 0
        self.reloads = 0
        self.reloads_failed = 0

    # Starting

    def privilegedStartService(self) -> None:
        """
        Bind the listening sockets (before twistd drops privileges).

        @raise SystemExit: with one line, when a socket cannot be bound and
            C{exit_on_listen_failure} is set.
        @raise ListenFailed: when a socket cannot be bound otherwise.
        @raise UnsupportedListener: for an endpoint that cannot be shared.
        """
        super().privilegedStartService()
        try:
            self._bind()
        except (ListenFailed, UnsupportedListener) as error:
            self._close_sockets()
            if self._exit_on_listen_failure:
                raise SystemExit(f"balancebeam: {error}") from None
            raise

    def _bind(self) -> None:
        count = self.config.workers
        reuse = self.config.reuse_port
        for description in self.config.listen:
            spec = inspect_listener(description)
            if reuse and spec.inherited_fd is not None:
                raise UnsupportedListener(
                    f"cannot give each worker its own socket (--reuse-port) for "
                    f"{description!r}: systemd passed one socket"
                )
            self.specs.append(spec)
            opened: list[Any] = []
            self.sockets.append(opened)
            for _ in range(count if reuse else 1):
                port = opened[0].getsockname()[1] if opened else None
                try:
                    opened.append(self._open_listener(spec, reuse, port))
                except OSError as error:
                    reason = CannotListenError(spec.host, port or spec.port, error)
                    raise ListenFailed(f"cannot listen on {description}: {reason}") from None
            self.log.info(
                "Listening for requests on {address} (for {count} workers{how})",
                address=describe_socket(opened[0]),
                count=count,
                how=", a socket each" if reuse else "",
            )
        if not reuse:
            self.table, self._table_fd = self._seat_table()

    def startService(self) -> None:
        """
        Start the first generation of workers.
        """
        super().startService()
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
        for slot in range(len(generation.workers)):
            self._spawn(generation, slot)

    def _new_generation(self, count: int, values: Mapping[str, object]) -> Generation:
        """
        A generation of C{count} workers built from the option C{values},
        following the current generation's health when it has the same
        upstreams and health settings, or a new one.

        @raise balancebeam.config.ConfigError: on a bad value.
        """
        given = worker_values(values, self._extra_upstreams)
        config = build_config({**given, "workers": str(count)})
        current = self.generation
        if current is not None and current.health.same_settings(config):
            health = current.health
        else:
            made: list[SharedHealth] = []
            health = SharedHealth(
                config,
                self._reactor,
                lambda message: self._broadcast(made[0], message),
                probe=self._probe,
            )
            made.append(health)
        self._generation_count += 1
        return Generation(self._generation_count, config, given, health)

    def _broadcast(self, health: SharedHealth, message: Message) -> None:
        """
        Send a health message to every worker following C{health}.
        """
        for generation in self._generations():
            if generation.health is health:
                for worker in generation.live():
                    worker.send(message)

    def _generations(self) -> list[Generation]:
        """
        Every generation with live workers or about to have some.
        """
        result = list(self._retiring)
        for generation in (self.generation, self._pending):
            if generation is not None and generation not in result:
                result.append(generation)
        return result

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
        fd = _FIRST_SHARED_FD
        seat_fd = None
        if self.table is not None and self._table_fd is not None:
            child_fds[fd] = self._table_fd
            seat_fd, fd = fd, fd + 1
        listeners = []
        for listener, opened in zip(self.specs, self.sockets):
            chosen = opened[slot % len(opened)]
            child_fds[fd] = chosen.fileno()
            listeners.append(
                ListenerFd(fd, listener.family, listener.description, listener.tls is not None)
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

    def _not_ready(self, worker: WorkerProcess) -> None:
        worker.timer = None
        self.log.error(
            "worker {slot} (pid {pid}) is not ready after {timeout} s: killing it",
            slot=worker.slot,
            pid=worker.pid,
            timeout=READY_TIMEOUT,
        )
        worker.signal("KILL")

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
        elif kind == DOWN:
            name, reason = message.get("upstream"), message.get("reason")
            if isinstance(name, str):
                worker.generation.health.passive_failure(name, str(reason), worker.pid)
        else:
            self.log.warn(
                "unknown message {kind} from worker {pid}", kind=kind, pid=worker.pid
            )

    def _stats_received(self, worker: WorkerProcess, message: Message) -> None:
        counters = message.get("counters")
        if isinstance(counters, dict):
            worker.counters = counters
        for name in ("requests", "connections", "serial"):
            value = message.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(worker, name, value)
        if self._collecting:
            self._check_collected()

    def _ready(self, worker: WorkerProcess) -> None:
        if worker.state != "starting":
            return
        worker.state = "ready"
        worker.ready_at = self._reactor.seconds()
        worker.cancel_timer()
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

    def _forget_finished(self) -> None:
        """
        Drop retired generations whose workers are all gone (and stop the
        health they alone followed); finish stopping once none is left.
        """
        for generation in list(self._retiring):
            if generation.live():
                continue
            self._retiring.remove(generation)
            self.log.info(
                "generation {generation} has stopped", generation=generation.number
            )
            if all(g.health is not generation.health for g in self._generations()):
                self._stop_health(generation.health)
        if self._stopping and self._stopped is not None:
            if not any(g.live() for g in self._generations()):
                stopped, self._stopped = self._stopped, None
                self._finish_stopping().chainDeferred(stopped)

    def _stop_health(self, health: SharedHealth) -> Deferred[None]:
        """
        Stop a health no generation follows any more, keeping its probe counts.
        """
        if not health.running:
            return succeed(None)
        done = health.stopService()
        if health.checker is not None:
            self._retired_probes[0] += health.checker.probes_sent
            self._retired_probes[1] += health.checker.probes_failed
        return done

    # Reloading

    def reload(self, values: Mapping[str, object] | None = None) -> Deferred[bool]:
        """
        Start a new generation of workers on the same sockets, and once all
        of them are ready, stop the current one (it drains).

        @param values: the option values of the new generation; by default
            those C{reload_values} gives.
        @return: fires with whether the new generation took over (C{False}
            when the values are bad, change what needs a restart, or a new
            worker failed before it was ready; the current generation then
            serves on).
        """
        if self._stopping or self.generation is None:
            return succeed(False)
        if self._pending is not None:
            self.log.warn(
                "reload asked while generation {generation} is starting: ignored",
                generation=self._pending.number,
            )
            return succeed(False)
        try:
            new_values = dict(self._reload_values() if values is None else values)
            config = build_config(new_values)
        except ValueError as error:
            self.log.error("reload refused: {error}; the workers serve on", error=str(error))
            self.reloads_failed += 1
            return succeed(False)
        problem = self._needs_restart(config)
        if problem is not None:
            self.log.error("reload refused: {problem}; the workers serve on", problem=problem)
            self.reloads_failed += 1
            return succeed(False)
        generation = self._new_generation(config.workers, new_values)
        if generation.health is not self.generation.health:
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

    def _needs_restart(self, config: BalancerConfig) -> str | None:
        if config.workers < 2:
            return "going from several workers to one needs a restart"
        if config.listen != self.config.listen:
            return "changing the listeners needs a restart"
        if config.reuse_port != self.config.reuse_port:
            return "changing --reuse-port needs a restart"
        if config.reuse_port and config.workers != self.config.workers:
            return "changing --workers with --reuse-port needs a restart (a socket per worker)"
        return None

    def _commit_reload(self) -> None:
        pending, old = self._pending, self.generation
        assert pending is not None and old is not None
        self._pending = None
        self.generation = pending
        self.reloads += 1
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

    def _abort_reload(self, why: str) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self.reloads_failed += 1
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

    def _stop_workers(self, workers: Sequence[WorkerProcess], grace: float) -> None:
        """
        Ask workers to drain (SIGTERM); kill those still running after
        C{grace} and L{KILL_GRACE} seconds.
        """
        for worker in workers:
            if worker.stop_requested:
                continue
            worker.stop_requested = True
            worker.state = "stopping"
            worker.cancel_timer()
            worker.signal("TERM")
            worker.timer = self._reactor.callLater(
                grace + KILL_GRACE, self._kill_straggler, worker, grace
            )

    def _kill_straggler(self, worker: WorkerProcess, grace: float) -> None:
        worker.timer = None
        self.log.warn(
            "worker {slot} of generation {generation} (pid {pid}) still runs {grace} s"
            " after it was asked to stop: killing it",
            slot=worker.slot,
            generation=worker.generation.number,
            pid=worker.pid,
            grace=grace + KILL_GRACE,
        )
        worker.signal("KILL")

    # Stopping

    def stopService(self) -> Deferred[None]:
        """
        Drain every worker (each for up to its C{--shutdown-timeout}), then
        stop probing and close the sockets.

        @return: fires once every worker has exited.
        """
        super().stopService()
        if self._stopping:
            return succeed(None)
        self._stopping = True
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
        self._forget_finished()
        return stopped

    def _finish_stopping(self) -> Deferred[None]:
        healths: list[SharedHealth] = []
        for generation in [*self._retiring, self.generation]:
            if generation is not None and generation.health not in healths:
                healths.append(generation.health)
        done: Deferred[Any] = succeed(None)
        for health in healths:
            done.addCallback(_then, self._stop_health, health)
        return done.addCallback(_then, self._close_sockets)

    def _close_sockets(self) -> None:
        for opened in self.sockets:
            for listener in opened:
                listener.close()
        self.sockets = []
        self.specs = []
        if self.table is not None:
            self.table.close()
            self.table = None
        if self._table_fd is not None:
            os.close(self._table_fd)
            self._table_fd = None

    # Counters and status

    def workers(self) -> list[WorkerProcess]:
        """
        Every live worker: the retiring generations', the current one's,
        then the starting one's.
        """
        return [w for g in self._generations() for w in g.live()]

    def snapshot(self) -> MasterSnapshot:
        """
        The sums of every worker's counters as last reported (those of
        workers gone included: no sum goes down when a worker is replaced),
        and one L{WorkerStatus} per live worker.
        """
        counters: dict[str, Any] = {}
        add_counters(counters, self._retired)
        live = self.workers()
        for worker in live:
            add_counters(counters, worker.counters)
        sent, failed = self._retired_probes
        healths = {id(g.health): g.health for g in self._generations()}
        for health in healths.values():
            if health.running and health.checker is not None:
                sent += health.checker.probes_sent
                failed += health.checker.probes_failed
        counters.update(
            worker_starts=self.worker_starts,
            worker_crashes=self.worker_crashes,
            reloads=self.reloads,
            reloads_failed=self.reloads_failed,
            health_probes_sent=sent,
            health_probes_failed=failed,
        )
        generation = self.generation
        registry = generation.health.registry if generation is not None else None
        upstreams = registry.upstreams if registry is not None else ()
        return MasterSnapshot(
            counters=counters,
            workers=tuple(w.status() for w in live),
            generation=generation.number if generation is not None else 0,
            upstreams_up=tuple(u.name for u in upstreams if u.alive),
            upstreams_down=tuple(u.name for u in upstreams if not u.alive),
        )

    def collect(self, timeout: float = 1.0) -> Deferred[MasterSnapshot]:
        """
        Ask every ready worker for its counters now, and give the
        L{snapshot} once all have answered (or exited), or after C{timeout}
        seconds with what has arrived.
        """
        self._serial += 1
        serial = self._serial
        for worker in self.workers():
            if worker.state in ("ready", "stopping"):
                worker.send({"type": REPORT, "serial": serial})
        collected: Deferred[MasterSnapshot] = Deferred()
        deadline = self._reactor.callLater(timeout, self._collect_timed_out, collected)
        self._collecting.append((serial, collected, deadline))
        self._check_collected()
        return collected

    def _check_collected(self) -> None:
        waiting = []
        for serial, collected, deadline in self._collecting:
            if all(
                w.serial >= serial or w.state == "starting" for w in self.workers()
            ):
                if deadline.active():
                    deadline.cancel()
                collected.callback(self.snapshot())
            else:
                waiting.append((serial, collected, deadline))
        self._collecting = waiting

    def _collect_timed_out(self, collected: Deferred[MasterSnapshot]) -> None:
        self._collecting = [c for c in self._collecting if c[1] is not collected]
        collected.callback(self.snapshot())


def _then(_: object, call: Callable[..., Any], *args: Any) -> Any:
    """
    Call C{call(*args)}, ignoring the result passed along a callback chain.
    """
    return call(*args)


def _environment() -> dict[str, str]:
    """
    The workers' environment: ours without systemd's socket activation
    variables, with the directory this balancebeam was imported from first
    on C{PYTHONPATH} (so a worker runs the master's code, from its path).
    """
    environment = {k: v for k, v in os.environ.items() if k not in _LISTEN_ENVIRONMENT}
    root = os.path.dirname(os.path.dirname(os.path.abspath(balancebeam.__file__)))
    paths = [root] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


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
) -> IService:
    """
    The service of a twistd process that is the master of C{--workers N}.

    @param values: the option values (C{Options.config_values()}).
    @param demo: start the demo upstreams here, and give them to the workers.
    @param argv: twistd's command line, to log in the workers as twistd
        does here (L{twistd_log_options}).
    @param reload_values: what SIGHUP reloads (by default C{values}).
    @return: the L{Master}, or with C{demo} a service holding the demo
        upstreams and then the master.
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
    reactor.callWhenRunning(watch_reload_signal, reactor, master)
    if demo_service is None:
        return master
    root = MultiService()
    demo_service.setServiceParent(root)
    master.setServiceParent(root)
    return root

