"""
Fakes for the master's unit tests: a launcher that records the worker
processes it would start and lets the test play each worker's part, a
listening socket that is only a number, and a probe the test answers; and
a certificate file for C{--tls-cert}.

(No tests here; the other C{test_workers_*} modules import these.)
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam.registry import UpstreamState
from balancebeam.workers.control import READY, STATS, Message, MessageDecoder, encode
from balancebeam.workers.sockets import ListenerSpec
from balancebeam.workers.worker import WorkerSpec
from balancebeam.workers.worker_admin import report_counters, report_gauges

_pids = itertools.count(1000)
_fds = itertools.count(40)

if TYPE_CHECKING:
    import trustme

    from balancebeam.service import BalancerService


@implementer(IProcessTransport)
class FakeProcess:
    """
    A worker process as the master sees it: pipes to write, signals to send.

    @ivar written: bytes written to each child descriptor.
    @ivar signals: the signals sent, in order.
    @ivar ended: whether the process has ended.
    """

    def __init__(self, child_fds: Mapping[int, int | str]) -> None:
        self.pid = next(_pids)
        self._child_fds = dict(child_fds)
        self.written: dict[int, bytes] = {}
        self.signals: list[str] = []
        self.ended = False

    def writeToChild(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        """
        Write to a descriptor the master writes to (a C{"w"} pipe).

        @raise KeyError: for any other descriptor, as Twisted does.
        """
        if self._child_fds.get(childFD) != "w":
            raise KeyError(childFD)
        self.written[childFD] = self.written.get(childFD, b"") + data

    def signalProcess(self, signalID: str | int) -> None:  # noqa: N802, N803
        """
        Send a signal.

        @raise ProcessExitedAlready: once the process has ended.
        """
        if signalID not in ("TERM", "KILL", "INT", "HUP"):
            raise ValueError(signalID)
        assert isinstance(signalID, str)
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    def closeStdin(self) -> None:  # noqa: N802
        """Unused."""

    def closeStdout(self) -> None:  # noqa: N802
        """Unused."""

    def closeStderr(self) -> None:  # noqa: N802
        """Unused."""

    def closeChildFD(self, descriptor: int) -> None:  # noqa: N802
        """Unused."""

    def writeSequence(self, data: Iterable[bytes]) -> None:  # noqa: N802
        """Unused."""

    def write(self, data: bytes) -> None:
        """Unused."""

    def loseConnection(self) -> None:  # noqa: N802
        """Unused."""

    def getPeer(self) -> Any:  # noqa: N802
        """Unused."""

    def getHost(self) -> Any:  # noqa: N802
        """Unused."""


class Launched:
    """
    One worker the master started; the test plays its part.

    @ivar spec: what the worker was told (its C{--spec}).
    """

    def __init__(
        self,
        protocol: ProcessProtocol,
        process: FakeProcess,
        args: list[str],
        env: dict[str, str],
        child_fds: dict[int, int | str],
    ) -> None:
        self.protocol = protocol
        self.process = process
        self.args = args
        self.env = env
        self.child_fds = child_fds
        self.spec = WorkerSpec.from_json(args[4])

    @property
    def pid(self) -> int:
        """
        The process id.
        """
        return self.process.pid

    def received(self) -> list[Message]:
        """
        Every message the master wrote to this worker.
        """
        return MessageDecoder().feed(self.process.written.get(0, b""))

    def received_of(self, kind: str) -> list[Message]:
        """
        The messages of one type the master wrote to this worker.
        """
        return [m for m in self.received() if m["type"] == kind]

    def send(self, message: Mapping[str, object]) -> None:
        """
        Send a message to the master, on descriptor 3.
        """
        self.protocol.childDataReceived(3, encode(message))

    def ready(self) -> None:
        """
        Say the worker accepts connections.
        """
        self.send({"type": READY, "pid": self.pid})

    def stats(
        self,
        requests: int,
        connections: int = 0,
        serial: int = 0,
        final: bool = False,
        gauges: Mapping[str, object] | None = None,
        **counters: object,
    ) -> None:
        """
        Report counters (and gauges, when given).
        """
        message: dict[str, object] = {
            "type": STATS,
            "counters": {"requests": requests, **counters},
            "requests": requests,
            "connections": connections,
            "serial": serial,
            "final": final,
        }
        if gauges is not None:
            message["gauges"] = dict(gauges)
        self.send(message)

    def report(self, service: BalancerService, serial: int = 0) -> None:
        """
        Report what a real balancer counts, as a worker running it does
        (L{report_counters}, L{report_gauges}).
        """
        self.send(
            {
                "type": STATS,
                "counters": report_counters(service),
                "gauges": report_gauges(service),
                "requests": service.stats.requests,
                "connections": len(service.factory.connections),
                "serial": serial,
                "final": False,
            }
        )

    def exit(self, code: int | None = 0, signal_number: int | None = None) -> None:
        """
        End the process: an exit status, or a signal.
        """
        self.process.ended = True
        reason: Failure
        if code == 0 and signal_number is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, signal_number))
        self.protocol.processEnded(reason)


class FakeLauncher:
    """
    Records the worker processes the master starts, checking the arguments
    as C{spawnProcess} and the worker would.

    @ivar launched: every worker started, in order.
    @ivar fail: raise this from the next launch.
    """

    def __init__(self) -> None:
        self.launched: list[Launched] = []
        self.fail: Exception | None = None

    def __call__(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str],
        child_fds: dict[int, int | str],
    ) -> IProcessTransport:
        """
        Start a fake worker.
        """
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        if args[0] != executable or args[1:4] != ["-m", "balancebeam.workers.worker", "--spec"]:
            raise AssertionError(f"not a worker command line: {args[:4]}")
        if child_fds.get(0) != "w" or child_fds.get(3) != "r":
            raise AssertionError(f"no control pipes: {child_fds}")
        for fd, value in child_fds.items():
            if not isinstance(fd, int) or not (isinstance(value, int) or value in ("r", "w")):
                raise AssertionError(f"bad childFDs entry {fd}: {value}")
        process = FakeProcess(child_fds)
        protocol.makeConnection(process)
        self.launched.append(Launched(protocol, process, args, env, child_fds))
        return process

    def live(self) -> list[Launched]:
        """
        The workers that have not ended.
        """
        return [w for w in self.launched if not w.process.ended]


class FakeSocket:
    """
    A bound listening socket that is only a descriptor number.

    @ivar spec: what it was bound for.
    """

    def __init__(self, spec: ListenerSpec, port: int) -> None:
        self.spec = spec
        self.family = spec.family
        self._fd = next(_fds)
        self._port = port
        self.closed = False

    def fileno(self) -> int:
        """
        Its descriptor.
        """
        return -1 if self.closed else self._fd

    def getsockname(self) -> tuple[str, int]:
        """
        The bound address.
        """
        return ("127.0.0.1", self._port)

    def close(self) -> None:
        """
        Close it.
        """
        self.closed = True


class FakeBinder:
    """
    Stands in for L{balancebeam.workers.sockets.bind_listener}.

    @ivar opened: the sockets opened, in order.
    @ivar fail: raise this instead of binding.
    """

    def __init__(self) -> None:
        self.opened: list[FakeSocket] = []
        self.fail: OSError | None = None

    def __call__(self, spec: ListenerSpec, reuse_port: bool, port: int | None) -> FakeSocket:
        """
        Bind C{spec} (on C{port} when given; port 0 becomes 1100 + a count).
        """
        if self.fail is not None:
            raise self.fail
        chosen = port if port is not None else (spec.port or 1100 + len(self.opened))
        listener = FakeSocket(spec, chosen)
        self.opened.append(listener)
        return listener


class FakeProbe:
    """
    Records health probes and lets the test answer them.

    @ivar calls: each probe as (upstream name, its Deferred).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[int]]] = []

    def __call__(self, upstream: UpstreamState) -> Deferred[int]:
        """
        Start a probe of C{upstream}.
        """
        probe: Deferred[int] = Deferred()
        self.calls.append((upstream.name, probe))
        return probe

    def answer_all(self, status: int) -> None:
        """
        Answer every pending probe with C{status}.
        """
        for _, probe in self.calls:
            if not probe.called:
                probe.callback(status)


def listener_spec(description: str = "tcp:1100:interface=127.0.0.1") -> ListenerSpec:
    """
    A TCP listener spec.
    """
    return ListenerSpec(description, socket.AF_INET, "127.0.0.1", 1100)


def certificate_file(directory: str, ca: trustme.CA, *names: str) -> str:
    """
    A C{--tls-cert} file (key, then certificate and chain) in C{directory},
    issued by C{ca} for C{names}.
    """
    issued = ca.issue_cert(*names)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{names[0]}.pem")
    with open(path, "wb") as f:
        f.write(issued.private_key_pem.bytes())
        for pem in issued.cert_chain_pems:
            f.write(pem.bytes())
    return path
