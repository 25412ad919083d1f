# -*- test-case-name: tests.test_admin_master -*-
"""
The master's admin listener (C{--workers N} with C{--admin-bind}): the
single process's paths (L{balancebeam.admin.resources}), over all the
workers:

  - C{GET /metrics}, C{/status}, C{/status.json}: from fresh counters
    (L{AdminFleet.collect}: every worker is asked, for at most
    L{COLLECT_TIMEOUT} seconds), summed, under the single process's names
    and keys;
  - C{GET /healthz}: 200; C{GET /ready}: 200 when a worker is ready and an
    upstream takes requests, else 503 with the reason;
  - C{POST /upstreams/HOST:PORT/drain}, C{/disable}, C{/enable}: applied in
    every worker, and in every worker started later;
  - C{POST /cache/purge?url=URL}: purged in every worker; the answer is the
    sum of what they removed.

The same L{AdminSite} guards it (token, loopback C{Host} without a token,
cross-site posts, no request log).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from balancebeam.admin.auth import AdminToken
from balancebeam.admin.master_metrics import master_exposition
from balancebeam.admin.master_status import (
    master_status_data,
    not_ready_reason,
    render_master_page,
)
from balancebeam.admin.rate import RequestRate
from balancebeam.admin.resources import (
    ACTIONS,
    AdminPages,
    AdminSite,
    _json,
    _reply,
    purge_url,
)
from balancebeam.metrics import CONTENT_TYPE
from balancebeam.workers.counters import MasterSnapshot
from balancebeam.workers.fleet_admin import FleetAdmin, PurgeFailed

COLLECT_TIMEOUT = 1.0
"""Seconds a page waits for the workers' fresh counters."""

T = TypeVar("T")


class AdminFleet(Protocol):
    """
    What the master's admin reads and changes
    (L{balancebeam.workers.master.Master} provides it).
    """

    admin: FleetAdmin
    started_at: float | None

    def snapshot(self) -> MasterSnapshot:
        """
        The counters as last reported.
        """

    def collect(self, timeout: float = 1.0) -> Deferred[MasterSnapshot]:
        """
        Fresh counters, within C{timeout} seconds.
        """

    def has_cache(self) -> bool:
        """
        Whether the serving workers have a response cache.
        """


class MasterAdminResource(AdminPages):
    """
    Every path of the master's admin, dispatched on the path and method.
    """

    log = Logger()

    def __init__(
        self,
        fleet: AdminFleet,
        clock: Any,
        process_metrics: bool = True,
        rate: RequestRate | None = None,
        addresses: Sequence[str] = (),
    ) -> None:
        """
        @param clock: C{IReactorTime}, for the status's times.
        @param process_metrics: also export the master process's metrics.
        @param rate: the request rate the status shows, if measured.
        @param addresses: where the admin listens (filled in once it does).
        """
        super().__init__()
        self._fleet = fleet
        self._clock = clock
        self._process_metrics = process_metrics
        self._rate = rate
        self._addresses = addresses

    def _metrics(self, request: Request) -> bytes | int:
        def answer(snapshot: MasterSnapshot) -> bytes:
            body = master_exposition(
                snapshot, self._fleet.admin.states, self._fleet.started_at, self._process_metrics
            )
            return _reply(request, 200, body, CONTENT_TYPE.encode("ascii"))

        return _later(request, self._fleet.collect(COLLECT_TIMEOUT), answer)

    def _data(self, snapshot: MasterSnapshot) -> dict[str, Any]:
        rate = self._rate
        return master_status_data(
            snapshot,
            self._fleet.admin.states,
            self._clock.seconds(),
            self._fleet.started_at,
            rate.per_second() if rate is not None and rate.running else None,
            self._addresses,
        )

    def _status(self, request: Request) -> bytes | int:
        def answer(snapshot: MasterSnapshot) -> bytes:
            page = render_master_page(self._data(snapshot))
            return _reply(request, 200, page, b"text/html; charset=utf-8")

        return _later(request, self._fleet.collect(COLLECT_TIMEOUT), answer)

    def _status_json(self, request: Request) -> bytes | int:
        def answer(snapshot: MasterSnapshot) -> bytes:
            return _json(request, 200, self._data(snapshot))

        return _later(request, self._fleet.collect(COLLECT_TIMEOUT), answer)

    def _not_ready_reason(self) -> str | None:
        return not_ready_reason(self._fleet.snapshot(), self._fleet.admin.states)

    def _control(self, request: Request, name: str, action: str) -> bytes:
        state = ACTIONS.get(action)
        if state is None:
            known = ", ".join(ACTIONS)
            return _json(request, 404, {"error": f"unknown action {action!r} (known: {known})"})
        snapshot = self._fleet.snapshot()
        names = [*snapshot.upstreams_up, *snapshot.upstreams_down]
        if name not in names:
            return _json(request, 404, {"error": f"no upstream {name}", "upstreams": names})
        changed = self._fleet.admin.set_state(name, state)
        return _json(
            request,
            200,
            {
                "upstream": name,
                "admin_state": state,
                "changed": changed,
                "workers": len(snapshot.workers),
            },
        )

    def _purge(self, request: Request) -> bytes | int:
        if not self._fleet.has_cache():
            return _json(request, 404, {"error": "no cache is configured"})
        try:
            url = purge_url(request)
        except ValueError as error:
            return _json(request, 400, {"error": str(error)})

        def answer(count: int) -> bytes:
            return _json(request, 200, {"url": url, "purged": count})

        def failed(reason: Failure) -> bytes:
            reason.trap(PurgeFailed)
            self.log.error("purging {url} failed: {why}", url=url, why=str(reason.value))
            return _json(request, 500, {"error": "purging failed", "url": url})

        return _later(request, self._fleet.admin.purge(url), answer, failed)


def _later(
    request: Request,
    result: Deferred[T],
    answer: Callable[[T], bytes],
    failed: Callable[[Failure], bytes] | None = None,
) -> bytes | int:
    """
    Answer C{request} with C{answer(value)} once C{result} fires: at once
    when it has, else later (C{NOT_DONE_YET}), unless the client has gone.
    """
    answers: list[bytes] = []
    gone: list[bool] = []

    def unexpected(reason: Failure) -> bytes:
        MasterAdminResource.log.failure("the master's admin failed", reason)
        return _json(request, 500, {"error": "internal error"})

    answered: Deferred[bytes] = result.addCallback(answer)
    if failed is not None:
        answered.addErrback(failed)
    answered.addErrback(unexpected)
    answered.addCallback(answers.append)
    if answers:
        return answers[0]
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(_: object) -> None:
        if gone:
            return
        request.setHeader(b"content-length", b"%d" % len(answers[0]))
        request.write(answers[0])
        request.finish()

    answered.addCallback(write)
    return NOT_DONE_YET


def build_master_admin_site(
    fleet: AdminFleet,
    token: AdminToken,
    clock: Any,
    process_metrics: bool = True,
    rate: RequestRate | None = None,
    addresses: Sequence[str] = (),
) -> AdminSite:
    """
    The master's admin site over C{fleet} (see L{MasterAdminResource} for
    the parameters).
    """
    resource = MasterAdminResource(fleet, clock, process_metrics, rate, addresses)
    return AdminSite(resource, token, reactor=clock)
