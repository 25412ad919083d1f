"""
Integration tests of operating the balancer (issue 13), over real loopback
sockets: reloads under a bounded client load, and a real C{twistd}
subprocess with its configuration file, C{SIGHUP} reloads, C{sd_notify}
messages read from a real datagram socket, the admin token, the
configuration check, and socket activation by C{systemd-socket-activate}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SkipTest, TestCase

from balancebeam.config import BalancerConfig, Timeouts, UpstreamSpec, parse_upstream
from balancebeam.reload import Reloader
from balancebeam.service import BalancerService
from tests.helpers import unused_port, wait_until
from tests.operations_helpers import metric, parse_metrics
from tests.test_integration import build_request, sleep
from tests.test_twistd import REPO_ROOT, TWISTD, TwistdProcess
from tests.upstreams import UpstreamServer, connect_client

reactor: Any = _global_reactor


class NotifyListener:
    """
    A real C{AF_UNIX} datagram socket standing in for systemd's
    C{NOTIFY_SOCKET}, read without blocking.

    @ivar messages: every datagram received, as its lines.
    """

    def __init__(self, case: TestCase) -> None:
        directory = tempfile.mkdtemp(prefix="balancebeam-notify-")
        self.address = os.path.join(directory, "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.address)
        self.socket.setblocking(False)
        self.messages: list[list[str]] = []
        case.addCleanup(shutil.rmtree, directory)
        case.addCleanup(self.socket.close)

    def read(self) -> list[list[str]]:
        """
        Take what arrived since the last read.
        """
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode("utf-8").split("\n"))

    def count(self, line: str) -> int:
        """
        How many messages so far hold C{line}.
        """
        return sum(1 for message in self.read() if line in message)


async def http_get(
    case: TestCase, port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """
    One GET on a fresh connection to C{127.0.0.1:port}.

    @return: the status and the body.
    """
    fields = [(b"Host", b"127.0.0.1")]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    client = await connect_client(case, reactor, port)
    client.send(build_request(b"GET", path.encode(), fields), b"GET")
    await client.wait_responses(1)
    assert client.transport is not None
    client.transport.loseConnection()
    await client.closed
    [response] = client.responses
    return response.status, response.body


class ReloadUnderLoadTests(TestCase):
    """
    Reloads while clients keep sending requests drop none of them.
    """

    timeout = 60

    async def test_reloads_drop_nothing(self) -> None:
        """
        Four keep-alive clients and one that reconnects for every request
        send a bounded number of requests while the configuration is
        reloaded 20 times, alternating between two upstream lists,
        strategies, weights and timeouts: every request gets a 2xx, no
        connection fails, and only the current upstreams get new requests.
        """
        servers = [UpstreamServer(reactor, f"u{i}") for i in range(3)]
        for server in servers:
            server.start()
            self.addCleanup(server.stop)
        u0, u1, u2 = (parse_upstream(s.address) for s in servers)
        first = BalancerConfig(
            upstreams=(u0, u1),
            listen=("tcp:0:interface=127.0.0.1",),
            active_health_check_interval=0.0,
            strategy="round-robin",
        )
        second = dataclasses.replace(
            first,
            upstreams=(u1, UpstreamSpec(u2.host, u2.port, 3)),
            strategy="least-connections",
            timeouts=Timeouts(upstream=30.0, client_idle=20.0),
            max_requests_per_minute=100000,
            pool_max_idle_per_upstream=4,
        )
        service = BalancerService(first, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        address = service.ports[0].getHost()
        assert isinstance(address, IPv4Address)
        configs = [second, first]
        loaded = [0]

        def load() -> BalancerConfig:
            loaded[0] += 1
            return configs[(loaded[0] - 1) % 2]

        reloader = Reloader(service, load, reactor, retire_interval=0.05)
        self.addCleanup(reloader.stop)
        statuses: list[int] = []
        errors: list[str] = []
        running = [True]
        sent = [0]

        async def keep_alive_client() -> None:
            client = await connect_client(self, reactor, address.port)
            number = 0
            while running[0] and number < 3000:
                number += 1
                before = len(client.responses)
                client.send(build_request(b"GET", b"/k%d" % number), b"GET")
                sent[0] += 1
                await client.wait_responses(before + 1)
                if len(client.responses) == before:
                    errors.append("keep-alive connection closed without a response")
                    return
                statuses.append(client.responses[-1].status)

        async def fresh_client() -> None:
            number = 0
            while running[0] and number < 1000:
                number += 1
                client = await connect_client(self, reactor, address.port)
                fields = [(b"Host", b"x"), (b"Connection", b"close")]
                client.send(build_request(b"GET", b"/f%d" % number, fields), b"GET")
                sent[0] += 1
                await client.wait_responses(1)
                if not client.responses:
                    errors.append("fresh connection closed without a response")
                    return
                statuses.append(client.responses[0].status)

        async def reloads() -> None:
            while loaded[0] < 20:
                await sleep(0.05)
                if not reloader.reload():
                    errors.append(f"reload failed: {service.reloads.last_error}")
            running[0] = False

        clients = [Deferred.fromCoroutine(keep_alive_client()) for _ in range(4)]
        clients.append(Deferred.fromCoroutine(fresh_client()))
        await Deferred.fromCoroutine(reloads())
        await gatherResults(clients)
        self.assertEqual(errors, [])
        self.assertEqual(len(statuses), sent[0])
        self.assertGreater(sent[0], 100)
        self.assertEqual({s for s in statuses if not 200 <= s < 300}, set())
        self.assertEqual(service.reloads.success, 20)
        self.assertEqual(service.reloads.failure, 0)
        # The last configuration applied decides where new requests go.
        current = {u.name for u in service.registry.upstreams}
        before = {s.name: len(s.client_requests) for s in servers}
        for number in range(6):
            status, _ = await http_get(self, address.port, f"/after{number}")
            self.assertEqual(status, 200)
        got = {s.address for s in servers if len(s.client_requests) > before[s.name]}
        self.assertTrue(got)
        self.assertLessEqual(got, current)
        self.assertTrue(all(len(s.client_requests) > 0 for s in servers))
        await wait_until(
            reactor, lambda: not service.registry.retiring, "removed upstreams drained"
        )


class TwistdOperationsTests(TestCase):
    """
    A real C{twistd balancebeam} with a configuration file, under a
    stand-in for systemd.
    """

    timeout = 60

    def spawn(
        self, arguments: list[str], environment: dict[str, str]
    ) -> tuple[TwistdProcess, Any]:
        """
        Start C{twistd -n --pidfile= balancebeam ARGUMENTS}; killed at cleanup.
        """
        process = TwistdProcess()
        process.listening.addErrback(lambda _: None)
        env = dict(os.environ)
        env.update(environment)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        directory = tempfile.mkdtemp(prefix="balancebeam-twistd-")
        self.addCleanup(shutil.rmtree, directory)
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + ["-n", "--pidfile=", "balancebeam", *arguments],
            env=env,
            path=directory,
        )

        async def stop() -> None:
            if process.exit_code is None and not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(stop)
        return process, transport

    def write(self, path: str, text: str) -> None:
        """
        Replace C{path}'s contents in one rename, as an operator's editor would.
        """
        with open(path + ".new", "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(path + ".new", path)

    async def test_config_reload_notify_and_token(self) -> None:
        """
        The balancer starts from its file and tells systemd READY=1; SIGHUP
        with a new file adds and removes an upstream (RELOADING=1 with
        MONOTONIC_USEC, then READY=1); SIGHUP with an invalid file changes
        nothing and counts a failure; the watchdog is fed; the admin
        requires its token, which is never logged; SIGTERM sends STOPPING=1
        and exits 0.
        """
        servers = [UpstreamServer(reactor, f"u{i}") for i in range(3)]
        for server in servers:
            server.start()
            self.addCleanup(server.stop)
        port, admin_port = unused_port(), unused_port()
        directory = tempfile.mkdtemp(prefix="balancebeam-config-")
        self.addCleanup(shutil.rmtree, directory)
        token = "integration-Token-1234"
        token_path = os.path.join(directory, "token")
        self.write(token_path, token + "\n")
        path = os.path.join(directory, "balancebeam.toml")

        def config(*upstreams: UpstreamServer, extra: str = "") -> str:
            tables = "".join(f'\n[[upstream]]\naddress = "{u.address}"\n' for u in upstreams)
            return (
                f'bind = "127.0.0.1:{port}"\nadmin-bind = "127.0.0.1:{admin_port}"\n'
                f'admin-token-file = "{token_path}"\nactive-health-check-interval = 0\n'
                f"{extra}{tables}"
            )

        self.write(path, config(servers[0], servers[1]))
        notify = NotifyListener(self)
        process, transport = self.spawn(
            ["--config", path, "--strategy", "round-robin"],
            {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"},
        )
        await process.listening
        await wait_until(reactor, lambda: notify.count("READY=1") >= 1, "READY=1")
        [ready] = [m for m in notify.read() if "READY=1" in m]
        self.assertTrue(
            ready[1].startswith(f"STATUS=listening on 127.0.0.1:{port}; 2/2 upstreams")
        )
        for number in range(4):
            status, _ = await http_get(self, port, f"/before{number}")
            self.assertEqual(status, 200)
        self.assertEqual([len(s.client_requests) for s in servers], [2, 2, 0])

        bearer = {"Authorization": f"Bearer {token}"}
        status, _ = await http_get(self, admin_port, "/status.json")
        self.assertEqual(status, 401)
        status, _ = await http_get(self, admin_port, "/status.json", {"Authorization": "Bearer x"})
        self.assertEqual(status, 401)

        self.write(path, config(servers[1], servers[2]))
        transport.signalProcess("HUP")
        await wait_until(reactor, lambda: notify.count("READY=1") >= 2, "READY=1 after reload")
        reloading = [m for m in notify.read() if "RELOADING=1" in m]
        self.assertEqual(len(reloading), 1)
        self.assertTrue(reloading[0][1].startswith("MONOTONIC_USEC="))
        usec = int(reloading[0][1].partition("=")[2])
        self.assertLess(abs(usec - time.monotonic_ns() // 1000), 60_000_000)
        for number in range(4):
            status, _ = await http_get(self, port, f"/after{number}")
            self.assertEqual(status, 200)
        self.assertEqual([len(s.client_requests) for s in servers], [2, 4, 2])
        status, body = await http_get(self, admin_port, "/status.json", bearer)
        self.assertEqual(status, 200)
        data = json.loads(body)
        serving = [u["name"] for u in data["upstreams"] if u["state"] != "removed"]
        self.assertEqual(serving, [servers[1].address, servers[2].address])
        removed = [u["name"] for u in data["upstreams"] if u["state"] == "removed"]
        self.assertIn(removed, ([], [servers[0].address]))
        self.assertEqual(data["reloads"]["success"], 1)

        self.write(path, config(servers[0], extra="connect-timeout = -3\n"))
        transport.signalProcess("HUP")
        await wait_until(reactor, lambda: notify.count("READY=1") >= 3, "READY=1 after bad reload")
        failed = [m for m in notify.read() if "READY=1" in m][-1]
        self.assertIn("reload failed", failed[1])
        self.assertIn("connect-timeout '-3' must be a finite number greater than 0", failed[1])
        status, body = await http_get(self, admin_port, "/metrics", bearer)
        samples = parse_metrics(body)
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="failure"), 1)
        self.assertEqual(metric(samples, "balancebeam_config_reloads_total", result="success"), 1)
        status, _ = await http_get(self, port, "/still")
        self.assertEqual(status, 200)
        self.assertEqual(len(servers[0].client_requests), 2)
        # WATCHDOG_USEC=400000: a WATCHDOG=1 every 0.2 s.
        await wait_until(reactor, lambda: notify.count("WATCHDOG=1") >= 3, "three WATCHDOG=1")

        transport.signalProcess("TERM")
        code = await process.ended
        # twistd ends itself with the signal that stopped it (as in test_twistd).
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down.", process.output)
        self.assertEqual(notify.count("STOPPING=1"), 1)
        output = process.output.decode("utf-8", "replace")
        self.assertIn("configuration reloaded", output)
        self.assertIn("configuration not reloaded, nothing changed", output)
        self.assertNotIn(token, output)

    async def test_check_config(self) -> None:
        """
        C{--check-config} exits 0 for a valid file and 1 with the error for
        an invalid one, and starts nothing either way.
        """
        directory = tempfile.mkdtemp(prefix="balancebeam-config-")
        self.addCleanup(shutil.rmtree, directory)
        good = os.path.join(directory, "good.toml")
        bad = os.path.join(directory, "bad.toml")
        port = unused_port()
        self.write(good, f'bind = "127.0.0.1:{port}"\nupstream = ["127.0.0.1:1"]\n')
        self.write(bad, 'upstream = ["127.0.0.1:1"]\n\nmax-head-size = "lots"\n')
        process, _ = self.spawn(["--config", good, "--check-config"], {})
        self.assertEqual(await process.ended, 0)
        self.assertIn(b"configuration OK", process.output)
        process, _ = self.spawn(["--config", bad, "--check-config"], {})
        self.assertEqual(await process.ended, 1)
        self.assertIn(f"{bad}:3: max-head-size 'lots' is not a size".encode(), process.output)
        self.assertNotIn(b"Listening", process.output)


def systemd_socket_activate() -> str:
    """
    The path of C{systemd-socket-activate}.

    @raise SkipTest: when missing, except in CI, where it is a failure.
    """
    found = shutil.which("systemd-socket-activate")
    if found is None:
        reason = "systemd-socket-activate is not installed (apt-get install systemd)"
        if os.environ.get("CI"):
            raise RuntimeError(f"{reason}; in CI the socket activation test must run")
        raise SkipTest(reason)
    return found


class SocketActivationTests(TestCase):
    """
    The balancer serves on a socket inherited from C{systemd-socket-activate}.
    """

    timeout = 60

    async def test_serves_on_inherited_socket(self) -> None:
        """
        C{--listen systemd:domain=INET:index=0} adopts the socket that
        C{systemd-socket-activate} listens on and passes at the first
        connection; that connection is served by the balancer.
        """
        activate = systemd_socket_activate()
        upstream = UpstreamServer(reactor, "activated")
        upstream.start()
        self.addCleanup(upstream.stop)
        port = unused_port()
        process = TwistdProcess()
        process.listening.addErrback(lambda _: None)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        directory = tempfile.mkdtemp(prefix="balancebeam-activate-")
        self.addCleanup(shutil.rmtree, directory)
        transport = reactor.spawnProcess(
            process,
            activate,
            [
                activate,
                # It passes the program a minimal environment: name what it needs.
                f"--setenv=PYTHONPATH={env['PYTHONPATH']}",
                "--fdname=http",
                "-l",
                f"127.0.0.1:{port}",
                sys.executable,
                *TWISTD[1:],
                "-n",
                "--pidfile=",
                "balancebeam",
                "--listen",
                "systemd:domain=INET:index=0",
                "--upstream",
                upstream.address,
                "--active-health-check-interval",
                "0",
            ],
            env=env,
            path=directory,
        )

        async def stop() -> None:
            if process.exit_code is None and not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(stop)
        await wait_until(reactor, lambda: b"Listening on" in process.output, "the socket")
        self.assertFalse(process.listening.called)
        client = await connect_client(self, reactor, port)
        client.send(build_request(b"GET", b"/activated"), b"GET")
        await client.wait_responses(1, timeout=20)
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertTrue(response.body.startswith(b"activated GET /activated HTTP/1.1"))
        self.assertIn(f"Listening for requests on 127.0.0.1:{port}".encode(), process.output)
        transport.signalProcess("TERM")
        self.assertIn(await process.ended, (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down.", process.output)
