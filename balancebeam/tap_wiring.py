# -*- test-case-name: tests.test_tap -*-
"""
What L{balancebeam.tap.makeService} wires around the balancer, beyond
building it: L{wire_operations} (systemd notifications and watchdog, and the
reload on C{SIGHUP}, issue 13) for a single process, or L{make_master} (the
master of C{--workers} above 1, issue 14).

Like L{balancebeam.tap}, importing this module loads nothing of the
balancer: each function imports what it wires.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from twisted.application.service import IService

from balancebeam import config


class ParsedOptions(Protocol):
    """
    What the wiring reads of parsed L{balancebeam.tap.Options} (declared
    here because L{balancebeam.tap} imports this module).
    """

    def __getitem__(self, name: str, /) -> Any:
        """
        The value of the option C{name} (C{"config"}, C{"demo"}).
        """

    def config_values(self) -> dict[str, object]:
        """
        Every option's value, keyed as L{config.build_config} takes them.
        """

    def command_line_values(self) -> dict[str, object]:
        """
        The values of the options given on the command line only.
        """


def wire_operations(
    options: ParsedOptions,
    balancer: Any,
    reactor: Any,
    demo: tuple[config.UpstreamSpec, ...] = (),
) -> None:
    """
    Wire what operating the balancer needs (issue 13): systemd
    notifications and watchdog from the environment, and a reload on
    C{SIGHUP} that reads C{--config} (and the command line over it) again.

    @param demo: the demo upstreams, kept on every reload.
    """
    import os

    from balancebeam.configfile import load_config
    from balancebeam.reload import Reloader, install_sighup
    from balancebeam.systemd import Notifier, watchdog_interval

    balancer.systemd.notifier = Notifier.from_environment(os.environ)
    balancer.systemd.watchdog_interval = watchdog_interval(os.environ)
    path = options["config"]

    def load() -> config.BalancerConfig:
        if path is not None:
            loaded = load_config(path, options.command_line_values())
        else:
            loaded = config.build_config(options.config_values())
        if demo:
            loaded = dataclasses.replace(loaded, upstreams=loaded.upstreams + demo)
        return loaded

    # The reloader registers itself as balancer.reloader.
    Reloader(balancer, load, reactor)
    # SIGHUP reloads the certificates and the configuration (BalancerService.hangup).
    reactor.callWhenRunning(install_sighup, reactor, balancer.hangup)


def make_master(options: ParsedOptions, reactor: Any) -> IService:
    """
    With C{--workers} above 1: the master, which binds the sockets and runs
    the worker processes (L{balancebeam.workers.master}).
    """
    import sys

    from balancebeam.configfile import merge, read_config_file
    from balancebeam.workers.master import make_master_service

    path = options["config"]

    def values() -> dict[str, object]:
        """
        The option values the workers get: C{--config} with the command
        line over it, read again on every SIGHUP.
        """
        if path is None:
            return options.config_values()
        return merge(read_config_file(path), options.command_line_values())

    return make_master_service(
        values(), reactor, demo=bool(options["demo"]), argv=sys.argv, reload_values=values
    )
