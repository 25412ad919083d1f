"""
Bad option values end a real C{twistd -n balancebeam} with a one-line usage
error naming the flag and exit status 1, before anything listens and without
a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.trial.unittest import TestCase

from tests.helpers import unused_port
from tests.test_twistd import REPO_ROOT, TWISTD, TwistdProcess

reactor: Any = _global_reactor


class UsageErrorTests(TestCase):
    """
    Each bad value is reported by twistd as a usage error naming its flag.
    """

    timeout = 30

    async def run_twistd(self, *arguments: str) -> tuple[int, bytes]:
        """
        Run C{twistd -n --pidfile= balancebeam --bind 127.0.0.1:PORT
        ARGUMENTS} in a temporary directory until it ends (it is killed at
        cleanup if it does not).

        @return: the exit status and the output (stdout and stderr).
        """
        process = TwistdProcess()
        process.listening.addErrback(lambda _: None)
        directory = tempfile.mkdtemp(prefix="balancebeam-usage-")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
        )
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                "balancebeam",
                "--bind",
                f"127.0.0.1:{unused_port()}",
                *arguments,
            ],
            env=environment,
            path=directory,
        )

        async def stop() -> None:
            """
            Kill the process if it still runs, and wait for it.
            """
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(stop)
        code = await process.ended
        return code, process.output

    def assert_usage_error(self, code: int, output: bytes, message: str) -> None:
        """
        The run ended with status 1, its last line holds C{message}, and it
        neither listened nor printed a traceback.
        """
        self.assertEqual(code, 1, output)
        last_line = output.strip().splitlines()[-1]
        self.assertIn(message.encode("utf-8"), last_line, output)
        self.assertNotIn(b"Traceback", output)
        self.assertNotIn(b"Listening for requests on", output)

    async def test_non_ascii_health_check_path(self) -> None:
        """
        C{--active-health-check-path /café} is a usage error (it used to pass
        option parsing and crash in makeService with a traceback).
        """
        code, output = await self.run_twistd(
            "--upstream", "127.0.0.1:9", "--active-health-check-path", "/caf\u00e9"
        )
        self.assert_usage_error(
            code,
            output,
            "--active-health-check-path '/caf\u00e9' must contain only printable ASCII",
        )

    async def test_bad_upstream(self) -> None:
        """
        An C{--upstream} without a port is a usage error naming the flag.
        """
        code, output = await self.run_twistd("--upstream", "10.0.0.1")
        self.assert_usage_error(code, output, "--upstream '10.0.0.1' is not of the form HOST:PORT")

    async def test_bad_rate_limit_backend(self) -> None:
        """
        A Redis URL with a database that is not a number is a usage error
        naming C{--rate-limit-backend}.
        """
        code, output = await self.run_twistd(
            "--upstream",
            "127.0.0.1:9",
            "--max-requests-per-minute",
            "10",
            "--rate-limit-backend",
            "redis://cache:6379/db",
        )
        self.assert_usage_error(
            code,
            output,
            "--rate-limit-backend 'redis://cache:6379/db': database 'db' must be a number",
        )

    async def test_bad_tunnel_idle_timeout(self) -> None:
        """
        The new C{--tunnel-idle-timeout} refuses 0 with a usage error naming it.
        """
        code, output = await self.run_twistd(
            "--upstream", "127.0.0.1:9", "--tunnel-idle-timeout", "0"
        )
        self.assert_usage_error(
            code, output, "--tunnel-idle-timeout '0' must be a finite number greater than 0"
        )
