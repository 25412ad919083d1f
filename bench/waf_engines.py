"""
Measure the two ModSecurity bindings on this machine, with the same rules.

For each binding (cffi to Debian's libmodsecurity3, the PyPI libmodsecurity
wheel) this prints: the CPU time per inspected request (a benign GET of C{/}
and a 2 KiB form POST, at paranoia levels 1 and 2, and with no rules), whether
two threads inspect faster than one (they can only when the binding lets go
of the GIL), the longest stall another Python thread sees while one thread
inspects, and whether a CRS detection needing a deep PCRE backtrack is found
with C{SecPcreMatchLimit} 1000 and 500000.

Run from the repository root: C{python3 bench/waf_engines.py [--json FILE]}.
The CRS is Debian's v3.3.4 (C{apt-get install modsecurity-crs}), without
C{REQUEST-910-IP-REPUTATION.conf}, which the wheel cannot load (it is built
without GeoIP). Timings on a shared machine are noisy: each figure is the
best of three rounds, and the thread figures are ratios within one run (the
two-thread speedup needs two idle cores; the GIL check does not).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from balancebeam.waf import rules  # noqa: E402
from balancebeam.waf.engine import IInspector, InspectedRequest, RuleSource  # noqa: E402

BROWSER_HEADERS = [
    (b"Host", b"shop.example.com"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"en-GB,en;q=0.5"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Cookie", b"session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; theme=dark"),
    (b"Connection", b"keep-alive"),
]


def form_body(size: int = 2048) -> bytes:
    """
    A urlencoded form of about C{size} bytes with natural-language values.
    """
    sentence = (
        "Thanks for the quick delivery, the parcel arrived on Tuesday and "
        "everything was in good order. I would order again. "
    )
    fields = {"name": "Alice Martin", "email": "alice@example.org", "subject": "Order 12345"}
    message = ""
    while len(urllib.parse.urlencode({**fields, "message": message})) < size:
        message += sentence
    return urllib.parse.urlencode({**fields, "message": message}).encode()[:size]


def requests() -> dict[str, InspectedRequest]:
    """
    The requests measured: C{get} (a browser GET of C{/}) and C{post} (a 2 KiB form).
    """
    body = form_body()
    post_headers = [
        *BROWSER_HEADERS,
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    return {
        "get": InspectedRequest("b1", "192.0.2.10", "GET", "/", "1.1", BROWSER_HEADERS, b""),
        "post": InspectedRequest(
            "b2", "192.0.2.10", "POST", "/contact", "1.1", post_headers, body
        ),
    }


def crs_files() -> list[str]:
    """
    Debian's CRS in loading order, without the GeoIP-dependent file.
    """
    return [f for f in rules.system_crs_files() if "REQUEST-910" not in f]


def load(
    binding: str, files: list[str], paranoia: int, pcre_limit: int | None = None
) -> IInspector:
    """
    Build an engine of C{binding} (C{cffi} or C{wheel}) with C{files}.
    """
    sources = rules.rule_sources(files, paranoia, 5, 128 * 1024)
    if pcre_limit is not None:
        settings = sources[0].text or ""
        sources[0] = RuleSource(
            sources[0].name, settings.replace(str(rules.PCRE_MATCH_LIMIT), str(pcre_limit))
        )
    if binding == "cffi":
        from balancebeam.waf.modsec_cffi import CffiModSecurity

        return CffiModSecurity.load(sources)
    from balancebeam.waf.modsec_wheel import WheelModSecurity

    return WheelModSecurity.load(sources)


def cpu_us_per_call(call: Callable[[], object], count: int, rounds: int = 3) -> float:
    """
    The best, over C{rounds}, of the process CPU microseconds per call.
    """
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(count):
            call()
        best = min(best, (time.process_time() - start) / count * 1e6)
    return best


def thread_speedup(engine: IInspector, request: InspectedRequest, count: int) -> float:
    """
    Wall time of C{count} inspections on one thread divided by the wall
    time of the same number split over two threads (about 2 when the GIL
    is released on two free cores, about 1 when it is held).
    """

    def work(n: int) -> None:
        for _ in range(n):
            engine.inspect(request)

    start = time.perf_counter()
    work(count)
    one = time.perf_counter() - start
    threads = [threading.Thread(target=work, args=(count // 2,)) for _ in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    two = time.perf_counter() - start
    return one / two


def longest_stall_ms(engine: IInspector, request: InspectedRequest, count: int) -> float:
    """
    The longest gap, in ms, between two iterations of a busy loop on the
    main thread while another thread runs C{count} inspections: what a
    reactor thread would see.
    """
    done = threading.Event()

    def work() -> None:
        for _ in range(count):
            engine.inspect(request)
        done.set()

    worker = threading.Thread(target=work)
    last = time.perf_counter()
    longest = 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    worker.join()
    return longest * 1000


def lets_other_threads_run(engine: IInspector, request: InspectedRequest) -> bool:
    """
    Whether another thread gets the GIL while C{engine} inspects (a
    deterministic check, unaffected by the machine's load).

    With the switch interval at 1000 s, a thread only gives up the GIL by
    blocking or by calling C code that releases it. The main thread waits for
    the worker to start; the worker then inspects. If the engine releases the
    GIL, the main thread runs during the inspection and sees it unfinished;
    if not, it only runs once the worker has finished.
    """
    entered = threading.Event()
    done = [False]

    def work() -> None:
        entered.set()
        engine.inspect(request)
        done[0] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        entered.wait()
        unfinished = not done[0]
    finally:
        sys.setswitchinterval(old)
    worker.join()
    return unfinished


PCRE_PAYLOAD = '"=' + "1" * 1000 + "a" * 1000 + "'"
"""A CRS v3.3.4 rule 942180 (paranoia level 2) payload that needs a deep backtrack."""


def detects_942180(engine: IInspector) -> bool:
    """
    Whether rule 942180 fires on L{PCRE_PAYLOAD} in a form field.
    """
    body = ("x=" + urllib.parse.quote(PCRE_PAYLOAD)).encode()
    headers = [
        (b"Host", b"example.com"),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    request = InspectedRequest("p", "192.0.2.10", "POST", "/", "1.1", headers, body)
    return 942180 in engine.inspect(request).rule_ids


def measure(binding: str, count: int) -> dict[str, object]:
    """
    Every figure for one binding.
    """
    files = crs_files()
    reqs = requests()
    result: dict[str, object] = {}
    start = time.perf_counter()
    engines = {pl: load(binding, files, pl) for pl in (1, 2)}
    result["load_s_each"] = round((time.perf_counter() - start) / 2, 3)
    result["name"] = engines[1].name
    bare = load(binding, [], 1)
    for kind, request in reqs.items():
        result[f"no_rules_{kind}_us"] = round(
            cpu_us_per_call(functools.partial(bare.inspect, request), count)
        )
        for pl, engine in engines.items():
            verdict = engine.inspect(request)
            assert verdict.status is None, (binding, kind, pl, verdict)
            result[f"pl{pl}_{kind}_us"] = round(
                cpu_us_per_call(functools.partial(engine.inspect, request), count)
            )
    result["other_thread_ran_during_inspection"] = (
        f"{sum(lets_other_threads_run(engines[1], reqs['post']) for _ in range(20))}/20"
    )
    result["two_threads_speedup_pl1_post"] = round(
        thread_speedup(engines[1], reqs["post"], count), 2
    )
    result["longest_stall_ms_pl1_post"] = round(
        longest_stall_ms(engines[1], reqs["post"], count // 2), 2
    )
    for limit in (1000, rules.PCRE_MATCH_LIMIT):
        result[f"942180_found_limit_{limit}"] = detects_942180(load(binding, files, 2, limit))
    return result


NGINX_MODULE = "/usr/lib/nginx/modules/ngx_http_modsecurity_module.so"
"""Debian's C{libnginx-mod-http-modsecurity}: nginx with the same libmodsecurity3."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_cpu(pid: int) -> float:
    """
    User plus system CPU seconds of process C{pid}.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_cpu_us(count: int) -> dict[str, object]:
    """
    The CPU time of one nginx process (master_process off) per request, with
    ModSecurity and the same rules at paranoia levels 1 and 2, and without
    ModSecurity, for the same two requests (sent over one keep-alive
    connection; only nginx's CPU time is counted).
    """
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx) or not os.path.exists(NGINX_MODULE):
        return {"error": "needs nginx and libnginx-mod-http-modsecurity"}
    result: dict[str, object] = {}
    reqs = requests()
    for label, paranoia in (("off", 0), ("pl1", 1), ("pl2", 2)):
        work = tempfile.mkdtemp(prefix="waf-nginx-")
        try:
            os.makedirs(os.path.join(work, "www"))
            with open(os.path.join(work, "www", "index.html"), "w") as f:
                f.write("<html><body>hello</body></html>\n")
            with open(os.path.join(work, "www", "contact"), "w") as f:
                f.write("thanks\n")
            includes = []
            sources = rules.rule_sources(crs_files(), max(paranoia, 1), 5, 131072)
            for n, source in enumerate(sources):
                if source.text is None:
                    includes.append(f"Include {source.name}")
                else:
                    path = os.path.join(work, f"generated-{n}.conf")
                    with open(path, "w") as f:
                        f.write(source.text)
                    includes.append(f"Include {path}")
            with open(os.path.join(work, "main.conf"), "w") as f:
                f.write("\n".join(includes) + "\n")
            port = _free_port()
            modsec = "on" if paranoia else "off"
            conf = f"""
daemon off; master_process off; worker_processes 1;
pid {work}/nginx.pid; error_log {work}/error.log error;
load_module {NGINX_MODULE};
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_buffer_size 256k;
  modsecurity {modsec};
  modsecurity_rules_file {work}/main.conf;
  server {{
    listen 127.0.0.1:{port};
    root {work}/www;
    location / {{ error_page 405 =200 $uri; }}
  }}
}}
"""
            with open(os.path.join(work, "nginx.conf"), "w") as f:
                f.write(conf)
            proc = subprocess.Popen(
                [nginx, "-p", work, "-c", os.path.join(work, "nginx.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), 0.2).close()
                        break
                    except OSError as e:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise RuntimeError(f"nginx did not start: {work}/error.log") from e
                        time.sleep(0.05)
                for kind, request in reqs.items():
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    headers = {k.decode(): v.decode() for k, v in request.headers}
                    headers.pop("Connection", None)
                    statuses: set[int] = set()

                    def send(
                        c: http.client.HTTPConnection = conn,
                        r: InspectedRequest = request,
                        h: dict[str, str] = headers,
                        seen: set[int] = statuses,
                    ) -> None:
                        c.request(r.method, r.target, r.body or None, h)
                        response = c.getresponse()
                        response.read()
                        seen.add(response.status)

                    for _ in range(20):
                        send()
                    best = float("inf")
                    for _ in range(3):
                        start = _process_cpu(proc.pid)
                        for _ in range(count):
                            send()
                        best = min(best, (_process_cpu(proc.pid) - start) / count * 1e6)
                    conn.close()
                    result[f"{label}_{kind}_us"] = round(best)
                    result[f"{label}_{kind}_statuses"] = sorted(statuses)
            finally:
                proc.terminate()
                proc.wait(10)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    """
    Measure each binding that is installed and print the results as JSON.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="inspections per figure")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--binding", action="append", choices=["cffi", "wheel"])
    parser.add_argument(
        "--no-nginx", action="store_true", help="skip nginx with ModSecurity (same rules)"
    )
    args = parser.parse_args()
    results = {}
    for binding in args.binding or ["cffi", "wheel"]:
        try:
            results[binding] = measure(binding, args.count)
        except ImportError as e:
            results[binding] = {"error": f"not installed: {e}"}
        print(binding, json.dumps(results[binding], indent=1), flush=True)
    if not args.no_nginx:
        # nginx's CPU time is read in clock ticks (10 ms): more requests for resolution.
        results["nginx"] = nginx_cpu_us(args.count * 5)
        print("nginx", json.dumps(results["nginx"], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
