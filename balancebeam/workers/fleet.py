# -*- test-case-name: tests.test_workers_master -*-
"""
What the master of C{--workers N} holds, and the mechanics that act on it
without deciding anything (L{WorkerFleet}, the base class of
L{balancebeam.workers.master.Master}, which makes the decisions):

  - B{Sockets}: the listening sockets and the seat table, bound in
    C{privilegedStartService} (before twistd drops privileges) or taken
    from systemd, and closed last.
  - B{Generations}: the one serving, the one starting on a reload (and the
    reload asked for meanwhile, L{balancebeam.workers.pending_reload}),
    those draining, and the health (L{balancebeam.workers.health}) each
    follows.
  - B{Stopping workers}: C{SIGTERM}, then C{SIGKILL} after
    C{--shutdown-timeout} and
    L{KILL_GRACE <balancebeam.workers.supervision.KILL_GRACE>}; a generation
    is forgotten once its workers are all gone.
  - B{Counters}: each worker reports its counters and gauges every
    second; L{WorkerFleet.snapshot} adds the counters up, with those of the
    workers gone, so no sum ever goes down, and the gauges of the live
    workers only; L{WorkerFleet.collect} asks for fresh ones first.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from balancebeam.config import BalancerConfig, build_config, with_backlog
from balancebeam.health.checker import Probe
from balancebeam.registry import REMOVED, UpstreamRegistry
from balancebeam.workers.accept import SeatTable
from balancebeam.workers.control import REPORT, Message
from balancebeam.workers.counters import (
    LastReload,
    MasterSnapshot,
    UpstreamStatus,
    add_counters,
)
from balancebeam.workers.fleet_admin import FleetAdmin
from balancebeam.workers.health import SharedHealth
from balancebeam.workers.launch import (
    WorkerLauncher,
    spawn_launcher,
    without_systemd,
    worker_environment,
    worker_values,
)
from balancebeam.workers.notify import MasterNotifications
from balancebeam.workers.pending_reload import PendingReload
from balancebeam.workers.processes import Generation, WorkerProcess
from balancebeam.workers.sockets import (
    ListenerSpec,
    ListenFailed,
    UnsupportedListener,
    bind_listener,
    describe_socket,
    inspect_listener,
)
from balancebeam.workers.supervision import KILL_GRACE, READY_TIMEOUT, SILENCE_TIMEOUT


class WorkerFleet(Service):
    """
    What a master holds, and the mechanics that act on it without deciding
    anything: the base of L{balancebeam.workers.master.Master}, which
    decides when to start, replace, reload and stop.

    Its log events are named after the class of the instance (so a
    master's after L{Master <balancebeam.workers.master.Master>}), as
    C{Logger} names them.

    @ivar generation: the generation serving now (C{None} before start).
    @ivar sockets: the listening sockets, per listener: one shared socket,
        or one per slot with C{--reuse-port}.
    @ivar admin: what the master's admin changes in every worker
        (L{FleetAdmin}).
    @ivar reload_checks: called with a reload's configuration before its
        workers start; each may refuse it (C{ValueError}) or return what to
        apply once the new generation takes over (the admin token).
    @ivar started_at: clock time the master started, or C{None}.
    @ivar last_reload: how the last reload went.
    @ivar systemd: what the master tells systemd (L{MasterNotifications});
        by default nothing is sent.
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
        @param environment: the workers' environment (default: ours, with
            this balancebeam first on C{PYTHONPATH}); either way without
            systemd's socket activation, C{sd_notify} and watchdog
            variables, which are the master's
            (L{balancebeam.workers.launch.SYSTEMD_ENVIRONMENT}).
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
        self._environment = without_systemd(
            environment if environment is not None else worker_environment()
        )
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
        self._reload_later = PendingReload(reactor, self.log)
        self._retiring: list[Generation] = []
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._retired: dict[str, Any] = {}
        self._retired_probes = [0, 0]
        self._retired_health: dict[str, Any] = {}
        self._serial = 0
        self._generation_count = 0
        self._collecting: list[tuple[int, Deferred[MasterSnapshot], IDelayedCall]] = []
        self.admin = FleetAdmin(self.workers, reactor, changed=self._admin_changed)
        self.reload_checks: list[Callable[[BalancerConfig], Callable[[], None]]] = []
        self._reload_applies: list[Callable[[], None]] = []
        self.started_at: float | None = None
        self.worker_starts = 0
        self.worker_crashes = 0
        self.reloads = 0
        self.reloads_failed = 0
        self.last_reload = LastReload()
        self.systemd = MasterNotifications(reactor)

    # Sockets

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
        listeners = [(d, False) for d in self.config.listen]
        listeners += [(d, True) for d in self.config.tls.listen]
        backlog = self.config.listen_backlog
        for description, https in listeners:
            # The spec keeps the description as configured; its backlog is
            # --listen-backlog unless the description gives one.
            inspected = inspect_listener(with_backlog(description, backlog))
            spec = dataclasses.replace(inspected, description=description, https=https)
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
                "Listening for requests on {address} ({https}for {count} workers{how})",
                address=describe_socket(opened[0]),
                https="HTTPS, " if https else "",
                count=count,
                how=", a socket each" if reuse else "",
            )
        if not reuse:
            self.table, self._table_fd = self._seat_table()

    def _stop_listening(self) -> None:
        """
        Close the master's copies of the listening sockets (stopping): once
        the draining workers have closed theirs, the kernel refuses new
        connections at once instead of queueing them for nobody to accept.
        """
        for opened in self.sockets:
            for listener in opened:
                listener.close()
        self.sockets = []

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

    def _needs_restart(self, config: BalancerConfig) -> str | None:
        if config.workers < 2:
            return "going from several workers to one needs a restart"
        if config.listen != self.config.listen:
            return "changing the listeners needs a restart"
        if config.tls.listen != self.config.tls.listen:
            return "changing the HTTPS listeners needs a restart"
        if config.reuse_port != self.config.reuse_port:
            return "changing --reuse-port needs a restart"
        if config.admin_bind != self.config.admin_bind:
            return "changing --admin-bind needs a restart"
        if config.listen_backlog != self.config.listen_backlog:
            return "changing --listen-backlog needs a restart"
        if config.reuse_port and config.workers != self.config.workers:
            return "changing --workers with --reuse-port needs a restart (a socket per worker)"
        return None

    # Generations

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
            for name, state in self.admin.states.items():
                _set_admin_state(health, name, state)
        self._generation_count += 1
        return Generation(self._generation_count, config, given, health)

    def _admin_changed(self, name: str, state: str) -> None:
        """
        The admin changed an upstream's state: the master's health follows
        it too (a disabled upstream is probed no more, as in one process).
        """
        for health in {id(g.health): g.health for g in self._generations()}.values():
            _set_admin_state(health, name, state)

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

    def workers(self) -> list[WorkerProcess]:
        """
        Every live worker: the retiring generations', the current one's,
        then the starting one's.
        """
        return [w for g in self._generations() for w in g.live()]

    # Stuck workers

    def _heard_from(self, worker: WorkerProcess) -> None:
        """
        A ready worker reported (or just became ready): give it another
        L{SILENCE_TIMEOUT} before it is taken for stuck.
        """
        if worker.state != "ready":
            return
        timer = worker.timer
        if timer is not None and timer.active():
            timer.reset(SILENCE_TIMEOUT)
        else:
            worker.timer = self._reactor.callLater(SILENCE_TIMEOUT, self._silent, worker)

    def _silent(self, worker: WorkerProcess) -> None:
        """
        A ready worker sent nothing for L{SILENCE_TIMEOUT}: its event loop
        is stuck (an endless loop, a C{SIGSTOP}), and its connections
        starve. Kill it; it is replaced like a crashed worker.
        """
        worker.timer = None
        if worker.state != "ready":
            return
        self.log.error(
            "worker {slot} of generation {generation} (pid {pid}) sent nothing for"
            " {timeout} s: its event loop is stuck; killing it",
            slot=worker.slot,
            generation=worker.generation.number,
            pid=worker.pid,
            timeout=SILENCE_TIMEOUT,
        )
        worker.signal("KILL")

    # Stopping workers

    def _not_ready(self, worker: WorkerProcess) -> None:
        worker.timer = None
        self.log.error(
            "worker {slot} (pid {pid}) is not ready after {timeout} s: killing it",
            slot=worker.slot,
            pid=worker.pid,
            timeout=READY_TIMEOUT,
        )
        worker.signal("KILL")

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
        add_counters(self._retired_health, _health_counters(health.registry))
        return done

    def _finish_stopping(self) -> Deferred[None]:
        healths: list[SharedHealth] = []
        for generation in [*self._retiring, self.generation]:
            if generation is not None and generation.health not in healths:
                healths.append(generation.health)
        done: Deferred[Any] = succeed(None)
        for health in healths:
            done.addCallback(_then, self._stop_health, health)
        return done.addCallback(_then, self._close_sockets)

    # Counters and status

    def _reload_ended(self, error: str | None) -> None:
        """
        Count a reload that applied (C{error} is C{None}) or failed.
        """
        now = self._reactor.seconds()
        if error is None:
            self.reloads += 1
            self.last_reload = LastReload(True, now, now, None)
        else:
            self.reloads_failed += 1
            self.last_reload = LastReload(False, now, self.last_reload.success_at, error)

    def listening_on(self) -> list[str]:
        """
        C{host:port} of each listening socket the workers share.
        """
        return [describe_socket(opened[0]) for opened in self.sockets if opened]

    def has_cache(self) -> bool:
        """
        Whether the serving generation's workers have a response cache.
        """
        generation = self.generation
        return generation is not None and generation.config.cache.size > 0

    def _stats_received(self, worker: WorkerProcess, message: Message) -> None:
        self._heard_from(worker)
        counters = message.get("counters")
        if isinstance(counters, dict):
            worker.counters = counters
        gauges = message.get("gauges")
        if isinstance(gauges, dict):
            worker.gauges = gauges
        for name in ("requests", "connections", "serial"):
            value = message.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(worker, name, value)
        if self._collecting:
            self._check_collected()

    def snapshot(self) -> MasterSnapshot:
        """
        The sums of every worker's counters as last reported (those of
        workers gone included: no sum goes down when a worker is replaced),
        the sums of the live workers' gauges, one L{WorkerStatus} per live
        worker, and each upstream's state as the master and each worker
        see it.
        """
        counters: dict[str, Any] = {}
        add_counters(counters, self._retired)
        live = self.workers()
        gauges: dict[str, Any] = {}
        for worker in live:
            add_counters(counters, worker.counters)
            add_counters(gauges, worker.gauges)
        sent, failed = self._retired_probes
        healths = {id(g.health): g.health for g in self._generations()}
        add_counters(counters, {"upstreams": self._retired_health})
        for health in healths.values():
            if health.running and health.checker is not None:
                sent += health.checker.probes_sent
                failed += health.checker.probes_failed
            if health.running:
                add_counters(counters, {"upstreams": _health_counters(health.registry)})
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
            gauges=gauges,
            upstreams=self._upstream_states(live),
            last_reload=self.last_reload,
            listeners=tuple(self.listening_on()),
            strategy=generation.config.strategy if generation is not None else "",
            draining=self._stopping,
        )

    def _upstream_states(self, live: Sequence[WorkerProcess]) -> tuple[UpstreamStatus, ...]:
        """
        Each upstream of the serving generation as the master's health has
        it, then those only draining generations have (C{removed}), each
        with the live workers following that health that report it up and
        down.
        """
        seen: dict[tuple[int, str], tuple[list[int], list[int]]] = {}
        for worker in live:
            reported = worker.gauges.get("upstreams")
            if not isinstance(reported, Mapping):
                continue
            followed = id(worker.generation.health)
            for name, values in reported.items():
                alive = values.get("alive") if isinstance(values, Mapping) else None
                if isinstance(alive, bool):
                    up, down = seen.setdefault((followed, name), ([], []))
                    (up if alive else down).append(worker.pid)
        generations = [self.generation, *self._retiring]
        rows: dict[str, UpstreamStatus] = {}
        for index, generation in enumerate(generations):
            if generation is None:
                continue
            health = generation.health
            checker = health.checker
            for upstream in health.registry.upstreams:
                if upstream.name in rows:
                    continue
                result = checker.last_results.get(upstream.name) if checker else None
                up, down = seen.get((id(health), upstream.name), ([], []))
                if index > 0 and not up and not down:
                    continue
                rows[upstream.name] = UpstreamStatus(
                    name=upstream.name,
                    healthy=upstream.alive,
                    weight=upstream.weight,
                    since=upstream.state_since,
                    last_probe=(
                        {"healthy": result.healthy, "reason": result.reason, "at": result.at}
                        if result is not None
                        else None
                    ),
                    workers_up=tuple(up),
                    workers_down=tuple(down),
                    removed=index > 0,
                )
        return tuple(rows.values())

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


def _set_admin_state(health: SharedHealth, name: str, state: str) -> None:
    """
    Put the upstream C{name} of C{health} in admin state C{state}, when it
    has one by that name.
    """
    upstream = health.registry.get(name)
    if upstream is not None and upstream.admin_state != REMOVED:
        health.registry.set_admin_state(upstream, state, "asked on the master's admin")


def _health_counters(registry: UpstreamRegistry) -> dict[str, Any]:
    """
    The counters the master's health keeps for each upstream: its failed
    probes and its state changes (the workers follow them).
    """
    return {
        upstream.name: {
            "check_failures": upstream.check_failures,
            "state_changes": upstream.state_changes,
        }
        for upstream in registry.upstreams
    }


def _then(_: object, call: Callable[..., Any], *args: Any) -> Any:
    """
    Call C{call(*args)}, ignoring the result passed along a callback chain.
    """
    return call(*args)
