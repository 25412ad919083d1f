#!/usr/bin/env python3
"""
The web application firewall under load, the whole balancer (issue 11).

Run from anywhere::

    python3 bench/waf_load.py                          # 3 rounds of 4 s, about 5 minutes
    python3 bench/waf_load.py --quick                  # smoke run, under a minute
    python3 bench/waf_load.py --rounds 5 --json out.json

One nginx upstream (C{return 200} for any path and method) and six balancers
in front of it, all started once and measured in the same alternating
rounds:

  - C{bb-off}, C{bb-pl1}, C{bb-pl2}: balancebeam with C{--waf off}, and with
    C{--waf block} at paranoia levels 1 and 2 (Debian's CRS, the system rules
    balancebeam loads by default; the engine binding balancebeam picks, cffi
    to Debian's libmodsecurity3 when it loads);
  - C{nginx}, C{nginx-pl1}, C{nginx-pl2}: nginx as load balancer, without
    ModSecurity and with Debian's C{libnginx-mod-http-modsecurity} running
    exactly the rule text balancebeam loads (the same
    L{balancebeam.waf.rules.rule_sources}, written to files).

Two measurements:

  1. CPU per request (user+system time of the balancer's process from
     C{/proc}, over the requests wrk completed), req/s and latency, for a
     browser-like C{GET /} and a 2 KiB urlencoded form POST (the requests of
     C{bench/waf_engines.py}), wrk C{-t1 -c20}. A benign request answered
     other than 2xx/3xx is a false positive; the report counts them.
  2. Other connections while the firewall is busy: wrk saturates a target
     with the form POST while a rate-limited probe (this script, asyncio,
     keep-alive connections, C{--probe-rate} requests per second per kind)
     measures, on other connections: (i) C{GET /} on the same listener
     (inspected, but cheap) and (ii) requests the firewall never sees, on the
     same process (balancebeam: its admin listener's C{/healthz}, served by
     the same reactor; nginx: a second C{server} with C{modsecurity off}
     answering C{return 200}). A third probe goes straight to the upstream,
     as the harness's own noise floor. Each probe is measured idle and busy,
     for the WAF targets and, as a control, for their no-WAF counterparts
     under the same POST load.

The balancers are pinned to the first core, wrk, the upstream and this
script to the second (like C{bench/run.py}, whose process helpers this
script uses). Everything listens on 127.0.0.1 on free ports; every process
started is stopped by PID on exit. Needs C{wrk}, C{nginx},
C{libnginx-mod-http-modsecurity} (for the nginx rows), C{modsecurity-crs} and
the balancebeam WAF dependencies (C{bash .ci/install-waf.sh}).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(REPO))

from run import (  # noqa: E402
    CLK_TCK,
    HOST,
    HarnessError,
    ProcessGroup,
    TargetFailure,
    cpu_ticks,
    find_tool,
    free_port,
    nginx_command,
    say,
    tree_pids,
    wait_ready,
    wrk_result,
)
from waf_engines import BROWSER_HEADERS, NGINX_MODULE, form_body  # noqa: E402

from balancebeam.waf import rules  # noqa: E402

UPSTREAM_BODY = "waf-load-upstream-ok\n"
POST_PATH = "/contact"
ATTACK_PATH = "/?id=1%27%20OR%201%3D1--"
"""A classic SQL injection (CRS 942100, libinjection): a WAF target must answer 403."""
BODY_LIMIT = 128 * 1024
"""balancebeam's default C{--waf-body-limit}, used for nginx's rule text too."""
KINDS = ("get", "post")
KIND_TITLES = {
    "get": "GET / (browser headers)",
    "post": f"POST {POST_PATH} (2 KiB application/x-www-form-urlencoded form, browser headers)",
}
PROBES = ("inspected", "uninspected", "upstream")
PROBE_TITLES = {
    "inspected": "GET / on the same listener (inspected, cheap)",
    "uninspected": "not inspected, same process (balancebeam admin /healthz; "
                   "nginx server with modsecurity off)",
    "upstream": "straight to the upstream (harness noise floor)",
}

# wrk: browser-like headers (and the body for the POST), then one parseable line.
WRK_LUA = r"""
wrk.method = METHOD
wrk.path = PATH
BODY_LINE
HEADER_LINES
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\": %.0f, \"duration_us\": %.0f, \"connect\": %.0f, " ..
    "\"read\": %.0f, \"write\": %.0f, \"status\": %.0f, \"timeout\": %.0f, " ..
    "\"p50_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def lua_string(text: str) -> str:
    """
    A Lua string literal for ASCII C{text} (JSON's escapes are Lua's).
    """
    return json.dumps(text)


def request_headers(kind: str) -> list[tuple[str, str]]:
    """
    The headers of the benign request C{kind} (C{get} or C{post}), as a
    browser sends them; C{Host} is a name (a numeric one scores in the CRS).
    """
    headers = [(k.decode(), v.decode()) for k, v in BROWSER_HEADERS]
    if kind == "post":
        headers += [("Content-Type", "application/x-www-form-urlencoded"),
                    ("Content-Length", str(len(form_body())))]
    return headers


def wrk_script(kind: str) -> str:
    """
    The wrk Lua script of request C{kind}.
    """
    body = form_body().decode("ascii") if kind == "post" else None
    lines = [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}"
             for k, v in request_headers(kind) if k != "Content-Length"]
    return (WRK_LUA.replace("METHOD", lua_string("POST" if body else "GET"))
            .replace("PATH", lua_string(POST_PATH if body else "/"))
            .replace("BODY_LINE", f"wrk.body = {lua_string(body)}" if body else "")
            .replace("HEADER_LINES", "\n".join(lines)))


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """
    One balancer under measurement.

    @ivar key: its row name (C{bb-pl1}, C{nginx-pl2}, ...).
    @ivar program: C{balancebeam} or C{nginx}.
    @ivar waf: C{off}, C{pl1} or C{pl2}.
    @ivar port: the listener the traffic goes to.
    @ivar other_port: the uninspected listener of the same process
        (balancebeam's admin, nginx's C{modsecurity off} server).
    """

    key: str
    program: str
    waf: str
    port: int
    other_port: int
    proc: subprocess.Popen[bytes]
    log_name: str
    command: list[str] = field(default_factory=list)

    def pids(self) -> list[int]:
        """
        The process and its descendants (none here: nginx runs as one process).
        """
        return tree_pids(self.proc.pid)


class WafLoad:
    """
    Starts the upstream and the targets, runs the rounds, keeps the measurements.
    """

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.used_ports: set[int] = set()
        self.tools = {name: find_tool(name, None) for name in ("wrk", "nginx", "taskset")}
        if not self.tools["wrk"]:
            raise HarnessError("wrk is missing (apt-get install -y wrk)")
        if not self.tools["nginx"]:
            raise HarnessError("nginx is missing (apt-get install -y nginx): it is the upstream")
        cores = sorted(os.sched_getaffinity(0))
        self.notes: list[str] = []
        self.lb_core: int | None
        self.load_core: int | None
        if len(cores) >= 2:
            self.lb_core, self.load_core = cores[0], cores[1]
        else:
            self.lb_core = self.load_core = None
            self.notes.append("not pinned: fewer than 2 CPUs available")
        self.procs = ProcessGroup(tmp, self.tools["taskset"])
        self.lua = {kind: tmp / f"{kind}.lua" for kind in KINDS}
        for kind, path in self.lua.items():
            path.write_text(wrk_script(kind))
        self.upstream_port = 0
        self.targets: dict[str, Target] = {}
        self.failed: dict[str, str] = {}
        self.load_rows: list[dict[str, Any]] = []
        self.probe_rows: list[dict[str, Any]] = []
        self.checks: dict[str, dict[str, Any]] = {}
        self.waf_counters: dict[str, dict[str, float]] = {}
        self.logged: dict[str, int] = {}

    # ----------------------------------------------------------------- starting

    def nginx_conf(self, name: str, http_body: str, module: bool = False) -> list[str]:
        """
        Write an nginx configuration (L{nginx_command}, with ModSecurity's
        module loaded if C{module}) and return its command line.
        """
        load = f"load_module {NGINX_MODULE};\n" if module else ""
        return nginx_command(str(self.tools["nginx"]), self.tmp / name,
                             "    client_body_buffer_size 256k;\n" + http_body, load)

    def start_upstream(self) -> None:
        """
        nginx on the load core answering 200 with a short body to any path and method.
        """
        port = free_port(self.used_ports)
        argv = self.nginx_conf("upstream", f"""    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{UPSTREAM_BODY.strip()}\\n";
        }}
    }}""")
        proc = self.procs.spawn("upstream", argv, self.load_core)
        try:
            wait_up(port, proc, self.procs, "upstream")
        except TargetFailure as exc:
            raise HarnessError(f"the upstream did not start: {exc}") from None
        self.upstream_port = port

    def spawn_nginx(self, key: str, paranoia: int) -> tuple[Target, float]:
        """
        nginx as load balancer (upstream keep-alive, HTTP/1.1), with ModSecurity
        and balancebeam's rule text at C{paranoia} (0: without the module),
        plus a second server with ModSecurity off answering by itself.
        """
        port, other = free_port(self.used_ports), free_port(self.used_ports)
        modsec = off = ""
        if paranoia:
            main = self.write_rules(key, paranoia)
            modsec = f"        modsecurity on;\n        modsecurity_rules_file {main};"
            off = "        modsecurity off;"
        argv = self.nginx_conf(key, f"""    upstream backend {{
        server {HOST}:{self.upstream_port};
        keepalive 32;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
{modsec}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_max_temp_file_size 0;
        }}
    }}
    server {{
        listen {HOST}:{other};
{off}
        location / {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
    }}""", module=bool(paranoia))
        proc = self.procs.spawn(key, argv, self.lb_core)
        waf = f"pl{paranoia}" if paranoia else "off"
        return Target(key, "nginx", waf, port, other, proc, key, argv), time.monotonic()

    def write_rules(self, key: str, paranoia: int) -> Path:
        """
        The rules balancebeam loads at C{paranoia}, as nginx include files;
        returns the main file.
        """
        prefix = self.tmp / key
        prefix.mkdir(parents=True, exist_ok=True)
        includes = []
        sources = rules.rule_sources(rules.system_crs_files(), paranoia, 5, BODY_LIMIT)
        for index, source in enumerate(sources):
            if source.text is None:
                includes.append(f"Include {source.name}")
            else:
                path = prefix / f"generated-{index}.conf"
                path.write_text(source.text)
                includes.append(f"Include {path}")
        main = prefix / "modsecurity.conf"
        main.write_text("\n".join(includes) + "\n")
        return main

    def spawn_balancebeam(self, key: str, paranoia: int) -> tuple[Target, float]:
        """
        balancebeam (twistd in the foreground, this checkout) with the
        firewall off or blocking at C{paranoia}, and an admin listener.
        """
        port, admin = free_port(self.used_ports), free_port(self.used_ports)
        argv = [self.args.balancer_python, "-c",
                "import sys; sys.argv[0] = 'twistd'; "
                "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "balancebeam", "--bind", f"{HOST}:{port}",
                "--upstream", f"{HOST}:{self.upstream_port}", "--admin-bind", f"{HOST}:{admin}"]
        if paranoia:
            argv += ["--waf", "block", "--waf-paranoia", str(paranoia)]
        else:
            argv += ["--waf", "off"]
        argv += self.args.balancer_arg
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        proc = self.procs.spawn(key, argv, self.lb_core, env=env, cwd=REPO)
        waf = f"pl{paranoia}" if paranoia else "off"
        return Target(key, "balancebeam", waf, port, admin, proc, key, argv), time.monotonic()

    def start_targets(self) -> None:
        """
        Start every target at once (the rules load in parallel), then wait for each.
        """
        modsec = os.path.exists(NGINX_MODULE)
        if not modsec:
            self.notes.append(f"{NGINX_MODULE} is missing (apt-get install -y "
                              "libnginx-mod-http-modsecurity): nginx-pl1 and nginx-pl2 skipped")
        pending: list[tuple[Target, float]] = []
        for key, paranoia in (("bb-off", 0), ("bb-pl1", 1), ("bb-pl2", 2)):
            pending.append(self.spawn_balancebeam(key, paranoia))
        for key, paranoia in (("nginx", 0), ("nginx-pl1", 1), ("nginx-pl2", 2)):
            if paranoia and not modsec:
                continue
            pending.append(self.spawn_nginx(key, paranoia))
        for target, started in pending:
            try:
                wait_up(target.port, target.proc, self.procs, target.log_name, timeout=90)
                wait_up(target.other_port, target.proc, self.procs, target.log_name,
                        path="/healthz" if target.program == "balancebeam" else "/")
            except TargetFailure as exc:
                say(f"{target.key}: FAILED to start: {exc}")
                self.failed[target.key] = str(exc).splitlines()[0]
                self.notes.append(f"{target.key} did not start: {exc}")
                self.procs.stop(target.proc)
                continue
            self.targets[target.key] = target
            say(f"started {target.key} on port {target.port} (pid {target.proc.pid}, "
                f"up {time.monotonic() - started:.1f}s after spawn)")

    def live(self, key: str) -> Target | None:
        """
        The target if it is still running; a dead one is noted and dropped.
        """
        target = self.targets.get(key)
        if target is None:
            return None
        if target.proc.poll() is not None:
            reason = f"exited with status {target.proc.returncode}"
            self.failed[key] = reason
            self.notes.append(f"{key} {reason}:\n{self.procs.log_tail(target.log_name)}")
            say(f"{key} {reason}; skipped from now on")
            del self.targets[key]
            return None
        return target

    # ----------------------------------------------------------------- checks

    def check_answers(self) -> None:
        """
        One benign GET, one benign POST and one SQL injection per target:
        the statuses (a WAF target must answer the attack 403, every
        target the benign requests 200 with the upstream's body).
        """
        body = form_body()
        for key, target in list(self.targets.items()):
            result: dict[str, Any] = {}
            for name, method, path, payload, kind in (
                    ("get", "GET", "/", None, "get"),
                    ("post", "POST", POST_PATH, body, "post"),
                    ("attack", "GET", ATTACK_PATH, None, "get")):
                try:
                    status, text = http_request(target.port, method, path,
                                                dict(request_headers(kind)), payload)
                except OSError as exc:
                    result[name] = f"error: {exc}"
                    continue
                result[name] = status
                if name != "attack" and (status != 200 or text != UPSTREAM_BODY.encode()):
                    self.notes.append(f"{key}: benign {name} answered {status} "
                                      f"{text[:80]!r}")
            expected = 403 if target.waf != "off" else 200
            if result.get("attack") != expected:
                self.notes.append(f"{key}: the SQL injection was answered {result.get('attack')}, "
                                  f"expected {expected}")
            self.checks[key] = result
            say(f"check {key}: {result}")

    def warm_up(self) -> None:
        """
        One short wrk run of each request kind per target (pools, caches, code paths).
        """
        for key in list(self.targets):
            target = self.live(key)
            if target is None:
                continue
            for kind in KINDS:
                try:
                    self.run_wrk(target.port, kind, self.args.connections, 1)
                except HarnessError as exc:
                    say(f"warm-up of {key} failed: {exc}")

    # ----------------------------------------------------------------- measuring

    def start_wrk(self, port: int, kind: str, connections: int,
                  duration: int) -> subprocess.Popen[bytes]:
        """
        Start wrk on the load core.
        """
        argv = [str(self.tools["wrk"]), "-t", "1", "-c", str(connections),
                "-d", f"{duration}s", "--timeout", "5s", "-s", str(self.lua[kind]),
                f"http://{HOST}:{port}/"]
        self.procs.log_path("wrk").write_bytes(b"")
        return self.procs.spawn("wrk", argv, self.load_core)

    def finish_wrk(self, proc: subprocess.Popen[bytes], duration: int) -> dict[str, Any]:
        """
        Wait for wrk and parse its result line.

        @raise HarnessError: wrk did not finish or printed no result.
        """
        raw = wrk_result(self.procs, proc, self.procs.log_path("wrk"), duration)
        seconds = raw["duration_us"] / 1e6
        errors = {k: int(raw[k]) for k in ("connect", "read", "write", "timeout")}
        return {
            "requests": int(raw["requests"]), "seconds": round(seconds, 3),
            "rps": raw["requests"] / seconds if seconds else 0.0,
            "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000,
            "non_2xx_3xx": int(raw["status"]), "socket_errors": sum(errors.values()),
        }

    def run_wrk(self, port: int, kind: str, connections: int, duration: int) -> dict[str, Any]:
        """
        One wrk run, to the end.
        """
        return self.finish_wrk(self.start_wrk(port, kind, connections, duration), duration)

    def measure_load(self, target: Target, kind: str, round_no: int) -> None:
        """
        One wrk round on a target, with the target's CPU time.
        """
        pids = target.pids()
        ticks = cpu_ticks(pids)
        result = self.run_wrk(target.port, kind, self.args.connections, self.args.duration)
        cpu_us = (cpu_ticks(pids) - ticks) * 1e6 / CLK_TCK
        result.update({
            "target": target.key, "kind": kind, "round": round_no,
            "cpu_us_per_req": cpu_us / result["requests"] if result["requests"] else None,
            "cpu_util": cpu_us / 1e6 / result["seconds"] if result["seconds"] else None,
        })
        self.load_rows.append(result)
        say(f"  {kind:<4} {target.key:<10} r{round_no} {result['rps']:>8.0f} req/s "
            f"p99 {result['p99_ms']:7.2f} ms  cpu {fmt(result['cpu_us_per_req'])} us/req "
            f"non-2xx {result['non_2xx_3xx']} errors {result['socket_errors']}")

    def probe_specs(self, target: Target) -> dict[str, tuple[int, str]]:
        """
        The probe kinds' (port, path) for a target.
        """
        other_path = "/healthz" if target.program == "balancebeam" else "/"
        return {"inspected": (target.port, "/"),
                "uninspected": (target.other_port, other_path),
                "upstream": (self.upstream_port, "/")}

    def measure_probes(self, target: Target, busy: bool, round_no: int) -> None:
        """
        Run the probes on a target, alone or while wrk saturates it with the form POST.
        """
        duration = self.args.probe_duration
        # wrk runs 2 s longer than the probes: 1 s to ramp up before, 1 s or more after.
        wrk_duration = math.ceil(duration) + 2
        wrk: subprocess.Popen[bytes] | None = None
        pids = target.pids()
        ticks = cpu_ticks(pids)
        started = time.monotonic()
        if busy:
            wrk = self.start_wrk(target.port, "post", self.args.busy_connections, wrk_duration)
            time.sleep(1.0)
        results = asyncio.run(run_probes(self.probe_specs(target), self.args.probe_rate,
                                         duration, self.args.probe_connections))
        heavy: dict[str, Any] = {}
        if wrk is not None:
            heavy = self.finish_wrk(wrk, wrk_duration)
        cpu_util = (cpu_ticks(pids) - ticks) / CLK_TCK / (time.monotonic() - started)
        for probe, result in results.items():
            row = {"target": target.key, "busy": busy, "round": round_no, "probe": probe,
                   **result.summary(), "target_cpu_util": cpu_util}
            if heavy:
                row["heavy_rps"] = heavy["rps"]
                row["heavy_non_2xx_3xx"] = heavy["non_2xx_3xx"]
                row["heavy_socket_errors"] = heavy["socket_errors"]
            self.probe_rows.append(row)
            row["samples_ms"] = result.latencies_ms
        inspected = results["inspected"].summary()
        uninspected = results["uninspected"].summary()
        say(f"  probe {target.key:<10} r{round_no} {'busy' if busy else 'idle'} "
            f"p99 inspected {fmt(inspected['p99_ms'], 2)} ms, uninspected "
            f"{fmt(uninspected['p99_ms'], 2)} ms"
            + (f"; POST load {heavy['rps']:.0f} req/s" if heavy else ""))

    def read_counters(self) -> None:
        """
        balancebeam's firewall counters from its admin C{/metrics}, and how
        many lines each target logged about the firewall.
        """
        for key, target in self.targets.items():
            if target.program == "balancebeam":
                try:
                    status, text = http_request(target.other_port, "GET", "/metrics", {}, None)
                except OSError:
                    continue
                counters: dict[str, float] = {}
                for line in text.decode(errors="replace").splitlines():
                    if "waf" in line and not line.startswith("#"):
                        name, _, value = line.rpartition(" ")
                        try:
                            counters[name] = float(value)
                        except ValueError:
                            pass
                self.waf_counters[key] = counters
                marker = "waf "
            else:
                marker = "ModSecurity"
            path = (self.procs.log_path(target.log_name) if target.program == "balancebeam"
                    else self.tmp / key / "error.log")
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            self.logged[key] = sum(marker in line for line in lines)

    # ----------------------------------------------------------------- the run

    def run(self) -> None:
        """
        Start everything, check, warm up, then alternate the rounds.
        """
        self.start_upstream()
        say(f"upstream nginx on port {self.upstream_port}")
        self.start_targets()
        if not self.targets:
            raise HarnessError("no target started")
        self.check_answers()
        self.warm_up()
        load_keys = [k for k in ("bb-off", "bb-pl1", "bb-pl2", "nginx", "nginx-pl1",
                                 "nginx-pl2") if k in self.targets]
        probe_keys = [k for k in ("bb-pl1", "nginx-pl1", "bb-off", "nginx")
                      if k in self.targets and (k in ("bb-pl1", "nginx-pl1")
                                                or not self.args.no_control)]
        for round_no in range(1, self.args.rounds + 1):
            say(f"round {round_no}/{self.args.rounds}: CPU per request")
            for key in rotate(load_keys, round_no):
                for kind in rotate(list(KINDS), round_no):
                    target = self.live(key)
                    if target is not None:
                        self.measure_load(target, kind, round_no)
            say(f"round {round_no}/{self.args.rounds}: probes idle and busy")
            for key in rotate(probe_keys, round_no):
                for busy in rotate([False, True], round_no):
                    target = self.live(key)
                    if target is not None:
                        self.measure_probes(target, busy, round_no)
        self.read_counters()


def rotate(keys: Sequence[Any], round_no: int) -> list[Any]:
    """
    C{keys} rotated by the round number, so that no target always goes first.
    """
    shift = round_no % len(keys) if keys else 0
    return list(keys[shift:]) + list(keys[:shift])


# --------------------------------------------------------------------------- HTTP


def http_request(port: int, method: str, path: str, headers: dict[str, str],
                 body: bytes | None, timeout: float = 5.0) -> tuple[int, bytes]:
    """
    One request on a fresh connection: the status and the body.

    @raise OSError: on connection problems or timeout.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as exc:
        raise OSError(str(exc)) from exc
    finally:
        conn.close()


def wait_up(port: int, proc: subprocess.Popen[bytes], procs: ProcessGroup, name: str,
            path: str = "/", timeout: float = 20.0) -> None:
    """
    Wait until a browser-like C{GET path} on C{port} answers 200 (a bare
    request would score at paranoia level 2).

    @raise TargetFailure: the process exited or never answered.
    """
    def status_of(port: int, path: str, timeout: float) -> int:
        return http_request(port, "GET", path, dict(request_headers("get")), None, timeout)[0]

    wait_ready(port, proc, procs, name, timeout, path, status_of)


@dataclass
class ProbeResult:
    """
    What one probe kind saw: each request's latency in ms, from the moment
    it was due (so time spent waiting for a free connection counts), and
    the statuses and errors.
    """

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    last_error: str = ""
    waited: int = 0

    def summary(self) -> dict[str, Any]:
        """
        Count, percentiles, non-200 answers and errors.
        """
        values = sorted(self.latencies_ms)
        return {
            "count": len(values),
            "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
            "max_ms": values[-1] if values else None,
            "non_200": sum(n for s, n in self.statuses.items() if s != 200),
            "errors": self.errors, "last_error": self.last_error,
            "waited_for_connection": self.waited,
        }


def percentile(values: Sequence[float], pct: float) -> float | None:
    """
    The nearest-rank percentile of sorted C{values}.
    """
    if not values:
        return None
    rank = max(1, -(-len(values) * pct // 100))
    return values[int(min(rank, len(values))) - 1]


async def read_response(reader: asyncio.StreamReader) -> int:
    """
    Read one response (Content-Length or chunked) and return its status.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def probe_stream(port: int, path: str, rate: float, duration: float,
                       connections: int) -> ProbeResult:
    """
    C{GET path} at C{rate} per second for C{duration} seconds over up to
    C{connections} keep-alive connections (a request due while all are busy
    waits for one, and that wait counts in its latency).
    """
    loop = asyncio.get_running_loop()
    result = ProbeResult()
    headers = "".join(f"{k}: {v}\r\n" for k, v in request_headers("get"))
    request = f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
        asyncio.Queue())
    for _ in range(connections):
        idle.put_nowait(None)  # opened on first use

    async def one(due: float) -> None:
        if idle.empty():
            result.waited += 1
        conn = await idle.get()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            reader, writer = conn
            writer.write(request)
            status = await asyncio.wait_for(read_response(reader), 5)
            result.latencies_ms.append((loop.time() - due) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError,
                IndexError) as exc:
            result.errors += 1
            result.last_error = repr(exc)
            if conn is not None:
                conn[1].close()
            conn = None
        idle.put_nowait(conn)

    tasks = []
    start = loop.time() + 0.05
    for index in range(int(rate * duration)):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # Due now: the timer's own lateness (up to a millisecond) is the
        # client's, not the server's, and is left out.
        tasks.append(asyncio.ensure_future(one(loop.time())))
    await asyncio.gather(*tasks)
    while not idle.empty():
        conn = idle.get_nowait()
        if conn is not None:
            conn[1].close()
    return result


async def run_probes(specs: dict[str, tuple[int, str]], rate: float, duration: float,
                     connections: int) -> dict[str, ProbeResult]:
    """
    Every probe kind at once.
    """
    names = list(specs)
    results = await asyncio.gather(*(probe_stream(specs[n][0], specs[n][1], rate, duration,
                                                  connections) for n in names))
    return dict(zip(names, results))


# --------------------------------------------------------------------------- reporting


def fmt(value: Any, digits: int = 0) -> str:
    """
    A number for the tables, or C{-}.
    """
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def median(values: Sequence[float | None]) -> float | None:
    """
    The median of the values present.
    """
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise_load(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """
    Per request kind and target: medians over the rounds, sums of errors,
    and the comparisons (what the firewall adds over the same program
    without it; balancebeam over nginx at the same level).
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in KINDS:
        per_target: dict[str, dict[str, Any]] = {}
        for key in ("bb-off", "bb-pl1", "bb-pl2", "nginx", "nginx-pl1", "nginx-pl2"):
            mine = [r for r in rows if r["kind"] == kind and r["target"] == key]
            if not mine:
                continue
            cpu = [r["cpu_us_per_req"] for r in mine]
            per_target[key] = {
                "rounds": len(mine),
                "cpu_us_per_req": median(cpu),
                "cpu_us_per_req_min": min((c for c in cpu if c is not None), default=None),
                "cpu_us_per_req_max": max((c for c in cpu if c is not None), default=None),
                "rps": median([r["rps"] for r in mine]),
                "p50_ms": median([r["p50_ms"] for r in mine]),
                "p99_ms": median([r["p99_ms"] for r in mine]),
                "cpu_util": median([r["cpu_util"] for r in mine]),
                "requests": sum(r["requests"] for r in mine),
                "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in mine),
                "socket_errors": sum(r["socket_errors"] for r in mine),
            }
        for key, agg in per_target.items():
            program, _, level = key.partition("-")
            base = per_target.get("bb-off" if program == "bb" else "nginx")
            if level and level != "off" and base and agg["cpu_us_per_req"] is not None:
                agg["waf_adds_us"] = agg["cpu_us_per_req"] - base["cpu_us_per_req"]
            if program == "bb":
                # Paired by round (the same minute of a drifting machine), then the median.
                peer_key = "nginx" if level == "off" else f"nginx-{level}"
                ratios = []
                for row in rows:
                    if row["kind"] != kind or row["target"] != key:
                        continue
                    for other in rows:
                        if (other["kind"] == kind and other["target"] == peer_key
                                and other["round"] == row["round"]
                                and row["cpu_us_per_req"] and other["cpu_us_per_req"]):
                            ratios.append(row["cpu_us_per_req"] / other["cpu_us_per_req"])
                agg["cpu_x_nginx"] = median(ratios)
        summary[kind] = per_target
    return summary


def summarise_probes(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """
    Per target and probe kind: the percentiles of every sample of every
    round pooled, idle and busy, and the medians of the per-round p99s.
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        summary.setdefault(row["target"], {}).setdefault(row["probe"], {})
    for key, probes in summary.items():
        for probe, agg in probes.items():
            for state, busy in (("idle", False), ("busy", True)):
                mine = [r for r in rows if r["target"] == key and r["probe"] == probe
                        and r["busy"] == busy]
                samples = sorted(s for r in mine for s in r["samples_ms"])
                agg[state] = {
                    "count": len(samples),
                    "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
                    "max_ms": samples[-1] if samples else None,
                    "p99_ms_per_round": [r["p99_ms"] for r in mine],
                    "non_200": sum(r["non_200"] for r in mine),
                    "errors": sum(r["errors"] for r in mine),
                    "waited_for_connection": sum(r["waited_for_connection"] for r in mine),
                    "target_cpu_util": median([r["target_cpu_util"] for r in mine]),
                }
                if busy:
                    agg[state]["heavy_rps"] = median([r.get("heavy_rps") for r in mine])
                    agg[state]["heavy_non_2xx_3xx"] = sum(r.get("heavy_non_2xx_3xx", 0)
                                                          for r in mine)
            idle_p99, busy_p99 = agg["idle"]["p99_ms"], agg["busy"]["p99_ms"]
            if idle_p99 is not None and busy_p99 is not None:
                agg["p99_added_ms"] = busy_p99 - idle_p99
    return summary


def table(headers: list[str], lines: list[list[str]]) -> str:
    """
    A Markdown table, columns padded.
    """
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(headers)]

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [row(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [row(line) for line in lines]
    return "\n".join(out)


def render(load: dict[str, dict[str, dict[str, Any]]],
           probes: dict[str, dict[str, dict[str, Any]]], bench: WafLoad) -> str:
    """
    The report: one table per request kind, one for the probes, then the
    checks, counters and notes.
    """
    out: list[str] = []
    for kind in KINDS:
        rows = load.get(kind, {})
        out.append(f"\n{KIND_TITLES[kind]}, wrk -t1 -c{bench.args.connections}, "
                   f"{bench.args.rounds} x {bench.args.duration} s, medians\n")
        lines = []
        for key, a in rows.items():
            spread = f"{fmt(a['cpu_us_per_req_min'])}-{fmt(a['cpu_us_per_req_max'])}"
            lines.append([key, fmt(a["cpu_us_per_req"]), spread, fmt(a.get("waf_adds_us")),
                          fmt(a.get("cpu_x_nginx"), 2), fmt(a["rps"]), fmt(a["p50_ms"], 2),
                          fmt(a["p99_ms"], 2), fmt(a["cpu_util"], 2),
                          str(a["non_2xx_3xx"]), str(a["socket_errors"])])
        out.append(table(["target", "CPU us/req", "min-max", "WAF adds us",
                          "x nginx same WAF", "req/s", "p50 ms", "p99 ms", "CPU util",
                          "non-2xx", "sock err"],
                         lines))
    out.append(f"\nProbe latency on other connections, {bench.args.probe_rate:g} req/s per "
               f"probe over {bench.args.probe_connections} keep-alive connections, "
               f"{bench.args.probe_duration:g} s per round; busy = wrk -t1 "
               f"-c{bench.args.busy_connections} form POSTs on the same target; "
               "percentiles of all rounds' samples pooled\n")
    lines = []
    for key, per_probe in probes.items():
        for probe in PROBES:
            found = per_probe.get(probe)
            if found is None:
                continue
            idle, busy = found["idle"], found["busy"]
            lines.append([key, probe, fmt(idle["p50_ms"], 2), fmt(idle["p99_ms"], 2),
                          fmt(idle["max_ms"], 1), fmt(busy["p50_ms"], 2),
                          fmt(busy["p99_ms"], 2), fmt(busy["max_ms"], 1),
                          fmt(found.get("p99_added_ms"), 2), fmt(busy.get("heavy_rps")),
                          fmt(busy["target_cpu_util"], 2),
                          f"{idle['non_200'] + busy['non_200']}/"
                          f"{idle['errors'] + busy['errors']}",
                          str(busy["waited_for_connection"])])
    out.append(table(["target", "probe", "idle p50", "idle p99", "idle max", "busy p50",
                      "busy p99", "busy max", "p99 added", "POST load req/s",
                      "busy CPU util", "non-200/err", "busy: waited for conn"], lines))
    out.append("\nProbes: " + "; ".join(f"{p}: {t}" for p, t in PROBE_TITLES.items()))
    out.append("\nAnswers before the run (benign GET, benign POST, SQL injection):")
    for key, result in bench.checks.items():
        out.append(f"  {key:<10} {result}")
    if bench.waf_counters:
        out.append("\nbalancebeam firewall counters at the end (admin /metrics):")
        for key, counters in bench.waf_counters.items():
            text = ", ".join(f"{n}={v:.0f}" for n, v in counters.items() if v)
            out.append(f"  {key:<10} {text or '(all zero)'}")
    out.append("\nLog lines about the firewall (balancebeam 'waf ...' events, nginx "
               "'ModSecurity' errors): " + ", ".join(f"{k} {v}" for k, v in bench.logged.items()))
    if bench.notes:
        out.append("\nNotes:")
        out += [f"  - {note}" for note in bench.notes]
    return "\n".join(out)


def versions() -> dict[str, str]:
    """
    The Debian package versions involved, and the Python and kernel.
    """
    result = {"python": platform.python_version(), "kernel": platform.release()}
    try:
        text = subprocess.run(
            ["dpkg-query", "-W", "nginx", "libnginx-mod-http-modsecurity", "libmodsecurity3",
             "modsecurity-crs", "wrk"], capture_output=True, text=True, timeout=30).stdout
        for line in text.splitlines():
            name, _, version = line.partition("\t")
            result[name] = version
    except (OSError, subprocess.TimeoutExpired):
        pass
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        description="The firewall under load: balancebeam --waf off/block PL1/PL2 and "
                    "nginx without/with ModSecurity, CPU per request and other "
                    "connections' latency while the firewall is busy.")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3; --quick 1)")
    parser.add_argument("--duration", type=int,
                        help="seconds of wrk per target and request kind (default 4; --quick 1)")
    parser.add_argument("--probe-duration", type=float,
                        help="seconds of probing, idle and busy (default: --duration)")
    parser.add_argument("--probe-rate", type=float, default=100.0,
                        help="probe requests per second, per probe kind (default 100)")
    parser.add_argument("--probe-connections", type=int, default=16,
                        help="keep-alive connections per probe kind, opened as needed "
                             "(default 16)")
    parser.add_argument("--connections", type=int, default=20,
                        help="wrk connections for the CPU measurements (default 20)")
    parser.add_argument("--busy-connections", type=int, default=20,
                        help="wrk connections of the POST load that keeps the firewall busy "
                             "(default 20)")
    parser.add_argument("--no-control", action="store_true",
                        help="probe only the WAF targets, not bb-off and nginx under the "
                             "same POST load")
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    parser.add_argument("--balancer-python", default=sys.executable,
                        help="the Python running balancebeam (default: this one)")
    parser.add_argument("--balancer-arg", action="append", default=[], type=shlex.split,
                        help="more balancebeam arguments, split shell-style (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep-temp", action="store_true",
                        help="keep the temporary directory (configs, logs)")
    args = parser.parse_args(argv)
    args.balancer_arg = [word for words in args.balancer_arg for word in words]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1 if args.quick else 4)
    args.probe_duration = args.probe_duration or float(max(args.duration, 2))
    for name in ("rounds", "duration", "connections", "busy_connections",
                 "probe_connections"):
        if not 1 <= getattr(args, name) <= (1000 if "connections" in name else 60):
            parser.error(f"--{name.replace('_', '-')} is out of range")
    if not (0 < args.probe_rate <= 1000 and 0 < args.probe_duration <= 60):
        parser.error("--probe-rate must be in (0, 1000] and --probe-duration in (0, 60]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark, print the report, write the JSON.
    """
    args = parse_args(argv)
    command = "python3 bench/waf_load.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tmp = Path(tempfile.mkdtemp(prefix="waf-load-"))
    bench = WafLoad(args, tmp)
    if bench.load_core is not None:
        os.sched_setaffinity(0, {bench.load_core})  # this script (the probes) beside wrk
    status = 0
    try:
        bench.run()
    except HarnessError as exc:
        say(f"harness error: {exc}")
        status = 1
    except KeyboardInterrupt:
        say("interrupted")
        status = 130
    finally:
        bench.procs.stop_all()
    load = summarise_load(bench.load_rows)
    probes = summarise_probes(bench.probe_rows)
    print(f"\n{command}\n{date}, {os.cpu_count()} CPUs, balancers on core {bench.lb_core}, "
          f"wrk/upstream/probes on core {bench.load_core}; {time.monotonic() - started:.0f} s")
    print(render(load, probes, bench))
    if args.json:
        record = {
            "command": command, "date": date, "versions": versions(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cores": {"balancer": bench.lb_core, "load": bench.load_core},
            "targets": {k: t.command for k, t in bench.targets.items()},
            "failed": bench.failed, "checks": bench.checks, "load": load, "probes": probes,
            "waf_counters": bench.waf_counters, "logged": bench.logged, "notes": bench.notes,
            "load_rounds": bench.load_rows,
            "probe_rounds": [{k: v for k, v in r.items() if k != "samples_ms"}
                             for r in bench.probe_rows],
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"JSON written to {args.json}")
    if args.keep_temp:
        print(f"configs and logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
