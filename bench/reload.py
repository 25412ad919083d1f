"""
Reloads under load drop nothing: the proof of issue 13, with wrk.

Starts three upstreams (C{bench/upstream.py}) and C{twistd balancebeam
--config FILE} on 127.0.0.1, runs wrk against the balancer, and every
C{--interval} seconds rewrites the configuration file, alternating between
two valid configurations (other upstreams, strategy, weights, timeouts,
pool and rate-limit settings), and sends the balancer C{SIGHUP}. At the end
it reads the balancer's own counters from its admin listener.

It passes (exit status 0) when wrk saw no socket error and no non-2xx
response, the balancer counted only 2xx responses, and every reload
succeeded; otherwise it says why and exits 1.

    python3 bench/reload.py                         # 30 s, a SIGHUP every 2 s
    python3 bench/reload.py --duration 10 --interval 1

Needs Debian's wrk (C{apt-get install -y wrk}). Standard library only; every
process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """
    A loopback port nothing listens on now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """
    GET C{url}: its status and body (0 and the error when it fails).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except OSError as e:
        status = getattr(e, "code", 0)
        return status, str(e).encode()


def wait_for(url: str, deadline: float) -> None:
    """
    Poll C{url} until it answers 200.

    @raise SystemExit: when it does not before C{deadline} (monotonic).
    """
    while time.monotonic() < deadline:
        if get(url, 0.5)[0] == 200:
            return
        time.sleep(0.05)
    raise SystemExit(f"reload bench: {url} did not answer 200 in time")


def config_text(port: int, admin: int, upstreams: list[int], variant: int) -> str:
    """
    One of the two configurations the run alternates between.
    """
    lines = [
        f'bind = "127.0.0.1:{port}"',
        f'admin-bind = "127.0.0.1:{admin}"',
        "active-health-check-interval = 1" if variant == 0 else "active-health-check-interval = 0",
        'strategy = "round-robin"' if variant == 0 else 'strategy = "least-connections"',
        f"upstream-timeout = {30 if variant == 0 else 20}",
        f"pool-max-idle-per-upstream = {64 if variant == 0 else 16}",
        f"max-requests-per-minute = {0 if variant == 0 else 100000000}",
    ]
    chosen = upstreams[:2] if variant == 0 else upstreams[1:]
    for index, upstream in enumerate(chosen):
        lines += ["", "[[upstream]]", f'address = "127.0.0.1:{upstream}"']
        lines.append(f"weight = {1 + index * (1 + variant)}")
    return "\n".join(lines) + "\n"


def metrics(admin: int) -> dict[str, float]:
    """
    The balancer's metrics, by sample name and labels as written.
    """
    status, body = get(f"http://127.0.0.1:{admin}/metrics")
    if status != 200:
        raise SystemExit(f"reload bench: /metrics answered {status}")
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between SIGHUPs")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("reload bench: wrk is missing (apt-get install -y wrk)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="balancebeam-reload-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstreams = [free_port() for _ in range(3)]
        for number, port in enumerate(upstreams):
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "upstream.py"), "--port", str(port),
                     "--name", f"u{number}"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        port, admin = free_port(), free_port()
        path = work / "balancebeam.toml"
        texts = [config_text(port, admin, upstreams, variant) for variant in (0, 1)]
        path.write_text(texts[0])
        log = open(work / "balancebeam.log", "wb")
        environment = dict(os.environ, PYTHONPATH=str(REPO))
        balancer = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "balancebeam", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=environment,
        )
        processes.append(balancer)
        deadline = time.monotonic() + 20
        for upstream in upstreams:
            while time.monotonic() < deadline:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", upstream)) == 0:
                        break
                time.sleep(0.05)
        wait_for(f"http://127.0.0.1:{admin}/ready", deadline)
        load = subprocess.Popen(
            [wrk, f"-t{arguments.threads}", f"-c{arguments.connections}",
             f"-d{arguments.duration:g}s", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        processes.append(load)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < arguments.duration - arguments.interval / 2:
            time.sleep(arguments.interval)
            if load.poll() is not None:
                break
            sent += 1
            path.write_text(texts[sent % 2] + f"# reload {sent}\n")
            os.kill(balancer.pid, signal.SIGHUP)
        output = load.communicate(timeout=arguments.duration + 60)[0].decode()
        time.sleep(0.5)
        samples = metrics(admin)
        status, body = get(f"http://127.0.0.1:{admin}/status.json")
        state = json.loads(body) if status == 200 else {}
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    print(output.rstrip())
    problems = []
    socket_errors = re.search(r"Socket errors: (.*)", output)
    if socket_errors:
        problems.append(f"wrk socket errors: {socket_errors.group(1)}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        problems.append(f"wrk saw {non_2xx.group(1)} non-2xx/3xx responses")
    requests = re.search(r"(\d+) requests in", output)
    if not requests:
        problems.append("wrk printed no request count")
    counted = {
        code: samples.get(f'balancebeam_http_responses_total{{code="{code}"}}', -1)
        for code in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
    }
    if any(counted[code] != 0 for code in counted if code != "2xx"):
        problems.append(f"the balancer counted non-2xx responses: {counted}")
    succeeded = samples.get('balancebeam_config_reloads_total{result="success"}', -1)
    failed = samples.get('balancebeam_config_reloads_total{result="failure"}', -1)
    if succeeded != sent or failed != 0:
        problems.append(f"{sent} SIGHUPs sent, {succeeded:g} reloads succeeded, {failed:g} failed")
    print(
        f"\nreload bench: {sent} SIGHUPs in {arguments.duration:g} s, reloads ok/failed "
        f"{succeeded:g}/{failed:g}; responses by class {counted}; "
        f"upstreams now {[u['name'] for u in state.get('upstreams', [])]}"
    )
    shutil.rmtree(work, ignore_errors=True)
    if problems:
        print("FAIL: " + "; ".join(problems))
        return 1
    print("PASS: 0 socket errors, 0 non-2xx responses, every reload applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
