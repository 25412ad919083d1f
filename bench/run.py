#!/usr/bin/env python3
"""
Benchmark balancebeam against nginx and HAProxy on this machine (issues 5 and 6).

Run from anywhere::

    python3 bench/run.py            # full run, under 5 minutes
    python3 bench/run.py --quick    # a few seconds per scenario, for development and CI
    python3 bench/run.py --baseline HEAD~1 --scenarios small   # this tree against a commit

With C{--baseline REV} the balancebeam of git revision C{REV} (exported with
C{git archive}) runs as one more target, C{balancebeam@REV}, in the same
rounds as the current tree; with C{--variant NAME:ENV=VAL,... ARGS} the
current tree runs once more with other environment variables or arguments.
The report ends with "current vs ..." lines: CPU microseconds per request
of the current tree over each of them, scenario by scenario.

Needs Debian's C{wrk}, C{nginx} and C{haproxy} (C{apt-get install -y wrk nginx haproxy});
a missing nginx or haproxy is reported and its target skipped, a missing wrk is an
error. Everything is started here on 127.0.0.1, on free ports, in a temporary
directory with generated configuration files, pinned with C{taskset}: the
balancer under test on one core, wrk, the upstreams and this script on another.
Every process started is stopped by PID (and its process group) on exit, on
failure and on Ctrl-C.

Standard library only. See C{doc/benchmark.md} for what each scenario measures
and how to read the ratios. Exit status: 0 when every measurement ran (targets
may still have failed: see the table, or use C{--strict}), 1 on a harness
error, 2 on bad arguments, 3 when C{--strict} and a target failed.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import json
import os
import platform
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"
APT_LINE = "apt-get install -y wrk nginx haproxy"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SMALL_BODY = ("balancebeam-benchmark-upstream-small-response-body-of-exactly-one-hundred-bytes-"
              + "x" * 20)
assert len(SMALL_BODY) == 100
BIG_SIZE = 16 * 1024
SLOW_DELAY_MS = 50  # what the slow upstream adds to each response
NEVER_HIT_LIMIT = 100_000_000  # requests per minute: the rate limiter runs but never refuses
STRATEGIES = ("random", "round-robin", "least-connections", "p2c")
LB_TARGETS = ("nginx", "haproxy", "balancebeam")
DEFAULT_TARGETS = ("direct",) + LB_TARGETS
# Issue 15: the Python proxies a user might pick instead, installed from PyPI
# into their own virtual environments (only when named in --targets).
PEER_TARGETS = ("twisted-web", "mitmproxy", "proxy.py")
PEER_PACKAGES = {
    "twisted-web": ("twisted >= 24.7",),
    "mitmproxy": ("mitmproxy >= 10, < 13",),
    "proxy.py": ("proxy.py >= 2.4, < 3",),
}
ALL_TARGETS = DEFAULT_TARGETS + PEER_TARGETS
TLS_SCENARIOS = ("https", "handshake", "reencrypt")  # issue 12: see the TLS section below
ALL_SCENARIOS = ("small", "16k", "close", "ratelimit", "idle", "download", "pool", "slow",
                 *TLS_SCENARIOS, "cache-hit", "cache-random", "profile")
DEFAULT_SCENARIOS = ALL_SCENARIOS[:-1]  # "profile" only with --profile

SCENARIO_TITLES = {
    "small": "GET / (100-byte body), 50 keep-alive connections",
    "16k": "GET /16k (16 KiB body), 50 keep-alive connections",
    "close": "GET /, 50 connections, fresh connection per request (Connection: close)",
    "ratelimit": "GET /, 50 keep-alive connections, in-memory rate limiting on (never hit)",
    "idle": "1,000 idle client connections (one request each, then held open)",
    "download": "100 MiB streamed download through the balancer",
    "pool": "balancebeam upstream connection pool off vs on (GET /, 50 connections)",
    "slow": "3 upstreams, one adds 50 ms per response: strategies compared (GET /, 50 conns)",
    "cache-hit": "GET / with max-age: cache hits vs proxied, balancebeam and nginx "
                 "proxy_cache, 50 conns",
    "cache-random": "GET /16k?key=N, N random over 3x the keys --cache-size holds: RSS growth",
    "profile": "balancebeam under GET / keep-alive, sampled by py-spy (not a measurement)",
    "https": "GET / over HTTPS, 50 keep-alive connections (and plain HTTP to the same processes)",
    "handshake": "GET / over HTTPS with Connection: close: a new TLS handshake per request",
    "reencrypt": "GET / to TLS upstreams (verified, warm pool), 50 keep-alive connections",
}

# The cache scenarios (issue 10). The upstream adds Cache-Control: max-age=CACHE_MAX_AGE.
CACHE_MAX_AGE = 86400
CACHE_HIT_SIZE_MIB = 64
CACHE_RANDOM_SIZE_MIB = 64
CACHE_RANDOM_SIZE_MIB_QUICK = 16
CACHE_HIT_ROWS = ("balancebeam hit", "balancebeam proxied", "nginx proxy_cache hit",
                  "nginx proxied")
# Appended to WRK_LUA: each request asks for one of KEY_COUNT keys at random (seeded per round).
CACHE_RANDOM_LUA = r"""
math.randomseed(SEED)
request = function()
  return wrk.format("GET", "/16k?key=" .. math.random(KEY_COUNT))
end
"""

# wrk prints its own report; this done() hook adds one parseable line. With
# COUNT_SLOW true (the slow scenario only: it makes wrk hand every response's
# headers to Lua) it also counts the responses that carry "X-Upstream: slow"
# (HAProxy sends header names in lower case).
# Counting headers is exact; a share derived from wrk's latency percentiles
# was not (Debian's wrk 4.1.0 gave 24 % where the headers showed 33 %).
WRK_LUA = r"""
local count_slow = COUNT_SLOW
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
init = function(args)
  slow = 0
  total = 0
end
if count_slow then
  response = function(status, headers, body)
    total = total + 1
    if (headers["X-Upstream"] or headers["x-upstream"]) == "slow" then
      slow = slow + 1
    end
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  local slow_share = -1
  if count_slow then
    local s, t = 0, 0
    for _, thread in ipairs(threads) do
      s = s + thread:get("slow")
      t = t + thread:get("total")
    end
    if t > 0 then slow_share = s / t end
  end
  io.write(string.format(
    "BENCHJSON {\"requests\": %.0f, \"duration_us\": %.0f, \"bytes\": %.0f, " ..
    "\"connect\": %.0f, \"read\": %.0f, \"write\": %.0f, \"status\": %.0f, \"timeout\": %.0f, " ..
    "\"mean_us\": %.1f, \"max_us\": %.0f, \"p50_us\": %.0f, \"p90_us\": %.0f, " ..
    "\"p99_us\": %.0f, \"p999_us\": %.0f, \"slow_share\": %.6f}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), slow_share))
end
"""

# The twisted-web peer: twisted.web.proxy.ReverseProxyResource to one upstream,
# without the access log (balancebeam writes none either).
TWISTED_WEB_PROXY = r"""
import sys

from twisted.internet import reactor
from twisted.web import proxy, server


class QuietSite(server.Site):
    def log(self, request):
        pass


port, upstream = int(sys.argv[1]), int(sys.argv[2])
site = QuietSite(proxy.ReverseProxyResource("127.0.0.1", upstream, b""))
reactor.listenTCP(port, site, backlog=4096, interface="127.0.0.1")
reactor.run()
"""

# The proxy.py peer's reverse-proxy plugin: every path, kept, to one of both
# upstreams (a static route would send each request to the upstream URL's own
# path), no access log.
PROXYPY_PLUGIN = r"""
import itertools

from proxy.http import Url
from proxy.http.server import ReverseProxyBasePlugin

UPSTREAM_CYCLE = itertools.cycle([UPSTREAMS])


class BenchReverseProxy(ReverseProxyBasePlugin):
    def routes(self):
        return [r"/.*"]

    def handle_route(self, request, pattern):
        return Url.from_bytes(next(UPSTREAM_CYCLE) + request.path)

    def on_access_log(self, context):
        return None
"""


@dataclass(frozen=True)
class Variant:
    """
    Another configuration of the current tree measured in the same run
    (C{--variant}).

    @ivar name: its name; the target is C{balancebeam:NAME}.
    @ivar env: environment variables set for it, on top of C{--balancer-env}.
    @ivar twistd_args: twistd arguments added for it (a C{--reactor} here
        replaces the one given with C{--twistd-arg}).
    @ivar balancer_args: balancebeam arguments added for it.
    @ivar root: the tree it runs from (C{None}: the checkout), e.g. the
        in-place mypyc build of C{--compiled}.
    @ivar python: the Python that runs it (C{None}: C{--balancer-python}),
        e.g. the PyPy of C{--pypy}.
    @ivar warmup: seconds of load after each start (C{None}:
        C{--balancer-warmup}).
    """

    name: str
    env: dict[str, str]
    twistd_args: list[str]
    balancer_args: list[str]
    root: Path | None = None
    python: str | None = None
    warmup: int | None = None

    @property
    def key(self) -> str:
        """
        The target's name in the tables.
        """
        return f"balancebeam:{self.name}"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def parse_env_assignment(text: str) -> tuple[str, str]:
    """
    Split C{NAME=VALUE} (the value may be empty or contain C{=}).

    @raise ValueError: C{NAME} is missing or not a valid variable name.
    """
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_variant(spec: str) -> Variant:
    """
    Parse C{--variant NAME:WORDS}. C{WORDS} are split shell-style; the
    leading words of the form C{ENV=VAL} (several may be joined with commas:
    C{A=1,B=2}) are environment variables, the rest are balancebeam
    arguments, of which a C{--reactor} goes to twistd. Examples:
    C{plain-write:BALANCEBEAM_TWISTED_INTERNALS=off},
    C{stock-epoll:--reactor=epoll}, C{p2c:--strategy p2c}.

    @raise ValueError: the name is missing or malformed, or nothing is set.
    """
    name, sep, rest = spec.partition(":")
    if not sep or not _VARIANT_NAME.match(name):
        raise ValueError(f"expected NAME:ENV=VAL[,ENV=VAL] [ARGS], got {spec!r} "
                         "(NAME: letters, digits, '.', '_', '-')")
    words = shlex.split(rest)
    env: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        word = words.pop(0)
        pieces = word.split(",")
        if all(_ASSIGNMENT.match(piece) for piece in pieces):
            assignments = pieces
        else:  # a value containing a comma: A=x,y
            assignments = [word]
        for assignment in assignments:
            key, value = parse_env_assignment(assignment)
            env[key] = value
    twistd_args, balancer_args = split_balancer_args([], [shlex.join(words)] if words else [])
    if not env and not twistd_args and not balancer_args:
        raise ValueError(f"variant {name!r} sets nothing: give ENV=VAL or arguments")
    return Variant(name, env, twistd_args, balancer_args)


def merge_twistd_args(common: Sequence[str], own: Sequence[str]) -> list[str]:
    """
    twistd arguments for a variant: C{common} then C{own}, except that a
    reactor in C{own} replaces one in C{common} (twistd installs the
    reactor as it parses the option, so it cannot be given twice).
    """
    def reactor_free(args: Sequence[str]) -> tuple[list[str], bool]:
        out: list[str] = []
        found = False
        index = 0
        while index < len(args):
            word = args[index]
            if word.startswith("--reactor="):
                found = True
            elif word in ("--reactor", "-r") and index + 1 < len(args):
                found = True
                index += 1
            else:
                out.append(word)
            index += 1
        return out, found

    _, own_has_reactor = reactor_free(own)
    if own_has_reactor:
        common = reactor_free(common)[0]
    return list(common) + list(own)


def resolve_revision(rev: str) -> str | None:
    """
    The full commit id of git revision C{rev} in the repository holding this
    script, or C{None} when git does not know it.
    """
    try:
        result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet",
                                 f"{rev}^{{commit}}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def export_revision(commit: str, dest: Path) -> None:
    """
    Write the tree of C{commit} into C{dest} with C{git archive}.

    @raise HarnessError: git failed.
    """
    dest.mkdir(parents=True)
    archive = dest.with_suffix(".tar")
    with open(archive, "wb") as out:
        result = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                                stdout=out, stderr=subprocess.PIPE, timeout=120)
    if result.returncode != 0:
        raise HarnessError(f"git archive {commit} failed: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise HarnessError(f"git archive produced an unsafe path: {member.name}")
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.11.4 and later
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    archive.unlink()


def log_name_for(key: str) -> str:
    """
    A file-name-safe process name for a target key (C{balancebeam@HEAD~1}).
    """
    return re.sub(r"[^A-Za-z0-9@.,:~+_-]", "_", key)


class HarnessError(Exception):
    """
    The benchmark itself cannot go on (a tool is missing, a reference server
    does not start, wrk produced no result).
    """


class TargetFailure(Exception):
    """
    A target did not start or stopped working; it is reported and skipped.
    """


def say(message: str) -> None:
    """
    Print a progress line to stderr (the tables go to stdout).
    """
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _child_setup(core: int | None) -> Callable[[], None]:
    """
    Build the pre-exec hook for a child: die with this script (Linux
    C{PR_SET_PDEATHSIG}) and, when C{taskset} is unavailable, pin to C{core}.
    """

    def setup() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if core is not None:
            os.sched_setaffinity(0, {core})

    return setup


class ProcessGroup:
    """
    Every process this script starts. Each runs in its own session (so a
    terminal's Ctrl-C reaches only us) and is stopped by PID: SIGTERM to its
    process group, SIGKILL after a grace period, then SIGKILL to any
    descendant that is still alive.
    """

    def __init__(self, logdir: Path, taskset: str | None) -> None:
        """
        @param logdir: where each process's stdout and stderr go.
        @param taskset: path of C{taskset}, or C{None} to pin with
            C{sched_setaffinity} instead.
        """
        self._logdir = logdir
        self._taskset = taskset
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._lock = threading.Lock()

    def spawn(self, name: str, argv: Sequence[str], core: int | None,
              env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """
        Start C{argv} pinned to C{core} (C{None}: not pinned), output to C{<logdir>/<name>.log}.
        """
        command = list(argv)
        preexec_core = None
        if core is not None:
            if self._taskset:
                command = [self._taskset, "-c", str(core)] + command
            else:
                preexec_core = core
        logfile = open(self.log_path(name), "ab")
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=logfile,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_child_setup(preexec_core), env=env,
                                    cwd=str(cwd) if cwd else None)
        finally:
            logfile.close()
        with self._lock:
            self._procs.append((name, proc))
        return proc

    def log_path(self, name: str) -> Path:
        """
        The file a process called C{name} writes its output to.
        """
        return self._logdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 15) -> str:
        """
        The last lines of a process's output, for error messages.
        """
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        """
        Stop one process and whatever it forked; safe to call twice.
        """
        descendants = tree_pids(proc.pid)[1:] if proc.poll() is None else []
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(5)
        for pid in descendants:
            if _pgid(pid) == proc.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        with self._lock:
            self._procs = [(n, p) for (n, p) in self._procs if p is not proc]

    def stop_all(self) -> None:
        """
        Stop every process still registered, newest first.
        """
        with self._lock:
            procs = list(reversed(self._procs))
        for _, proc in procs:
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"[bench] could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def _pgid(pid: int) -> int | None:
    """
    The process group of C{pid}, or C{None} when it is gone.
    """
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# --------------------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    """
    Direct children of C{pid} (all its threads), from /proc.
    """
    result: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return result
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                result.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return result


def tree_pids(pid: int) -> list[int]:
    """
    C{pid} followed by all its descendants (nginx: master then worker).
    """
    pids = [pid]
    index = 0
    while index < len(pids):
        pids.extend(_children(pids[index]))
        index += 1
    return pids


def cpu_ticks(pids: Sequence[int]) -> int:
    """
    user+sys clock ticks consumed so far by C{pids} (fields 14 and 15 of /proc/PID/stat).
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pids: Sequence[int]) -> int:
    """
    Sum of VmRSS, in KiB, of C{pids}.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


class RssSampler:
    """
    Samples the resident set of a process tree in a thread and keeps the peak.
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.02) -> None:
        """
        @param pids: the processes to sum.
        @param interval: seconds between samples.
        """
        self._pids = list(pids)
        self._interval = interval
        self._stop = threading.Event()
        self.peak = rss_kib(self._pids)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """
        Sample until stopped.
        """
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_kib(self._pids))

    def __enter__(self) -> RssSampler:
        """
        Start sampling.
        """
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """
        Stop sampling and take one last sample.
        """
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self._pids))


def settled_rss(pids: Sequence[int], samples: int = 5, interval: float = 0.04) -> int:
    """
    The median of a few RSS samples, as a baseline.
    """
    values = []
    for _ in range(samples):
        values.append(rss_kib(pids))
        time.sleep(interval)
    return int(statistics.median(values))


# --------------------------------------------------------------------------- HTTP clients


class ResponseReader:
    """
    Incremental reader of one HTTP/1.1 response (Content-Length, chunked or
    close-delimited), keeping only the head and a byte count.
    """

    def __init__(self) -> None:
        """
        Start before the first byte.
        """
        self._head = b""
        self.status = 0
        self.length: int | None = None
        self.chunked = False
        self.body = 0
        self.head_done = False
        self.done = False
        self._tail = b""

    def feed(self, data: bytes) -> None:
        """
        Consume received bytes.
        """
        if not self.head_done:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end == -1:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self.head_done = True
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
        self.body += len(data)
        if self.chunked:
            self._tail = (self._tail + data)[-7:]
            self.done = self._tail.endswith(b"0\r\n\r\n")
        elif self.length is not None:
            self.done = self.body >= self.length


def request_bytes(path: str, port: int, close: bool = False) -> bytes:
    """
    A GET request as wrk would send it.
    """
    connection = b"Connection: close\r\n" if close else b""
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n".encode() + connection + b"\r\n")


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> ResponseReader:
    """
    One blocking GET on a fresh connection.

    @raise OSError: on connection problems or timeout.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request_bytes(path, port, close=True))
        reader = ResponseReader()
        while not reader.done:
            data = sock.recv(65536)
            if not data:
                break
            reader.feed(data)
        return reader


def wrk_result(procs: ProcessGroup, proc: subprocess.Popen[bytes], log: Path,
               duration: float) -> dict[str, Any]:
    """
    Wait for a wrk run of C{duration} seconds (30 s of grace), stop it, and
    return the fields of the C{BENCHJSON} line its Lua C{done()} printed.

    @raise HarnessError: wrk did not finish or printed no result.
    """
    try:
        proc.wait(duration + 30)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"wrk did not finish within {duration + 30}s") from None
    finally:
        procs.stop(proc)
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, Any] = json.loads(line[len("BENCHJSON "):])
            return result
    raise HarnessError(f"wrk printed no result (status {proc.returncode}):\n{text[-2000:]}")


def wait_ready(port: int, proc: subprocess.Popen[bytes], procs: ProcessGroup, name: str,
               timeout: float = 20.0, path: str = "/",
               status_of: Callable[[int, str, float], int] | None = None) -> None:
    """
    Wait until C{GET path} on C{port} answers 200.

    @param status_of: sends the request (port, path, timeout) and returns
        the status; default: a bare C{GET} (L{http_get}).
    @raise TargetFailure: the process exited or never answered.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetFailure(f"{name} exited with status {proc.returncode}:\n"
                                f"{procs.log_tail(name)}")
        try:
            status = (status_of(port, path, 1.0) if status_of
                      else http_get(port, path, timeout=1.0).status)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TargetFailure(f"{name} did not answer GET {path} on port {port} with 200 within "
                        f"{timeout:.0f}s ({last}):\n{procs.log_tail(name)}")


def warm_up_python(port: int, connections: int = 50, per_connection: int = 5) -> None:
    """
    Send a few keep-alive requests on many connections (quick mode's warm-up).
    """
    socks = []
    try:
        for _ in range(connections):
            socks.append(socket.create_connection((HOST, port), timeout=5))
        for _ in range(per_connection):
            for sock in socks:
                sock.sendall(request_bytes("/", port))
            for sock in socks:
                reader = ResponseReader()
                while not reader.done:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("connection closed during warm-up")
                    reader.feed(data)
    finally:
        for sock in socks:
            sock.close()


def free_port(used: set[int]) -> int:
    """
    A TCP port on 127.0.0.1 that is free now and not handed out before.
    """
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in used:
            used.add(port)
            return port


# --------------------------------------------------------------------------- the run


@dataclass
class Target:
    """
    One server under measurement.

    @ivar name: row label in the tables (C{direct}, C{nginx}, C{haproxy}, C{balancebeam}, ...).
    @ivar kind: which program it is (C{direct} means an upstream nginx, measured directly).
    @ivar log_name: the process's log name in the temp dir.
    @ivar command: how it was started, for the JSON record.
    @ivar failed: why it is skipped from now on, or C{None}.
    @ivar scheme: how wrk reaches it: C{http}, or C{https} for a TLS listener.
    """

    name: str
    kind: str
    port: int
    proc: subprocess.Popen[bytes] | None
    log_name: str
    command: list[str] = field(default_factory=list)
    failed: str | None = None
    scheme: str = "http"

    def pids(self) -> list[int]:
        """
        The measured processes: the started process and its descendants.
        """
        return tree_pids(self.proc.pid) if self.proc else []


@dataclass
class Settings:
    """
    Durations and sizes for one run (quick or full).
    """

    duration: int
    rounds: int
    warmup: int
    idle_conns: int
    idle_load_duration: int
    downloads_per_round: int
    download_bytes: int
    slow_duration: int
    connections: int
    wrk_threads: int


def nginx_command(nginx: str, prefix: Path, http_body: str, main_lines: str = "") -> list[str]:
    """
    Write an nginx configuration with private prefix, pid, logs and temp
    paths (so it runs as root without touching /etc or /var) and return
    the command line that runs it in the foreground.

    nginx runs as one process (C{master_process off}): the same event
    loop as a single worker, but nothing is left behind if this script is
    killed (the pre-exec hook's parent-death signal reaches it, whereas
    a worker would outlive its master).

    @param http_body: the lines inside C{http {...}} (servers, upstreams).
    @param main_lines: lines before everything else (C{load_module ...;}).
    """
    prefix.mkdir(parents=True, exist_ok=True)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    conf = f"""{main_lines}worker_processes 1;
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {min(8192, max(1024, nofile // 2))};
    use epoll;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    default_type application/octet-stream;
{http_body}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return [nginx, "-p", f"{prefix}/", "-c", str(path), "-e", f"{prefix}/error.log"]


class Bench:
    """
    Starts the servers, runs the scenarios, collects measurements.
    """

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        """
        @param args: the parsed command line.
        @param tmp: the temporary directory holding configs, content and logs.
        """
        self.args = args
        self.tmp = tmp
        self.quick: bool = args.quick
        self.settings = Settings(
            duration=args.duration or (1 if self.quick else 3),
            rounds=args.rounds or (1 if self.quick else 3),
            warmup=0 if self.quick else 1,
            idle_conns=args.idle_connections,
            idle_load_duration=1,
            downloads_per_round=1 if self.quick else 2,
            download_bytes=args.download_mib * 1024 * 1024,
            slow_duration=args.duration or (1 if self.quick else 3),
            connections=args.connections,
            wrk_threads=args.wrk_threads,
        )
        self.notes: list[str] = []
        self.used_ports: set[int] = set()
        self.tools = {name: find_tool(name, getattr(args, name, None))
                      for name in ("wrk", "nginx", "haproxy", "taskset")}
        cores = sorted(os.sched_getaffinity(0))
        self.balancer_core: int | None
        self.load_core: int | None
        if args.cores:
            self.balancer_core, self.load_core = (int(c) for c in args.cores.split(","))
        elif len(cores) >= 2 and not args.no_pin:
            self.balancer_core, self.load_core = cores[0], cores[1]
        else:
            self.balancer_core = self.load_core = None
            self.notes.append("not pinned: fewer than 2 CPUs available or --no-pin")
        self.procs = ProcessGroup(tmp, self.tools["taskset"])
        self.lua = tmp / "report.lua"
        self.lua.write_text(WRK_LUA.replace("COUNT_SLOW", "false"))
        self.slow_lua = tmp / "report-slow.lua"
        self.slow_lua.write_text(WRK_LUA.replace("COUNT_SLOW", "true"))
        self.measurements: list[dict[str, Any]] = []
        self.targets: dict[str, Target] = {}
        self.upstream_ports: list[int] = []
        self.upstream_kind = "nginx"
        self.bb_help = ""
        self.starters: dict[str, Callable[[], Target]] = {}
        self.timings: dict[str, float] = {}
        self.profile: dict[str, Any] = {}
        self.profile_path = BENCH_DIR / "results" / "profile.txt"
        self.restarts: dict[str, int] = {}
        self.bb_unavailable: str | None = None
        self.twistd_args, self.balancer_args = split_balancer_args(args.twistd_arg,
                                                                   args.balancer_arg)
        self.balancer_python = args.balancer_python or sys.executable
        self.balancer_warmup = args.balancer_warmup
        self.balancer_env: dict[str, str] = dict(args.balancer_env)
        self.variants: list[Variant] = list(args.variant)
        self.baseline_rev: str | None = args.baseline
        self.baseline_commit: str | None = args.baseline_commit
        self.baseline_root: Path | None = None
        self.baseline_help = ""
        self.baseline_unavailable: str | None = None
        self.imported_from: dict[str, str] = {}
        self.build_failures: dict[str, str] = {}
        self.builds: dict[str, str] = {}
        self.venv_dir: Path = args.venv_dir

    @property
    def baseline_key(self) -> str | None:
        """
        The baseline's target name (C{balancebeam@REV}), or C{None} without C{--baseline}.
        """
        return f"balancebeam@{self.baseline_rev}" if self.baseline_rev else None

    def bb_keys(self) -> list[str]:
        """
        The balancebeam targets of the wrk, idle and download scenarios: the
        current tree, its variants, the baseline.
        """
        keys = ["balancebeam"] + [v.key for v in self.variants]
        if self.baseline_key:
            keys.append(self.baseline_key)
        return keys

    def all_keys(self) -> list[str]:
        """
        Every target of the wrk, idle and download scenarios, in table order.
        """
        return ["direct", "nginx", "haproxy"] + self.bb_keys() + self.peer_keys()

    # ----------------------------------------------------------------- starting servers

    def _lb_core(self) -> int | None:
        """
        The core for the balancer under test.
        """
        return self.balancer_core

    def _nginx_conf(self, name: str, http_body: str) -> list[str]:
        """
        Write an nginx configuration under C{self.tmp/name} and return its
        command line (L{nginx_command}).
        """
        return nginx_command(str(self.tools["nginx"]), self.tmp / name, http_body)

    def start_upstreams(self) -> None:
        """
        Start the two upstreams on the load core: nginx serving C{/} (100 bytes),
        C{/16k} and C{/100m} from the temp dir, or bench/upstream.py when nginx
        is missing.
        """
        docroot = self.tmp / "docroot"
        docroot.mkdir()
        (docroot / "16k").write_bytes(b"y" * (BIG_SIZE - 1) + b"\n")
        block = os.urandom(1024 * 1024)
        with open(docroot / "100m", "wb") as f:
            remaining = self.settings.download_bytes
            while remaining:
                chunk = block[: min(remaining, len(block))]
                f.write(chunk)
                remaining -= len(chunk)
        for index in (1, 2):
            port = free_port(self.used_ports)
            name = f"upstream{index}"
            if self.tools["nginx"]:
                argv = self._nginx_conf(name, f"""    sendfile on;
    tcp_nopush on;
    server {{
        listen {HOST}:{port} backlog=4096;
        location = / {{
            default_type text/plain;
            return 200 "{SMALL_BODY}";
        }}
        location / {{
            root {docroot};
        }}
    }}""")
            else:
                self.upstream_kind = "bench/upstream.py"
                argv = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port),
                        "--download-bytes", str(self.settings.download_bytes)]
            proc = self.procs.spawn(name, argv, self.load_core)
            try:
                wait_ready(port, proc, self.procs, name)
            except TargetFailure as exc:
                raise HarnessError(f"upstream {index} did not start: {exc}") from None
            self.upstream_ports.append(port)
            if index == 1 and "direct" in self.args.targets:
                self.targets["direct"] = Target("direct", "direct", port, proc, name, argv)
        if self.upstream_kind != "nginx":
            self.notes.append("nginx is missing: the two upstreams are bench/upstream.py "
                              "(slower than nginx, so every figure is lower)")

    def start_nginx_lb(self, name: str, upstreams: Sequence[int], method: str = "",
                       rate_limit: bool = False) -> Target:
        """
        nginx as load balancer: one process, upstream keepalive (32), HTTP/1.1 to
        upstreams, X-Forwarded-For added, no buffering to temp files.
        """
        port = free_port(self.used_ports)
        servers = "\n".join(f"        server {HOST}:{p};" for p in upstreams)
        zone = ""
        limit = ""
        if rate_limit:
            zone = (f"    limit_req_zone $binary_remote_addr zone=bench:10m "
                    f"rate={NEVER_HIT_LIMIT}r/m;\n    limit_req_status 429;")
            limit = "            limit_req zone=bench burst=100000 nodelay;"
        argv = self._nginx_conf(name, f"""{zone}
    upstream backend {{
{servers}
        {method}
        keepalive {self.args.nginx_keepalive};
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_max_temp_file_size 0;
{limit}
        }}
    }}""")
        return self._start(name, "nginx", port, argv)

    def start_haproxy(self, name: str, upstreams: Sequence[int], balance: str = "roundrobin",
                      rate_limit: bool = False) -> Target:
        """
        HAProxy: one thread, http-reuse, HTTP health checks every 10 s,
        X-Forwarded-For added; in the foreground (C{-db}).
        """
        port = free_port(self.used_ports)
        servers = "\n".join(f"    server u{i} {HOST}:{p} check inter 10s"
                            for i, p in enumerate(upstreams, 1))
        limit = ""
        if rate_limit:
            limit = f"""    stick-table type ip size 100k expire 60s store http_req_rate(60s)
    http-request track-sc0 src
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {NEVER_HIT_LIMIT} }}"""
        conf = f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse {self.args.haproxy_reuse}
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s
    timeout http-request 10s
frontend fe
    bind {HOST}:{port}
{limit}
    default_backend be
backend be
    balance {balance}
    option httpchk GET /
{servers}
"""
        path = self.tmp / f"{name}.cfg"
        path.write_text(conf)
        argv = [str(self.tools["haproxy"]), "-f", str(path), "-db"]
        return self._start(name, "haproxy", port, argv)

    def balancebeam_argv(self, port: int, upstreams: Sequence[int],
                         extra: Sequence[str] = (),
                         twistd_extra: Sequence[str] = (),
                         python: str | None = None) -> list[str]:
        """
        The balancebeam command line: twistd in the foreground, one process,
        active health checks and in-memory rate limiting on (never hit).
        C{twistd_extra} (a variant's) is added to C{--twistd-arg}'s, its
        reactor replacing theirs; C{python} (a variant's) replaces
        C{--balancer-python}.
        """
        twistd = [python or self.balancer_python, "-c",
                  "import sys; sys.argv[0] = 'twistd'; "
                  "from twisted.scripts.twistd import run; run()"]
        argv = twistd + ["-n", "--pidfile="] + merge_twistd_args(
            self.twistd_args, twistd_extra) + ["balancebeam", "--bind", f"{HOST}:{port}"]
        for upstream in upstreams:
            argv += ["--upstream", f"{HOST}:{upstream}"]
        argv += ["--active-health-check-interval", "10",
                 "--max-requests-per-minute", str(NEVER_HIT_LIMIT)]
        return argv + list(extra) + self.balancer_args

    def balancebeam_env(self, root: Path = REPO,
                        extra: dict[str, str] | None = None) -> dict[str, str]:
        """
        The environment for twistd: C{root} (the checkout, or the baseline's
        export) first on C{PYTHONPATH}, then C{--balancer-env}, then C{extra}
        (a variant's).
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
        env.update(self.balancer_env)
        env.update(extra or {})
        return env

    def probe_balancebeam(self, root: Path = REPO) -> tuple[str, str | None]:
        """
        Check that C{twistd balancebeam --help} works when run from C{root}
        and that C{balancebeam} is imported from C{root}.

        @return: the help text (to find out which flags exist) and C{None},
            or C{""} and why it does not work.
        """
        env = self.balancebeam_env(root)
        try:
            where = subprocess.run(
                [self.balancer_python, "-c",
                 "import balancebeam, os; print(os.path.dirname(balancebeam.__file__))"],
                cwd=root, env=env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "", "`import balancebeam` did not finish within 60 s"
        package = where.stdout.strip()
        if where.returncode != 0 or not package:
            lines = where.stderr.strip().splitlines() or ["no output"]
            return "", f"`import balancebeam` failed from {root}: {lines[-1]}"
        if Path(package).resolve() != (root / "balancebeam").resolve():
            return "", f"balancebeam is imported from {package}, not from {root}"
        self.imported_from[str(root)] = package
        argv = self.balancebeam_argv(1, [])[:3] + ["balancebeam", "--help"]
        try:
            result = subprocess.run(argv, cwd=root, env=env,
                                    capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "", "`twistd balancebeam --help` did not finish within 60 s"
        if result.returncode != 0 or "--upstream" not in result.stdout:
            lines = (result.stdout + result.stderr).strip().splitlines() or ["no output"]
            tail = "\n".join(lines[-8:])
            return "", f"`twistd balancebeam --help` failed: {lines[-1].strip()}\n{tail}"
        return result.stdout, None

    def bb_has(self, flag: str) -> bool:
        """
        Whether balancebeam's --help mentions C{flag}.
        """
        return flag in self.bb_help

    def start_balancebeam(self, name: str, upstreams: Sequence[int],
                          extra: Sequence[str] = (), variant: Variant | None = None,
                          baseline: bool = False) -> Target:
        """
        Start balancebeam pinned to the balancer core: from the checkout
        (with a variant's environment and arguments when given), or with
        C{baseline} from the export of C{--baseline}, with its directory as
        working directory and first on C{PYTHONPATH}.
        """
        root = REPO
        if baseline:
            if self.baseline_unavailable or self.baseline_root is None:
                raise TargetFailure(self.baseline_unavailable or "the baseline was not exported")
            root = self.baseline_root
        elif self.bb_unavailable:
            raise TargetFailure(self.bb_unavailable)
        if variant is not None and variant.name in self.build_failures:
            raise TargetFailure(self.build_failures[variant.name])
        port = free_port(self.used_ports)
        warmup = self.balancer_warmup
        python = None
        if variant is not None:
            extra = list(extra) + variant.balancer_args
            root = variant.root or root
            python = variant.python
            warmup = variant.warmup if variant.warmup is not None else warmup
        argv = self.balancebeam_argv(port, upstreams, extra,
                                     variant.twistd_args if variant else (), python)
        env = self.balancebeam_env(root, variant.env if variant else None)
        target = self._start(name, "balancebeam", port, argv, env=env, cwd=root)
        if warmup:
            # A JIT (PyPy) compiles the hot path under load: measure after it has.
            say(f"warming {name} up for {warmup}s")
            self.run_wrk(port, "/", self.settings.connections, warmup)
        return target

    def _start(self, name: str, kind: str, port: int, argv: list[str],
               env: dict[str, str] | None = None, cwd: Path | None = None) -> Target:
        """
        Spawn a balancer on the balancer core and wait for it to answer.

        @raise TargetFailure: it did not come up.
        """
        log_name = log_name_for(name)
        proc = self.procs.spawn(log_name, argv, self._lb_core(), env=env, cwd=cwd)
        target = Target(name, kind, port, proc, log_name, argv)
        try:
            wait_ready(port, proc, self.procs, log_name)
        except TargetFailure:
            self.procs.stop(proc)
            raise
        return target

    def add_target(self, key: str, starter: Callable[[], Target]) -> None:
        """
        Start a target and register it under C{key}, or register its failure.
        """
        self.starters[key] = starter
        try:
            target = starter()
            self.targets[key] = target
            say(f"started {key} on port {target.port} "
                f"(pid {target.proc.pid if target.proc else '-'})")
        except TargetFailure as exc:
            say(f"{key}: FAILED to start: {exc}")
            self.targets[key] = Target(key, key, 0, None, key, failed=str(exc).splitlines()[0])
            self.notes.append(f"{key} did not start: {exc}")

    def start_targets(self) -> None:
        """
        Start every balancer the selected scenarios need.
        """
        wanted = set(self.args.targets)
        scenarios = set(self.args.scenarios)
        ups = self.upstream_ports
        if "nginx" in wanted:
            if self.tools["nginx"]:
                self.add_target("nginx", lambda: self.start_nginx_lb("nginx", ups))
                if "ratelimit" in scenarios:
                    self.add_target("nginx-rl", lambda: self.start_nginx_lb(
                        "nginx-rl", ups, rate_limit=True))
            else:
                self.notes.append(f"nginx not installed: nginx target skipped ({APT_LINE})")
        if "haproxy" in wanted:
            if self.tools["haproxy"]:
                self.add_target("haproxy", lambda: self.start_haproxy("haproxy", ups))
                if "ratelimit" in scenarios:
                    self.add_target("haproxy-rl", lambda: self.start_haproxy(
                        "haproxy-rl", ups, rate_limit=True))
            else:
                self.notes.append(f"haproxy not installed: haproxy target skipped ({APT_LINE})")
        if "balancebeam" in wanted:
            self.bb_help, self.bb_unavailable = self.probe_balancebeam()
            self.variants += self.build_variants()
            self.add_target("balancebeam", lambda: self.start_balancebeam("balancebeam", ups))
            for variant in self.variants:
                self.add_target(variant.key, self._variant_starter(variant))
            if self.baseline_key and self.baseline_commit:
                self.baseline_root = self.tmp / "baseline"
                export_revision(self.baseline_commit, self.baseline_root)
                say(f"exported {self.baseline_rev} ({self.baseline_commit[:12]}) to "
                    f"{self.baseline_root}")
                self.baseline_help, self.baseline_unavailable = self.probe_balancebeam(
                    self.baseline_root)
                key = self.baseline_key
                self.add_target(key, lambda: self.start_balancebeam(key, ups, baseline=True))
        self.start_peers(wanted)

    def _variant_starter(self, variant: Variant) -> Callable[[], Target]:
        """
        A starter for a variant of the current tree over the two upstreams.
        """
        return lambda: self.start_balancebeam(variant.key, self.upstream_ports,
                                              variant=variant)

    def live(self, key: str) -> Target | None:
        """
        The target registered as C{key} if it is running, else C{None}.
        """
        target = self.targets.get(key)
        if target is None or target.failed or target.proc is None:
            return None
        if target.proc.poll() is not None:
            code = target.proc.returncode
            if code < 0:
                target.failed = (f"was killed by {signal.Signals(-code).name} "
                                 "(not sent by this script)")
            else:
                target.failed = f"exited with status {code}"
            self.notes.append(f"{key} {target.failed}:\n{self.procs.log_tail(target.log_name)}")
            say(f"{key} {target.failed}; skipped from now on")
            return None
        return target

    def revive(self) -> None:
        """
        Restart targets that died during an earlier scenario (at most twice
        each), so one crash does not blank the rest of the run; the death
        stays in the notes and in that scenario's rows.
        """
        for key, target in list(self.targets.items()):
            if target.proc is None or key not in self.starters:
                continue
            if target.proc.poll() is None and not target.failed:
                continue
            self.live(key)  # records the death if not yet noticed
            if self.restarts.get(key, 0) >= 2:
                continue
            self.restarts[key] = self.restarts.get(key, 0) + 1
            self.procs.stop(target.proc)
            say(f"restarting {key} (it {target.failed})")
            self.notes.append(f"{key} was restarted after it {target.failed}")
            self.add_target(key, self.starters[key])
            revived = self.live(key)
            if revived is not None:
                try:
                    warm_up_python(revived.port)
                except OSError as exc:
                    say(f"warm-up of {key} failed: {exc}")

    # ----------------------------------------------------------------- measuring

    def run_wrk(self, port: int, path: str, connections: int, duration: int,
                headers: Sequence[str] = (), lua: Path | None = None,
                scheme: str = "http") -> dict[str, Any]:
        """
        Run wrk on the load core for C{duration} seconds and parse its
        C{done()} line.

        @raise HarnessError: wrk failed or printed no result.
        """
        argv = [str(self.tools["wrk"]), "-t", str(min(self.settings.wrk_threads, connections)),
                "-c", str(connections), "-d", f"{duration}s", "--latency", "--timeout", "5s",
                "-s", str(lua or self.lua)]
        for header in headers:
            argv += ["-H", header]
        argv.append(f"{scheme}://{HOST}:{port}{path}")
        name = "wrk"
        log = self.procs.log_path(name)
        log.write_bytes(b"")
        proc = self.procs.spawn(name, argv, self.load_core)
        raw = wrk_result(self.procs, proc, log, duration)
        seconds = raw["duration_us"] / 1e6
        errors = {k: int(raw[k]) for k in ("connect", "read", "write", "status", "timeout")}
        return {
            "requests": int(raw["requests"]),
            "seconds": round(seconds, 3),
            "rps": raw["requests"] / seconds if seconds else 0.0,
            "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "p999_ms": raw["p999_us"] / 1000,
            "max_ms": raw["max_us"] / 1000, "mean_ms": raw["mean_us"] / 1000,
            "errors": errors, "errors_total": sum(errors.values()),
            "bytes": int(raw["bytes"]),
            "slow_share": raw["slow_share"] if raw["slow_share"] >= 0 else None,
        }

    def measure_wrk(self, target: Target, path: str, duration: int,
                    headers: Sequence[str] = (), connections: int | None = None,
                    lua: Path | None = None) -> dict[str, Any]:
        """
        One wrk round against a target, with the target's CPU time and peak RSS.
        """
        pids = target.pids()
        rss_start = rss_kib(pids)
        ticks = cpu_ticks(pids)
        with RssSampler(pids, 0.05) as sampler:
            result = self.run_wrk(target.port, path, connections or self.settings.connections,
                                  duration, headers, lua, target.scheme)
        cpu_us = (cpu_ticks(pids) - ticks) * 1e6 / CLK_TCK
        result.update({
            "cpu_us": cpu_us,
            "cpu_us_per_req": cpu_us / result["requests"] if result["requests"] else None,
            "cpu_util": cpu_us / 1e6 / result["seconds"] if result["seconds"] else None,
            "rss_start_kib": rss_start, "rss_peak_kib": sampler.peak,
        })
        return result

    def record(self, scenario: str, row: str, round_no: int, data: dict[str, Any]) -> None:
        """
        Keep one measurement and print a one-line summary.
        """
        data = {"scenario": scenario, "target": row, "round": round_no, **data}
        self.measurements.append(data)
        if "rps" in data:
            say(f"  {scenario:<9} {row:<28} r{round_no} {data['rps']:>9.0f} req/s "
                f"p99 {data['p99_ms']:.2f} ms errors {data['errors_total']} "
                f"cpu {fmt(data.get('cpu_us_per_req'), 1)} us/req")
        elif "mib_s" in data:
            say(f"  {scenario:<9} {row:<28} r{round_no} {fmt(data.get('mib_s'), 0)} MiB/s "
                f"rss +{fmt(data.get('rss_growth_kib'), 0)} KiB {data.get('error') or ''}")
        elif "per_conn_kib" in data:
            say(f"  {scenario:<9} {row:<28} r{round_no} {fmt(data.get('per_conn_kib'), 2)} "
                f"KiB/conn, open {data['open']}/{data['conns']} {data.get('error') or ''}")

    def record_failure(self, scenario: str, row: str, round_no: int, reason: str) -> None:
        """
        Keep a failed measurement.
        """
        self.measurements.append({"scenario": scenario, "target": row, "round": round_no,
                                  "failed": reason})
        say(f"  {scenario:<9} {row:<28} r{round_no} FAILED: {reason}")

    def rotation(self, keys: Sequence[str], round_no: int) -> list[str]:
        """
        Targets in the order for this round: rotated each round so that no
        target always goes first.
        """
        shift = round_no % len(keys) if keys else 0
        return list(keys[shift:]) + list(keys[:shift])

    def after(self, target: Target, key: str) -> bool:
        """
        Check a target survived a measurement; mark it failed otherwise.
        """
        return self.live(key) is not None

    def warm_up(self) -> None:
        """
        Warm every running target (pools filled, code paths hot).
        """
        for key, target in list(self.targets.items()):
            if self.live(key) is None:
                continue
            try:
                if self.settings.warmup:
                    self.run_wrk(target.port, "/", self.settings.connections, self.settings.warmup)
                else:
                    warm_up_python(target.port)
            except (OSError, HarnessError) as exc:
                say(f"warm-up of {key} failed: {exc}")

    # ----------------------------------------------------------------- scenarios

    def scenario_wrk(self, scenario: str, path: str, headers: Sequence[str] = (),
                     keys: Sequence[str] | None = None,
                     rows: dict[str, str] | None = None, rounds: int | None = None) -> None:
        """
        Alternating wrk rounds over C{keys} (default: every target, with the
        variants and the baseline); C{rows} renames targets in the table.
        """
        rows = rows or {}
        present = [k for k in (self.all_keys() if keys is None else keys) if k in self.targets]
        for round_no in range(1, (rounds or self.settings.rounds) + 1):
            for key in self.rotation(present, round_no):
                row = rows.get(key, key)
                target = self.live(key)
                if target is None:
                    self.record_failure(scenario, row, round_no,
                                        self.targets[key].failed or "not running")
                    continue
                data = self.measure_wrk(target, path, self.settings.duration, headers)
                data["alive_after"] = self.after(target, key)
                self.record(scenario, row, round_no, data)

    def scenario_idle(self) -> None:
        """
        Hold 1,000 idle connections (each served one request) and measure the
        resident set growth per connection; a small wrk load runs meanwhile.
        Quick mode leaves out C{direct}.
        """
        present = [k for k in self.all_keys() if k in self.targets
                   and not (self.quick and k == "direct")]
        for round_no in range(1, self.settings.rounds + 1):
            for key in self.rotation(present, round_no):
                target = self.live(key)
                if target is None:
                    self.record_failure("idle", key, round_no,
                                        self.targets[key].failed or "not running")
                    continue
                data = self.measure_idle(target)
                data["alive_after"] = self.after(target, key)
                self.record("idle", key, round_no, data)

    def measure_idle(self, target: Target) -> dict[str, Any]:
        """
        Open the idle connections in batches of 50 (each sends C{GET /} and
        reads the response), sample RSS, run a short wrk load, check the idle
        connections are still open, close them.
        """
        pids = target.pids()
        count = self.settings.idle_conns
        baseline = settled_rss(pids)
        socks: list[socket.socket] = []
        served: list[socket.socket] = []
        failed = 0
        error = None
        selector = selectors.DefaultSelector()
        try:
            for start in range(0, count, 50):
                batch: dict[socket.socket, ResponseReader] = {}
                for _ in range(min(50, count - start)):
                    try:
                        sock = socket.create_connection((HOST, target.port), timeout=5)
                        sock.sendall(request_bytes("/", target.port))
                        sock.setblocking(False)
                    except OSError as exc:
                        failed += 1
                        error = f"connect/send: {exc}"
                        continue
                    batch[sock] = ResponseReader()
                    socks.append(sock)
                    selector.register(sock, selectors.EVENT_READ)
                deadline = time.monotonic() + 10
                while batch and time.monotonic() < deadline:
                    for key, _ in selector.select(timeout=0.5):
                        sock = key.fileobj  # type: ignore[assignment]
                        assert isinstance(sock, socket.socket)
                        try:
                            data = sock.recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError as exc:
                            data = b""
                            error = f"recv: {exc}"
                        reader = batch.get(sock)
                        if reader is None:
                            continue
                        if not data:
                            failed += 1
                            error = error or "closed before the response completed"
                            selector.unregister(sock)
                            del batch[sock]
                            continue
                        reader.feed(data)
                        if reader.done:
                            if reader.status != 200:
                                failed += 1
                                error = f"status {reader.status}"
                            else:
                                served.append(sock)
                            selector.unregister(sock)
                            del batch[sock]
                if batch:
                    failed += len(batch)
                    error = "response timeout"
                    for sock in batch:
                        selector.unregister(sock)
            time.sleep(0.3)
            held = settled_rss(pids)
            with RssSampler(pids, 0.05) as sampler:
                load = self.run_wrk(target.port, "/", 10, self.settings.idle_load_duration)
            closed_early = 0
            for sock in served:
                try:
                    if sock.recv(1) == b"":
                        closed_early += 1
                except BlockingIOError:
                    pass
                except OSError:
                    closed_early += 1
        finally:
            selector.close()
            for sock in socks:
                sock.close()
        return {
            "conns": count, "open": len(served), "failed_conns": failed,
            "closed_early": closed_early,
            "error": error, "rss_base_kib": baseline, "rss_idle_kib": held,
            "rss_peak_kib": sampler.peak,
            "per_conn_kib": (held - baseline) / len(served) if served else None,
            "load_rps": load["rps"], "load_p99_ms": load["p99_ms"],
            "load_errors": load["errors_total"],
        }

    def scenario_download(self) -> None:
        """
        Stream the big file through each target, timing it and sampling RSS.
        """
        present = [k for k in self.all_keys() if k in self.targets]
        for round_no in range(1, self.settings.rounds + 1):
            for key in self.rotation(present, round_no):
                for _ in range(self.settings.downloads_per_round):
                    target = self.live(key)
                    if target is None:
                        self.record_failure("download", key, round_no,
                                            self.targets[key].failed or "not running")
                        break
                    data = self.measure_download(target)
                    data["alive_after"] = self.after(target, key)
                    self.record("download", key, round_no, data)

    def measure_download(self, target: Target) -> dict[str, Any]:
        """
        One C{GET /100m}, body read and discarded, with the target's RSS
        sampled every 10 ms and its CPU time.
        """
        pids = target.pids()
        expected = self.settings.download_bytes
        baseline = settled_rss(pids, samples=3)
        ticks = cpu_ticks(pids)
        error = None
        got = 0
        reader = ResponseReader()
        buf = bytearray(1024 * 1024)
        view = memoryview(buf)
        with RssSampler(pids, 0.01) as sampler:
            start = time.monotonic()
            try:
                with socket.create_connection((HOST, target.port), timeout=10) as sock:
                    sock.sendall(request_bytes("/100m", target.port, close=True))
                    while not reader.head_done:
                        n = sock.recv_into(buf)
                        if not n:
                            break
                        reader.feed(bytes(view[:n]))
                    got = reader.body
                    deadline = start + 60
                    while got < expected:
                        n = sock.recv_into(buf)
                        if not n:
                            break
                        got += n
                        if time.monotonic() > deadline:
                            error = "gave up after 60 s"
                            break
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
            elapsed = time.monotonic() - start
        cpu_us = (cpu_ticks(pids) - ticks) * 1e6 / CLK_TCK
        if error is None:
            if reader.status != 200:
                error = f"status {reader.status}"
            elif reader.length not in (None, expected):
                error = f"Content-Length {reader.length}, expected {expected}"
            elif got != expected:
                error = f"received {got} of {expected} body bytes"
        mib = got / (1024 * 1024)
        return {
            "bytes": got, "seconds": round(elapsed, 4),
            "mib_s": mib / elapsed if elapsed and not error else None,
            "rss_base_kib": baseline, "rss_peak_kib": sampler.peak,
            "rss_growth_kib": sampler.peak - baseline,
            "cpu_us": cpu_us, "cpu_us_per_mib": cpu_us / mib if mib else None,
            "error": error,
        }

    def scenario_pool(self) -> None:
        """
        balancebeam with its upstream pool on (the default) and off, on
        keep-alive and fresh client connections.
        """
        if "balancebeam" not in self.targets:
            return
        if self.live("balancebeam") is None:
            self.record_failure("pool", "pool on", 1,
                                self.targets["balancebeam"].failed or "not running")
            return
        off_args = self.pool_off_args()
        if off_args is None:
            self.notes.append("pool scenario skipped: balancebeam --help shows no way to turn "
                              "the pool off (pass --pool-off-args)")
            return
        self.add_target("balancebeam-pool-off", lambda: self.start_balancebeam(
            "balancebeam-pool-off", self.upstream_ports, off_args))
        target = self.live("balancebeam-pool-off")
        try:
            if target is not None:
                if self.settings.warmup:
                    self.run_wrk(target.port, "/", self.settings.connections,
                                 self.settings.warmup)
                else:
                    warm_up_python(target.port)
            rows = {"balancebeam": "pool on", "balancebeam-pool-off": "pool off"}
            keys = ("balancebeam", "balancebeam-pool-off")
            rounds = min(self.settings.rounds, 2)
            self.scenario_wrk("pool", "/", (), keys,
                              {k: f"{v} keep-alive" for k, v in rows.items()}, rounds)
            self.scenario_wrk("pool", "/", ("Connection: close",), keys,
                              {k: f"{v} close" for k, v in rows.items()}, rounds)
        except OSError as exc:
            self.record_failure("pool", "pool off", 1, str(exc))
        finally:
            if target is not None and target.proc is not None:
                self.procs.stop(target.proc)
            self.targets.pop("balancebeam-pool-off", None)

    def pool_off_args(self) -> list[str] | None:
        """
        The balancebeam flags that turn the upstream pool off, from
        C{--pool-off-args} or from what C{--help} offers.
        """
        if self.args.pool_off_args is not None:
            return shlex.split(self.args.pool_off_args)
        for flag in ("--no-pool", "--pool-off", "--disable-pool"):
            if self.bb_has(flag):
                return [flag]
        if self.bb_has("--pool-max-idle-per-upstream"):
            return ["--pool-max-idle-per-upstream", "0"]
        return None

    def scenario_slow(self) -> None:
        """
        Three bench/upstream.py upstreams, the third adding 50 ms per
        response; balancebeam under each strategy, nginx and HAProxy for
        reference. One process per configuration, started and stopped here.
        """
        ports = [free_port(self.used_ports) for _ in range(3)]
        upstream_procs = []
        try:
            for index, port in enumerate(ports, 1):
                delay = str(SLOW_DELAY_MS) if index == 3 else "0"
                name = f"slow-upstream{index}"
                label = "slow" if index == 3 else f"fast{index}"
                proc = self.procs.spawn(name, [sys.executable, str(BENCH_DIR / "upstream.py"),
                                               "--port", str(port), "--delay-ms", delay,
                                               "--name", label],
                                        self.load_core)
                upstream_procs.append(proc)
                try:
                    wait_ready(port, proc, self.procs, name)
                except TargetFailure as exc:
                    raise HarnessError(f"slow-scenario upstream did not start: {exc}") from None
            configs: list[tuple[str, Callable[[], Target]]] = []
            if "nginx" in self.args.targets and self.tools["nginx"] and not self.quick:
                configs.append(("nginx round-robin",
                                lambda: self.start_nginx_lb("slow-nginx-rr", ports)))
                configs.append(("nginx least_conn",
                                lambda: self.start_nginx_lb("slow-nginx-lc", ports,
                                                            "least_conn;")))
            if "haproxy" in self.args.targets and self.tools["haproxy"] and not self.quick:
                configs.append(("haproxy leastconn",
                                lambda: self.start_haproxy("slow-haproxy-lc", ports, "leastconn")))
                configs.append(("haproxy random(2)",
                                lambda: self.start_haproxy("slow-haproxy-p2c", ports,
                                                           "random(2)")))
            if "balancebeam" in self.args.targets:
                if self.bb_unavailable:
                    self.record_failure("slow", "balancebeam", 1,
                                        self.bb_unavailable.splitlines()[0])
                elif self.bb_has("--strategy"):
                    for strategy in STRATEGIES:
                        configs.append((f"balancebeam {strategy}", self._bb_slow(
                            f"slow-bb-{strategy}", ports, ["--strategy", strategy])))
                else:
                    self.notes.append("balancebeam has no --strategy flag yet: "
                                      "slow scenario runs its default only")
                    configs.append(("balancebeam default", self._bb_slow("slow-bb", ports, [])))
            for row, starter in configs:
                try:
                    target = starter()
                except TargetFailure as exc:
                    self.record_failure("slow", row, 1, str(exc).splitlines()[0])
                    continue
                try:
                    assert target.proc is not None
                    warm_up_python(target.port, per_connection=2)
                    data = self.measure_wrk(target, "/", self.settings.slow_duration,
                                            lua=self.slow_lua)
                    data["alive_after"] = target.proc.poll() is None
                    self.record("slow", row, 1, data)
                except OSError as exc:
                    self.record_failure("slow", row, 1, f"warm-up failed: {exc}")
                finally:
                    if target.proc is not None:
                        self.procs.stop(target.proc)
        finally:
            for proc in upstream_procs:
                self.procs.stop(proc)

    def _bb_slow(self, name: str, ports: Sequence[int],
                 extra: Sequence[str]) -> Callable[[], Target]:
        """
        A starter for a balancebeam over the slow-scenario upstreams.
        """
        return lambda: self.start_balancebeam(name, ports, extra)

    def scenario_profile(self) -> None:
        """
        Sample balancebeam with py-spy while wrk runs C{GET /} on 50
        keep-alive connections, keep the collapsed stacks next to the JSON
        and summarise the functions where the time goes. The profiled round
        is recorded under its own scenario: sampling slows the target.
        """
        target = self.live("balancebeam")
        if target is None or target.proc is None:
            self.notes.append("profile skipped: balancebeam is not running")
            return
        pyspy = shutil.which("py-spy")
        if not pyspy:
            self.notes.append("profile skipped: py-spy is not installed (pip install py-spy)")
            return
        duration = max(self.settings.duration, 3)
        path = self.profile_path
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = [pyspy, "record", "--pid", str(target.proc.pid), "--duration",
                str(duration + 1), "--rate", "250", "--format", "raw", "--function",
                "--nonblocking", "--output", str(path)]
        proc = self.procs.spawn("py-spy", argv, self.load_core)
        try:
            time.sleep(0.5)
            data = self.measure_wrk(target, "/", duration)
            self.record("profile", "balancebeam (profiled)", 1, data)
            proc.wait(duration + 30)
        except subprocess.TimeoutExpired:
            self.notes.append("profile: py-spy did not finish")
        finally:
            self.procs.stop(proc)
        if proc.returncode != 0 or not path.exists():
            self.notes.append(f"profile: py-spy failed:\n{self.procs.log_tail('py-spy')}")
            return
        self.profile = summarise_profile(path)
        self.profile["file"] = str(path)

    # ----------------------------------------------------------------- cache scenarios (issue 10)

    def start_cache_upstream(self) -> tuple[int, subprocess.Popen[bytes]]:
        """
        An nginx upstream on the load core whose responses say
        C{Cache-Control: max-age=86400}: C{/} (100 bytes) and C{/16k} (any
        query) from the temp dir's content.

        @raise HarnessError: it did not start.
        """
        port = free_port(self.used_ports)
        docroot = self.tmp / "docroot"
        argv = self._nginx_conf("cache-upstream", f"""    sendfile on;
    tcp_nopush on;
    server {{
        listen {HOST}:{port} backlog=4096;
        add_header Cache-Control "max-age={CACHE_MAX_AGE}";
        location = / {{
            default_type text/plain;
            return 200 "{SMALL_BODY}";
        }}
        location / {{
            root {docroot};
        }}
    }}""")
        proc = self.procs.spawn("cache-upstream", argv, self.load_core)
        try:
            wait_ready(port, proc, self.procs, "cache-upstream")
        except TargetFailure as exc:
            self.procs.stop(proc)
            raise HarnessError(f"the cacheable upstream did not start: {exc}") from None
        return port, proc

    def start_nginx_cache(self, name: str, upstream: int, size_mib: int) -> Target:
        """
        nginx as a caching proxy (C{proxy_cache} in the temp dir, C{size_mib}
        MiB, responses kept as their C{Cache-Control} says, a cache lock),
        with the same upstream keep-alive as the nginx target; it adds
        C{X-Cache-Status} so that hits can be checked.
        """
        port = free_port(self.used_ports)
        prefix = self.tmp / name
        argv = self._nginx_conf(name, f"""    proxy_cache_path {prefix}/cache levels=1:2
        keys_zone={name}:16m max_size={size_mib}m inactive=1d use_temp_path=off;
    upstream backend {{
        server {HOST}:{upstream};
        keepalive {self.args.nginx_keepalive};
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_max_temp_file_size 0;
            proxy_cache {name};
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}""")
        return self._start(name, "nginx", port, argv)

    def cache_status_of(self, port: int, path: str = "/") -> str:
        """
        The C{Cache-Status} (balancebeam) or C{X-Cache-Status} (nginx) of a
        GET on a fresh connection, or C{""}.
        """
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(request_bytes(path, port, close=True))
            data = b""
            while b"\r\n\r\n" not in data:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"cache-status", b"x-cache-status"):
                return value.strip().decode("latin-1")
        return ""

    def scenario_cache_hit(self) -> None:
        """
        C{GET /} with C{max-age} from a cacheable upstream, in alternating
        rounds: balancebeam with C{--cache-size 64m} (every request a hit),
        the same balancebeam without a cache (every request proxied), nginx
        with C{proxy_cache} (every request a hit) and nginx proxying.
        """
        if "balancebeam" not in self.args.targets:
            return
        if not self.tools["nginx"]:
            self.notes.append("cache-hit skipped: its upstream is nginx, which is not installed")
            return
        upstream, upstream_proc = self.start_cache_upstream()
        names = {
            "cache-bb-hit": CACHE_HIT_ROWS[0], "cache-bb-proxied": CACHE_HIT_ROWS[1],
            "cache-nginx-hit": CACHE_HIT_ROWS[2], "cache-nginx-proxied": CACHE_HIT_ROWS[3],
        }
        starters: dict[str, Callable[[], Target]] = {
            "cache-bb-hit": lambda: self.start_balancebeam(
                "cache-bb-hit", [upstream], ["--cache-size", f"{CACHE_HIT_SIZE_MIB}m"]),
            "cache-bb-proxied": lambda: self.start_balancebeam("cache-bb-proxied", [upstream]),
        }
        if "nginx" in self.args.targets:
            starters["cache-nginx-hit"] = lambda: self.start_nginx_cache(
                "cache-nginx-hit", upstream, CACHE_HIT_SIZE_MIB)
            starters["cache-nginx-proxied"] = lambda: self.start_nginx_lb(
                "cache-nginx-proxied", [upstream])
        try:
            for key, starter in starters.items():
                self.add_target(key, starter)
                target = self.live(key)
                if target is None:
                    continue
                try:
                    if self.settings.warmup:
                        self.run_wrk(target.port, "/", self.settings.connections,
                                     self.settings.warmup)
                    else:
                        warm_up_python(target.port)
                    status = self.cache_status_of(target.port)
                except OSError as exc:
                    self.notes.append(f"cache-hit: warm-up of {names[key]} failed: {exc}")
                    continue
                hit = status.startswith("balancebeam; hit") or status == "HIT"
                if key.endswith("-hit") and not hit:
                    target.failed = f"not serving hits (cache status {status!r})"
                    self.notes.append(f"cache-hit: {names[key]} is {target.failed}")
            self.scenario_wrk("cache-hit", "/", (), list(starters), names)
        finally:
            for key in starters:
                target = self.targets.pop(key, None)
                if target is not None and target.proc is not None:
                    self.procs.stop(target.proc)
                self.starters.pop(key, None)
            self.procs.stop(upstream_proc)

    def scenario_cache_random(self) -> None:
        """
        Random keys, more than fit: wrk asks for C{/16k?key=N}, N uniform
        over three times as many keys as C{--cache-size} holds, so that the
        cache fills and evicts. The balancer's resident set is sampled
        throughout; its growth over the settled size before the load must
        stay within C{--cache-size} plus 10%. The cache's counters come from
        the balancer's shutdown line.
        """
        if "balancebeam" not in self.args.targets:
            return
        if not self.tools["nginx"]:
            self.notes.append("cache-random skipped: its upstream is nginx, which is not "
                              "installed")
            return
        size_mib = CACHE_RANDOM_SIZE_MIB_QUICK if self.quick else CACHE_RANDOM_SIZE_MIB
        keys = 3 * size_mib * 1024 * 1024 // BIG_SIZE
        upstream, upstream_proc = self.start_cache_upstream()
        key = "cache-bb-random"
        row = f"balancebeam --cache-size {size_mib}m"
        try:
            self.add_target(key, lambda: self.start_balancebeam(
                key, [upstream], ["--cache-size", f"{size_mib}m"]))
            target = self.live(key)
            if target is None:
                self.record_failure("cache-random", row, 1, self.targets[key].failed or "-")
                return
            warm_up_python(target.port)
            pids = target.pids()
            base = settled_rss(pids)
            for round_no in range(1, self.settings.rounds + 1):
                lua = self.tmp / f"cache-random-{round_no}.lua"
                lua.write_text(WRK_LUA.replace("COUNT_SLOW", "false") + CACHE_RANDOM_LUA
                               .replace("KEY_COUNT", str(keys))
                               .replace("SEED", str(round_no)))
                data = self.measure_wrk(target, "/16k", self.settings.duration, lua=lua)
                data.update({
                    "alive_after": self.after(target, key),
                    "cache_size_kib": size_mib * 1024, "keys": keys,
                    "rss_base_kib": base, "rss_after_kib": settled_rss(pids),
                    "rss_growth_kib": data["rss_peak_kib"] - base,
                })
                self.record("cache-random", row, round_no, data)
                say(f"  cache-random RSS {base / 1024:.1f} MiB before the load, peak "
                    f"{data['rss_peak_kib'] / 1024:.1f} MiB: growth "
                    f"{data['rss_growth_kib'] / 1024:.1f} MiB for --cache-size {size_mib}m")
            if target.proc is not None:
                self.procs.stop(target.proc)
                counters = cache_counters(self.procs.log_path(target.log_name)
                                          .read_text(errors="replace"))
                rounds = [m for m in self.measurements
                          if m["scenario"] == "cache-random" and "rps" in m]
                if counters and rounds:
                    rounds[-1]["cache_counters"] = counters
                    say(f"  cache-random counters at shutdown: {counters}")
                else:
                    self.notes.append("cache-random: no cache counters in the balancer's "
                                      "shutdown line")
        except OSError as exc:
            self.record_failure("cache-random", row, 1, str(exc))
        finally:
            target = self.targets.pop(key, None)
            if target is not None and target.proc is not None:
                self.procs.stop(target.proc)
            self.starters.pop(key, None)
            self.procs.stop(upstream_proc)

    # ----------------------------------------------------------------- issue 15: builds, peers
    #
    # balancebeam compiled with mypyc (--compiled) and on PyPy (--pypy), as
    # variants of the current tree; and the Python proxies a user might pick
    # instead (--targets twisted-web,mitmproxy,proxy.py), each installed from
    # PyPI into its own virtual environment under --venv-dir.

    def build_variants(self) -> list[Variant]:
        """
        The variants asked for with C{--compiled} and C{--pypy}. One that
        cannot be prepared is still returned, and fails to start with the
        reason (so it shows in every table).
        """
        variants: list[Variant] = []
        if self.args.compiled:
            root, problem = self.prepare_compiled_tree()
            variant = Variant("compiled", {}, [], [], root=root)
            if problem:
                self.build_failures[variant.name] = problem
            variants.append(variant)
        if self.args.pypy:
            python, problem = self.prepare_pypy()
            # Debian's PyPy needs a larger nursery for a steady p99 (doc/benchmark.md).
            variant = Variant("pypy", {"PYPY_GC_NURSERY": "32M"}, [], [], python=python,
                              warmup=self.args.pypy_warmup)
            if problem:
                self.build_failures[variant.name] = problem
            variants.append(variant)
        for variant in variants:
            problem = self.build_failures.get(variant.name)
            if problem:
                self.notes.append(f"{variant.key} is not available: {problem}")
                continue
            self.builds[variant.key] = self.describe_build(variant.root or REPO,
                                                           variant.python)
        self.builds["balancebeam"] = self.describe_build(REPO, None)
        if self.args.compiled and self.builds["balancebeam"] != "pure Python":
            self.notes.append(f"the 'balancebeam' row runs the checkout, which is "
                              f"{self.builds['balancebeam']} (an in-place build?), not pure "
                              "Python: python3 setup.py clean_compiled")
        return variants

    def describe_build(self, root: Path, python: str | None) -> str:
        """
        What C{balancebeam.compiled.describe_build()} says when run from
        C{root} by C{python}, or why it could not be asked.
        """
        try:
            result = subprocess.run(
                [python or self.balancer_python, "-c",
                 "from balancebeam.compiled import describe_build; print(describe_build())"],
                cwd=root, env=self.balancebeam_env(root), capture_output=True, text=True,
                timeout=120)
        except subprocess.TimeoutExpired:
            return "unknown (describe_build did not answer within 120 s)"
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["no output"]
            return f"unknown ({lines[-1]})"
        return result.stdout.strip()

    def prepare_compiled_tree(self) -> tuple[Path, str | None]:
        """
        Copy the current tree (uncommitted changes included) to the temp dir
        and build it in place with mypyc (C{setup.py build_ext --inplace},
        by C{--balancer-python}, which needs mypy and mypy-zope).

        @return: the tree, and C{None} or why it is not compiled.
        """
        root = self.tmp / "compiled"
        root.mkdir()
        for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
            if (REPO / name).exists():
                shutil.copy2(REPO / name, root / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
        for tree in ("balancebeam", "twisted"):
            shutil.copytree(REPO / tree, root / tree, ignore=ignore)
        if not (root / "setup.py").exists():
            return root, "this tree has no setup.py (no mypyc build)"
        say("building the current tree with mypyc (setup.py build_ext --inplace)")
        log = self.procs.log_path("compiled-build")
        began = time.monotonic()
        with open(log, "wb") as out:
            try:
                result = subprocess.run([self.balancer_python, "setup.py", "build_ext",
                                         "--inplace"], cwd=root, stdout=out,
                                        stderr=subprocess.STDOUT, timeout=1200)
            except subprocess.TimeoutExpired:
                return root, "the mypyc build did not finish within 20 minutes"
        self.timings["compiled-build"] = round(time.monotonic() - began, 1)
        build = self.describe_build(root, None)
        if result.returncode != 0 or not build.startswith("compiled with mypyc"):
            tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-5:])
            return root, f"the mypyc build gave '{build}' (status {result.returncode}):\n{tail}"
        say(f"mypyc build done in {self.timings['compiled-build']:.0f}s: {build}")
        return root, None

    def venv_python(self, name: str, base: str, requirements: Sequence[Sequence[str]]
                    ) -> tuple[str, str | None]:
        """
        The Python of virtual environment C{name} under C{--venv-dir},
        created with C{base} and each C{pip install} of C{requirements} run
        in it; reused while its requirements are unchanged.

        @return: its python, and C{None} or why it could not be set up.
        """
        venv = self.venv_dir / name
        python = venv / "bin" / "python"
        marker = venv / ".balancebeam-bench"
        wanted = json.dumps([base, [list(r) for r in requirements]])
        if python.exists() and marker.exists() and marker.read_text() == wanted:
            return str(python), None
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        say(f"setting up {venv} ({'; '.join(' '.join(r) for r in requirements)})")
        steps = [[base, "-m", "venv", str(venv)]] + [
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *r]
            for r in requirements]
        for argv in steps:
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return "", f"`{shlex.join(argv)}` failed: {exc}"
            if result.returncode != 0:
                lines = (result.stdout + result.stderr).strip().splitlines() or ["no output"]
                return "", f"`{shlex.join(argv)}` failed: {lines[-1]}"
        marker.write_text(wanted)
        return str(python), None

    def prepare_pypy(self) -> tuple[str | None, str | None]:
        """
        The PyPy that runs C{balancebeam:pypy}: C{--pypy PYTHON}, or with
        C{--pypy} alone a virtual environment of Debian's C{pypy3} with the
        project's dependencies (as C{.ci/run} sets up).
        """
        if self.args.pypy != "auto":
            return self.args.pypy, None
        pypy = shutil.which("pypy3")
        if not pypy:
            return None, "pypy3 is not installed (apt-get install -y pypy3 pypy3-venv)"
        python, problem = self.venv_python(
            "pypy", pypy, [["twisted", "attrs"], ["--no-deps", "txredisapi"]])
        return (python or None), problem

    def peer_keys(self) -> list[str]:
        """
        The Python peers asked for in C{--targets}, in table order.
        """
        return [key for key in PEER_TARGETS if key in self.args.targets]

    def start_peers(self, wanted: set[str]) -> None:
        """
        Install (once) and start every Python peer in C{wanted}, over the
        upstreams of the other targets.
        """
        starters = {"twisted-web": self.start_twisted_web, "mitmproxy": self.start_mitmproxy,
                    "proxy.py": self.start_proxypy}
        for key in self.peer_keys():
            if key in wanted:
                self.add_target(key, starters[key])

    def _peer_python(self, key: str) -> str:
        """
        The Python of a peer's virtual environment, installed from PyPI.

        @raise TargetFailure: it cannot be installed here.
        """
        python, problem = self.venv_python(key, sys.executable, [list(PEER_PACKAGES[key])])
        if problem:
            raise TargetFailure(f"{key} cannot be installed: {problem}")
        return python

    def start_twisted_web(self) -> Target:
        """
        C{twisted.web.proxy.ReverseProxyResource} on Twisted's default
        (epoll) reactor, no access log. It proxies to one upstream and opens
        a fresh upstream connection per request (its client sends
        C{Connection: close}): it has no balancing and no pool to configure.
        """
        python = self._peer_python("twisted-web")
        script = self.tmp / "twisted_web_proxy.py"
        script.write_text(TWISTED_WEB_PROXY)
        port = free_port(self.used_ports)
        argv = [python, str(script), str(port), str(self.upstream_ports[0])]
        return self._start("twisted-web", "twisted-web", port, argv)

    def start_mitmproxy(self) -> Target:
        """
        C{mitmdump} in reverse mode to one upstream (the mode takes one),
        quiet, every body streamed (C{stream_large_bodies=1}) as
        balancebeam streams them.
        """
        python = self._peer_python("mitmproxy")
        port = free_port(self.used_ports)
        confdir = self.tmp / "mitmproxy-conf"
        confdir.mkdir(exist_ok=True)
        argv = [str(Path(python).parent / "mitmdump"),
                "--mode", f"reverse:http://{HOST}:{self.upstream_ports[0]}@{port}",
                "--listen-host", HOST, "-q", "--set", "flow_detail=0",
                "--set", "termlog_verbosity=error", "--set", "stream_large_bodies=1",
                "--set", f"confdir={confdir}"]
        return self._start("mitmproxy", "mitmproxy", port, argv)

    def start_proxypy(self) -> Target:
        """
        C{proxy.py} with a reverse-proxy plugin routing every path to both
        upstreams (round robin, request by request), one acceptor, errors
        logged only, no access log. It runs C{--threaded}: its default
        threadless mode stopped serving under 50 connections here (its
        worker died in C{selector.modify} with C{FileNotFoundError}).
        """
        python = self._peer_python("proxy.py")
        plugin_dir = self.tmp / "proxypy-plugin"
        plugin_dir.mkdir(exist_ok=True)
        upstreams = ", ".join(f'b"http://{HOST}:{p}"' for p in self.upstream_ports)
        (plugin_dir / "bench_reverse_proxy.py").write_text(
            PROXYPY_PLUGIN.replace("UPSTREAMS", upstreams))
        port = free_port(self.used_ports)
        argv = [python, "-m", "proxy", "--hostname", HOST, "--port", str(port),
                "--enable-reverse-proxy", "--plugins", "bench_reverse_proxy.BenchReverseProxy",
                "--threaded", "--num-acceptors", "1", "--backlog", "4096", "--log-level", "e",
                "--data-dir", str(self.tmp / "proxypy-data")]
        env = dict(os.environ, PYTHONPATH=str(plugin_dir))
        return self._start("proxy.py", "proxy.py", port, argv, env=env)

    # ----------------------------------------------------------------- driving

    def run(self) -> None:
        """
        Start everything, run the selected scenarios in order, stop everything.
        """
        scenarios = self.args.scenarios
        self.start_upstreams()
        say(f"upstreams ({self.upstream_kind}) on ports {self.upstream_ports}")
        self.start_targets()
        self.warm_up()
        for scenario in ALL_SCENARIOS:
            if scenario not in scenarios:
                continue
            self.revive()
            say(f"scenario {scenario}: {SCENARIO_TITLES[scenario]}")
            began = time.monotonic()
            if scenario == "small":
                self.scenario_wrk("small", "/")
            elif scenario == "16k":
                self.scenario_wrk("16k", "/16k")
            elif scenario == "close":
                self.scenario_wrk("close", "/", ("Connection: close",))
            elif scenario == "ratelimit":
                self.scenario_wrk("ratelimit", "/", (),
                                  ["nginx-rl", "haproxy-rl"] + self.bb_keys() + self.peer_keys(),
                                  {"nginx-rl": "nginx", "haproxy-rl": "haproxy"})
            elif scenario == "idle":
                self.scenario_idle()
            elif scenario == "download":
                self.scenario_download()
            elif scenario == "pool":
                self.scenario_pool()
            elif scenario == "slow":
                self.scenario_slow()
            elif scenario == "cache-hit":
                self.scenario_cache_hit()
            elif scenario == "cache-random":
                self.scenario_cache_random()
            elif scenario == "profile":
                self.scenario_profile()
            elif scenario in TLS_SCENARIOS:
                tls_scenario(self, scenario)
            self.timings[scenario] = round(time.monotonic() - began, 1)
            say(f"scenario {scenario} took {self.timings[scenario]:.1f}s")


# ----------------------------------------------------------------- TLS (issue 12)
#
# Three scenarios, each next to nginx in the same alternating rounds:
#   https      wrk over HTTPS keep-alive to a TLS listener; the same processes'
#              plain-HTTP port is measured in the same rounds, which gives
#              balancebeam's TLS cost per request against its own plain HTTP;
#   handshake  wrk over HTTPS with Connection: close, so every request is a new
#              full handshake (wrk offers no session for resumption);
#   reencrypt  wrk over plain HTTP to a balancer whose upstreams are TLS (nginx
#              upstreams with ssl), verified, with a warm pool (nginx: proxy_ssl
#              with keepalive); the plain-upstream balancers for reference.
# Both balancers serve the same ECDSA P-256 certificate, made here with the
# openssl command line, and the TLS profile of Mozilla's "intermediate".

TLS_NAME = "bench.example"
TLS_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
HTTPS_CPU_LIMIT = 1.5  # keep-alive HTTPS CPU per request over balancebeam's own plain HTTP
HANDSHAKE_RATE_LIMIT = 0.5  # new handshakes per second over nginx's


@dataclass(frozen=True)
class TlsMaterial:
    """
    A private CA and one server certificate for L{TLS_NAME} and 127.0.0.1.

    @ivar ca: the CA certificate (PEM).
    @ivar certificate: the server certificate (PEM).
    @ivar key: its private key (PEM, PKCS#8).
    @ivar bundle: certificate then key in one file, as balancebeam's --tls-cert takes.
    """

    ca: Path
    certificate: Path
    key: Path
    bundle: Path


def make_tls_material(directory: Path) -> TlsMaterial:
    """
    Make an ECDSA P-256 CA and a server certificate with the openssl command line.

    @raise HarnessError: openssl is missing or fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise HarnessError("the TLS scenarios need the openssl command (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key = directory / "ca.key", directory / "ca.pem", directory / "server.key"
    csr, certificate = directory / "server.csr", directory / "server.pem"
    extensions = directory / "server.ext"
    extensions.write_text(f"subjectAltName=DNS:{TLS_NAME},IP:{HOST}\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    steps = [
        [openssl, "genpkey", *curve, "-out", str(ca_key)],
        [openssl, "req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=bench CA",
         "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign", "-out", str(ca)],
        [openssl, "genpkey", *curve, "-out", str(key)],
        [openssl, "req", "-new", "-key", str(key), "-subj", f"/CN={TLS_NAME}", "-out", str(csr)],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(certificate)],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise HarnessError(f"{shlex.join(step[:3])} failed: {result.stderr.strip()}")
    bundle = directory / "bundle.pem"
    bundle.write_bytes(certificate.read_bytes() + key.read_bytes())
    return TlsMaterial(ca, certificate, key, bundle)


def https_get(port: int, path: str = "/", timeout: float = 2.0) -> ResponseReader:
    """
    One blocking GET over TLS (not verified: only readiness is checked).

    @raise OSError: on connection or handshake problems, or timeout.
    """
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=TLS_NAME) as sock:
            sock.sendall(request_bytes(path, port, close=True))
            reader = ResponseReader()
            while not reader.done:
                data = sock.recv(65536)
                if not data:
                    break
                reader.feed(data)
            return reader


def wait_https_ready(port: int, proc: subprocess.Popen[bytes], procs: ProcessGroup, name: str,
                     timeout: float = 20.0) -> None:
    """
    Wait until C{GET /} over TLS on C{port} answers 200.

    @raise TargetFailure: the process exited or never answered.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetFailure(f"{name} exited with status {proc.returncode}:\n"
                                f"{procs.log_tail(name)}")
        try:
            reader = https_get(port, timeout=1.0)
            if reader.status == 200:
                return
            last = f"status {reader.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TargetFailure(f"{name} did not answer GET / over TLS within {timeout:.0f}s ({last}):\n"
                        f"{procs.log_tail(name)}")


def _nginx_tls_lines(tls: TlsMaterial) -> str:
    """
    nginx's server-side TLS settings, the profile balancebeam's listeners use:
    TLS 1.2 and 1.3, Mozilla's intermediate ciphers, a session cache and no tickets.
    """
    return f"""        ssl_certificate {tls.certificate};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {TLS_CIPHERS};
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:bench:10m;
        ssl_session_tickets off;"""


def start_nginx_tls_lb(bench: Bench, name: str, tls: TlsMaterial) -> tuple[Target, Target]:
    """
    nginx terminating TLS in front of the plain upstreams (as C{start_nginx_lb},
    keepalive to the upstreams), listening for HTTPS and plain HTTP.

    @return: the HTTPS target and the plain one (the same process).
    """
    port, tls_port = free_port(bench.used_ports), free_port(bench.used_ports)
    servers = "\n".join(f"        server {HOST}:{p};" for p in bench.upstream_ports)
    argv = bench._nginx_conf(name, f"""    upstream backend {{
{servers}
        keepalive {bench.args.nginx_keepalive};
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        listen {HOST}:{tls_port} ssl backlog=4096;
{_nginx_tls_lines(tls)}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_max_temp_file_size 0;
        }}
    }}""")
    plain = bench._start(name, "nginx", port, argv)
    assert plain.proc is not None
    wait_https_ready(tls_port, plain.proc, bench.procs, plain.log_name)
    secure = Target(name, "nginx", tls_port, plain.proc, plain.log_name, argv, scheme="https")
    return secure, plain


def start_balancebeam_tls(bench: Bench, name: str, tls: TlsMaterial,
                          variant: Variant | None = None,
                          baseline: bool = False) -> tuple[Target, Target]:
    """
    balancebeam with C{--tls-bind} (the bundle as C{--tls-cert}) beside its
    plain C{--bind}, over the plain upstreams; a variant of the current
    tree, or the baseline, when given.

    @return: the HTTPS target and the plain one (the same process).
    """
    tls_port = free_port(bench.used_ports)
    plain = bench.start_balancebeam(name, bench.upstream_ports, [
        "--tls-bind", f"{HOST}:{tls_port}", "--tls-cert", str(tls.bundle)],
        variant=variant, baseline=baseline)
    assert plain.proc is not None
    wait_https_ready(tls_port, plain.proc, bench.procs, plain.log_name)
    secure = Target(name, "balancebeam", tls_port, plain.proc, plain.log_name, plain.command,
                    scheme="https")
    return secure, plain


def start_tls_upstreams(bench: Bench, tls: TlsMaterial,
                        procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """
    Two nginx upstreams on the load core serving C{/} (100 bytes) over TLS
    only, with a session cache and tickets on (as nginx has by default), so
    that clients can resume sessions.

    @param procs: the processes started are appended here (to be stopped
        by the caller).
    @return: their ports.
    @raise HarnessError: one did not start.
    """
    ports = []
    for index in (1, 2):
        port = free_port(bench.used_ports)
        name = f"tls-upstream{index}"
        argv = bench._nginx_conf(name, f"""    server {{
        listen {HOST}:{port} ssl backlog=4096;
        ssl_certificate {tls.certificate};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:up{index}:10m;
        location = / {{
            default_type text/plain;
            return 200 "{SMALL_BODY}";
        }}
    }}""")
        proc = bench.procs.spawn(name, argv, bench.load_core)
        procs.append(proc)
        try:
            wait_https_ready(port, proc, bench.procs, name)
        except TargetFailure as exc:
            raise HarnessError(f"TLS upstream {index} did not start: {exc}") from None
        ports.append(port)
    return ports


def start_nginx_reencrypt(bench: Bench, name: str, tls: TlsMaterial,
                          upstreams: Sequence[int]) -> Target:
    """
    nginx over plain HTTP in front of TLS upstreams: C{proxy_ssl} verified
    against the private CA for L{TLS_NAME}, sessions reused, keepalive.
    """
    port = free_port(bench.used_ports)
    servers = "\n".join(f"        server {HOST}:{p};" for p in upstreams)
    # nginx's keepalive is per upstream block, balancebeam's idle cap per
    # upstream: the same number of warm connections in all. (With fewer than
    # the client connections, nginx would do a new handshake for the rest.)
    keepalive = bench.args.nginx_keepalive * len(upstreams)
    argv = bench._nginx_conf(name, f"""    upstream backend_tls {{
{servers}
        keepalive {keepalive};
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass https://backend_tls;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_max_temp_file_size 0;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {tls.ca};
            proxy_ssl_name {TLS_NAME};
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
        }}
    }}""")
    return bench._start(name, "nginx", port, argv)


def start_balancebeam_reencrypt(bench: Bench, name: str, tls: TlsMaterial,
                                upstreams: Sequence[int], variant: Variant | None = None,
                                baseline: bool = False) -> Target:
    """
    balancebeam over plain HTTP in front of C{https://} upstreams, verified
    against the private CA for L{TLS_NAME} (probes over TLS too); a variant
    of the current tree, or the baseline, when given.
    """
    extra: list[str] = []
    for port in upstreams:
        extra += ["--upstream", f"https://{HOST}:{port}"]
    extra += ["--upstream-ca", str(tls.ca), "--upstream-tls-name", TLS_NAME]
    return bench.start_balancebeam(name, [], extra, variant=variant, baseline=baseline)


def _warm(bench: Bench, target: Target) -> None:
    """
    Warm a target started for a TLS scenario (pools filled, code paths hot).
    """
    if bench.settings.warmup:
        bench.run_wrk(target.port, "/", bench.settings.connections, bench.settings.warmup,
                      scheme=target.scheme)
    elif target.scheme == "https":
        for _ in range(20):
            https_get(target.port)
    else:
        warm_up_python(target.port)


def tls_scenario(bench: Bench, scenario: str) -> None:
    """
    Run one TLS scenario: start its nginx and balancebeam (and, for
    C{reencrypt}, TLS upstreams), warm them, measure them in alternating
    rounds as rows C{nginx} and C{balancebeam} (so that the ratios to nginx
    are computed as everywhere else), then stop them.
    """
    tls = make_tls_material(bench.tmp / f"tls-{scenario}")
    wanted = set(bench.args.targets)
    started: dict[str, Target] = {}
    rows: dict[str, str] = {}
    extra_procs: list[subprocess.Popen[bytes]] = []

    def add(key: str, row: str, starter: Callable[[], Any], plain_row: bool = True) -> None:
        try:
            result = starter()
        except (TargetFailure, OSError) as exc:
            bench.record_failure(scenario, row, 1, str(exc).splitlines()[0])
            return
        targets = result if isinstance(result, tuple) else (result,)
        labels = [(key, row), (f"{key}-http", f"{row} (http)")][: 2 if plain_row else 1]
        for (target_key, target_row), target in zip(labels, targets):
            started[target_key] = target
            rows[target_key] = target_row
        for target in targets[len(labels):]:
            started[f"{key}-unmeasured"] = target  # stopped with the others

    # The variants of the current tree and the baseline, as the TLS rows only.
    others: list[tuple[str, Variant | None, bool]] = []
    if "balancebeam" in wanted:
        others = [(variant.key, variant, False) for variant in bench.variants]
        if bench.baseline_key and not bench.baseline_unavailable:
            others.append((bench.baseline_key, None, True))
    try:
        if scenario in ("https", "handshake"):
            if "nginx" in wanted and bench.tools["nginx"]:
                add("tls-nginx", "nginx", lambda: start_nginx_tls_lb(bench, "tls-nginx", tls))
            if "balancebeam" in wanted:
                add("tls-balancebeam", "balancebeam",
                    lambda: start_balancebeam_tls(bench, "tls-balancebeam", tls))
            for index, (row, variant, baseline) in enumerate(others):
                add(f"tls-other{index}", row, functools.partial(
                    start_balancebeam_tls, bench, f"tls-other{index}", tls, variant, baseline),
                    plain_row=False)
        else:
            if not bench.tools["nginx"]:
                bench.notes.append("reencrypt skipped: its TLS upstreams are nginx, "
                                   f"which is not installed ({APT_LINE})")
                return
            upstreams = start_tls_upstreams(bench, tls, extra_procs)
            if "nginx" in wanted:
                add("tls-nginx", "nginx",
                    lambda: start_nginx_reencrypt(bench, "tls-nginx-reencrypt", tls, upstreams))
            if "balancebeam" in wanted:
                add("tls-balancebeam", "balancebeam",
                    lambda: start_balancebeam_reencrypt(bench, "tls-balancebeam-reencrypt",
                                                        tls, upstreams))
            for index, (row, variant, baseline) in enumerate(others):
                add(f"tls-other{index}", row, functools.partial(
                    start_balancebeam_reencrypt, bench, f"tls-other{index}-reencrypt", tls,
                    upstreams, variant, baseline))
        for key, target in started.items():
            if not key.endswith("-unmeasured"):
                _warm(bench, target)
        keys = [k for k in started if not k.endswith("-unmeasured")
                and (scenario == "https" or not k.endswith("-http"))]
        if scenario == "reencrypt":
            # The balancers of the other scenarios, over plain upstreams, for reference.
            for key in ("nginx", "balancebeam"):
                if bench.live(key) is not None:
                    keys.append(key)
                    rows[key] = f"{key} (plain upstreams)"
        for key, target in started.items():
            bench.targets[key] = target
        headers = ("Connection: close",) if scenario == "handshake" else ()
        bench.scenario_wrk(scenario, "/", headers, keys, rows)
    finally:
        stopped: set[int] = set()
        for key, target in started.items():
            bench.targets.pop(key, None)
            if target.proc is not None and target.proc.pid not in stopped:
                stopped.add(target.proc.pid)
                bench.procs.stop(target.proc)
        for proc in extra_procs:
            bench.procs.stop(proc)


def check_tls_targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """
    Issue 12's targets for balancebeam: keep-alive HTTPS at most 1.5x its own
    plain-HTTP CPU per request (the same process, same rounds), and at least
    0.5x nginx's rate of new handshakes; re-encryption's ratios to nginx and
    to plain upstreams are reported without a target.
    """
    def get(scenario: str, row: str, key: str) -> float | None:
        value = summary.get(scenario, {}).get(row, {}).get(key)
        return value if isinstance(value, (int, float)) else None

    def check(name: str, value: float | None, limit: float | None, higher: bool,
              unit: str = "x") -> dict[str, Any]:
        if value is None:
            verdict = "n/a"
        elif limit is None:
            verdict = "info"
        elif higher:
            verdict = "met" if value >= limit else "MISSED"
        else:
            verdict = "met" if value <= limit else "MISSED"
        return {"target": name, "measured": value, "limit": limit, "higher_is_better": higher,
                "unit": unit, "verdict": verdict}

    secure = get("https", "balancebeam", "cpu_us_per_req")
    plain = get("https", "balancebeam (http)", "cpu_us_per_req")
    https_ratio = secure / plain if secure and plain else None
    reencrypt = get("reencrypt", "balancebeam", "cpu_us_per_req")
    reference = get("reencrypt", "balancebeam (plain upstreams)", "cpu_us_per_req")
    return [
        check("HTTPS keep-alive CPU/req x own plain HTTP", https_ratio, HTTPS_CPU_LIMIT, False),
        check("HTTPS keep-alive CPU/req us", secure, None, False, "us"),
        check("HTTPS keep-alive req/s x nginx", get("https", "balancebeam", "rps_x_nginx"),
              None, True),
        check("new handshakes/s x nginx", get("handshake", "balancebeam", "rps_x_nginx"),
              HANDSHAKE_RATE_LIMIT, True),
        check("new handshake CPU efficiency x nginx",
              get("handshake", "balancebeam", "cpu_eff_x_nginx"), None, True),
        check("re-encryption req/s x nginx", get("reencrypt", "balancebeam", "rps_x_nginx"),
              None, True),
        check("re-encryption CPU/req x plain upstreams",
              reencrypt / reference if reencrypt and reference else None, None, False),
    ]


def render_tls_checks(checks: Sequence[dict[str, Any]]) -> str:
    """
    The TLS targets as a short list.
    """
    lines = ["", "== issue 12 TLS targets for balancebeam (same-run ratios)"]
    for c in checks:
        op = ">=" if c["higher_is_better"] else "<="
        limit = f"target {op} {c['limit']}" if c["limit"] is not None else "(reported)"
        lines.append(f"  {c['verdict']:<7} {c['target']:<42} measured "
                     f"{fmt(c['measured'], 2):>8}  {limit}")
    return "\n".join(lines)


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """
    Read py-spy's collapsed stacks (C{frame;frame;... count} per line) and
    rank functions by self samples (innermost frame) and balancebeam's own
    functions by inclusive samples (anywhere on the stack, once per stack;
    the reactor's frames would otherwise fill the list).
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            if "balancebeam/" in frame:
                inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [{"function": f, "samples": n, "share": n / total if total else 0.0}
                for f, n in rows]

    return {"samples": total, "top_self": ranked(own), "top_inclusive": ranked(inclusive)}


def render_profile(profile: dict[str, Any]) -> str:
    """
    The profile summary as text.
    """
    lines = ["", f"== profile: balancebeam, GET / keep-alive ({profile['samples']} py-spy "
             f"samples; collapsed stacks in {profile.get('file')})"]
    for key, title in (("top_self", "self time"),
                       ("top_inclusive", "inclusive time, balancebeam's functions")):
        lines.append(f"  by {title}:")
        for row in profile[key]:
            lines.append(f"    {row['share'] * 100:5.1f}%  {row['function']}")
    return "\n".join(lines)


def find_tool(name: str, override: str | None) -> str | None:
    """
    The path of a program: C{override} when given (an empty string means
    "pretend it is not installed"), else from C{PATH} or C{/usr/sbin}.
    """
    if override is not None:
        return shutil.which(override) if override else None
    found = shutil.which(name)
    if found:
        return found
    sbin = f"/usr/sbin/{name}"
    return sbin if os.access(sbin, os.X_OK) else None


def split_balancer_args(twistd_args: Sequence[str],
                        balancer_args: Sequence[str]) -> tuple[list[str], list[str]]:
    """
    Split each C{--twistd-arg}/C{--balancer-arg} value shell-style; a
    C{--reactor} given as a balancer argument is moved to twistd, where it belongs.
    """
    twistd: list[str] = []
    for value in twistd_args:
        twistd += shlex.split(value)
    balancer: list[str] = []
    words: list[str] = []
    for value in balancer_args:
        words += shlex.split(value)
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("--reactor="):
            twistd.append(word)
        elif word in ("--reactor", "-r") and index + 1 < len(words):
            twistd += [word, words[index + 1]]
            index += 1
        else:
            balancer.append(word)
        index += 1
    return twistd, balancer


# --------------------------------------------------------------------------- reporting


def fmt(value: Any, digits: int = 1) -> str:
    """
    A number for the table, or C{-} when missing.
    """
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "-"
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


def median(values: Sequence[float]) -> float | None:
    """
    The median of the values that exist.
    """
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def aggregate(measurements: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """
    Combine rounds per scenario and row: medians for rates and latencies,
    sums for errors, total CPU over total requests, maxima for RSS.
    """
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in measurements:
        grouped.setdefault((m["scenario"], m["target"]), []).append(m)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, row), items in grouped.items():
        ok = [m for m in items if "failed" not in m]
        agg: dict[str, Any] = {"rounds": len(ok), "failed_rounds": len(items) - len(ok)}
        failures = [m["failed"] for m in items if "failed" in m]
        if failures:
            agg["failure"] = failures[0]
        if ok and "rps" in ok[0]:
            requests = sum(m["requests"] for m in ok)
            cpu = sum(m["cpu_us"] for m in ok)
            agg.update({
                "rps": median([m["rps"] for m in ok]),
                "p50_ms": median([m["p50_ms"] for m in ok]),
                "p90_ms": median([m["p90_ms"] for m in ok]),
                "slow_share": median([m["slow_share"] for m in ok]),
                "p99_ms": median([m["p99_ms"] for m in ok]),
                "p999_ms": median([m["p999_ms"] for m in ok]),
                "requests": requests,
                "errors": sum(m["errors_total"] for m in ok),
                "errors_by_kind": {k: sum(m["errors"][k] for m in ok) for k in ok[0]["errors"]},
                "cpu_us_per_req": cpu / requests if requests else None,
                "cpu_util": median([m["cpu_util"] for m in ok]),
                "rss_peak_kib": max(m["rss_peak_kib"] for m in ok),
                "died": any(not m.get("alive_after", True) for m in ok),
            })
        elif ok and "per_conn_kib" in ok[0]:
            agg.update({
                "per_conn_kib": max((m["per_conn_kib"] for m in ok
                                     if m["per_conn_kib"] is not None), default=None),
                "rss_base_kib": min(m["rss_base_kib"] for m in ok),
                "rss_idle_kib": max(m["rss_idle_kib"] for m in ok),
                "rss_peak_kib": max(m["rss_peak_kib"] for m in ok),
                "failed_conns": sum(m["failed_conns"] for m in ok),
                "closed_early": sum(m["closed_early"] for m in ok),
                "load_rps": median([m["load_rps"] for m in ok]),
                "load_p99_ms": median([m["load_p99_ms"] for m in ok]),
                "errors": sum(m["failed_conns"] + m["closed_early"] + m["load_errors"]
                              for m in ok),
                "error": next((m["error"] for m in ok if m["error"]), None),
                "died": any(not m.get("alive_after", True) for m in ok),
            })
        elif ok and "mib_s" in ok[0]:
            good = [m for m in ok if not m["error"]]
            agg.update({
                "mib_s": median([m["mib_s"] for m in good]),
                "rss_growth_kib": max(m["rss_growth_kib"] for m in ok),
                "rss_peak_kib": max(m["rss_peak_kib"] for m in ok),
                "cpu_us_per_mib": median([m["cpu_us_per_mib"] for m in good]),
                "errors": len(ok) - len(good),
                "error": next((m["error"] for m in ok if m["error"]), None),
                "died": any(not m.get("alive_after", True) for m in ok),
            })
        out.setdefault(scenario, {})[row] = agg
    return out


def add_ratios(summary: dict[str, dict[str, dict[str, Any]]],
               measurements: Sequence[dict[str, Any]]) -> None:
    """
    Put each row's ratios to nginx in the same scenario (same run) into the
    summary: ratios of the combined figures, and (C{*_paired}) the median of
    the ratios of each round, where the two ran a few seconds apart.
    """
    by_round: dict[tuple[str, str, int], dict[str, Any]] = {
        (m["scenario"], m["target"], m["round"]): m for m in measurements
        if "failed" not in m and "rps" in m}
    for scenario, rows in summary.items():
        ref_rounds = {r: m for (s, t, r), m in by_round.items() if s == scenario and t == "nginx"}
        for row, agg in rows.items():
            pairs = [(m, ref_rounds[r]) for (s, t, r), m in by_round.items()
                     if s == scenario and t == row and r in ref_rounds]
            if pairs:
                agg["rps_x_nginx_paired"] = median(
                    [m["rps"] / ref["rps"] for m, ref in pairs if ref["rps"]])
                agg["cpu_eff_x_nginx_paired"] = median(
                    [ref["cpu_us_per_req"] / m["cpu_us_per_req"] for m, ref in pairs
                     if ref["cpu_us_per_req"] and m["cpu_us_per_req"]])
    for rows in summary.values():
        ref = rows.get("nginx")
        if not ref:
            continue
        for agg in rows.values():
            def ratio(a: Any, b: Any) -> float | None:
                return a / b if a is not None and b else None
            if "rps" in agg and "rps" in ref:
                agg["rps_x_nginx"] = ratio(agg["rps"], ref["rps"])
                agg["cpu_eff_x_nginx"] = ratio(ref["cpu_us_per_req"], agg["cpu_us_per_req"])
                agg["p99_x_nginx"] = ratio(agg["p99_ms"], ref["p99_ms"])
            if "mib_s" in agg and "mib_s" in ref:
                agg["mib_s_x_nginx"] = ratio(agg["mib_s"], ref["mib_s"])


def compare_to_current(summary: dict[str, dict[str, dict[str, Any]]],
                       measurements: Sequence[dict[str, Any]],
                       others: Sequence[tuple[str, str]],
                       current: str = "balancebeam") -> list[dict[str, Any]]:
    """
    The current tree against each of C{others} (C{(kind, row)}: the baseline
    or a variant), for every scenario where both have figures: CPU us per
    request (total CPU over total requests, as in the tables) and its ratio
    current / other, the median of the per-round ratios (the two ran
    seconds apart in each round), and req/s; for the download, CPU us per MiB.
    """
    by_round: dict[tuple[str, str, int], dict[str, Any]] = {
        (m["scenario"], m["target"], m["round"]): m for m in measurements
        if "failed" not in m and m.get("cpu_us_per_req")}
    out: list[dict[str, Any]] = []
    for scenario in ALL_SCENARIOS:
        rows = summary.get(scenario, {})
        mine = rows.get(current)
        if not mine:
            continue
        for kind, row in others:
            theirs = rows.get(row)
            if not theirs:
                continue
            entry: dict[str, Any] = {"scenario": scenario, "kind": kind, "other": row}
            if mine.get("cpu_us_per_req") and theirs.get("cpu_us_per_req"):
                paired = [by_round[(scenario, current, r)]["cpu_us_per_req"] / m["cpu_us_per_req"]
                          for (sc, t, r), m in by_round.items()
                          if sc == scenario and t == row and (scenario, current, r) in by_round]
                entry.update({
                    "unit": "CPU us/req",
                    "current": mine["cpu_us_per_req"], "value": theirs["cpu_us_per_req"],
                    "ratio": mine["cpu_us_per_req"] / theirs["cpu_us_per_req"],
                    "ratio_paired": median(paired), "rounds": len(paired),
                    "rps_current": mine.get("rps"), "rps": theirs.get("rps"),
                })
            elif mine.get("cpu_us_per_mib") and theirs.get("cpu_us_per_mib"):
                entry.update({
                    "unit": "CPU us/MiB",
                    "current": mine["cpu_us_per_mib"], "value": theirs["cpu_us_per_mib"],
                    "ratio": mine["cpu_us_per_mib"] / theirs["cpu_us_per_mib"],
                    "ratio_paired": None, "rounds": mine.get("rounds"),
                })
            else:
                continue
            out.append(entry)
    return out


def render_comparisons(comparisons: Sequence[dict[str, Any]]) -> str:
    """
    One "current vs ..." line per scenario and baseline or variant.
    """
    lines = ["", "== current tree vs baseline and variants (ratio = current / other: "
                 "below 1.00 the current tree spends less CPU)"]
    for c in comparisons:
        label = f"current vs {c['kind']} ({c['other']})"
        line = (f"  {c['scenario']:<9} {label:<48} {c['unit']} {fmt(c['current'], 1)} vs "
                f"{fmt(c['value'], 1)}: ratio {fmt(c['ratio'], 3)}")
        if c.get("ratio_paired") is not None:
            line += (f" (per-round median {fmt(c['ratio_paired'], 3)}, "
                     f"{c['rounds']} round(s))")
        if c.get("rps") is not None:
            line += f"; req/s {fmt(c['rps_current'], 0)} vs {fmt(c['rps'], 0)}"
        lines.append(line)
    if len(lines) == 2:
        lines.append("  (no scenario has figures for both)")
    return "\n".join(lines)


def render_tables(summary: dict[str, dict[str, dict[str, Any]]], rounds: int,
                  duration: int) -> str:
    """
    The human-readable report: one table per scenario.
    """
    out: list[str] = []

    def table(headers: list[str], lines: list[list[str]]) -> None:
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
                  for i, h in enumerate(headers)]
        out.append("  ".join(h.rjust(w) if i else h.ljust(w)
                             for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
        for line in lines:
            out.append("  ".join(c.rjust(w) if i else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(line, widths, strict=True))))

    for scenario in ALL_SCENARIOS:
        rows = summary.get(scenario)
        if not rows:
            continue
        out.append("")
        label = f"{rounds} round(s) x {duration}s" if scenario not in ("idle", "download") \
            else f"{rounds} round(s)"
        if scenario == "profile":
            label = f"{max(duration, 3)}s, 1 round"
        if scenario in ("pool", "slow"):
            label = f"{duration}s each" + (f", {min(rounds, 2)} round(s)"
                                           if scenario == "pool" else ", 1 round")
        out.append(f"== {scenario}: {SCENARIO_TITLES[scenario]} ({label})")
        lines: list[list[str]] = []
        if scenario == "idle":
            headers = ["target", "KiB/conn", "base RSS MiB", "held RSS MiB", "failed",
                       "closed early", "load req/s", "load p99 ms", "note"]
            for row, a in rows.items():
                if "per_conn_kib" not in a:
                    lines.append([row] + ["-"] * 7 + [a.get("failure", "")[:60]])
                    continue
                lines.append([row, fmt(a["per_conn_kib"], 2), fmt(a["rss_base_kib"] / 1024, 1),
                              fmt(a["rss_idle_kib"] / 1024, 1), str(a["failed_conns"]),
                              str(a["closed_early"]), fmt(a["load_rps"], 0),
                              fmt(a["load_p99_ms"], 2),
                              (a.get("error") or "") + (" DIED" if a.get("died") else "")])
        elif scenario == "download":
            headers = ["target", "MiB/s", "x nginx", "RSS growth MiB", "peak RSS MiB",
                       "CPU us/MiB", "errors", "note"]
            for row, a in rows.items():
                if "rss_growth_kib" not in a:
                    lines.append([row] + ["-"] * 6 + [a.get("failure", "")[:60]])
                    continue
                lines.append([row, fmt(a["mib_s"], 0), fmt(a.get("mib_s_x_nginx"), 2),
                              fmt(a["rss_growth_kib"] / 1024, 2),
                              fmt(a["rss_peak_kib"] / 1024, 1), fmt(a["cpu_us_per_mib"], 0),
                              str(a["errors"]),
                              (a.get("error") or "") + (" DIED" if a.get("died") else "")])
        else:
            slow = scenario == "slow"
            headers = ["target", "req/s", "p50 ms"] + (["p90 ms"] if slow else []) + [
                "p99 ms", "p99.9 ms", "errors", "CPU us/req", "CPU %", "peak RSS MiB"]
            if slow:
                headers.append("to slow %")
            with_ratios = any("rps_x_nginx" in a for a in rows.values())
            if with_ratios:
                headers += ["req/s x nginx", "CPU eff x nginx", "p99 x nginx"]
            headers.append("note")
            for row, a in rows.items():
                if "rps" not in a:
                    lines.append([row] + ["-"] * (len(headers) - 2) +
                                 [a.get("failure", "")[:60]])
                    continue
                line = [row, fmt(a["rps"], 0), fmt(a["p50_ms"], 2)]
                if slow:
                    line.append(fmt(a["p90_ms"], 2))
                line += [fmt(a["p99_ms"], 2),
                         fmt(a["p999_ms"], 2), str(a["errors"]), fmt(a["cpu_us_per_req"], 1),
                         fmt(a["cpu_util"] * 100 if a["cpu_util"] is not None else None, 0),
                         fmt(a["rss_peak_kib"] / 1024, 1)]
                if slow:
                    share = a.get("slow_share")
                    line.append(fmt(share * 100 if share is not None else None, 1))
                if with_ratios:
                    line += [fmt(a.get("rps_x_nginx"), 2), fmt(a.get("cpu_eff_x_nginx"), 2),
                             fmt(a.get("p99_x_nginx"), 2)]
                note = []
                if a["errors"]:
                    note.append(",".join(f"{k}={v}" for k, v in a["errors_by_kind"].items() if v))
                if a.get("died"):
                    note.append("DIED")
                if a.get("failed_rounds"):
                    note.append(f"{a['failed_rounds']} round(s) failed")
                line.append(" ".join(note))
                lines.append(line)
        table(headers, lines)
    return "\n".join(out)


def check_targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """
    Issue 6's targets for balancebeam, each with the measured figure and a verdict.
    """
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool,
            unit: str = "") -> None:
        if value is None:
            verdict = "n/a"
        elif higher_is_better:
            verdict = "met" if value >= limit else "MISSED"
        else:
            verdict = "met" if value <= limit else "MISSED"
        checks.append({"target": name, "measured": value, "limit": limit,
                       "higher_is_better": higher_is_better, "unit": unit, "verdict": verdict})

    def get(scenario: str, key: str) -> float | None:
        value = summary.get(scenario, {}).get("balancebeam", {}).get(key)
        return value if isinstance(value, (int, float)) else None

    add("/ keep-alive req/s x nginx", get("small", "rps_x_nginx"), 0.6, True, "x")
    add("/ keep-alive CPU efficiency x nginx", get("small", "cpu_eff_x_nginx"), 0.6, True, "x")
    add("/ keep-alive p99 x nginx", get("small", "p99_x_nginx"), 2.0, False, "x")
    add("/16k req/s x nginx", get("16k", "rps_x_nginx"), 0.85, True, "x")
    add("/16k CPU efficiency x nginx", get("16k", "cpu_eff_x_nginx"), 0.85, True, "x")
    add("/16k p99 x nginx", get("16k", "p99_x_nginx"), 2.0, False, "x")
    add("fresh connection req/s x nginx", get("close", "rps_x_nginx"), 0.5, True, "x")
    add("idle connection RSS KiB/conn", get("idle", "per_conn_kib"), 10.0, False, "KiB")
    growth = get("download", "rss_growth_kib")
    add("100 MiB download RSS growth MiB", growth / 1024 if growth is not None else None,
        8.0, False, "MiB")
    add("100 MiB download errors", get("download", "errors"), 0, False)
    return checks


def saturation_warnings(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """
    Warnings for scenarios where nginx did not use most of its core, so that
    something other than the balancer limited the round.
    """
    warnings = []
    for scenario in ("small", "16k", "close", "ratelimit"):
        util = summary.get(scenario, {}).get("nginx", {}).get("cpu_util")
        if isinstance(util, float) and util < 0.85:
            warnings.append(
                f"in '{scenario}' nginx used only {util:.0%} of its core: the load side (wrk, "
                "upstreams, other work on the machine) was the limit, so req/s ratios there "
                "understate the difference; trust CPU efficiency")
    return warnings


def render_checks(checks: Sequence[dict[str, Any]]) -> str:
    """
    The targets as a short list.
    """
    lines = ["", "== issue 6 targets for balancebeam (same-run ratios to nginx)"]
    for c in checks:
        op = ">=" if c["higher_is_better"] else "<="
        if c["target"].endswith("growth MiB"):
            op = "<"
        lines.append(f"  {c['verdict']:<7} {c['target']:<38} measured {fmt(c['measured'], 2):>8}"
                     f"  target {op} {c['limit']}")
    return "\n".join(lines)


def cache_counters(log: str) -> dict[str, int]:
    """
    The cache counters of balancebeam's last shutdown line
    (C{stopped; counters: {..., 'cache_hits': 12, ...}}), without the prefix.
    """
    lines = [line for line in log.splitlines() if "stopped; counters:" in line]
    if not lines:
        return {}
    return {name: int(value)
            for name, value in re.findall(r"'cache_([a-z_]+)': (\d+)", lines[-1])}


def cache_report(summary: dict[str, dict[str, dict[str, Any]]],
                 measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    Issue 10's targets from the cache scenarios: a hit against a proxied
    request of the same balancebeam (CPU us per request at most half,
    req/s at least twice), the ratio to nginx serving the same hits from
    C{proxy_cache}, and the resident set growth under random keys against
    C{--cache-size} plus 10%. Per-round ratios (the rows ran seconds apart
    in each round) are given next to the ratios of the combined figures.
    """
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float | None, higher_is_better: bool,
            paired: float | None = None) -> None:
        if value is None or limit is None:
            verdict = "n/a" if limit is not None else "info"
        elif higher_is_better:
            verdict = "met" if value >= limit else "MISSED"
        else:
            verdict = "met" if value <= limit else "MISSED"
        checks.append({"target": name, "measured": value, "limit": limit, "paired": paired,
                       "higher_is_better": higher_is_better, "verdict": verdict})

    rows = summary.get("cache-hit", {})
    by_round: dict[tuple[str, int], dict[str, Any]] = {
        (m["target"], m["round"]): m for m in measurements
        if m["scenario"] == "cache-hit" and "rps" in m and m.get("cpu_us_per_req")}

    def ratio(top: str, bottom: str, key: str) -> tuple[float | None, float | None]:
        a, b = rows.get(top, {}).get(key), rows.get(bottom, {}).get(key)
        combined = a / b if a is not None and b else None
        pairs = [m[key] / by_round[(bottom, r)][key] for (t, r), m in by_round.items()
                 if t == top and (bottom, r) in by_round and by_round[(bottom, r)][key]]
        return combined, median(pairs)

    hit, proxied, nginx_hit, _ = CACHE_HIT_ROWS
    if rows:
        cpu, cpu_paired = ratio(hit, proxied, "cpu_us_per_req")
        add("hit CPU us/req / proxied CPU us/req", cpu, 0.5, False, cpu_paired)
        rps, rps_paired = ratio(hit, proxied, "rps")
        add("hit req/s / proxied req/s", rps, 2.0, True, rps_paired)
        cpu, cpu_paired = ratio(hit, nginx_hit, "cpu_us_per_req")
        add("hit CPU us/req / nginx proxy_cache hit CPU us/req", cpu, None, False, cpu_paired)
        rps, rps_paired = ratio(hit, nginx_hit, "rps")
        add("hit req/s / nginx proxy_cache hit req/s", rps, None, True, rps_paired)
    random_rounds = [m for m in measurements if m["scenario"] == "cache-random" and "rps" in m]
    if random_rounds:
        size = random_rounds[0]["cache_size_kib"]
        growth = max(m["rss_growth_kib"] for m in random_rounds)
        counters: dict[str, int] = next(
            (m["cache_counters"] for m in random_rounds if "cache_counters" in m), {})
        add(f"random keys: RSS growth MiB (--cache-size {size // 1024}m + 10%)", growth / 1024,
            size * 1.1 / 1024, False)
        add("random keys: entries evicted (the load overflowed the cache)",
            counters.get("evicted"), 1, True)
    warnings = []
    util = rows.get(nginx_hit, {}).get("cpu_util")
    if isinstance(util, float) and util < 0.85:
        warnings.append(f"nginx serving hits used only {util:.0%} of its core: the load side "
                        "was the limit, so the req/s ratios understate the difference; trust "
                        "CPU us/req")
    return {"checks": checks, "warnings": warnings, "cache_random_counters": next(
        (m["cache_counters"] for m in random_rounds if "cache_counters" in m), None)}


def render_cache_report(report: dict[str, Any]) -> str:
    """
    Issue 10's targets as a short list.
    """
    lines = ["", "== issue 10 targets for the cache (same-run ratios; per-round median in "
                 "brackets)"]
    for c in report["checks"]:
        measured = fmt(c["measured"], 2)
        if c.get("paired") is not None:
            measured += f" ({fmt(c['paired'], 2)})"
        target = ""
        if c["limit"] is not None:
            target = f"target {'>=' if c['higher_is_better'] else '<='} {fmt(c['limit'], 2)}"
        lines.append(f"  {c['verdict']:<7} {c['target']:<58} {measured:>14}  {target}")
    for warning in report.get("warnings", ()):
        lines.append("  note: " + warning)
    counters = report.get("cache_random_counters")
    if counters:
        lines.append("  random keys, cache counters at shutdown: " + ", ".join(
            f"{name} {value}" for name, value in counters.items()))
    return "\n".join(lines)


def check_issue15(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """
    Issue 15's targets, from the rows present: the mypyc build's CPU per
    request over the pure build's (C{/} at most 0.5, C{/16k} at most 0.6),
    and balancebeam on CPython (pure and compiled, each) against every
    Python peer: at least 5x its CPU efficiency on C{/}, and faster in
    every scenario both ran (req/s; the idle scenario's load req/s; the
    download's MiB/s).
    """
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool,
            strict: bool = False) -> None:
        if value is None:
            verdict = "n/a"
        elif strict:
            verdict = "met" if value > limit else "MISSED"
        elif higher_is_better:
            verdict = "met" if value >= limit else "MISSED"
        else:
            verdict = "met" if value <= limit else "MISSED"
        checks.append({"target": name, "measured": value, "limit": limit,
                       "higher_is_better": higher_is_better, "strict": strict,
                       "verdict": verdict})

    def figure(scenario: str, row: str, key: str) -> float | None:
        value = summary.get(scenario, {}).get(row, {}).get(key)
        return value if isinstance(value, (int, float)) and value else None

    pure, compiled = "balancebeam", "balancebeam:compiled"
    for scenario, limit in (("small", 0.5), ("16k", 0.6)):
        mine = figure(scenario, compiled, "cpu_us_per_req")
        theirs = figure(scenario, pure, "cpu_us_per_req")
        if mine is not None or theirs is not None:
            add(f"{scenario}: compiled CPU us/req / pure", mine / theirs
                if mine is not None and theirs is not None else None, limit, False)
    speed_keys = {"idle": "load_rps", "download": "mib_s"}
    for row in (pure, compiled):
        for peer in PEER_TARGETS:
            if not any(peer in rows for rows in summary.values()):
                continue
            mine = figure("small", row, "cpu_us_per_req")
            theirs = figure("small", peer, "cpu_us_per_req")
            if mine is not None or theirs is not None:
                add(f"small: {row} CPU efficiency / {peer}", theirs / mine
                    if mine is not None and theirs is not None else None, 5.0, True)
            for scenario in ALL_SCENARIOS:
                rows = summary.get(scenario, {})
                if row not in rows or peer not in rows:
                    continue
                key = speed_keys.get(scenario, "rps")
                a, b = figure(scenario, row, key), figure(scenario, peer, key)
                add(f"{scenario}: {row} {key} / {peer}",
                    a / b if a is not None and b is not None else None, 1.0, True, strict=True)
    return checks


def render_issue15(checks: Sequence[dict[str, Any]]) -> str:
    """
    Issue 15's targets as a short list.
    """
    lines = ["", "== issue 15 targets (same-run ratios)"]
    for c in checks:
        op = ">" if c["strict"] else ">=" if c["higher_is_better"] else "<="
        lines.append(f"  {c['verdict']:<7} {c['target']:<58} measured {fmt(c['measured'], 2):>8}"
                     f"  target {op} {c['limit']}")
    if len(lines) == 2:
        lines.append("  (needs --compiled and/or a Python peer in --targets)")
    return "\n".join(lines)


def environment(bench: Bench) -> dict[str, Any]:
    """
    What the run ran on, for the JSON record.
    """
    def version(argv: list[str]) -> str | None:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() \
            else None

    model = None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    t = bench.tools
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_model": model, "cpus": os.cpu_count(),
        "balancer_core": bench.balancer_core, "load_core": bench.load_core,
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "loadavg_at_end": os.getloadavg(),
        "wrk": version([t["wrk"], "-v"]) if t["wrk"] else None,
        "nginx": version([t["nginx"], "-v"]) if t["nginx"] else None,
        "haproxy": version([t["haproxy"], "-v"]) if t["haproxy"] else None,
        "upstreams": bench.upstream_kind,
        "git": version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(version(["git", "-C", str(REPO), "status", "--porcelain",
                                   "--untracked-files=no"])),
        "baseline": ({"rev": bench.baseline_rev, "commit": bench.baseline_commit}
                     if bench.baseline_rev else None),
        "balancebeam_imported_from": bench.imported_from,
    }


# --------------------------------------------------------------------------- main


# --------------------------------------------------------------------------- --workers (issue 14)

WORKERS_TITLE = "GET / (100-byte body), 50 keep-alive connections, balancebeam --workers N"
WORKERS_CPU_LIMIT = 1.10  # CPU us/request with N workers at most 10% above 1 worker
WORKERS_SHARE_RANGE = (0.35, 0.65)  # each of 2 workers' share of wrk's connections


def parse_worker_counts(text: str) -> list[int]:
    """
    C{--workers 1,2}: the worker counts to compare (the first is the reference).

    @raise argparse.ArgumentTypeError: unless whole numbers of at least 1.
    """
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list such as 1,2") from None
    if not counts or any(count < 1 for count in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of distinct counts such as 1,2")
    return counts


def worker_pids(master: int) -> list[int]:
    """
    The worker processes of a balancebeam master (its children running
    C{balancebeam.workers.worker}).
    """
    pids = []
    for pid in _children(master):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"balancebeam.workers.worker" in f.read():
                    pids.append(pid)
        except OSError:
            continue
    return sorted(pids)


def established_connections(pids: Sequence[int], port: int) -> dict[int, int]:
    """
    How many established TCP connections with local C{port} each process
    holds: its socket descriptors that /proc/net/tcp lists as established.
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
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    counts: dict[int, int] = {}
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


def workers_argv(bench: Bench, port: int, workers: int) -> list[str]:
    """
    balancebeam with C{--workers N}: like L{Bench.balancebeam_argv} (active
    health checks on) but without the memory rate limiter, which several
    workers cannot share; the same for every N, so the rows compare.
    """
    argv = bench.balancebeam_argv(port, bench.upstream_ports)
    limit = argv.index("--max-requests-per-minute")
    del argv[limit:limit + 2]
    return argv + ["--workers", str(workers)]


def start_workers_target(bench: Bench, workers: int) -> Target:
    """
    Start balancebeam with C{workers} workers on the balancer core (the
    master and its workers share it) and wait until every worker is ready.

    @raise TargetFailure: it did not come up.
    """
    name = f"balancebeam-w{workers}"
    port = free_port(bench.used_ports)
    argv = workers_argv(bench, port, workers)
    target = bench._start(name, "balancebeam", port, argv, env=bench.balancebeam_env())
    if workers > 1:
        deadline = time.monotonic() + 60
        log = bench.procs.log_path(target.log_name)
        while log.read_text(errors="replace").count(" is ready (pid ") < workers:
            assert target.proc is not None
            if time.monotonic() > deadline or target.proc.poll() is not None:
                bench.procs.stop(target.proc)
                raise TargetFailure(f"{name}: not every worker became ready:\n"
                                    f"{bench.procs.log_tail(target.log_name)}")
            time.sleep(0.05)
    return target


def measure_workers_round(bench: Bench, target: Target, workers: int) -> dict[str, Any]:
    """
    One wrk round, with each worker's share of wrk's connections sampled in
    the middle of it.
    """
    duration = bench.settings.duration
    shares: dict[int, int] = {}
    master = target.proc.pid if target.proc else 0

    def sample() -> None:
        time.sleep(duration / 2)
        shares.update(established_connections(worker_pids(master) or [master], target.port))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = bench.measure_wrk(target, "/", duration)
    sampler.join()
    total = sum(shares.values())
    result["workers"] = workers
    result["connections_by_worker"] = [shares[pid] for pid in sorted(shares)]
    counts = result["connections_by_worker"]
    result["shares"] = [count / total for count in counts] if total else []
    return result


def run_workers_bench(bench: Bench) -> None:
    """
    The C{--workers} comparison: balancebeam with each worker count in turn,
    in alternating rounds, on the same upstreams.
    """
    counts: list[int] = bench.args.workers
    bench.start_upstreams()
    say(f"upstreams ({bench.upstream_kind}) on ports {bench.upstream_ports}")
    for workers in counts:
        bench.add_target(f"workers-{workers}",
                         functools.partial(start_workers_target, bench, workers))
    bench.warm_up()
    say(f"scenario workers: {WORKERS_TITLE}")
    began = time.monotonic()
    keys = [f"workers-{workers}" for workers in counts]
    for round_no in range(bench.settings.rounds):
        for key in bench.rotation(keys, round_no):
            workers = int(key.split("-")[1])
            target = bench.live(key)
            row = f"{workers} worker{'s' if workers > 1 else ''}"
            if target is None:
                bench.record_failure("workers", row, round_no, bench.targets[key].failed or "?")
                continue
            result = measure_workers_round(bench, target, workers)
            result["alive_after"] = bench.after(target, key)
            bench.record("workers", row, round_no, result)
            say(f"  connections per worker: {result['connections_by_worker']}")
    bench.timings["workers"] = round(time.monotonic() - began, 1)


def render_workers(measurements: Sequence[dict[str, Any]],
                   summary: dict[str, dict[str, dict[str, Any]]], core: int | None) -> str:
    """
    The C{--workers} table and its two checks: CPU us/request within 10% of
    one worker's, and each of two workers' share of connections in 35-65%.
    """
    rows = summary.get("workers", {})
    if not rows:
        return "\nno --workers measurement"
    out = ["", f"== workers: {WORKERS_TITLE} (balancer processes on core {core})"]
    reference = next(iter(rows.values())).get("cpu_us_per_req")
    headers = ["workers", "req/s", "p99 ms", "errors", "CPU us/req", "x first", "shares %"]
    lines = []
    checks = []
    for row, a in rows.items():
        rounds = [m for m in measurements if m.get("scenario") == "workers"
                  and m.get("target") == row and "shares" in m]
        shares = [share for m in rounds for share in m["shares"]]
        ratio = (a["cpu_us_per_req"] / reference
                 if a.get("cpu_us_per_req") and reference else None)
        per_round = " | ".join("/".join(f"{share * 100:.0f}" for share in m["shares"])
                               for m in rounds)
        lines.append([row, fmt(a.get("rps"), 0), fmt(a.get("p99_ms"), 2),
                      str(a.get("errors", "-")), fmt(a.get("cpu_us_per_req"), 1),
                      fmt(ratio, 3), per_round or "-"])
        workers = rounds[0]["workers"] if rounds else 1
        if workers > 1 and ratio is not None:
            checks.append(f"CPU us/request, {row} over the first row: {ratio:.3f} "
                          f"({'ok' if ratio <= WORKERS_CPU_LIMIT else 'ABOVE'} the limit "
                          f"{WORKERS_CPU_LIMIT:.2f})")
        if workers == 2 and shares:
            low, high = WORKERS_SHARE_RANGE
            inside = all(low <= share <= high for share in shares)
            checks.append(f"each of {row}' share of connections: {min(shares) * 100:.0f}% to "
                          f"{max(shares) * 100:.0f}% ({'ok' if inside else 'OUTSIDE'} "
                          f"{low * 100:.0f}-{high * 100:.0f}%)")
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out.append("  ".join(h.rjust(w) if i else h.ljust(w)
                         for i, (h, w) in enumerate(zip(headers, widths))))
    for line in lines:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))))
    out += ["", "checks:"] + [f"  - {check}" for check in checks]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command line.
    """
    p = argparse.ArgumentParser(
        description="Benchmark balancebeam against nginx and HAProxy (see doc/benchmark.md).")
    p.add_argument("--quick", action="store_true",
                   help="1 round of 1 s per scenario (development and CI smoke); "
                        "well under a minute")
    p.add_argument("--duration", type=int, help="seconds per wrk round (default 3, quick 1)")
    p.add_argument("--rounds", type=int,
                   help="alternating rounds per scenario (default 3, quick 1)")
    p.add_argument("--connections", type=int, default=50,
                   help="wrk connections (default 50)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--idle-connections", type=int, default=1000,
                   help="idle connections in the idle scenario (default 1000)")
    p.add_argument("--download-mib", type=int, default=100,
                   help="size of the streamed download in MiB (default 100)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)} (default "
                        f"{','.join(DEFAULT_TARGETS)}; the Python peers "
                        f"{','.join(PEER_TARGETS)} are installed from PyPI into --venv-dir "
                        "on first use)")
    p.add_argument("--compiled", action="store_true",
                   help="also run the current tree built in place with mypyc, as target "
                        "'balancebeam:compiled' (built in the temp dir by --balancer-python, "
                        "which needs mypy and mypy-zope)")
    p.add_argument("--pypy", nargs="?", const="auto", metavar="PYTHON",
                   help="also run the current tree on PyPy as target 'balancebeam:pypy': "
                        "PYTHON, or without it a virtualenv of pypy3 set up in --venv-dir")
    p.add_argument("--pypy-warmup", type=int, default=10, metavar="SECONDS",
                   help="load balancebeam:pypy this long after each start (JIT; default 10)")
    p.add_argument("--venv-dir", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                   / "balancebeam-bench",
                   help="where the peers' and PyPy's virtual environments are kept "
                        "(default ~/.cache/balancebeam-bench)")
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma-separated subset of {','.join(ALL_SCENARIOS)} "
                        "(default: all but profile)")
    p.add_argument("--profile", action="store_true",
                   help="also sample balancebeam with py-spy under GET / keep-alive and "
                        "print where the time goes (adds the 'profile' scenario)")
    p.add_argument("--balancer-arg", action="append", default=[], metavar="ARGS",
                   help="extra balancebeam arguments, split shell-style; repeatable, e.g. "
                        "--balancer-arg='--strategy p2c' (a --reactor is passed to twistd)")
    p.add_argument("--balancer-python", metavar="PATH",
                   help="the Python that runs balancebeam (default: this one), e.g. a PyPy "
                        "virtualenv's python; it needs the project's dependencies")
    p.add_argument("--balancer-warmup", type=int, default=0, metavar="SECONDS",
                   help="load balancebeam for this long after each start, before measuring "
                        "(for a JIT such as PyPy's; default 0)")
    p.add_argument("--twistd-arg", action="append", default=[], metavar="ARGS",
                   help="extra twistd arguments before 'balancebeam', "
                        "e.g. --twistd-arg='--reactor epoll'")
    p.add_argument("--balancer-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for every balancebeam process (current tree, "
                        "variants, baseline); repeatable, e.g. "
                        "--balancer-env BALANCEBEAM_TWISTED_INTERNALS=off")
    p.add_argument("--variant", action="append", default=[],
                   metavar="NAME:ENV=VAL[,ENV=VAL] [ARGS]",
                   help="also run the current tree as target 'balancebeam:NAME' with these "
                        "environment variables and/or balancebeam arguments (a --reactor among "
                        "them goes to twistd and replaces --twistd-arg's), in the same rounds; "
                        "repeatable, e.g. --variant 'plain:BALANCEBEAM_TWISTED_INTERNALS=off' "
                        "--variant 'stock:--reactor=epoll'")
    p.add_argument("--baseline", metavar="REV",
                   help="also run the balancebeam of git revision REV (e.g. HEAD~1), exported "
                        "with git archive, as target 'balancebeam@REV' in the same rounds, and "
                        "report CPU us/request of the current tree against it")
    p.add_argument("--pool-off-args", metavar="ARGS",
                   help="balancebeam arguments that turn its upstream pool off (default: "
                        "guessed from --help, --pool-max-idle-per-upstream 0)")
    p.add_argument("--nginx-keepalive", type=int, default=32, metavar="N",
                   help="idle upstream connections nginx keeps "
                        "(its upstream keepalive; default 32)")
    p.add_argument("--haproxy-reuse", choices=("safe", "aggressive", "always"), default="always",
                   help="HAProxy http-reuse mode (default always, like nginx's keepalive pool)")
    for tool in ("wrk", "nginx", "haproxy"):
        p.add_argument(f"--{tool}", metavar="PATH",
                       help=f"the {tool} binary (default: found on PATH or in /usr/sbin; "
                            f"--{tool}= pretends it is missing)")
    p.add_argument("--cores", help="BALANCER,LOAD cores to pin to (default: first two available)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--nice", type=int, default=-10,
                   help="scheduling niceness for this script and everything it starts "
                        "(default -10, so other work on the machine disturbs less; needs root, "
                        "ignored otherwise; 0 leaves it alone)")
    p.add_argument("--output", type=Path, help="JSON output (default bench/results/<time>.json)")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temp dir (configs and logs) and print its path")
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when a target failed to start, died or returned errors")
    p.add_argument("--workers", type=parse_worker_counts, metavar="N,M",
                   help="instead of the scenarios: balancebeam alone with each of these "
                        "--workers counts (e.g. 1,2) under wrk GET /, in alternating rounds; "
                        "reports req/s, CPU us/request and each worker's share of connections "
                        "(see doc/workers.md)")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.profile and "profile" not in args.scenarios:
        args.scenarios.append("profile")
    for t in args.targets:
        if t not in ALL_TARGETS:
            p.error(f"unknown target {t!r}; choose from {', '.join(ALL_TARGETS)}")
    for s in args.scenarios:
        if s not in ALL_SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(ALL_SCENARIOS)}")
    if args.cores is not None:
        parts = args.cores.split(",")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            p.error("--cores takes two core numbers, BALANCER,LOAD (e.g. 0,1)")
    for name in ("duration", "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1")
    env: list[tuple[str, str]] = []
    for text in args.balancer_env:
        try:
            env.append(parse_env_assignment(text))
        except ValueError as exc:
            p.error(f"--balancer-env: {exc}")
    args.balancer_env = env
    variants: list[Variant] = []
    for spec in args.variant:
        try:
            variant = parse_variant(spec)
        except ValueError as exc:
            p.error(f"--variant: {exc}")
        if any(v.name == variant.name for v in variants):
            p.error(f"--variant: the name {variant.name!r} is given twice")
        variants.append(variant)
    args.variant = variants
    args.baseline_commit = None
    if (variants or args.baseline or args.compiled or args.pypy) \
            and "balancebeam" not in args.targets:
        p.error("--variant, --baseline, --compiled and --pypy compare with the balancebeam "
                "target: "
                "keep it in --targets")
    if args.baseline is not None:
        if not args.baseline or any(c.isspace() for c in args.baseline):
            p.error(f"--baseline: {args.baseline!r} is not a git revision")
        args.baseline_commit = resolve_revision(args.baseline)
        if args.baseline_commit is None:
            p.error(f"--baseline: git does not know the revision {args.baseline!r} "
                    f"in {REPO}")
    return args


def raise_fd_limit() -> None:
    """
    Raise the open-files soft limit to the hard limit (children inherit it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark; return the exit status.
    """
    args = parse_args(argv)
    started = time.monotonic()
    raise_fd_limit()
    if not find_tool("wrk", args.wrk):
        say(f"wrk is not installed; it is required. Install the tools with: {APT_LINE}")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="balancebeam-bench-"))
    bench = Bench(args, tmp)
    output = args.output or BENCH_DIR / "results" / time.strftime(
        f"%Y%m%dT%H%M%SZ-{'quick' if args.quick else 'full'}.json", time.gmtime())
    bench.profile_path = output.with_suffix(".profile.txt")
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except PermissionError:
            bench.notes.append(f"could not set niceness {args.nice} (not root): "
                               "other work on the machine may disturb the figures more")
    if bench.load_core is not None:
        os.sched_setaffinity(0, {bench.load_core})  # this script is load: wrk's core
    for name in ("nginx", "haproxy"):
        if not bench.tools[name]:
            say(f"{name} is not installed: its target is skipped ({APT_LINE})")
    if not bench.tools["taskset"] and bench.load_core is not None:
        bench.notes.append("taskset not found: pinned with sched_setaffinity instead")

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(bench.procs.stop_all)
    status = 0
    harness_error: str | None = None
    try:
        say(f"{'quick' if args.quick else 'full'} run; temp dir {tmp}; balancer core "
            f"{bench.balancer_core}, load core {bench.load_core}")
        if args.workers:
            run_workers_bench(bench)
        else:
            bench.run()
    except HarnessError as exc:
        harness_error = str(exc)
        say(f"HARNESS ERROR: {exc}")
        status = 1
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        harness_error = "interrupted"
        status = 130
    except Exception:
        harness_error = traceback.format_exc()
        say(f"HARNESS ERROR (a bug in bench/run.py):\n{harness_error}")
        status = 1
    finally:
        bench.procs.stop_all()
        if args.keep_temp:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = aggregate(bench.measurements)
    add_ratios(summary, bench.measurements)
    checks = check_targets(summary)
    others = [(f"variant {v.name}", v.key) for v in bench.variants]
    if bench.baseline_key:
        others.append(("baseline", bench.baseline_key))
    comparisons = compare_to_current(summary, bench.measurements, others)
    s = bench.settings
    report = render_tables(summary, s.rounds, s.duration)
    print(f"balancebeam benchmark ({'quick' if args.quick else 'full'}), "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"balancer on core {bench.balancer_core}, wrk/upstreams on core {bench.load_core}, "
          f"wrk -c{s.connections} -t{s.wrk_threads}")
    if bench.balancer_args or bench.twistd_args:
        print(f"balancebeam extra args: twistd {bench.twistd_args} balancer {bench.balancer_args}")
    print(f"balancebeam runs on: {bench.balancer_python} "
          f"(warm-up {bench.balancer_warmup}s after each start)")
    if bench.balancer_env:
        assignments = [f"{k}={v}" for k, v in bench.balancer_env.items()]
        print(f"balancebeam environment: {shlex.join(assignments)}")
    for variant in bench.variants:
        print(f"variant {variant.key}: environment "
              f"{shlex.join(f'{k}={v}' for k, v in variant.env.items()) or '-'}, twistd "
              f"{shlex.join(variant.twistd_args) or '-'}, balancebeam "
              f"{shlex.join(variant.balancer_args) or '-'}")
    if bench.baseline_key:
        print(f"baseline {bench.baseline_key}: commit {bench.baseline_commit}, exported with "
              "git archive, run from its export (cwd and first on PYTHONPATH)")
    for key, build in bench.builds.items():
        print(f"build of {key}: {build}")
    print(report)
    cache = cache_report(summary, bench.measurements)
    if cache["checks"]:
        print(render_cache_report(cache))
    if args.workers:
        print(render_workers(bench.measurements, summary, bench.balancer_core))
    if others:
        print(render_comparisons(comparisons))
    warnings = saturation_warnings(summary)
    if "balancebeam" in summary.get("small", {}) or "balancebeam" in summary.get("idle", {}):
        print(render_checks(checks))
    tls_checks = check_tls_targets(summary)
    if any(c["measured"] is not None for c in tls_checks):
        print(render_tls_checks(tls_checks))
    issue15 = check_issue15(summary)
    if issue15:
        print(render_issue15(issue15))
    if bench.profile:
        print(render_profile(bench.profile))
    if warnings:
        print("\nwarnings:")
        for warning in warnings:
            print("  - " + warning)
    if bench.notes:
        print("\nnotes:")
        for note in bench.notes:
            print("  - " + note.replace("\n", "\n    "))
    elapsed = time.monotonic() - started
    print(f"\ntotal time {elapsed:.0f}s")

    output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "mode": "quick" if args.quick else "full", "argv": sys.argv[1:],
        "settings": s.__dict__, "environment": environment(bench),
        "commands": {k: t.command for k, t in bench.targets.items()},
        "summary": summary, "checks": checks, "tls_checks": tls_checks, "warnings": warnings,
        "comparisons": comparisons, "cache": cache, "issue15": issue15, "builds": bench.builds,
        "variants": [v.__dict__ for v in bench.variants],
        "measurements": bench.measurements,
        "notes": bench.notes, "harness_error": harness_error, "elapsed_s": round(elapsed, 1),
        "scenario_seconds": bench.timings, "profile": bench.profile,
    }
    output.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"JSON written to {output}")
    if status:
        return status
    if args.strict:
        bad = [k for k, t in bench.targets.items() if t.failed] + [
            f"{sc}/{row}" for sc, rows in summary.items() for row, a in rows.items()
            if a.get("errors") or a.get("died") or a.get("failed_rounds")]
        if bad:
            say(f"--strict: problems with {', '.join(bad)}")
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
