"""
Fakes and shared set-up for the firewall's tests (this module holds no tests).

A small L{FakeExchange} stands in for the relay's exchange until it lands;
L{FakeInspector} for the engine; L{real_inspector} loads the real engine with
the real Core Rule Set once per settings, or explains what to install.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam.config import WafConfig
from balancebeam.http1.heads import RequestHead, parse_request_head
from balancebeam.interfaces import IExchange, IResponseObserver
from balancebeam.waf import build
from balancebeam.waf.engine import IInspector, InspectedRequest, Verdict


def request_head(
    method: str = "GET",
    target: str = "/",
    headers: Sequence[tuple[str, str]] = (("Host", "example.com"),),
    body: bytes | None = None,
) -> RequestHead:
    """
    A parsed request head; with C{body}, a C{Content-Length} field for it is added.
    """
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return parse_request_head("\r\n".join(lines).encode("latin-1"), 100)


@implementer(IExchange)
class FakeExchange:
    """
    One request as a filter sees it; L{read_body} answers from C{body} unless
    C{hold_body} is set, in which case the test fires C{body_reads}.

    @ivar read_limits: the C{limit} of each L{read_body} call.
    """

    scheme = b"http"
    started = 0.0

    def __init__(
        self,
        head: RequestHead,
        body: bytes = b"",
        client_ip: str = "192.0.2.7",
        request_id: str = "req-1",
        hold_body: bool = False,
    ) -> None:
        self.request = head
        self.body = body
        self.client_ip = client_ip
        self.request_id = request_id
        self.hold_body = hold_body
        self.read_limits: list[int] = []
        self.body_reads: list[Deferred[bytes | None]] = []

    def add_response_headers(self, lines: bytes) -> None:
        """
        Not used by the firewall.
        """
        raise AssertionError("the firewall adds no response headers")

    def observe(self, observer: IResponseObserver) -> None:
        """
        Not used by the firewall.
        """
        raise AssertionError("the firewall observes no response")

    def rewrite_upstream_request(
        self, remove: Any = (), add: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """
        Not used by the firewall.
        """
        raise AssertionError("the firewall rewrites no request")

    def read_body(self, limit: int) -> Deferred[bytes | None]:
        """
        The body when it is at most C{limit} bytes, else C{None}; as the
        real exchange, only once.
        """
        if self.read_limits:
            raise AssertionError("read_body called twice")
        self.read_limits.append(limit)
        if self.hold_body:
            held: Deferred[bytes | None] = Deferred()
            self.body_reads.append(held)
            return held
        return succeed(self.body if len(self.body) <= limit else None)


CLEAN = Verdict(None)
"""The verdict on a request no rule matched."""


@implementer(IInspector)
class FakeInspector:
    """
    An engine that answers with C{verdict} (or raises C{error}) and records
    what it was shown.
    """

    name = "fake"

    def __init__(
        self,
        verdict: Verdict = CLEAN,
        error: Exception | None = None,
        releases_gil: bool = True,
    ) -> None:
        self.verdict = verdict
        self.error = error
        self.releases_gil = releases_gil
        self.seen: list[InspectedRequest] = []
        self.closed = False

    def inspect(self, request: InspectedRequest) -> Verdict:
        """
        Record C{request}; answer C{verdict} or raise C{error}.
        """
        self.seen.append(request)
        if self.error is not None:
            raise self.error
        return self.verdict

    def close(self) -> None:
        """
        Remember being closed.
        """
        self.closed = True


_engines: dict[tuple[str, int, int, int, tuple[str, ...]], IInspector] = {}


def real_inspector(
    test: SynchronousTestCase,
    binding: str = "cffi",
    paranoia: int = 1,
    threshold: int = 5,
    body_limit: int = 128 * 1024,
    rules: tuple[str, ...] = (),
) -> IInspector:
    """
    The real engine with the system's Core Rule Set (or C{rules}), loaded
    once per settings.

    Where the engine or the CRS is missing the test is skipped with what to
    install, except in CI (C{CI} set), where that is a failure. The wheel's
    tests are skipped on other interpreters than CPython, which it is not
    built for.
    """
    if binding == "wheel" and platform.python_implementation() != "CPython":
        test.skipTest("the PyPI libmodsecurity wheel is built for CPython only")
    reason = build.unavailable_reason(binding)
    if reason is None and not rules:
        try:
            build.rule_files(WafConfig(mode="block"))
        except ValueError as e:
            reason = str(e)
    if reason is not None:
        message = f"{reason} (bash .ci/install-waf.sh installs it)"
        if os.environ.get("CI"):
            test.fail(message)
        test.skipTest(message)
    key = (binding, paranoia, threshold, body_limit, rules)
    if key not in _engines:
        settings = WafConfig(
            mode="block",
            rules=rules,
            paranoia=paranoia,
            anomaly_threshold=threshold,
            body_limit=body_limit,
            binding=binding,
        )
        _engines[key] = build.load_inspector(settings)
    return _engines[key]
