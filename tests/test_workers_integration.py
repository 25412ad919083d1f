"""
Integration tests of C{--workers}: a real twistd master and its worker
processes on 127.0.0.1, in front of recording upstreams.

Every wait polls a condition with a deadline; every process started (the
master, and the workers it started, found by the pids it logs) is killed in
the test's cleanup if it still runs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from balancebeam.workers.accept import SeatTable
from balancebeam.workers.sockets import bind_listener, inspect_listener
from tests.helpers import unused_port, wait_until
from tests.test_operations_integration import NotifyListener
from tests.test_twistd import REPO_ROOT, TWISTD, TwistdProcess
from tests.test_workers_fakes import certificate_file
from tests.upstreams import RawClient, _ClientFactory, start_upstream

reactor: Any = _global_reactor

_STARTED = re.compile(rb"started worker (\d+) of generation (\d+): pid (\d+)")
_READY = re.compile(rb"worker (\d+) of generation (\d+) is ready \(pid (\d+)\)")
_ENDED = re.compile(rb"\(pid (\d+)\) (?:exited with status|was killed by signal)")


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is a balancebeam worker (not a zombie,
    nor a new process that took the pid over).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return b"balancebeam.workers.worker" in command and state != b"Z"


def established_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """
    How many established TCP connections to local C{port} each process holds
    (from C{/proc}: the sockets among its descriptors that C{/proc/net/tcp}
    lists as established with that local port).
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        count = 0
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            descriptors = []
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
        counts[pid] = count
    return counts


class MasterProcess(TwistdProcess):
    """
    A twistd master: its output, and the workers it says it started.
    """

    def started(self) -> list[tuple[int, int, int]]:
        """
        (slot, generation, pid) of every worker started so far.
        """
        return [tuple(map(int, m)) for m in _STARTED.findall(self.output)]  # type: ignore[misc]

    def ready(self, generation: int | None = None) -> list[int]:
        """
        Pids of the workers that said they were ready and have not ended.
        """
        ended = {int(pid) for pid in _ENDED.findall(self.output)}
        return [
            int(pid)
            for _, gen, pid in _READY.findall(self.output)
            if (generation is None or int(gen) == generation) and int(pid) not in ended
        ]

    def worker_lines(self, pid: int) -> list[bytes]:
        """
        The log lines of one worker.
        """
        marker = b"[worker %d " % pid
        return [line for line in self.output.splitlines() if marker in line]


async def request(port: int, path: bytes = b"/") -> str:
    """
    One GET on a fresh connection.

    @return: the status code as text, C{"refused"} when the connection was
        refused, or C{"lost"} when it closed without a response.
    """
    client = RawClient(clock=reactor)
    reactor.connectTCP("127.0.0.1", port, _ClientFactory(client), timeout=5)
    try:
        await client.ready
    except Exception as error:
        return f"refused: {error}"
    client.send(
        b"GET " + path + b" HTTP/1.1\r\nHost: balancer.test\r\nConnection: close\r\n\r\n", b"GET"
    )
    try:
        await client.wait_responses(1, timeout=15)
    except Exception:
        pass
    transport: Any = client.transport
    if not client.is_closed and transport is not None:
        transport.abortConnection()
    await client.closed
    return str(client.responses[0].status) if client.responses else "lost"


class WorkersIntegrationTests(TestCase):
    """
    C{twistd balancebeam --workers 2} run for real.
    """

    timeout = 90

    def spawn(self, *arguments: str, env: dict[str, str] | None = None) -> MasterProcess:
        """
        Start C{twistd -n --pidfile= balancebeam ARGUMENTS}; the cleanup
        kills it and its workers if they still run.
        """
        process = MasterProcess()
        process.listening.addErrback(lambda _: None)
        directory = tempfile.mkdtemp(prefix="balancebeam-workers-")
        environment = dict(os.environ if env is None else env)
        environment["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
        )
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + ["-n", "--pidfile=", "balancebeam", *arguments],
            env=environment,
            path=directory,
        )

        async def stop() -> None:
            """
            Kill the master and every worker it started that still runs.
            """
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended
            for _, _, pid in process.started():
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            await wait_until(
                reactor,
                lambda: not any(alive(pid) for _, _, pid in process.started()),
                "the workers to be gone",
            )

        self.addCleanup(stop)
        return process

    async def start_master(
        self, *arguments: str, workers: int = 2, upstream_delay: float = 0.0
    ) -> tuple[MasterProcess, int, Any]:
        """
        An upstream and a master of C{workers} workers in front of it, with
        every worker ready.

        @return: the master, its port and the upstream.
        """
        upstream = start_upstream(self, reactor, "up", delay=upstream_delay)
        port = unused_port()
        process = self.spawn(
            "--bind", f"127.0.0.1:{port}",
            "--upstream", upstream.address,
            "--workers", str(workers),
            "--active-health-check-interval", "0",
            *arguments,
        )
        await process.listening
        await wait_until(
            reactor, lambda: len(process.ready()) == workers, "every worker ready", timeout=60
        )
        return process, port, upstream

    async def test_serves_on_both_workers(self) -> None:
        """
        Two workers answer requests, and connections held open are spread
        over both.
        """
        process, port, upstream = await self.start_master()
        statuses = [await request(port, b"/hello/%d" % i) for i in range(4)]
        self.assertEqual(statuses, ["200"] * 4)
        self.assertEqual(len(upstream.client_requests), 4)
        clients = []
        for _ in range(8):
            client = RawClient(clock=reactor)
            reactor.connectTCP("127.0.0.1", port, _ClientFactory(client), timeout=5)
            await client.ready
            transport: Any = client.transport
            self.addCleanup(transport.abortConnection)
            client.send(b"GET /held HTTP/1.1\r\nHost: balancer.test\r\n\r\n", b"GET")
            await client.wait_responses(1)
            clients.append(client)
        self.assertEqual([c.responses[0].status for c in clients], [200] * 8)
        counts = established_by_pid(process.ready(), port)
        self.assertEqual(sum(counts.values()), 8, counts)
        self.assertTrue(all(count >= 1 for count in counts.values()), counts)
        self.assertNotIn(b"Traceback", process.output)

    async def test_kill_9_replaced(self) -> None:
        """
        A worker killed with SIGKILL is replaced, its exit logged with the
        signal, and the next requests succeed.
        """
        process, port, _ = await self.start_master()
        victim = process.ready()[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        await wait_until(
            reactor, lambda: len(process.started()) == 3, "the replacement to start"
        )
        replaced_after = time.monotonic() - killed_at
        self.assertIn(
            b"(pid %d) was killed by signal SIGKILL unexpectedly" % victim, process.output
        )
        [victim_slot] = [slot for slot, _, pid in process.started() if pid == victim]
        self.assertEqual(process.started()[-1][:2], (victim_slot, 1))
        statuses = [await request(port) for _ in range(6)]
        self.assertEqual(statuses, ["200"] * 6)
        await wait_until(
            reactor, lambda: len(process.ready()) == 2, "the replacement ready", timeout=60
        )
        self.assertNotIn(victim, process.ready())
        # The master starts the replacement in the same reactor turn as it
        # learns of the death (tests.test_workers_master shows the delay is
        # 0); this bound only allows for a loaded machine.
        self.assertLess(replaced_after, 5.0)

    async def test_sighup_loses_nothing(self) -> None:
        """
        SIGHUP under continuous requests starts a new generation and stops
        the old one; no request is refused or lost.
        """
        process, port, upstream = await self.start_master(upstream_delay=0.05)
        old = set(process.ready(1))
        outcomes: list[str] = []
        running = [True]

        async def loop() -> None:
            while running[0]:
                outcomes.append(await request(port))

        loops = [Deferred.fromCoroutine(loop()) for _ in range(4)]
        await wait_until(reactor, lambda: len(outcomes) >= 20, "requests before the reload")
        before = len(outcomes)
        assert process.transport is not None
        process.transport.signalProcess("HUP")
        await wait_until(
            reactor,
            lambda: b"generation 1 has stopped" in process.output,
            "the old generation to stop",
            timeout=60,
        )
        after_switch = len(outcomes)
        await wait_until(
            reactor, lambda: len(outcomes) >= after_switch + 20, "requests after the reload"
        )
        running[0] = False
        await gatherResults(loops)
        self.assertEqual({o for o in outcomes if o != "200"}, set(), outcomes)
        self.assertGreater(after_switch, before)
        new = set(process.ready(2))
        self.assertEqual(len(new), 2)
        self.assertFalse(new & old)
        self.assertFalse(any(alive(pid) for pid in old))
        for pid in old:
            self.assertIn(b"(pid %d) exited with status 0" % pid, process.output)
        self.assertEqual(len(upstream.client_requests), len(outcomes))
        self.assertNotIn(b"unexpectedly", process.output)

    async def test_sigterm_drains(self) -> None:
        """
        SIGTERM to the master lets a request in progress finish, then the
        workers and the master exit.
        """
        process, port, upstream = await self.start_master(upstream_delay=1.0)
        pending = Deferred.fromCoroutine(request(port, b"/slow"))
        await wait_until(reactor, lambda: bool(upstream.client_requests), "the request upstream")
        workers = process.ready()
        assert process.transport is not None
        process.transport.signalProcess("TERM")
        self.assertEqual(await pending, "200")
        code = await process.ended
        self.assertIn(code, (0, -signal.SIGTERM), process.output.decode(errors="replace"))
        await wait_until(
            reactor, lambda: not any(alive(pid) for pid in workers), "the workers to exit"
        )
        self.assertIn(b"stopping: draining 2 workers", process.output)
        self.assertNotIn(b"Traceback", process.output)

    async def test_systemd_notify(self) -> None:
        """
        Under a stand-in for systemd (C{NOTIFY_SOCKET}, C{WATCHDOG_USEC}),
        the master sends C{READY=1} once both workers serve (a request is
        answered at once), C{RELOADING=1} then C{READY=1} around a SIGHUP,
        C{WATCHDOG=1} on time, and C{STOPPING=1} on SIGTERM; the workers
        are started without systemd's variables and send nothing.
        """
        upstream = start_upstream(self, reactor, "up")
        port = unused_port()
        notify = NotifyListener(self)
        environment = {
            **os.environ,
            "NOTIFY_SOCKET": notify.address,
            "WATCHDOG_USEC": "400000",
        }
        process = self.spawn(
            "--bind", f"127.0.0.1:{port}",
            "--upstream", upstream.address,
            "--workers", "2",
            "--active-health-check-interval", "0",
            env=environment,
        )

        def received(line: str) -> list[list[str]]:
            return [m for m in notify.read() if line in m]

        await wait_until(reactor, lambda: len(received("READY=1")) == 1, "READY=1", timeout=60)
        # Served by the time systemd hears READY=1, with no wait.
        self.assertEqual(await request(port, b"/after-ready"), "200")
        [ready] = received("READY=1")
        self.assertEqual(ready, ["READY=1", "STATUS=2 workers ready, generation 1"])
        await wait_until(reactor, lambda: len(process.ready(1)) == 2, "both workers logged ready")
        for pid in process.ready(1):
            with open(f"/proc/{pid}/environ", "rb") as f:
                names = {entry.partition(b"=")[0] for entry in f.read().split(b"\0")}
            self.assertFalse(
                names & {b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"WATCHDOG_PID"}, (pid, names)
            )
            self.assertIn(b"PYTHONPATH", names)

        assert process.transport is not None
        process.transport.signalProcess("HUP")
        await wait_until(
            reactor, lambda: len(received("READY=1")) == 2, "READY=1 after SIGHUP", timeout=60
        )
        events = [m[0] for m in notify.read() if m[0] in ("READY=1", "RELOADING=1")]
        self.assertEqual(events, ["READY=1", "RELOADING=1", "READY=1"])
        [reloading] = received("RELOADING=1")
        self.assertTrue(reloading[1].startswith("MONOTONIC_USEC="), reloading)
        usec = int(reloading[1].partition("=")[2])
        self.assertLess(abs(usec - time.monotonic_ns() // 1000), 60_000_000)
        self.assertEqual(
            received("READY=1")[1], ["READY=1", "STATUS=reloaded; 2 workers ready, generation 2"]
        )
        self.assertEqual(await request(port, b"/after-reload"), "200")
        # WATCHDOG_USEC=400000: a WATCHDOG=1 every 0.2 s from the master.
        watchdogs = len(received("WATCHDOG=1"))
        await wait_until(
            reactor, lambda: len(received("WATCHDOG=1")) >= watchdogs + 3, "three WATCHDOG=1"
        )

        process.transport.signalProcess("TERM")
        code = await process.ended
        self.assertIn(code, (0, -signal.SIGTERM), process.output.decode(errors="replace"))
        [stopping] = received("STOPPING=1")
        # The old generation may still be draining, wholly or in part: 2 to 4 workers.
        self.assertRegex(stopping[1], r"^STATUS=stopping: draining [234] workers$")
        kinds = [m[0] for m in notify.read() if not m[0].startswith("STATUS=")]
        self.assertEqual(kinds[-1], "STOPPING=1")
        self.assertEqual(
            [k for k in kinds if k != "WATCHDOG=1"],
            ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        )
        self.assertNotIn(b"cannot notify systemd", process.output)
        self.assertNotIn(b"Traceback", process.output)

    async def test_master_death_ends_workers(self) -> None:
        """
        When the master is killed, each worker finishes the request it has,
        then exits: none is left behind.
        """
        process, port, upstream = await self.start_master(upstream_delay=1.0)
        pending = Deferred.fromCoroutine(request(port, b"/slow"))
        await wait_until(reactor, lambda: bool(upstream.client_requests), "the request upstream")
        workers = process.ready()
        assert process.transport is not None
        process.transport.signalProcess("KILL")
        await process.ended
        self.assertEqual(await pending, "200")
        await wait_until(
            reactor, lambda: not any(alive(pid) for pid in workers), "the workers to exit"
        )
        for pid in workers:
            self.assertTrue(
                any(b"the master is gone" in line for line in process.worker_lines(pid)),
                process.output.decode(errors="replace"),
            )

    async def test_memory_limiter_refused(self) -> None:
        """
        The memory rate limiter with two workers is a usage error pointing
        to Redis; nothing is started.
        """
        process = self.spawn(
            "--bind", f"127.0.0.1:{unused_port()}", "--upstream", "127.0.0.1:9",
            "--workers", "2", "--max-requests-per-minute", "100",
        )
        code = await process.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"--workers '2': cannot share the memory rate limiter", process.output)
        self.assertIn(b"--rate-limit-backend redis://HOST:PORT/DB", process.output)
        self.assertEqual(process.started(), [])

    async def test_port_in_use(self) -> None:
        """
        A port in use ends the master with exit status 1 and the same
        one-line error as a single process; no worker is started.
        """
        occupied = bind_listener(inspect_listener("tcp:0:interface=127.0.0.1"))
        self.addCleanup(occupied.close)
        port = occupied.getsockname()[1]
        process = self.spawn(
            "--bind", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9", "--workers", "2"
        )
        code = await process.ended
        self.assertEqual(code, 1, process.output.decode(errors="replace"))
        [line] = [line for line in process.output.splitlines() if b"cannot listen" in line]
        self.assertTrue(
            line.endswith(
                b"] balancebeam: cannot listen on tcp:%d:interface=127.0.0.1: Couldn't listen"
                b" on 127.0.0.1:%d: [Errno 98] Address already in use." % (port, port)
            ),
            line,
        )
        self.assertEqual(process.started(), [])
        self.assertNotIn(b"Traceback", process.output)

    async def test_passive_failure_reaches_the_other_worker(self) -> None:
        """
        A connect failure seen by one worker takes the upstream out in the
        other too: afterwards, no worker tries it again.
        """
        dead = f"127.0.0.1:{unused_port()}"
        process, port, _ = await self.start_master(
            "--upstream", dead, "--strategy", "round-robin", "--passive-retry-interval", "60"
        )
        failed = b"connecting to " + dead.encode() + b" failed"
        for _ in range(20):
            self.assertEqual(await request(port), "200")
            if failed in process.output:
                break
        self.assertEqual(process.output.count(failed), 1)
        workers = process.ready()
        down = b"upstream " + dead.encode() + b" is now down"

        def down_lines(pid: int) -> list[bytes]:
            return [line for line in process.worker_lines(pid) if down in line]

        await wait_until(
            reactor,
            lambda: all(down_lines(pid) for pid in workers),
            "both workers to take the upstream down",
        )
        statuses = [await request(port) for _ in range(10)]
        self.assertEqual(statuses, ["200"] * 10)
        self.assertEqual(process.output.count(failed), 1)
        told = [pid for pid in workers if b"(from the master)" in down_lines(pid)[0]]
        self.assertEqual(len(told), 1, process.output.decode(errors="replace"))

    async def test_active_checks_once_per_interval(self) -> None:
        """
        With two workers, each upstream is probed once per interval (by the
        master), not once per worker.
        """
        process, _, upstream = await self.start_master(
            "--active-health-check-interval", "0.5", "--health-check-timeout", "0.4"
        )
        await wait_until(reactor, lambda: len(upstream.probe_requests) >= 2, "probes")
        first, began = len(upstream.probe_requests), time.monotonic()
        await wait_until(reactor, lambda: len(upstream.probe_requests) >= first + 6, "more probes")
        probes, elapsed = len(upstream.probe_requests) - first, time.monotonic() - began
        self.assertLessEqual(probes, elapsed / 0.5 + 1, (probes, elapsed))
        for pid in process.ready():
            self.assertFalse(
                any(b"active health checks every" in line for line in process.worker_lines(pid))
            )

    async def test_systemd_socket(self) -> None:
        """
        A socket passed by systemd (C{LISTEN_FDS}) is shared by the workers.
        """
        upstream = start_upstream(self, reactor, "up")
        listener = bind_listener(inspect_listener("tcp:0:interface=127.0.0.1"))
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        process = MasterProcess()
        process.listening.addErrback(lambda _: None)
        environment = dict(os.environ)
        environment.update(
            PYTHONPATH=REPO_ROOT, LISTEN_FDS="1", LISTEN_FDNAMES="http"
        )
        command = [
            "/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh",
            *TWISTD, "-n", "--pidfile=", "balancebeam",
            "--listen", "systemd:domain=INET:index=0", "--upstream", upstream.address,
            "--workers", "2", "--active-health-check-interval", "0",
        ]
        transport = reactor.spawnProcess(
            process, "/bin/sh", command, env=environment,
            path=tempfile.mkdtemp(prefix="balancebeam-workers-"),
            childFDs={0: "w", 1: "r", 2: "r", 3: listener.fileno()},
        )

        async def stop() -> None:
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended
            for _, _, pid in process.started():
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)

        self.addCleanup(stop)
        await wait_until(reactor, lambda: len(process.ready()) == 2, "every worker", timeout=60)
        statuses = [await request(port) for _ in range(4)]
        self.assertEqual(statuses, ["200"] * 4, process.output.decode(errors="replace"))
        self.assertNotIn(b"LISTEN_FDS", b"".join(process.worker_lines(process.ready()[0])))

    async def test_tls_listener(self) -> None:
        """
        An C{ssl:} listener is shared too: each worker wraps its connections
        in TLS with the endpoint's certificate.
        """
        import trustme
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        ca = trustme.CA()
        issued = ca.issue_cert("localhost")
        directory = tempfile.mkdtemp(prefix="balancebeam-workers-tls-")
        key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
        issued.private_key_pem.write_to_path(key)
        issued.cert_chain_pems[0].write_to_path(cert)
        upstream = start_upstream(self, reactor, "up")
        port = unused_port()
        process = self.spawn(
            "--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            "--upstream", upstream.address, "--workers", "2",
            "--active-health-check-interval", "0",
        )
        await wait_until(reactor, lambda: len(process.ready()) == 2, "every worker", timeout=60)
        options = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(ca.cert_pem.bytes())
        )
        for _ in range(3):
            client = RawClient(clock=reactor)
            reactor.connectSSL("127.0.0.1", port, _ClientFactory(client), options, timeout=5)
            await client.ready
            client.send(
                b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"GET"
            )
            await client.wait_responses(1)
            transport: Any = client.transport
            transport.abortConnection()
            await client.closed
            self.assertEqual([r.status for r in client.responses], [200])
        self.assertEqual(len(upstream.client_requests), 3)

    async def test_https_listener_shared(self) -> None:
        """
        C{--tls-bind} with two workers: the master binds the socket and both
        workers serve it (none binds it again and crash-loops), with the
        certificate the client's SNI names and C{X-Forwarded-Proto: https};
        plain HTTP still works, and a SIGHUP to a worker changes nothing.
        """
        import trustme
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        ca = trustme.CA()
        directory = tempfile.mkdtemp(prefix="balancebeam-workers-https-")
        default = certificate_file(directory, ca, "default.test")
        named = certificate_file(directory, ca, "example.test")
        tls_port = unused_port()
        process, port, upstream = await self.start_master(
            "--tls-bind", f"127.0.0.1:{tls_port}", "--tls-cert", default, "--tls-cert", named
        )
        workers = sorted(process.ready())
        self.assertIn(
            b"Listening for requests on 127.0.0.1:%d (HTTPS, for 2 workers)" % tls_port,
            process.output,
        )
        # The default certificate is not valid for example.test: only SNI
        # gets the client a certificate it accepts.
        options = optionsForClientTLS(
            "example.test", trustRoot=Certificate.loadPEM(ca.cert_pem.bytes())
        )
        clients = []
        for _ in range(8):
            client = RawClient(clock=reactor)
            reactor.connectSSL("127.0.0.1", tls_port, _ClientFactory(client), options, timeout=5)
            await client.ready
            transport: Any = client.transport
            self.addCleanup(transport.abortConnection)
            client.send(b"GET /held HTTP/1.1\r\nHost: example.test\r\n\r\n", b"GET")
            await client.wait_responses(1)
            clients.append(client)
        self.assertEqual([c.responses[0].status for c in clients], [200] * 8)
        counts = established_by_pid(workers, tls_port)
        self.assertEqual(sum(counts.values()), 8, counts)
        self.assertTrue(all(count >= 1 for count in counts.values()), counts)
        self.assertEqual(
            [r.header(b"X-Forwarded-Proto") for r in upstream.client_requests], [b"https"] * 8
        )
        os.kill(workers[0], signal.SIGHUP)
        statuses = [await request(port, b"/plain/%d" % i) for i in range(4)]
        self.assertEqual(statuses, ["200"] * 4)
        self.assertEqual(
            [r.header(b"X-Forwarded-Proto") for r in upstream.client_requests[8:]],
            [b"http"] * 4,
        )
        self.assertEqual(sorted(process.ready()), workers)
        self.assertEqual(len(process.started()), 2)
        self.assertTrue(all(alive(pid) for pid in workers))
        self.assertNotIn(b"unexpectedly", process.output)
        self.assertNotIn(b"Address already in use", process.output)
        self.assertNotIn(b"Traceback", process.output)


class SocketTests(TestCase):
    """
    The master's sockets, bound for real on 127.0.0.1.
    """

    def test_bind_shared(self) -> None:
        """
        A bound socket listens, is non-blocking and not inherited.
        """
        listener = bind_listener(inspect_listener("tcp:0:interface=127.0.0.1"))
        self.addCleanup(listener.close)
        self.assertFalse(listener.getblocking())
        self.assertFalse(os.get_inheritable(listener.fileno()))
        with socket.create_connection(listener.getsockname(), timeout=2):
            pass

    def test_bind_reuse_port(self) -> None:
        """
        With C{SO_REUSEPORT}, several sockets bind the same port.
        """
        spec = inspect_listener("tcp:0:interface=127.0.0.1")
        first = bind_listener(spec, reuse_port=True)
        self.addCleanup(first.close)
        second = bind_listener(spec, reuse_port=True, port=first.getsockname()[1])
        self.addCleanup(second.close)
        self.assertEqual(first.getsockname(), second.getsockname())

    def test_address_in_use(self) -> None:
        """
        Binding a port in use fails.
        """
        first = bind_listener(inspect_listener("tcp:0:interface=127.0.0.1"))
        self.addCleanup(first.close)
        spec = inspect_listener(f"tcp:{first.getsockname()[1]}:interface=127.0.0.1")
        self.assertRaises(OSError, bind_listener, spec)

    def test_seat_table_descriptor(self) -> None:
        """
        The seat table's descriptor is not inherited unless passed.
        """
        table, fd = SeatTable.create(seats=2)
        self.addCleanup(os.close, fd)
        self.addCleanup(table.close)
        self.assertFalse(os.get_inheritable(fd))

