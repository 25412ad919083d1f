# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd balancebeam} command line: L{Options} and L{makeService}.

L{Options} declares the flags, their help texts and their defaults (taken
from L{balancebeam.config.OPTIONS}) and maps them onto
L{balancebeam.config.build_config}, which parses, validates and normalises
every value; each bad value becomes a C{usage.UsageError} naming its flag,
and the result is a frozen L{BalancerConfig} in C{options.config}. Nothing
listens or connects while options are parsed: the demo upstreams start in
L{makeService}, and the balancer listens when twistd starts its service.

The flags' declarations and help texts are in L{balancebeam.tap_flags}; what
L{makeService} wires around the balancer (systemd, the reload on C{SIGHUP},
or the master of C{--workers}) is in L{balancebeam.tap_wiring}.
"""

from __future__ import annotations

import dataclasses
import getopt
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from balancebeam import config
from balancebeam.tap_flags import LONGDESC, OPT_FLAGS, OPT_PARAMETERS
from balancebeam.tap_wiring import make_master, wire_operations


class Options(usage.Options):
    """
    The options of C{twistd balancebeam}.

    Repeatable flags collect their raw values in lists (C{self["upstream"]},
    C{self["listen"]}, C{self["tls-bind"]}, ...: every L{config.LIST}
    option); L{postOptions} hands every value to L{config.build_config}.

    @ivar config: the validated configuration, set by L{postOptions}. With
        C{--demo} its upstreams are only those given with C{--upstream} (maybe
        none); L{makeService} adds the demo upstreams.
    """

    synopsis = "[balancebeam options]"
    longdesc = LONGDESC
    optFlags = OPT_FLAGS
    optParameters = OPT_PARAMETERS

    def __init__(self) -> None:
        super().__init__()
        # opt_* docstrings are help text: fold their line breaks and indents.
        self.docs = {
            name: " ".join(doc.split()) if doc else doc for name, doc in self.docs.items()
        }
        self["upstream"] = []
        self["listen"] = []
        self["trust-forwarded-for"] = []
        self["upstream-weight"] = []
        self["waf-rules"] = []
        self["tls-bind"] = []
        self["tls-cert"] = []
        self["tls-cert-dir"] = []
        self.config: config.BalancerConfig | None = None

    def opt_upstream(self, value: str) -> None:
        """
        An upstream server as HOST:PORT (or http://HOST:PORT), or
        https://HOST:PORT to connect to it with TLS; repeat for more. IPv6
        literals go in brackets ([::1]:8080); hostnames are resolved when
        connecting. At least one is required unless --demo is given.
        """
        self["upstream"].append(value)

    opt_u = opt_upstream

    def opt_listen(self, value: str) -> None:
        """
        A Twisted server endpoint to listen on, e.g. tcp:1100:interface=127.0.0.1,
        ssl:443:privateKey=key.pem:certKey=cert.pem or
        systemd:domain=INET:index=0; repeat for more. Replaces the default
        --bind unless --bind is also given.
        """
        self["listen"].append(value)

    def opt_tls_bind(self, value: str) -> None:
        """
        HOST:PORT to listen on for HTTPS (IPv6 in brackets); repeat for more.
        Needs --tls-cert or --tls-cert-dir. Requests get X-Forwarded-Proto: https.
        """
        self["tls-bind"].append(value)

    def opt_tls_cert(self, value: str) -> None:
        """
        A PEM file holding a certificate, its chain and its private key, served
        by the --tls-bind listeners to the names it carries; repeat for more. The
        first one is served when no name matches. Reloaded on SIGHUP and when
        the file changes.
        """
        self["tls-cert"].append(value)

    def opt_tls_cert_dir(self, value: str) -> None:
        """
        A directory whose *.pem files (each a certificate, chain and key) are
        served like --tls-cert files, in name order after them; repeat for more.
        """
        self["tls-cert-dir"].append(value)

    def opt_trust_forwarded_for(self, value: str) -> None:
        """
        A CIDR range (e.g. 10.0.0.0/8) of proxies whose X-Forwarded-For header is
        believed when choosing the client IP for rate limiting; repeat for more.
        Clients outside these ranges are keyed by their own address.
        """
        self["trust-forwarded-for"].append(value)

    def opt_upstream_weight(self, value: str) -> None:
        """
        HOST:PORT=W (or https://HOST:PORT=W) gives a configured upstream weight
        W (a whole number, default 1), honoured by every strategy; repeat for more.
        """
        self["upstream-weight"].append(value)

    def opt_waf_rules(self, value: str) -> None:
        """
        A ModSecurity rule file or glob (e.g. /etc/crs/rules/*.conf), loaded in
        the order given; repeat for more. Without it, --waf uses the system's
        Core Rule Set (/usr/share/modsecurity-crs).
        """
        self["waf-rules"].append(value)

    def config_values(self) -> dict[str, object]:
        """
        The values given on the command line, keyed as L{config.build_config}
        takes them: flags as C{bool}s, repeatable options as lists, and
        options left at a default of C{None} (C{--bind},
        C{--health-check-timeout}, C{--max-body-size}) left out.
        """
        values: dict[str, object] = {}
        for name, option in config.OPTIONS.items():
            if option.kind == config.FLAG:
                values[name] = bool(self[name])
            elif self[name] is not None:
                values[name] = self[name]
        return values

    # Operations (issue 13): the configuration file and --check-config.

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the command line, remembering which options it gives
        (L{given}), so that they replace the configuration file's values.
        """
        arguments = sys.argv[1:] if options is None else list(options)
        self.given = self._given_names(arguments)
        super().parseOptions(arguments)

    def _given_names(self, arguments: list[str]) -> set[str]:
        """
        The long names of the options in C{arguments}, found as
        C{usage.Options.parseOptions} finds them (errors are left to it).
        """
        try:
            pairs, _ = getopt.getopt(arguments, self.shortOpt, self.longOpt)
        except getopt.error:
            return set()
        names: set[str] = set()
        for flag, _ in pairs:
            name = flag[2:] if flag.startswith("--") else flag[1:]
            name = self.synonyms.get(name, self.synonyms.get(name.replace("-", "_"), name))
            names.add(name.replace("_", "-"))
        return names

    def command_line_values(self) -> dict[str, object]:
        """
        The values of the options given on the command line only, keyed as
        L{config.build_config} takes them (what replaces the file's values).
        """
        given: set[str] = getattr(self, "given", set())
        return {name: value for name, value in self.config_values().items() if name in given}

    def _post_options_operations(self) -> None:
        """
        Build L{config} from C{--config} and the command line; with
        C{--check-config}, also check what only starting would (the admin
        token file, the service tree built on a memory reactor) and exit.

        @raise usage.UsageError: for a bad file or value, naming the file,
            line and key (or the flag).
        @raise SystemExit: with C{--check-config}: 0 when the configuration
            is valid, else 1 with the error on standard error.
        """
        from balancebeam.config_values import assume_systemd_sockets
        from balancebeam.configfile import ConfigFileError
        from balancebeam.errors import StartupError

        path = self["config"]
        checking: AbstractContextManager[None] = (
            assume_systemd_sockets() if self["check-config"] else nullcontext()
        )
        try:
            with checking:
                built = self.config = self._build_operations_config(path)
            if self["check-config"]:
                from balancebeam.reload import check_config

                check_config(built)
        except (config.ConfigError, ConfigFileError, ValueError, StartupError) as e:
            if self["check-config"]:
                print(f"balancebeam: configuration error: {e}", file=sys.stderr)
                raise SystemExit(1) from None
            raise usage.UsageError(str(e)) from None
        if self["check-config"]:
            print(
                f"balancebeam: configuration OK ({path or 'command line'}: "
                f"{len(built.upstreams)} upstream(s), listening on {', '.join(built.listen)})"
            )
            raise SystemExit(0)

    def _build_operations_config(self, path: str | None) -> config.BalancerConfig:
        from balancebeam.configfile import load_config

        if path is not None:
            return load_config(path, self.command_line_values())
        return config.build_config(self.config_values())

    def postOptions(self) -> None:
        """
        Build L{config} with L{config.build_config}.

        No side effects: nothing listens, connects or is started here.

        @raise usage.UsageError: for an unknown option or the first bad value,
            naming its flag.
        """
        if self["config"] is not None or self["check-config"]:
            self._post_options_operations()
            return
        try:
            self.config = config.build_config(self.config_values())
        except config.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the balancer's service tree from parsed options.

    With C{--demo}, the demo upstreams start listening on 127.0.0.1 now (so
    their ports are known) and are added to the configured upstreams; they
    are stopped after the balancer.

    Nothing listens for clients yet: the balancer listens when twistd starts
    it (L{balancebeam.service.BalancerService.privilegedStartService}), and a
    port already in use then ends the process with a one-line message and
    exit status 1 (C{exit_on_listen_failure}).

    @param options: parsed L{Options}.
    @param reactor: the reactor to run on; the global one if C{None}.
    @return: the L{balancebeam.service.BalancerService}, or, with C{--demo}, a
        C{MultiService} holding the demo upstreams and then the balancer.
    """
    if reactor is None:
        from twisted.internet import reactor
    # Imported here so that importing this module (twistd does, for Options
    # and --help) neither loads the whole balancer nor, through txredisapi,
    # installs the global reactor.
    from balancebeam.errors import StartupError
    from balancebeam.service import BalancerService
    from balancebeam.signals import guard_stop_signals

    balancer_config = options.config
    if balancer_config is None:
        raise ValueError("makeService needs options whose postOptions has run")
    # A second SIGTERM during the drain only logs a line (see balancebeam.signals).
    reactor.callWhenRunning(guard_stop_signals, reactor)
    if balancer_config.workers > 1:
        return make_master(options, reactor)
    if not options["demo"]:
        try:
            balancer = BalancerService(balancer_config, reactor, exit_on_listen_failure=True)
        except StartupError as error:
            raise SystemExit(f"balancebeam: {error}") from None
        wire_operations(options, balancer, reactor)
        return balancer

    from balancebeam.demo import start_demo_upstreams

    demo_specs, demo_service = start_demo_upstreams(reactor)
    try:
        balancer = BalancerService(
            dataclasses.replace(
                balancer_config, upstreams=balancer_config.upstreams + tuple(demo_specs)
            ),
            reactor,
            exit_on_listen_failure=True,
        )
    except StartupError as error:
        demo_service.stopService()
        raise SystemExit(f"balancebeam: {error}") from None
    except BaseException:
        demo_service.stopService()
        raise
    wire_operations(options, balancer, reactor, tuple(demo_specs))
    root = MultiService()
    demo_service.setServiceParent(root)
    balancer.setServiceParent(root)
    return root
