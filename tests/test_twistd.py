"""
Smoke tests of C{twistd -n balancebeam} run for real, as a subprocess, in
front of a recording upstream on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import balancebeam
from tests.helpers import unused_port, wait_until
from tests.upstreams import UpstreamServer, connect_client

reactor: Any = _global_reactor

#: The repository root, put on C{PYTHONPATH} so twistd finds the plugin.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(balancebeam.__file__)))

#: Runs twistd from a given interpreter (C{twisted.scripts.twistd} has no C{__main__}).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class TwistdProcess(ProcessProtocol):
    """
    Collects a twistd subprocess's output and tells when it has started
    listening and when it has ended.

    @ivar output: stdout and stderr, interleaved as they arrived.
    @ivar listening: fires once C{Listening for requests on} was printed.
    @ivar ended: fires with the exit code (or C{-signal}) when the process ends.
    """

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[None] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        """
        Collect stdout and watch for the startup line.
        """
        self.output += data
        if not self.listening.called and b"Listening for requests on" in self.output:
            self.listening.callback(None)

    def errReceived(self, data: bytes) -> None:
        """
        Collect stderr.
        """
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        """
        Record the exit code and fire L{ended}.
        """
        value = reason.value
        if isinstance(value, ProcessDone):
            self.exit_code = 0
        elif isinstance(value, ProcessTerminated):
            self.exit_code = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd ended before listening: {self.output!r}"))
        self.ended.callback(self.exit_code if self.exit_code is not None else -1)


class TwistdTests(TestCase):
    """
    The plugin, option parsing and lifecycle through a real twistd.
    """

    timeout = 30

    def spawn(self, *arguments: str) -> TwistdProcess:
        """
        Start C{twistd -n --pidfile= balancebeam ARGUMENTS} in a temporary
        directory; the test's cleanup kills it if it is still running.
        """
        process = TwistdProcess()
        process.listening.addErrback(lambda _: None)
        directory = tempfile.mkdtemp(prefix="balancebeam-twistd-")
        environment = dict(os.environ)
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
            Kill the process if it still runs, and wait for it.
            """
            if process.exit_code is None and not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(stop)
        return process

    async def test_serves_and_stops_cleanly(self) -> None:
        """
        twistd starts the balancer, relays a request to the upstream, and
        exits with status 0 on SIGTERM.
        """
        upstream = UpstreamServer(reactor, "subprocess-upstream")
        upstream.start()
        self.addCleanup(upstream.stop)
        port = unused_port()
        process = self.spawn(
            "--bind",
            f"127.0.0.1:{port}",
            "--upstream",
            upstream.address,
            "--active-health-check-interval",
            "0",
        )
        await process.listening
        client = await connect_client(self, reactor, port)
        client.send(b"GET /through/twistd HTTP/1.1\r\nHost: balancer.test\r\n\r\n", b"GET")
        await client.wait_responses(1)
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertTrue(
            response.body.startswith(b"subprocess-upstream GET /through/twistd HTTP/1.1 0 "),
            response.body,
        )
        [received] = upstream.requests
        self.assertEqual(received.header(b"x-forwarded-for"), b"127.0.0.1")
        assert client.transport is not None
        client.transport.loseConnection()
        await client.closed
        assert process.transport is not None
        process.transport.signalProcess("TERM")
        code = await process.ended
        # twistd stops the reactor on SIGTERM and then, by design, ends
        # itself with the same signal (twisted.application.app._exitWithSignal).
        self.assertIn(code, (0, -signal.SIGTERM), process.output.decode(errors="replace"))
        self.assertIn(b"Server Shut Down.", process.output)
        self.assertIn(b"Listening for requests on 127.0.0.1:%d" % port, process.output)
        self.assertNotIn(b"Traceback", process.output)
        self.assertNotIn(b"Unhandled", process.output)

    async def test_second_sigterm_during_drain_is_harmless(self) -> None:
        """
        A SIGTERM arriving while the balancer drains (as under C{timeout} or a
        supervisor signalling the process group) logs one info line; the
        drain goes on, the request in progress is answered, and nothing is
        logged as an error.
        """
        upstream = UpstreamServer(reactor, "slow-upstream", delay=1.5)
        upstream.start()
        self.addCleanup(upstream.stop)
        port = unused_port()
        process = self.spawn(
            "--bind", f"127.0.0.1:{port}", "--upstream", upstream.address,
            "--active-health-check-interval", "0", "--shutdown-timeout", "10",
        )
        await process.listening
        client = await connect_client(self, reactor, port)
        client.send(b"GET /slow HTTP/1.1\r\nHost: balancer.test\r\n\r\n", b"GET")
        await wait_until(reactor, lambda: bool(upstream.requests), "the request upstream")
        assert process.transport is not None
        process.transport.signalProcess("TERM")
        await wait_until(
            reactor, lambda: b"Received SIGTERM" in process.output, "the first SIGTERM logged"
        )
        process.transport.signalProcess("TERM")
        await wait_until(
            reactor, lambda: b"again while stopping" in process.output, "the second SIGTERM"
        )
        await client.wait_responses(1)
        code = await process.ended
        output = process.output.decode(errors="replace")
        self.assertEqual([r.status for r in client.responses], [200])
        self.assertIn(code, (0, -signal.SIGTERM), output)
        self.assertEqual(output.count("Received SIGTERM, shutting down"), 1, output)
        self.assertEqual(output.count("Received SIGTERM again while stopping"), 1, output)
        self.assertNotIn("ReactorNotRunning", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Unhandled", output)

    async def test_demo_serves(self) -> None:
        """
        C{--demo} without any C{--upstream} starts its own upstreams and
        answers a request through them.
        """
        port = unused_port()
        process = self.spawn("--demo", "--bind", f"127.0.0.1:{port}")
        await process.listening
        client = await connect_client(self, reactor, port)
        client.send(b"GET /demo HTTP/1.1\r\nHost: balancer.test\r\n\r\n", b"GET")
        await client.wait_responses(1)
        self.assertEqual([r.status for r in client.responses], [200])
        assert process.transport is not None
        process.transport.signalProcess("TERM")
        code = await process.ended
        self.assertIn(code, (0, -signal.SIGTERM), process.output.decode(errors="replace"))
        self.assertNotIn(b"Traceback", process.output)

    async def test_port_in_use(self) -> None:
        """
        A port already in use ends twistd with exit status 1 and a one-line
        error naming the address, without a traceback.
        """
        occupied = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(occupied.stopListening)
        port = occupied.getHost().port
        process = self.spawn("--bind", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9")
        code = await process.ended
        self.assertEqual(code, 1, process.output.decode(errors="replace"))
        errors = [line for line in process.output.splitlines() if b"cannot listen" in line]
        self.assertEqual(len(errors), 1, process.output.decode(errors="replace"))
        self.assertIn(b"%d" % port, errors[0])
        self.assertNotIn(b"Traceback", process.output)

    async def test_bad_upstream_is_usage_error(self) -> None:
        """
        C{--upstream nocolon} is a usage error naming the flag, with a
        non-zero exit status, before anything listens.
        """
        process = self.spawn("--bind", f"127.0.0.1:{unused_port()}", "--upstream", "nocolon")
        code = await process.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"--upstream 'nocolon'", process.output)
        self.assertNotIn(b"Listening for requests on", process.output)
        self.assertNotIn(b"Traceback", process.output)

    async def test_missing_upstream_is_usage_error(self) -> None:
        """
        Without any C{--upstream}, twistd exits non-zero with an error naming
        the flag.
        """
        process = self.spawn("--bind", f"127.0.0.1:{unused_port()}")
        code = await process.ended
        self.assertNotEqual(code, 0)
        last_line = process.output.strip().splitlines()[-1]
        self.assertIn(b"--upstream", last_line)
        self.assertNotIn(b"Listening for requests on", process.output)

