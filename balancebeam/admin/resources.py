# -*- test-case-name: tests.test_admin -*-
"""
The admin listener's HTTP side: one L{AdminSite} serving

  - C{GET /metrics}: the Prometheus exposition (L{balancebeam.metrics});
  - C{GET /status}: the status page; C{GET /status.json}: its data;
  - C{GET /healthz}: 200 while the reactor runs;
  - C{GET /ready}: 200 when every listener is up and an upstream takes
    requests, else 503;
  - C{POST /upstreams/HOST:PORT/drain}, C{/disable} and C{/enable};
  - C{POST /cache/purge?url=URL}, when a cache is configured (else 404).

With a token (C{--admin-token-file}) every request must carry it
(L{balancebeam.admin.auth}), or gets 401. Without one (a loopback admin),
a request whose C{Host} is not a loopback one gets 421, except on
C{/healthz} and C{/ready} (L{balancebeam.admin.browsers}: DNS rebinding). A
browser's post from another site gets 403. Requests to the admin are not
logged (a scrape every few seconds would drown the log); the token never is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from balancebeam.admin.auth import AdminToken
from balancebeam.admin.browsers import PROBE_PATHS, cross_site, names_loopback
from balancebeam.admin.page import render_page
from balancebeam.admin.providers import parse_purge_url
from balancebeam.admin.status import status_data
from balancebeam.metrics import CONTENT_TYPE, build_registry, exposition
from balancebeam.registry import DISABLED, DRAINING, ENABLED, REMOVED

if TYPE_CHECKING:
    from balancebeam.service import BalancerService

ACTIONS: dict[str, str] = {"drain": DRAINING, "disable": DISABLED, "enable": ENABLED}
"""The control actions on an upstream, and the admin state each sets."""

_CHALLENGE = [b'Bearer realm="balancebeam admin"', b'Basic realm="balancebeam admin"']

_NOT_LOOPBACK = (
    b"without a token, the admin answers requests for localhost, 127.0.0.1 or [::1] only\n"
)


def _reply(
    request: Request, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8"
) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    return body


def _json(request: Request, status: int, data: Any) -> bytes:
    body = json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    return _reply(request, status, body, b"application/json")


def purge_url(request: Request) -> str:
    """
    The URL a C{POST /cache/purge?url=URL} names, once: an absolute http(s)
    URL or a path (L{parse_purge_url}).

    @raise ValueError: saying what is wrong, when there is no URL, more than
        one, or one that is not UTF-8 or not such a URL.
    """
    arguments: dict[bytes, list[bytes]] = request.args or {}
    urls = arguments.get(b"url") or []
    if len(urls) > 1:
        raise ValueError(f"give one url to purge, not {len(urls)}")
    if not urls or not urls[0]:
        raise ValueError("give the URL to purge: /cache/purge?url=URL")
    try:
        url = urls[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("invalid URL to purge: it is not UTF-8") from None
    try:
        parse_purge_url(url)
    except ValueError as error:
        raise ValueError(f"invalid URL to purge: {error}") from None
    return url


class AdminPages(Resource):
    """
    The admin's paths, routed on the path and method, for one process and
    for the master alike: C{POST /upstreams/NAME/ACTION} to L{_control},
    C{POST /cache/purge} to L{_purge}, C{GET} or C{HEAD} of a page; 404 for
    another path, 405 for another method. C{/} redirects to the status page,
    C{/healthz} answers while the reactor runs, C{/ready} with
    L{_not_ready_reason}.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        """
        Answer one admin request.
        """
        path = request.path.decode("ascii", "replace")
        method = request.method
        parts = [unquote(p) for p in path.split("/")[1:]]
        upstream_action = parts[:1] == ["upstreams"] and len(parts) == 3
        if upstream_action or parts == ["cache", "purge"]:
            if method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _json(request, 405, {"error": "use POST"})
            if upstream_action:
                return self._control(request, parts[1], parts[2])
            return self._purge(request)
        page = {
            "": self._root,
            "metrics": self._metrics,
            "status": self._status,
            "status.json": self._status_json,
            "healthz": self._healthz,
            "ready": self._ready,
        }.get(path[1:])
        if page is None:
            return _json(request, 404, {"error": f"no such admin page: {path}"})
        if method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _json(request, 405, {"error": "use GET"})
        return page(request)

    def _root(self, request: Request) -> bytes:
        request.setHeader(b"location", b"/status")
        return _reply(request, 302, b"see /status\n")

    def _healthz(self, request: Request) -> bytes:
        return _reply(request, 200, b"ok\n")

    def _ready(self, request: Request) -> bytes:
        reason = self._not_ready_reason()
        if reason is None:
            return _reply(request, 200, b"ready\n")
        return _reply(request, 503, f"not ready: {reason}\n".encode())

    def _not_ready_reason(self) -> str | None:
        raise NotImplementedError

    def _metrics(self, request: Request) -> bytes | int:
        raise NotImplementedError

    def _status(self, request: Request) -> bytes | int:
        raise NotImplementedError

    def _status_json(self, request: Request) -> bytes | int:
        raise NotImplementedError

    def _control(self, request: Request, name: str, action: str) -> bytes:
        raise NotImplementedError

    def _purge(self, request: Request) -> bytes | int:
        raise NotImplementedError


class AdminResource(AdminPages):
    """
    Every admin path, dispatched on the request's path and method.
    """

    log = Logger()

    def __init__(self, service: BalancerService, registry: CollectorRegistry) -> None:
        super().__init__()
        self._service = service
        self._registry = registry

    def _metrics(self, request: Request) -> bytes:
        return _reply(request, 200, exposition(self._registry), CONTENT_TYPE.encode("ascii"))

    def _status(self, request: Request) -> bytes:
        page = render_page(status_data(self._service))
        return _reply(request, 200, page, b"text/html; charset=utf-8")

    def _status_json(self, request: Request) -> bytes:
        return _json(request, 200, status_data(self._service))

    def _not_ready_reason(self) -> str | None:
        return self._service.not_ready_reason()

    def _control(self, request: Request, name: str, action: str) -> bytes:
        state = ACTIONS.get(action)
        if state is None:
            known = ", ".join(ACTIONS)
            return _json(request, 404, {"error": f"unknown action {action!r} (known: {known})"})
        registry = self._service.registry
        upstream = registry.get(name)
        if upstream is None:
            retiring = [u for u in registry.retiring if u.name == name]
            if retiring:
                error = f"upstream {name} was removed by a reload"
                return _json(request, 409, {"error": error, "state": REMOVED})
            names = [u.name for u in registry.upstreams]
            return _json(request, 404, {"error": f"no upstream {name}", "upstreams": names})
        changed = registry.set_admin_state(upstream, state, f"{action} requested on the admin")
        return _json(
            request,
            200,
            {
                "upstream": upstream.name,
                "admin_state": upstream.admin_state,
                "changed": changed,
                "in_flight": upstream.in_flight,
            },
        )

    def _purge(self, request: Request) -> bytes | int:
        purger = self._service.purger
        if purger is None:
            return _json(request, 404, {"error": "no cache is configured"})
        try:
            url = purge_url(request)
        except ValueError as error:
            return _json(request, 400, {"error": str(error)})
        purge: Callable[[str], Any] = purger.purge
        purging: Deferred[int] = maybeDeferred(purge, url)
        answers: list[bytes] = []

        def purged(count: int) -> None:
            answers.append(_json(request, 200, {"url": url, "purged": count}))

        def failed(reason: Failure) -> None:
            self.log.failure("purging {url} failed", reason, url=url)
            answers.append(_json(request, 500, {"error": "purging failed", "url": url}))

        def later(_: object) -> None:
            request.setHeader(b"content-length", b"%d" % len(answers[0]))
            request.write(answers[0])
            request.finish()

        purging.addCallbacks(purged, failed)
        if answers:
            return answers[0]
        purging.addCallback(later)
        return NOT_DONE_YET


class AdminSite(Site):
    """
    The admin's site: checks the token before anything else, or without a
    token that the request names a loopback host; refuses cross-site
    browser posts; logs no request.
    """

    noisy = False

    def __init__(self, resource: Resource, token: AdminToken, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.token = token

    def getResourceFor(self, request: Request) -> Resource:
        """
        The admin resource, or one answering 400 (an HTTP/1.1 request
        without exactly one C{Host}, RFC 9112 section 3.2), 401 (no or a
        wrong token), 421 (no token is configured and the C{Host} is not a
        loopback one: DNS rebinding) or 403 (a browser's post from another
        site).
        """
        if request.clientproto == b"HTTP/1.1" and len(
            request.requestHeaders.getRawHeaders(b"host", [])
        ) != 1:
            return _Refused(400, b"an HTTP/1.1 request needs one Host header\n", [])
        if self.token.required:
            if not self.token.allows(request):
                return _Refused(401, b"a bearer token is required\n", _CHALLENGE)
        elif request.path not in PROBE_PATHS and not names_loopback(request):
            return _Refused(421, _NOT_LOOPBACK, [], b"Misdirected Request")
        if request.method == b"POST" and cross_site(request):
            return _Refused(403, b"cross-site requests are refused\n", [])
        resource: Resource = super().getResourceFor(request)
        return resource

    def log(self, request: http.Request) -> None:
        """
        Admin requests are not logged.
        """


class _Refused(Resource):
    isLeaf = True

    def __init__(
        self, status: int, body: bytes, challenges: list[bytes], message: bytes | None = None
    ) -> None:
        super().__init__()
        self._status = status
        self._body = body
        self._challenges = challenges
        self._message = message

    def render(self, request: Request) -> bytes:
        for challenge in self._challenges:
            request.responseHeaders.addRawHeader(b"www-authenticate", challenge)
        body = _reply(request, self._status, self._body)
        if self._message is not None:
            request.setResponseCode(self._status, self._message)
        return body


def build_admin_site(
    service: BalancerService, token: AdminToken, process_metrics: bool = True
) -> AdminSite:
    """
    The admin listener's site for C{service}.

    @param process_metrics: also export the process collector's metrics.
    """
    registry = build_registry(service, process=process_metrics)
    return AdminSite(AdminResource(service, registry), token, reactor=service.clock)
