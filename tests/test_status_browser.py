"""
The status page in a real browser: Debian's headless Chromium loads
C{/status} from a balancer on loopback while clients keep sending requests,
and the test reads the DOM the page's JavaScript rendered.

Without Chromium these tests are skipped, except in CI (C{CI} set), where
that is a failure: C{.ci/run} installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from html.parser import HTMLParser
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from balancebeam.config import BalancerConfig, parse_upstream
from balancebeam.service import BalancerService
from tests.test_integration import build_request
from tests.upstreams import UpstreamServer, connect_client

reactor: Any = _global_reactor

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium() -> str:
    """
    The path of Debian's Chromium.

    @raise SkipTest: when it is missing, except in CI, where it is a failure.
    """
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found is not None:
            return found
    reason = "chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        raise RuntimeError(f"{reason}; in CI the status page must be checked in a browser")
    raise SkipTest(reason)


class _Collect(ProcessProtocol):
    """
    Collects a process's standard output and tells when it ends.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = 0 if isinstance(value, ProcessDone) else -1
        if isinstance(value, ProcessTerminated) and value.exitCode is not None:
            code = value.exitCode
        self.ended.callback(code)


class StatusDOM(HTMLParser):
    """
    What the test reads from the rendered page: the upstream rows and their
    cells, the summary cards, the refresh count, the embedded first data.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.row_classes: dict[str, str] = {}
        self.cards: dict[str, str] = {}
        self.changed: list[str] = []
        self.refreshes = 0
        self.initial: dict[str, Any] = {}
        self._row: str | None = None
        self._cell: str | None = None
        self._card: str | None = None
        self._in_initial = False
        self._initial_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.refreshes = int(values.get("data-refreshes") or 0)
        if tag == "tr" and values.get("data-upstream"):
            self._row = values["data-upstream"]
            assert self._row is not None
            self.rows[self._row] = {}
            self.row_classes[self._row] = values.get("class") or ""
        if tag == "td" and self._row is not None:
            self._cell = values.get("data-label")
        key = values.get("data-key")
        if key is not None and "changed" in (values.get("class") or "").split():
            self.changed.append(key)
        if tag == "div" and "value" in (values.get("class") or "").split() and key is not None:
            self._card = key
        if tag == "script" and values.get("id") == "initial":
            self._in_initial = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = None
        if tag == "div":
            self._card = None
        if tag == "script" and self._in_initial:
            self._in_initial = False
            self.initial = json.loads(self._initial_text)

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self.rows[self._row][self._cell] = data
        if self._card is not None:
            self.cards[self._card] = data
        if self._in_initial:
            self._initial_text += data


class StatusPageBrowserTests(TestCase):
    """
    C{/status} rendered by Chromium while traffic runs.
    """

    timeout = 120

    async def run_chromium(self, *arguments: str) -> bytes:
        """
        Run headless Chromium with C{arguments} (and a profile of its own);
        the reactor keeps serving meanwhile.

        @return: its standard output.
        """
        executable = chromium()
        profile = tempfile.mkdtemp(prefix="balancebeam-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        process = _Collect()
        transport = reactor.spawnProcess(
            process,
            executable,
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
            env={"HOME": profile, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        timer = reactor.callLater(90, transport.signalProcess, "KILL")
        code = await process.ended
        if timer.active():
            timer.cancel()
        self.assertEqual(code, 0, process.err[-2000:])
        return process.out

    async def start(self) -> tuple[BalancerService, list[UpstreamServer], int]:
        """
        Three upstreams and a balancer with its admin on loopback.

        @return: the balancer, the upstreams and the admin port.
        """
        servers = [UpstreamServer(reactor, f"u{i}") for i in range(3)]
        for server in servers:
            server.start()
            self.addCleanup(server.stop)
        config = BalancerConfig(
            upstreams=tuple(parse_upstream(s.address) for s in servers),
            listen=("tcp:0:interface=127.0.0.1",),
            admin_bind="tcp:0:interface=127.0.0.1",
            active_health_check_interval=0.0,
            strategy="round-robin",
        )
        service = BalancerService(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        address = service.admin_ports[0].getHost()
        assert isinstance(address, IPv4Address)
        return service, servers, address.port

    def traffic(self, service: BalancerService, running: list[bool]) -> Deferred[Any]:
        """
        Four keep-alive clients sending requests until C{running[0]} is
        false (at most 20000 each).
        """
        port = service.ports[0].getHost()
        assert isinstance(port, IPv4Address)

        async def one() -> None:
            client = await connect_client(self, reactor, port.port)
            for number in range(20000):
                if not running[0]:
                    return
                before = len(client.responses)
                client.send(build_request(b"GET", b"/page%d" % number), b"GET")
                await client.wait_responses(before + 1)
                assert client.responses[-1].status == 200

        return gatherResults([Deferred.fromCoroutine(one()) for _ in range(4)])

    async def test_rows_and_changing_counters(self) -> None:
        """
        The rendered page has one row per upstream, shown up, and its
        JavaScript refreshed the counters from C{status.json} several times:
        the requests shown exceed those embedded when the page was served.
        """
        service, servers, admin_port = await self.start()
        running = [True]
        load = self.traffic(service, running)
        try:
            dom = await self.run_chromium(
                "--virtual-time-budget=6000",
                "--dump-dom",
                f"http://127.0.0.1:{admin_port}/status?refresh=0.5",
            )
        finally:
            running[0] = False
            await load
        page = StatusDOM()
        page.feed(dom.decode("utf-8"))
        names = [s.address for s in servers]
        self.assertEqual(sorted(page.rows), sorted(names))
        self.assertEqual({page.row_classes[n] for n in names}, {"up"})
        self.assertEqual({page.rows[n]["State"] for n in names}, {"up"})
        self.assertGreaterEqual(page.refreshes, 4)
        initial_rows = {row["name"]: row["requests"] for row in page.initial["upstreams"]}
        shown = {name: int(page.rows[name]["Requests"]) for name in names}
        self.assertTrue(all(shown[n] > initial_rows[n] for n in names), (shown, initial_rows))
        self.assertGreater(int(page.cards["requests"]), page.initial["requests"])
        self.assertLessEqual(int(page.cards["requests"]), service.stats.requests)
        self.assertEqual(page.rows[names[0]]["4xx"], "0")
        # The last refresh marked the counters that moved since the one before.
        self.assertIn("requests", page.changed)

    async def test_screenshot(self) -> None:
        """
        Chromium takes a screenshot of the page, at desktop and phone sizes
        (C{BALANCEBEAM_STATUS_SCREENSHOT} names where to keep the desktop one,
        as C{doc/status.png} was made).
        """
        service, _, admin_port = await self.start()
        running = [True]
        load = self.traffic(service, running)
        directory = tempfile.mkdtemp(prefix="balancebeam-shot-")
        self.addCleanup(shutil.rmtree, directory)
        shots = []
        try:
            for size in ("1100,520", "390,844"):
                path = os.path.join(directory, f"status-{size.replace(',', 'x')}.png")
                await self.run_chromium(
                    "--virtual-time-budget=3000",
                    f"--window-size={size}",
                    f"--screenshot={path}",
                    f"http://127.0.0.1:{admin_port}/status?refresh=0.5",
                )
                shots.append(path)
        finally:
            running[0] = False
            await load
        for path in shots:
            with open(path, "rb") as file:
                data = file.read()
            self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
            self.assertGreater(len(data), 5000)
        keep = os.environ.get("BALANCEBEAM_STATUS_SCREENSHOT")
        if keep:
            shutil.copy(shots[0], keep)
            shutil.copy(shots[1], keep.replace(".png", "-phone.png"))
