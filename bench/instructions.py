"""
User-space instructions per request of the running balancer, counted by
callgrind: a measure of CPU cost that does not depend on what else the
machine is doing (issue 15: how much the mypyc build saves).

The balancer runs under C{valgrind --tool=callgrind} with instrumentation
off; a fixed load is sent once to warm it up, instrumentation is switched on
(C{callgrind_control -i on}), the same load is sent again and counted, and
instrumentation is switched off before the process is stopped. The load is
C{--requests} keep-alive C{GET} requests over C{--connections} connections,
one request in flight on each, from this process (not counted), to the
benchmark's asyncio upstream (C{bench/upstream.py}, another process, not
counted). The balancer runs with the C{balancebeam-epoll} reactor, active
health checks and a never-hit in-memory rate limit, as C{bench/run.py} runs
it. The kernel's work (system calls) is not counted: callgrind sees user
space only.

  python3 bench/instructions.py                  # this checkout, as it is
  python3 bench/instructions.py --compare        # pure Python against mypyc

C{--compare} copies the checkout to a temp directory twice and builds one
copy in place with mypyc (C{setup.py build_ext --inplace}), then measures
both and prints their ratio. Needs valgrind (Debian's C{valgrind}).
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
NEVER_HIT_LIMIT = 100_000_000
DEADLINE_SECONDS = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_serving(port: int, path: str, deadline: float) -> None:
    """Poll C{GET path} on C{port} until it answers 200 or C{deadline} passes."""
    while time.monotonic() < deadline:
        try:
            if run_load(port, path, requests=1, connections=1, deadline=deadline) == 1:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing served GET {path} on port {port} in time")


def response_length(buffer: bytes) -> int | None:
    """
    The length of the complete response at the start of C{buffer}, or
    C{None} while it is incomplete. Only C{Content-Length} framing: what
    the benchmark upstream sends.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    found = re.search(rb"\r\ncontent-length:\s*(\d+)", buffer[:end], re.IGNORECASE)
    if found is None or not buffer.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"unexpected response: {buffer[:200]!r}")
    total = end + 4 + int(found.group(1))
    return total if len(buffer) >= total else None


def run_load(port: int, path: str, requests: int, connections: int, deadline: float) -> int:
    """
    Send C{requests} keep-alive C{GET path} requests over C{connections}
    connections, one in flight on each; return how many were answered 200.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    sent = answered = 0
    for _ in range(min(connections, requests)):
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        sent += 1
        buffers[sock] = b""
        selector.register(sock, selectors.EVENT_READ, sock)
    try:
        while answered < requests:
            if time.monotonic() > deadline:
                raise SystemExit(f"load did not finish in time ({answered} of {requests})")
            for key, _ in selector.select(timeout=1.0):
                sock = key.data
                data = sock.recv(1 << 20)
                if not data:
                    raise SystemExit("the balancer closed a connection")
                buffer = buffers[sock] + data
                length = response_length(buffer)
                if length is None:
                    buffers[sock] = buffer
                    continue
                buffers[sock] = buffer[length:]
                answered += 1
                if sent < requests:
                    sock.sendall(request)
                    sent += 1
    finally:
        for sock in buffers:
            selector.unregister(sock)
            sock.close()
        selector.close()
    return answered


def callgrind_total(path: Path) -> int:
    """The instruction total of a callgrind output file."""
    text = path.read_text(errors="replace")
    found = (re.search(r"^totals:\s*(\d+)", text, re.MULTILINE)
             or re.search(r"^summary:\s*(\d+)", text, re.MULTILINE))
    if found is None:
        raise SystemExit(f"no totals in {path}")
    return int(found.group(1))


def measure(root: Path, requests: int, connections: int, path: str, work: Path) -> float:
    """
    Instructions per request of the balancer in checkout C{root}.
    """
    upstream_port, balancer_port = free_port(), free_port()
    out_file = work / f"callgrind.{root.name}.out"
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONHASHSEED="0")
    upstream = subprocess.Popen([sys.executable, str(REPO / "bench" / "upstream.py"),
                                 "--host", HOST, "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    balancer = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out_file}",
         sys.executable, "-c",
         "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--reactor=balancebeam-epoll", "balancebeam",
         "--bind", f"{HOST}:{balancer_port}", "--upstream", f"{HOST}:{upstream_port}",
         "--max-requests-per-minute", str(NEVER_HIT_LIMIT)],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        wait_until_serving(balancer_port, path, deadline)
        run_load(balancer_port, path, requests, connections, deadline)
        subprocess.run(["callgrind_control", "-i", "on", str(balancer.pid)],
                       check=True, capture_output=True)
        answered = run_load(balancer_port, path, requests, connections,
                            time.monotonic() + DEADLINE_SECONDS)
        subprocess.run(["callgrind_control", "-i", "off", str(balancer.pid)],
                       check=True, capture_output=True)
    finally:
        balancer.send_signal(signal.SIGTERM)
        upstream.send_signal(signal.SIGTERM)
        for process in (balancer, upstream):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return callgrind_total(out_file) / answered


def copy_checkout(dest: Path) -> Path:
    """Copy what the balancer needs to run (and to build) into C{dest}."""
    dest.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    for tree in ("balancebeam", "twisted"):
        shutil.copytree(REPO / tree, dest / tree, ignore=ignore)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--path", default="/", help="/ (100 bytes) or /16k")
    parser.add_argument("--compare", action="store_true",
                        help="measure a pure and a mypyc-built copy of this checkout")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="balancebeam-instructions-") as tmp:
        work = Path(tmp)
        if not args.compare:
            per_request = measure(REPO, args.requests, args.connections, args.path, work)
            print(f"{per_request:,.0f} instructions/request (GET {args.path}, this checkout)")
            return
        pure = copy_checkout(work / "pure")
        compiled = copy_checkout(work / "compiled")
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                       cwd=compiled, check=True, stdout=subprocess.DEVNULL)
        pure_cost = measure(pure, args.requests, args.connections, args.path, work)
        compiled_cost = measure(compiled, args.requests, args.connections, args.path, work)
        print(f"GET {args.path}, {args.requests} requests over {args.connections} connections")
        print(f"pure Python: {pure_cost:,.0f} instructions/request")
        print(f"compiled:    {compiled_cost:,.0f} instructions/request")
        print(f"compiled / pure: {compiled_cost / pure_cost:.3f}")


if __name__ == "__main__":
    main()
