# -*- test-case-name: tests.test_admin_master -*-
"""
The master's admin listener (C{--workers N} with C{--admin-bind}): the
workers bind none; the master listens on C{--admin-bind}, with the token of
C{--admin-token-file}, and serves L{balancebeam.admin.master_resource} over
all its workers.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString

from balancebeam.admin.auth import AdminToken, read_token_file
from balancebeam.admin.master_resource import AdminFleet, build_master_admin_site
from balancebeam.config import BalancerConfig
from balancebeam.listeners import ListenerService, ListenFailed, _AdminEndpoint


class _AdminListener(ListenerService):
    """
    The admin listener; a failure to listen ends twistd with one line when
    C{exit_on_failure}.
    """

    def __init__(self, endpoint: Any, factory: Any, exit_on_failure: bool) -> None:
        super().__init__(endpoint, factory)
        self._exit_on_failure = exit_on_failure

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


def master_admin_service(
    fleet: AdminFleet, config: BalancerConfig, reactor: Any, exit_on_failure: bool = False
) -> IService | None:
    """
    The master's admin listener for C{config} (C{None} without
    C{--admin-bind}).

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
    site = build_master_admin_site(fleet, AdminToken(token), reactor)
    endpoint = _AdminEndpoint(
        serverFromString(reactor, config.admin_bind),
        f"--admin-bind ({config.admin_bind})",
        lambda port: None,
    )
    listener = _AdminListener(endpoint, site, exit_on_failure)
    listener.setName("admin listener")
    return listener
