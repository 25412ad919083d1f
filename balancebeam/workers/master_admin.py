# -*- test-case-name: tests.test_admin_master -*-
"""
The master's admin listener (C{--workers N} with C{--admin-bind}): the
workers bind none; the master listens on C{--admin-bind}, with the token of
C{--admin-token-file}, and serves L{balancebeam.admin.master_resource} over
all its workers, measuring the requests per second its status shows while
it listens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString

from balancebeam.admin.auth import AdminToken, read_token_file
from balancebeam.admin.master_resource import AdminFleet, build_master_admin_site
from balancebeam.admin.rate import RequestRate
from balancebeam.config import BalancerConfig, with_backlog
from balancebeam.listeners import ListenerService, ListenFailed, _AdminEndpoint, describe_port
from balancebeam.workers.fleet import WorkerFleet


class _AdminListener(ListenerService):
    """
    The admin listener; a failure to listen ends twistd with one line when
    C{exit_on_failure}. It starts and stops the request rate the status
    shows with it.
    """

    def __init__(
        self, endpoint: Any, factory: Any, exit_on_failure: bool, rate: RequestRate
    ) -> None:
        super().__init__(endpoint, factory)
        self._exit_on_failure = exit_on_failure
        self.rate = rate

    def startService(self) -> None:
        """
        Listen, and measure the request rate.
        """
        super().startService()
        self.rate.startService()

    def stopService(self) -> Any:
        """
        Stop measuring, and stop listening.
        """
        if self.rate.running:
            self.rate.stopService()
        return super().stopService()

    def privilegedStartService(self) -> None:
        """
        Listen (before twistd drops privileges).
        """
        try:
            super().privilegedStartService()
        except ListenFailed as error:
            if self._exit_on_failure:
                raise SystemExit(f"balancebeam: {error}") from None
            raise


def _token_reload(
    token: AdminToken, path: str | None
) -> Callable[[BalancerConfig], Callable[[], None]]:
    """
    A reload check that reads the token again (from the reload's
    C{--admin-token-file}, or the same file), refusing the reload when it
    cannot be read, as the single process does; the new token is required
    once the new generation takes over.
    """

    def check(config: BalancerConfig) -> Callable[[], None]:
        new = read_token_file(config.admin_token_file or path or "")
        return lambda: token.replace(new)

    return check


def master_admin_service(
    fleet: AdminFleet, config: BalancerConfig, reactor: Any, exit_on_failure: bool = False
) -> IService | None:
    """
    The master's admin listener for C{config} (C{None} without
    C{--admin-bind}).

    With a token, a reload of C{fleet} (a L{WorkerFleet}) reads it again.

    @raise SystemExit: with one line, when the token file cannot be read
        and C{exit_on_failure} is set.
    @raise ValueError: when it cannot be read otherwise.
    """
    if config.admin_bind is None:
        return None
    token = None
    if config.admin_token_file is not None:
        try:
            token = read_token_file(config.admin_token_file)
        except ValueError as error:
            if exit_on_failure:
                raise SystemExit(f"balancebeam: {error}") from None
            raise
    admin_token = AdminToken(token)
    if token is not None and isinstance(fleet, WorkerFleet):
        fleet.reload_checks.append(_token_reload(admin_token, config.admin_token_file))
    rate = RequestRate(reactor, lambda: _requests(fleet))
    addresses: list[str] = []
    site = build_master_admin_site(fleet, admin_token, reactor, rate=rate, addresses=addresses)
    endpoint = _AdminEndpoint(
        serverFromString(reactor, with_backlog(config.admin_bind, config.listen_backlog)),
        f"--admin-bind ({config.admin_bind})",
        lambda port: addresses.append(describe_port(port)),
    )
    listener = _AdminListener(endpoint, site, exit_on_failure, rate)
    listener.setName("admin listener")
    return listener


def _requests(fleet: AdminFleet) -> int:
    """
    The requests of every worker, as last reported.
    """
    requests = fleet.snapshot().counters.get("requests")
    return requests if isinstance(requests, int) and not isinstance(requests, bool) else 0
