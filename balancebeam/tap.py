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

_LONGDESC = """\
balancebeam is an HTTP/1.1 load balancer. It listens on --bind (or on every
--listen endpoint) and relays each request to one of the --upstream
servers, chosen by --strategy among those that are alive. Example:
twistd -n --pidfile= balancebeam --bind 127.0.0.1:8080 --upstream 10.0.0.5:8081
--upstream [2001:db8::7]:8081 --strategy least-connections. Try it with no
servers of your own: twistd -n --pidfile= balancebeam --demo. Durations are
in seconds (fractions allowed); sizes are bytes or a number with a k, m or g
suffix (powers of 1024). HTTPS: --tls-bind 0.0.0.0:443 --tls-cert site.pem, and
--upstream https://HOST:PORT re-encrypts (doc/tls.md). See doc/options.md for
the full reference.
"""


def _parameter(name: str, help_text: str, short: str | None = None) -> list[Any]:
    """
    Declare the option C{--name} taking one value, with its default from
    L{config.OPTIONS} (shown by C{--help} unless it is C{None}).
    """
    return [name, short, config.OPTIONS[name].default, help_text]


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
    longdesc = _LONGDESC

    optFlags = [
        [
            "demo",
            None,
            "Start 3 built-in demo upstreams on 127.0.0.1 (ephemeral ports) and "
            "balance over them, as well as over any --upstream.",
        ],
        [
            "rate-limit-headers",
            None,
            "Add RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset headers "
            "to responses while rate limiting is on.",
        ],
        [
            "cache-store-set-cookie",
            None,
            "Store responses that carry Set-Cookie in the cache (without that field); "
            "by default they are not stored.",
        ],
        [
            "access-log",
            None,
            "Log one info line per request (client, method, path, upstream, status, latency).",
        ],
        [
            "check-config",
            None,
            "Check the configuration (--config and the other options) and exit: "
            "status 0 if it is valid, 1 with the error otherwise. Nothing starts.",
        ],
        [
            "reuse-port",
            None,
            "With --workers above 1: give each worker its own SO_REUSEPORT listening "
            "socket (the kernel spreads connections) instead of one socket they all share.",
        ],
    ]

    optParameters = [
        # Declared without a default, so that postOptions can tell --bind
        # from its absence: --listen alone replaces the default.
        [
            "bind",
            "b",
            None,
            "HOST:PORT to listen on (IPv6 in brackets, e.g. [::]:1100). Without "
            "--bind, any --listen endpoints replace it; with both, both are used. "
            f"[default: {config.DEFAULT_BIND}]",
        ],
        _parameter(
            "upstream-ca",
            "PEM file of the certificate authorities that https:// upstreams' "
            "certificates must chain to. [default: the system trust store]",
        ),
        _parameter(
            "upstream-tls-name",
            "The name sent as SNI to every https:// upstream and required in its "
            "certificate (use it when upstreams are addressed by IP). "
            "[default: each upstream's host]",
        ),
        _parameter(
            "upstream-tls-verify",
            "full (check the chain and the name of https:// upstreams' certificates) "
            "or none (accept any certificate: for test setups only).",
        ),
        _parameter(
            "upstream-client-cert",
            "PEM file (certificate, chain, private key) presented to https:// "
            "upstreams that ask for a client certificate (mutual TLS).",
        ),
        _parameter(
            "active-health-check-interval",
            "Seconds between active health probes of each upstream; 0 turns active checks off.",
        ),
        _parameter(
            "active-health-check-path",
            "Path requested by active health probes: / then printable ASCII without "
            "spaces (percent-encode the rest); only HTTP 200 counts as healthy.",
        ),
        _parameter(
            "health-check-timeout",
            "Seconds a health probe may take before it counts as a failure. "
            "[default: the lesser of the interval and 2]",
        ),
        _parameter(
            "health-check-rise",
            "Consecutive successful probes that bring a dead upstream back.",
        ),
        _parameter(
            "health-check-fall",
            "Consecutive failed probes that take a live upstream out of rotation.",
        ),
        _parameter(
            "passive-retry-interval",
            "With active checks off: seconds after which an upstream marked dead "
            "by a failed connection is tried again; 0 = never.",
        ),
        _parameter(
            "max-requests-per-minute",
            "Requests allowed per client IP per rate-limit window; 0 turns rate "
            "limiting off. The window is a minute unless --rate-limit-window "
            "changes it, and then this is N requests per window.",
        ),
        _parameter("rate-limit-window", "Length in seconds of the rate-limit window."),
        _parameter(
            "rate-limit-algorithm",
            "fixed (counters reset at window boundaries) or sliding "
            "(sliding-window counter; no burst of 2N around a boundary).",
        ),
        _parameter(
            "rate-limit-backend",
            "Where rate-limit counters live: memory (this process) or "
            "redis://HOST:PORT/DB (shared by every balancer using that Redis).",
        ),
        _parameter(
            "rate-limit-redis-timeout",
            "Seconds to wait for Redis before applying --rate-limit-on-error.",
        ),
        _parameter(
            "rate-limit-on-error",
            "What to do with a request when Redis fails or is slow: allow or deny.",
        ),
        _parameter(
            "rate-limit-max-keys",
            "Most client IPs the memory backend tracks at once; the least recently "
            "seen are evicted beyond it.",
        ),
        _parameter(
            "strategy",
            "How to choose an upstream for each request: random, round-robin, "
            "least-connections or p2c (power of two choices).",
        ),
        _parameter(
            "pool-max-idle-per-upstream",
            "Most idle connections kept open to each upstream for reuse.",
        ),
        _parameter(
            "pool-idle-timeout",
            "Seconds an idle upstream connection is kept before it is closed.",
        ),
        _parameter(
            "pool-max-requests-per-connection",
            "Requests sent on one upstream connection before it is retired; 0 = unlimited.",
        ),
        _parameter(
            "pool-warm",
            "Idle connections kept open to every live upstream at all times, ready for requests.",
        ),
        _parameter(
            "pool-max-connections-per-upstream",
            "Most connections open to one upstream; further requests wait in a "
            "queue (see --queue-timeout). 0 = unlimited.",
        ),
        _parameter(
            "queue-timeout",
            "Seconds a request waits for a connection to an upstream at its "
            "connection cap before it gets 503.",
        ),
        _parameter(
            "max-client-connections",
            "Most client connections open at once; more are answered 503 and "
            "closed. 0 = unlimited (then the process's file limit applies).",
        ),
        _parameter(
            "shutdown-timeout",
            "Seconds requests in progress may take to finish when the balancer "
            "stops; idle connections close at once, the rest are aborted after this.",
        ),
        _parameter(
            "connect-timeout",
            "Seconds to wait for a connection to an upstream (then try another, or 502).",
        ),
        _parameter(
            "upstream-timeout",
            "Seconds to wait for an upstream's response head once the request is "
            "sent, and then the longest silence between two reads of the response "
            "body (then 504, or the response is cut).",
        ),
        _parameter(
            "client-header-timeout",
            "Seconds a client has to send a whole request head, from its first byte (then 408).",
        ),
        _parameter(
            "client-idle-timeout",
            "Seconds an idle keep-alive client connection is kept open.",
        ),
        _parameter(
            "client-body-timeout",
            "Longest silence while a client sends a request body (then 408).",
        ),
        _parameter(
            "tunnel-idle-timeout",
            "Seconds a tunnel (after 101 Switching Protocols, e.g. a WebSocket) may "
            "stay without a byte in either direction before both sides are closed.",
        ),
        _parameter(
            "max-head-size",
            "Largest request head (request line and headers) in bytes; k, m and g "
            "suffixes allowed. Larger heads get 431.",
        ),
        _parameter("max-header-count", "Most header lines in a request head; more get 431."),
        [
            "config",
            "c",
            None,
            "A TOML configuration file whose keys are these options' long names "
            "(see doc/operations.md); options given here replace its values. "
            "SIGHUP re-reads it.",
        ],
        _parameter(
            "admin-bind",
            "HOST:PORT of the admin listener (/metrics, /status, /healthz, /ready, "
            "upstream drain/enable/disable). Off by default; meant for loopback. "
            "Any other address needs --admin-token-file.",
        ),
        _parameter(
            "admin-token-file",
            "A file holding the bearer token the admin listener requires "
            "(Authorization: Bearer TOKEN); re-read on SIGHUP.",
        ),
        _parameter(
            "max-body-size",
            "Largest request body in bytes (k, m and g suffixes allowed, e.g. 10m); "
            "larger bodies get 413. 0 = unlimited. [default: unlimited]",
        ),
        _parameter(
            "cache-size",
            "Bytes the in-memory response cache may hold (RFC 9111; k, m and g "
            "suffixes allowed, e.g. 64m); 0 turns it off. See doc/cache.md.",
        ),
        _parameter("cache-max-object-size", "Largest response body the cache stores."),
        _parameter(
            "cache-lock-timeout",
            "Seconds a request waits for another request's miss on the same URL "
            "before it goes upstream itself.",
        ),
        _parameter(
            "waf",
            "Web application firewall (ModSecurity with the OWASP Core Rule Set): off, "
            "detect (log matches, let requests pass) or block (answer 403). See doc/waf.md.",
        ),
        _parameter("waf-paranoia", "The Core Rule Set's paranoia level, 1 to 4."),
        _parameter(
            "waf-anomaly-threshold",
            "The Core Rule Set's inbound anomaly score at which a request is blocked.",
        ),
        _parameter(
            "waf-body-limit",
            "Request bodies up to this size are inspected (and held until then); larger "
            "ones get 413 with --waf block and pass uninspected with --waf detect.",
        ),
        _parameter(
            "waf-threads",
            "Threads inspecting requests, when the engine lets other threads run.",
        ),
        _parameter(
            "workers",
            "Worker processes serving requests on the same sockets: a number, or auto "
            "for one per usable CPU. Above 1, this process is a master that binds the "
            "sockets, supervises the workers (SIGHUP starts new ones with the "
            "configuration read again) and serves nothing itself. See doc/workers.md.",
        ),
    ]

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
        except (config.ConfigError, ConfigFileError, ValueError) as e:
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
        return _make_master(options, reactor)
    if not options["demo"]:
        try:
            balancer = BalancerService(balancer_config, reactor, exit_on_listen_failure=True)
        except StartupError as error:
            raise SystemExit(f"balancebeam: {error}") from None
        _operations(options, balancer, reactor)
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
    _operations(options, balancer, reactor, tuple(demo_specs))
    root = MultiService()
    demo_service.setServiceParent(root)
    balancer.setServiceParent(root)
    return root


def _operations(
    options: Options, balancer: Any, reactor: Any, demo: tuple[config.UpstreamSpec, ...] = ()
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


def _make_master(options: Options, reactor: Any) -> IService:
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
