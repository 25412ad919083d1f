"""
A throwaway C{redis-server} for integration tests.

The server listens on a free port of 127.0.0.1, keeps nothing on disk and
runs in a temporary directory. When C{redis-server} is not installed the tests
are skipped, except when the C{CI} environment variable is set: there a missing
server is a failure, never a silent skip.

Starting and stopping block for a moment (the server is polled with C{PING}
until it answers); that is acceptable for a test fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from unittest import SkipTest

from tests.helpers import unused_port


def find_redis_server() -> str:
    """
    Locate the C{redis-server} executable.

    @raise SkipTest: when it is missing and C{CI} is not set.
    @raise RuntimeError: when it is missing and C{CI} is set.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            raise RuntimeError(f"{reason}; in CI the Redis tests must run")
        raise SkipTest(reason)
    return executable


class RedisServer:
    """
    One C{redis-server} process, which can be stopped and started again on
    the same port.

    @ivar port: the port, chosen at the first L{start}.
    """

    def __init__(self) -> None:
        """
        Prepare a server; nothing runs until L{start}.
        """
        self._executable = find_redis_server()
        self._directory = tempfile.mkdtemp(prefix="balancebeam-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """
        The C{redis://} URL of database 0.
        """
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """
        Start the server (on the same port as before, if it ran already) and
        wait until it answers C{PING}.

        @raise RuntimeError: when it exits or does not answer in C{timeout} seconds.
        """
        if self._process is not None:
            raise RuntimeError("redis-server is already running")
        if not self.port:
            self.port = unused_port()
        log = open(os.path.join(self._directory, "redis.log"), "ab")
        with log:
            self._process = subprocess.Popen(
                [
                    self._executable,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", self._directory,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"redis-server exited at start: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING: {self._log_tail()}")
            time.sleep(0.01)

    def _answers_ping(self) -> bool:
        """
        Whether the server answers C{PING} with C{PONG} now.
        """
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        """
        The end of the server's log, for error messages.
        """
        with open(os.path.join(self._directory, "redis.log"), "rb") as log:
            return log.read()[-2000:].decode("utf-8", "replace")

    def _end(self, sig: signal.Signals) -> None:
        """
        Send C{sig} and wait for the process to exit (killing it after 10 s).
        """
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(sig)
        # A paused server only acts on SIGTERM once it runs again.
        process.send_signal(signal.SIGCONT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """
        Stop the server gracefully (C{SIGTERM}); nothing happens if it is not running.
        """
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """
        Kill the server (C{SIGKILL}), as a crash would.
        """
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """
        Freeze the server (C{SIGSTOP}): connections stay open, nothing is answered.
        """
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """
        Unfreeze a paused server (C{SIGCONT}).
        """
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """
        Stop the server if it runs, and start it again on the same port.
        """
        self.stop()
        self.start()

    def command(self, *words: str) -> bytes:
        """
        Send one command with a fresh blocking connection and return the raw reply.
        """
        request = b"".join(
            [f"*{len(words)}\r\n".encode()]
            + [f"${len(word.encode())}\r\n{word}\r\n".encode() for word in words]
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            connection.sendall(request)
            return connection.recv(65536)

    def cleanup(self) -> None:
        """
        Kill the server and remove its directory.
        """
        self.kill()
        shutil.rmtree(self._directory, ignore_errors=True)
