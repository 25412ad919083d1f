# -*- test-case-name: tests.test_workers_worker -*-
"""
A worker process: C{python -m balancebeam.workers.worker --spec JSON}.

The master (L{balancebeam.workers.master}) starts it with the listening
sockets and two pipes as descriptors (C{childFDs}), and a L{WorkerSpec}
saying which is which, the option values, and how to log. The worker:

  1. installs the master's reactor and logs as the master does, each line
     marked with its pid;
  2. builds the balancer from the option values
     (L{balancebeam.service.BalancerService}), without listeners of its own,
     without active health checks, without passive retry timers and
     without a C{SIGHUP} handler: the master probes the upstreams and sends
     their state, and takes C{SIGHUP};
  3. waits for that state (the master sends it at once), then accepts
     connections on the shared sockets (L{SharedListenerService}; on an
     HTTPS one, C{--tls-bind}, with TLS from its own certificate store) and
     tells the master it is L{READY <balancebeam.workers.control.READY>};
  4. reports its counters every second, and each connect failure to an
     upstream (the master passes it on to the other workers);
  5. on SIGTERM, or when the master's pipe closes (the master died), stops
     accepting, drains like a single balancebeam process (at most
     C{--shutdown-timeout}), sends its last counters and exits.

This module holds the worker (L{Worker}), its shared listeners
(L{SharedListenerService}) and its entry point (L{main}). Beside it, and
importable from here too: the L{WorkerSpec} and L{ListenerFd} it is given
(L{balancebeam.workers.spec}), its first steps (L{install_reactor},
L{make_observer}, L{worker_observer}: L{balancebeam.workers.startup}) and
its end of the control channel (L{ControlProtocol}:
L{balancebeam.workers.control_protocol}).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.workers.accept import BalancedAcceptor, SeatTable
from balancebeam.workers.control import (
    ADMIN,
    DOWN,
    HEALTH,
    PURGE,
    READY,
    REPORT,
    STATS,
    Message,
)
from balancebeam.workers.control_protocol import ControlProtocol
from balancebeam.workers.spec import ListenerFd, WorkerSpec
from balancebeam.workers.startup import install_reactor, make_observer, worker_observer
from balancebeam.workers.worker_admin import (
    apply_admin_states,
    purge,
    report_counters,
    report_gauges,
)

__all__ = [
    "FINAL_FLUSH_TIMEOUT",
    "SETTLE",
    "STOP_GRACE",
    "ControlProtocol",
    "ListenerFd",
    "SharedListenerService",
    "Worker",
    "WorkerSpec",
    "install_reactor",
    "main",
    "make_observer",
    "parse_arguments",
    "worker_observer",
]


SETTLE = 0.25
"""
Seconds a worker that stopped accepting waits before it drains: a
connection it accepted just before may not have sent its request yet, and
the drain closes connections that have sent nothing.
"""

FINAL_FLUSH_TIMEOUT = 2.0
"""Seconds a stopping worker waits for its last message to reach the master."""

STOP_GRACE = 2.0
"""
Seconds after C{--shutdown-timeout} a worker waits for its drain to finish
before it exits anyway. The drain aborts what is left at
C{--shutdown-timeout}, but a connection already closing (a TLS peer that
never answers the close, a client that stopped reading) is not aborted, and
with the master gone nobody would kill the worker.
"""


class SharedListenerService(Service):
    """
    Accepts connections on one socket the master shares with the workers.

    With a L{SeatTable}, accepting is balanced with the other workers
    (L{BalancedAcceptor}); without (C{--reuse-port}, a socket per worker),
    Twisted's own port does it (C{reactor.adoptStreamPort}). Stopping stops
    accepting and leaves the socket to the others (nothing is shut down),
    then waits L{SETTLE} seconds before the drain.

    @ivar port: the listening port, once started.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listener: ListenerFd,
        factory: IProtocolFactory,
        table: SeatTable | None,
        seat: int,
        connections: Any,
        settle: float = SETTLE,
    ) -> None:
        self._reactor = reactor
        self._listener = listener
        self._factory = factory
        self._table = table
        self._seat = seat
        self._connections = connections
        self._settle = settle
        self.port: IListeningPort | None = None
        self.setName(f"shared listener {listener.description}")

    def startService(self) -> None:
        """
        Start accepting on the inherited descriptor.
        """
        super().startService()
        factory = self._factory
        if self._listener.tls:
            factory = _tls_factory(self._listener.description, factory)
        if self._table is None:
            self.port = self._reactor.adoptStreamPort(
                self._listener.fd, self._listener.family, factory
            )
            os.close(self._listener.fd)
        else:
            acceptor = BalancedAcceptor(
                self._reactor,
                socket.socket(fileno=self._listener.fd),
                factory,
                self._table,
                self._seat,
                self._connections,
            )
            acceptor.startListening()
            self.port = acceptor
        assert self.port is not None
        self.log.info(
            "accepting connections on {address}{https}",
            address=_describe(self.port.getHost()),
            https=" (HTTPS)" if self._listener.https else "",
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, then give connections accepted just before a moment
        to send their request.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        if isinstance(port, BalancedAcceptor):
            port.stop_accepting()
        else:
            port.stopListening()
        return deferLater(self._reactor, self._settle, lambda: None)


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connections(service: Any) -> int:
    """
    The client connections a worker's balancer holds, plain and HTTPS.
    """
    return sum(len(factory.connections) for factory in service.relay_factories)


def _tls_factory(description: str, factory: IProtocolFactory) -> IProtocolFactory:
    """
    Wrap C{factory} in TLS with the context of the C{ssl:} endpoint C{description}.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from balancebeam.workers.sockets import inspect_listener

    spec = inspect_listener(description)
    return TLSMemoryBIOFactory(spec.tls, False, factory)


class Worker:
    """
    One worker's balancer, its listeners and its end of the control channel.

    @ivar service: the balancer (built by L{build}).
    @ivar state: C{"waiting"} (for the upstreams' state), C{"serving"},
        C{"stopping"} or C{"stopped"}.
    """

    log = Logger()

    def __init__(self, spec: WorkerSpec, reactor: Any, pid: int) -> None:
        """
        @param spec: what the master said.
        @param reactor: the running reactor (C{IReactorTime},
            C{IReactorSocket}, C{IReactorFDSet}, C{IReactorCore}).
        @param pid: this process's id, for the messages.
        """
        self.spec = spec
        self._reactor = reactor
        self._pid = pid
        self.state = "waiting"
        self.control: ControlProtocol | None = None
        self.table: SeatTable | None = None
        self._stats_loop: LoopingCall | None = None
        self._last_serial = 0
        self.service: Any = None

    def build(self) -> None:
        """
        Build the balancer and its shared listeners (nothing starts yet).

        @raise balancebeam.config.ConfigError: on bad option values.
        @raise balancebeam.errors.StartupError: when a part of the balancer
            cannot be built (a WAF rule file that does not load, ...).
        """
        from balancebeam.config import build_config
        from balancebeam.service import BalancerService

        # The master owns the listeners and the admin listener
        # (balancebeam.workers.master_admin); the worker binds nothing.
        config = build_config(self.spec.values)
        config = dataclasses.replace(
            config, listen=(), tls=dataclasses.replace(config.tls, listen=()), admin_bind=None
        )
        service = BalancerService(config, self._reactor)
        service.use_shared_health()
        service.leave_sighup()
        service.dispatcher.add_passive_failure_observer(self._passive_failure)
        factories = [self._factory_for(listener, service) for listener in self.spec.listeners]
        if self.spec.seat_fd is not None:
            self.table = SeatTable.attach(self.spec.seat_fd)
            os.close(self.spec.seat_fd)
        for listener, factory in zip(self.spec.listeners, factories):
            SharedListenerService(
                self._reactor,
                listener,
                factory,
                self.table,
                self.spec.seat,
                lambda: _connections(service),
            ).setServiceParent(service)
        self.service = service

    def _factory_for(self, listener: ListenerFd, service: Any) -> IProtocolFactory:
        """
        The factory of a shared listener: the balancer's, or for an HTTPS
        listener its HTTPS factory under TLS from its certificate store (as
        L{balancebeam.tls.layer.TLSServerEndpoint} layers it).

        @raise balancebeam.errors.StartupError: for an HTTPS listener
            without certificates.
        """
        if not listener.https:
            factory: IProtocolFactory = service.factory
            return factory
        if service.certificates is None or service.https_factory is None:
            from balancebeam.errors import StartupError

            raise StartupError(f"HTTPS listener {listener.description} has no certificate")
        from balancebeam.tls.layer import DirectTLSFactory

        return DirectTLSFactory(
            service.certificates, False, service.https_factory, clock=self._reactor
        )

    def connect(self, control: ControlProtocol) -> None:
        """
        Use C{control}, connected to the master's pipes.
        """
        self.control = control

    def message_received(self, message: Message) -> None:
        """
        Act on one message from the master.
        """
        kind = message["type"]
        if kind == HEALTH:
            self._apply_health(message.get("upstreams", {}))
            if self.state == "waiting":
                self._serve()
        elif kind == REPORT:
            serial = message.get("serial", 0)
            self._last_serial = serial if isinstance(serial, int) else 0
            self.send_stats()
        elif kind == ADMIN:
            apply_admin_states(self.service.registry, message.get("upstreams", {}))
        elif kind == PURGE:
            purge(self.service.purger, message).addCallback(self._send)
        else:
            self.log.warn("unknown message from the master: {kind}", kind=kind)

    def _apply_health(self, upstreams: Mapping[str, Any]) -> None:
        """
        Take the upstreams' state from the master: mark each one up or
        down here as it is there (an upstream this worker does not know is
        ignored: its configuration is older or newer).
        """
        registry = self.service.registry
        for name, state in upstreams.items():
            upstream = registry.get(name)
            if upstream is None or not isinstance(state, list) or len(state) != 2:
                continue
            alive, reason = bool(state[0]), str(state[1])
            if alive and not upstream.alive:
                registry.mark_up(upstream, f"{reason} (from the master)")
            elif not alive and upstream.alive:
                registry.mark_down(upstream, f"{reason} (from the master)")

    def _serve(self) -> None:
        """
        Start the balancer (the shared listeners last) and tell the master.
        """
        self.state = "serving"
        service = self.service
        service.privilegedStartService()
        service.startService()
        loop = LoopingCall(self.send_stats)
        loop.clock = self._reactor
        loop.start(self.spec.stats_interval, now=False).addErrback(
            lambda failure: self.log.failure("reporting counters failed", failure)
        )
        self._stats_loop = loop
        self._send({"type": READY, "pid": self._pid})
        self.log.info(
            "worker {slot} of generation {generation} serving (pid {pid})",
            slot=self.spec.slot,
            generation=self.spec.generation,
            pid=self._pid,
        )

    def counters(self) -> dict[str, Any]:
        """
        The balancer's counters, its request duration histogram and each
        upstream's counters (L{report_counters}).
        """
        return report_counters(self.service)

    def send_stats(self, final: bool = False) -> None:
        """
        Report the counters to the master.
        """
        if self.service is None:
            return
        service = self.service
        self._send(
            {
                "type": STATS,
                "counters": self.counters(),
                "gauges": report_gauges(service),
                "requests": service.stats.requests,
                "connections": _connections(service),
                "serial": self._last_serial,
                "final": final,
            }
        )

    def _passive_failure(self, upstream: Any, reason: str) -> None:
        """
        Connecting to C{upstream} failed here: tell the master.
        """
        self._send({"type": DOWN, "upstream": upstream.name, "reason": reason})

    def _send(self, message: Mapping[str, object]) -> None:
        if self.control is not None:
            self.control.send(message)

    def master_gone(self) -> None:
        """
        The master's pipe closed: drain and exit (nobody will replace us,
        nor tell us the upstreams' state).
        """
        if self.state in ("stopping", "stopped"):
            return
        self.log.warn("the master is gone (its pipe closed): draining, then exiting")
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass

    def stop(self) -> Deferred[None]:
        """
        Stop (the reactor is shutting down): stop accepting, drain, send the
        last counters, close the pipe to the master.

        @return: fires once done (the last message written, or after
            L{FINAL_FLUSH_TIMEOUT}).
        """
        if self.state == "waiting":
            self.state = "stopped"
            return succeed(None)
        self.state = "stopping"
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        grace = self.service.config.shutdown_timeout + STOP_GRACE
        done: Deferred[None] = Deferred()
        overdue = self._reactor.callLater(grace, self._stop_overdue, done, grace)

        def finished(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure("stopping failed; exiting anyway", result)
            if not done.called:
                overdue.cancel()
                done.callback(None)

        self.service.stopService().addBoth(finished)
        return done.addCallback(self._stopped)

    def _stop_overdue(self, done: Deferred[None], grace: float) -> None:
        """
        The drain has not finished in time: exit anyway (the service's stop
        goes on until the reactor ends).
        """
        self.log.error(
            "still draining {grace} s after the stop began: exiting anyway", grace=grace
        )
        done.callback(None)

    def _stopped(self, _: object) -> Deferred[None]:
        self.state = "stopped"
        self.send_stats(final=True)
        if self.table is not None:
            self.table.close()
            self.table = None
        if self.control is None:
            return succeed(None)
        closed = self.control.close_write()
        closed.addTimeout(FINAL_FLUSH_TIMEOUT, self._reactor)
        return closed.addErrback(lambda _: None)


def parse_arguments(argv: Sequence[str]) -> WorkerSpec:
    """
    The worker's command line: C{--spec JSON}.

    @raise SystemExit: on a bad command line (with a usage message).
    """
    parser = argparse.ArgumentParser(
        prog="python -m balancebeam.workers.worker",
        description="A balancebeam worker process; the master starts it (see doc/workers.md).",
    )
    parser.add_argument("--spec", required=True, help="the worker spec, as JSON")
    arguments = parser.parse_args(argv)
    try:
        return WorkerSpec.from_json(arguments.spec)
    except ValueError as error:
        parser.error(str(error))
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run a worker until it is stopped (SIGTERM, or the master's pipe closes).
    """
    spec = parse_arguments(sys.argv[1:] if argv is None else argv)
    install_reactor(spec.reactor)
    from twisted.internet import reactor as installed
    from twisted.internet import stdio
    from twisted.logger import globalLogBeginner

    from balancebeam.config import ConfigError
    from balancebeam.errors import StartupError
    from balancebeam.signals import guard_stop_signals

    reactor: Any = installed
    pid = os.getpid()
    # A SIGHUP for the process group (a closed terminal) is the master's to handle.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    globalLogBeginner.beginLoggingTo([make_observer(spec, pid)], redirectStandardIO=False)
    worker = Worker(spec, reactor, pid)
    try:
        worker.build()
    except (ConfigError, StartupError) as error:
        raise SystemExit(f"balancebeam worker {pid}: {error}") from None

    def start() -> None:
        guard_stop_signals(reactor)
        control = ControlProtocol(worker)
        worker.connect(control)
        # mypy reads the Windows StandardIO, which takes no descriptors.
        stdio.StandardIO(  # type: ignore[call-arg]
            control, stdin=spec.control_in, stdout=spec.control_out, reactor=reactor
        )

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", worker.stop)
    reactor.run()


if __name__ == "__main__":
    # Run the module's own copy, so that log namespaces and classes are
    # balancebeam.workers.worker's, not __main__'s.
    from balancebeam.workers.worker import main as worker_main

    worker_main()
