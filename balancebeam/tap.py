# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd balancebeam} command line: L{Options} and L{makeService}.

L{Options} only parses, validates and normalises: every bad value becomes a
C{usage.UsageError} naming its flag, and the result is a frozen
L{BalancerConfig} in C{options.config}. Nothing listens or connects while
options are parsed: the demo upstreams start in L{makeService}, and the
balancer listens when twistd starts its service.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from balancebeam import config
from balancebeam.ratelimit.memory import ALGORITHMS
from balancebeam.strategies import STRATEGY_NAMES

_T = TypeVar("_T")

DEFAULT_BIND = "0.0.0.0:1100"
"""The address C{--bind} listens on when neither it nor C{--listen} is given."""

RATE_LIMIT_ON_ERROR = ("allow", "deny")
"""
The values C{--rate-limit-on-error} accepts (as
L{balancebeam.ratelimit_redis.ON_ERROR_POLICIES}, which is not imported here
because importing txredisapi installs the global reactor).
"""

DEFAULT_REDIS_PORT = 6379
"""The port a C{redis://HOST/DB} backend URL without a port uses."""

_PARSE_ONLY_REACTOR: Any = object()
"""
Stands in for a reactor when C{--listen} values are checked in
C{postOptions}: endpoint constructors only store their reactor, so building
one from a string validates it without listening or touching the global
reactor.
"""

_LONGDESC = """\
balancebeam is an HTTP/1.1 load balancer. It listens on --bind (or on every
--listen endpoint) and relays each request to one of the --upstream
servers, chosen by --strategy among those that are alive. Example:
twistd -n --pidfile= balancebeam --bind 127.0.0.1:8080 --upstream 10.0.0.5:8081
--upstream [2001:db8::7]:8081 --strategy least-connections. Try it with no
servers of your own: twistd -n --pidfile= balancebeam --demo. Durations are
in seconds (fractions allowed); sizes are bytes or a number with a k, m or g
suffix (powers of 1024). See doc/options.md for the full reference.
"""


def _parse(flag: str, parser: Callable[[str], _T], text: str) -> _T:
    """
    Run one of the parsers of L{balancebeam.config} on a flag's value.

    @param flag: the flag's long name, without dashes.
    @param parser: a function raising C{ValueError} on bad input.
    @param text: the value given on the command line.
    @return: what C{parser} returned.
    @raise usage.UsageError: naming the flag and the value, when C{parser}
        rejects it.
    """
    try:
        return parser(text)
    except ValueError as e:
        message = str(e)
        if message.startswith(repr(text)):
            message = message[len(repr(text)) :].lstrip(": ")
        if message.startswith(("is ", "must ", "has ", "names ")):
            raise usage.UsageError(f"--{flag} {text!r} {message}") from None
        raise usage.UsageError(f"--{flag} {text!r}: {message}") from None


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    """
    Build a parser accepting exactly one of C{choices}.
    """

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def parse_health_check_path(text: str) -> str:
    """
    Check an C{--active-health-check-path} value.

    @return: C{text} unchanged.
    @raise ValueError: unless it starts with C{/} and holds no whitespace or
        control characters (it goes verbatim into a request line).
    """
    if not text.startswith("/"):
        raise ValueError("must start with /")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("must not contain spaces or control characters")
    return text


def parse_trusted_network(text: str) -> str:
    """
    Parse a C{--trust-forwarded-for} CIDR range (a bare address is a /32 or /128).

    @return: the network in canonical form, host bits cleared
        (C{10.1.2.3/8} becomes C{10.0.0.0/8}).
    @raise ValueError: when C{text} is not an IPv4 or IPv6 network.
    """
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError("is not an IP network such as 10.0.0.0/8 or fd00::/8") from None


def parse_rate_limit_backend(text: str) -> str:
    """
    Parse a C{--rate-limit-backend} value: C{memory} or C{redis://HOST[:PORT][/DB]}.

    @return: C{"memory"}, or the URL in the full form C{redis://HOST:PORT/DB}
        (port 6379 and database 0 filled in when left out; IPv6 hosts in
        brackets).
    @raise ValueError: on anything else, including URLs with credentials,
        query strings or a non-numeric database.
    """
    if text == "memory":
        return text
    prefix = "redis://"
    if not text.startswith(prefix):
        raise ValueError("must be memory or a URL of the form redis://HOST:PORT/DB")
    rest = text[len(prefix) :]
    location, _, database = rest.partition("/")
    if "@" in location:
        raise ValueError("credentials in the URL are not supported")
    if "?" in rest or "#" in rest:
        raise ValueError("query strings and fragments are not supported")
    bracketed = location.startswith("[") and location.endswith("]")
    if bracketed or (":" not in location and not location.startswith("[")):
        location = f"{location}:{DEFAULT_REDIS_PORT}"
    host, port = config.parse_host_port(location)
    if database == "":
        database = "0"
    if not database.isdigit():
        raise ValueError(f"database {database!r} must be a number such as 0")
    return f"redis://{config.UpstreamSpec(host, port).name}/{int(database)}"


def parse_max_body_size(text: str) -> int | None:
    """
    Parse a C{--max-body-size} value.

    @return: the limit in bytes, or C{None} (no limit) for C{0}.
    @raise ValueError: when C{text} is not a size.
    """
    size = config.parse_size(text)
    return size if size > 0 else None


def parse_positive_size(text: str) -> int:
    """
    Parse a size that must be at least one byte.

    @raise ValueError: when C{text} is not a size, or is 0.
    """
    size = config.parse_size(text)
    if size < 1:
        raise ValueError("must be at least 1 byte")
    return size


def validate_endpoint(text: str) -> str:
    """
    Check that C{text} is a Twisted server endpoint description.

    The endpoint is built, never listened on; an C{ssl:} endpoint reads its
    certificate files here, and a C{systemd:} endpoint needs the descriptors
    systemd passes (C{LISTEN_FDS}).

    @return: C{text} unchanged.
    @raise ValueError: when Twisted cannot build an endpoint from it.
    """
    if not text.strip():
        raise ValueError("is empty")
    try:
        serverFromString(_PARSE_ONLY_REACTOR, text)
    except (IndexError, KeyError) as e:
        if text.startswith("systemd:"):
            raise ValueError(
                "names a socket that systemd did not pass to this process "
                "(start it from a .socket unit; see doc/systemd.md)"
            ) from None
        raise ValueError(f"is not a server endpoint such as tcp:1100 ({e})") from None
    except (ValueError, TypeError, AttributeError, OSError) as e:
        # Endpoint parsers report bad arguments with all of these (an unknown
        # keyword is a TypeError, a missing systemd descriptor an IndexError).
        raise ValueError(f"is not a server endpoint such as tcp:1100 ({e})") from None
    return text


class Options(usage.Options):
    """
    The options of C{twistd balancebeam}.

    Repeatable flags collect their raw values in C{self["upstream"]},
    C{self["listen"]}, C{self["trust-forwarded-for"]} and
    C{self["upstream-weight"]}; L{postOptions} checks everything and builds
    L{config}.

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
            "access-log",
            None,
            "Log one info line per request (client, method, path, upstream, status, latency).",
        ],
    ]

    optParameters = [
        [
            "bind",
            "b",
            None,
            "HOST:PORT to listen on (IPv6 in brackets, e.g. [::]:1100). Without "
            "--bind, any --listen endpoints replace it; with both, both are used. "
            f"[default: {DEFAULT_BIND}]",
        ],
        [
            "active-health-check-interval",
            None,
            "10",
            "Seconds between active health probes of each upstream; 0 turns active checks off.",
        ],
        [
            "active-health-check-path",
            None,
            "/",
            "Path requested by active health probes; only HTTP 200 counts as healthy.",
        ],
        [
            "health-check-timeout",
            None,
            None,
            "Seconds a health probe may take before it counts as a failure. "
            "[default: the lesser of the interval and 2]",
        ],
        [
            "health-check-rise",
            None,
            "2",
            "Consecutive successful probes that bring a dead upstream back.",
        ],
        [
            "health-check-fall",
            None,
            "2",
            "Consecutive failed probes that take a live upstream out of rotation.",
        ],
        [
            "passive-retry-interval",
            None,
            "10",
            "With active checks off: seconds after which an upstream marked dead "
            "by a failed connection is tried again; 0 = never.",
        ],
        [
            "max-requests-per-minute",
            None,
            "0",
            "Requests allowed per client IP per rate-limit window; 0 turns rate "
            "limiting off. The window is a minute unless --rate-limit-window "
            "changes it, and then this is N requests per window.",
        ],
        [
            "rate-limit-window",
            None,
            "60",
            "Length in seconds of the rate-limit window.",
        ],
        [
            "rate-limit-algorithm",
            None,
            "sliding",
            "fixed (counters reset at window boundaries) or sliding "
            "(sliding-window counter; no burst of 2N around a boundary).",
        ],
        [
            "rate-limit-backend",
            None,
            "memory",
            "Where rate-limit counters live: memory (this process) or "
            "redis://HOST:PORT/DB (shared by every balancer using that Redis).",
        ],
        [
            "rate-limit-redis-timeout",
            None,
            "0.05",
            "Seconds to wait for Redis before applying --rate-limit-on-error.",
        ],
        [
            "rate-limit-on-error",
            None,
            "allow",
            "What to do with a request when Redis fails or is slow: allow or deny.",
        ],
        [
            "rate-limit-max-keys",
            None,
            "1000000",
            "Most client IPs the memory backend tracks at once; the least recently "
            "seen are evicted beyond it.",
        ],
        [
            "strategy",
            None,
            "random",
            "How to choose an upstream for each request: random, round-robin, "
            "least-connections or p2c (power of two choices).",
        ],
        [
            "pool-max-idle-per-upstream",
            None,
            "32",
            "Most idle connections kept open to each upstream for reuse.",
        ],
        [
            "pool-idle-timeout",
            None,
            "30",
            "Seconds an idle upstream connection is kept before it is closed.",
        ],
        [
            "pool-max-requests-per-connection",
            None,
            "0",
            "Requests sent on one upstream connection before it is retired; 0 = unlimited.",
        ],
        [
            "pool-warm",
            None,
            "0",
            "Idle connections kept open to every live upstream at all times, "
            "ready for requests.",
        ],
        [
            "pool-max-connections-per-upstream",
            None,
            "0",
            "Most connections open to one upstream; further requests wait in a "
            "queue (see --queue-timeout). 0 = unlimited.",
        ],
        [
            "queue-timeout",
            None,
            "10",
            "Seconds a request waits for a connection to an upstream at its "
            "connection cap before it gets 503.",
        ],
        [
            "max-client-connections",
            None,
            "10000",
            "Most client connections open at once; more are answered 503 and "
            "closed. 0 = unlimited (then the process's file limit applies).",
        ],
        [
            "shutdown-timeout",
            None,
            "10",
            "Seconds requests in progress may take to finish when the balancer "
            "stops; idle connections close at once, the rest are aborted after this.",
        ],
        [
            "connect-timeout",
            None,
            "5",
            "Seconds to wait for a connection to an upstream (then try another, or 502).",
        ],
        [
            "upstream-timeout",
            None,
            "60",
            "Seconds to wait for an upstream's response head once the request is sent (then 504).",
        ],
        [
            "client-header-timeout",
            None,
            "10",
            "Seconds a client has to send a whole request head, from its first byte (then 408).",
        ],
        [
            "client-idle-timeout",
            None,
            "60",
            "Seconds an idle keep-alive client connection is kept open.",
        ],
        [
            "client-body-timeout",
            None,
            "60",
            "Seconds a client may pause while sending a request body (then 408).",
        ],
        [
            "max-head-size",
            None,
            "16k",
            "Largest request head (request line and headers) in bytes; k, m and g "
            "suffixes allowed. Larger heads get 431.",
        ],
        [
            "max-header-count",
            None,
            "100",
            "Most header lines in a request head; more get 431.",
        ],
        [
            "max-body-size",
            None,
            None,
            "Largest request body in bytes (k, m and g suffixes allowed, e.g. 10m); "
            "larger bodies get 413. 0 = unlimited. [default: unlimited]",
        ],
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
        self.config: config.BalancerConfig | None = None

    def opt_upstream(self, value: str) -> None:
        """
        An upstream server as HOST:PORT; repeat for more. IPv6 literals go in
        brackets ([::1]:8080); hostnames are resolved when connecting. At least
        one is required unless --demo is given.
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

    def opt_trust_forwarded_for(self, value: str) -> None:
        """
        A CIDR range (e.g. 10.0.0.0/8) of proxies whose X-Forwarded-For header is
        believed when choosing the client IP for rate limiting; repeat for more.
        Clients outside these ranges are keyed by their own address.
        """
        self["trust-forwarded-for"].append(value)

    def opt_upstream_weight(self, value: str) -> None:
        """
        HOST:PORT=W gives a configured upstream weight W (a whole number, default
        1), honoured by every strategy; repeat for more.
        """
        self["upstream-weight"].append(value)

    def postOptions(self) -> None:
        """
        Validate and normalise every option and build L{config}.

        No side effects: nothing listens, connects or is started here.

        @raise usage.UsageError: for the first bad value, naming its flag.
        """
        upstreams = self._upstreams()
        interval = _parse(
            "active-health-check-interval",
            config.parse_non_negative,
            self["active-health-check-interval"],
        )
        if self["health-check-timeout"] is None:
            health_check_timeout = min(interval, 2.0) if interval > 0 else 2.0
        else:
            health_check_timeout = _parse(
                "health-check-timeout", config.parse_positive, self["health-check-timeout"]
            )
        pool_max_idle = self._count("pool-max-idle-per-upstream")
        pool_warm = self._count("pool-warm")
        pool_max_connections = self._count("pool-max-connections-per-upstream")
        if pool_warm > pool_max_idle:
            raise usage.UsageError(
                f"--pool-warm {pool_warm}: cannot exceed "
                f"--pool-max-idle-per-upstream ({pool_max_idle})"
            )
        if pool_max_connections and pool_warm > pool_max_connections:
            raise usage.UsageError(
                f"--pool-warm {pool_warm}: cannot exceed "
                f"--pool-max-connections-per-upstream ({pool_max_connections})"
            )

        self.config = config.BalancerConfig(
            upstreams=upstreams,
            listen=self._listen(),
            timeouts=config.Timeouts(
                connect=self._positive("connect-timeout"),
                upstream=self._positive("upstream-timeout"),
                client_header=self._positive("client-header-timeout"),
                client_idle=self._positive("client-idle-timeout"),
                client_body=self._positive("client-body-timeout"),
            ),
            limits=config.Limits(
                max_head_size=_parse("max-head-size", parse_positive_size, self["max-head-size"]),
                max_header_count=self._count("max-header-count", minimum=1),
                max_body_size=(
                    None
                    if self["max-body-size"] is None
                    else _parse("max-body-size", parse_max_body_size, self["max-body-size"])
                ),
            ),
            strategy=_parse("strategy", _choice(STRATEGY_NAMES), self["strategy"]),
            active_health_check_interval=interval,
            active_health_check_path=_parse(
                "active-health-check-path",
                parse_health_check_path,
                self["active-health-check-path"],
            ),
            health_check_timeout=health_check_timeout,
            health_check_rise=self._count("health-check-rise", minimum=1),
            health_check_fall=self._count("health-check-fall", minimum=1),
            passive_retry_interval=_parse(
                "passive-retry-interval", config.parse_non_negative, self["passive-retry-interval"]
            ),
            max_requests_per_minute=self._count("max-requests-per-minute"),
            rate_limit_window=self._positive("rate-limit-window"),
            rate_limit_algorithm=_parse(
                "rate-limit-algorithm", _choice(ALGORITHMS), self["rate-limit-algorithm"]
            ),
            rate_limit_backend=_parse(
                "rate-limit-backend", parse_rate_limit_backend, self["rate-limit-backend"]
            ),
            rate_limit_headers=bool(self["rate-limit-headers"]),
            rate_limit_redis_timeout=self._positive("rate-limit-redis-timeout"),
            rate_limit_on_error=_parse(
                "rate-limit-on-error", _choice(RATE_LIMIT_ON_ERROR), self["rate-limit-on-error"]
            ),
            rate_limit_max_keys=self._count("rate-limit-max-keys", minimum=1),
            trusted_proxies=tuple(
                _parse("trust-forwarded-for", parse_trusted_network, text)
                for text in self["trust-forwarded-for"]
            ),
            pool_max_idle_per_upstream=pool_max_idle,
            pool_idle_timeout=self._positive("pool-idle-timeout"),
            pool_max_requests_per_connection=self._count("pool-max-requests-per-connection"),
            pool_warm=pool_warm,
            pool_max_connections_per_upstream=pool_max_connections,
            queue_timeout=_parse(
                "queue-timeout", config.parse_non_negative, self["queue-timeout"]
            ),
            access_log=bool(self["access-log"]),
            max_client_connections=self._count("max-client-connections"),
            shutdown_timeout=_parse(
                "shutdown-timeout", config.parse_non_negative, self["shutdown-timeout"]
            ),
        )

    def _positive(self, flag: str) -> float:
        """
        Parse the value of C{--flag} as a number greater than 0.
        """
        return _parse(flag, config.parse_positive, self[flag])

    def _count(self, flag: str, minimum: int = 0) -> int:
        """
        Parse the value of C{--flag} as a whole number of at least C{minimum}.
        """
        return _parse(flag, lambda text: config.parse_count(text, minimum), self[flag])

    def _upstreams(self) -> tuple[config.UpstreamSpec, ...]:
        """
        Parse C{--upstream} values in order and apply C{--upstream-weight}.

        @raise usage.UsageError: on a bad or repeated upstream, a weight for an
            upstream that is not configured, or no upstream without C{--demo}.
        """
        specs: dict[str, config.UpstreamSpec] = {}
        for text in self["upstream"]:
            spec = _parse("upstream", config.parse_upstream, text)
            if spec.name in specs:
                raise usage.UsageError(f"--upstream {text!r}: {spec.name} is given twice")
            specs[spec.name] = spec
        if not specs and not self["demo"]:
            raise usage.UsageError(
                "--upstream is required: give at least one HOST:PORT "
                "(e.g. --upstream 127.0.0.1:8081), or use --demo"
            )
        weighted: set[str] = set()
        for text in self["upstream-weight"]:
            name, weight = _parse("upstream-weight", config.parse_weight, text)
            if name not in specs:
                known = ", ".join(specs) or "none"
                raise usage.UsageError(
                    f"--upstream-weight {text!r}: {name} is not an --upstream "
                    f"(configured: {known})"
                )
            if name in weighted:
                raise usage.UsageError(f"--upstream-weight {text!r}: {name} is weighted twice")
            weighted.add(name)
            specs[name] = dataclasses.replace(specs[name], weight=weight)
        return tuple(specs.values())

    def _listen(self) -> tuple[str, ...]:
        """
        Work out the endpoint strings to listen on from C{--bind} and C{--listen}.

        C{--bind} (or its default) comes first; C{--listen} alone replaces the
        default C{--bind}.

        @raise usage.UsageError: on a bad value or an endpoint given twice.
        """
        endpoints: list[str] = []
        if self["bind"] is not None or not self["listen"]:
            bind = DEFAULT_BIND if self["bind"] is None else self["bind"]
            endpoints.append(_parse("bind", config.bind_to_endpoint, bind))
        for text in self["listen"]:
            endpoint = _parse("listen", validate_endpoint, text)
            if endpoint in endpoints:
                raise usage.UsageError(f"--listen {text!r}: this endpoint is given twice")
            endpoints.append(endpoint)
        return tuple(endpoints)


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
    from balancebeam.service import BalancerService
    from balancebeam.signals import guard_stop_signals

    balancer_config = options.config
    if balancer_config is None:
        raise ValueError("makeService needs options whose postOptions has run")
    # A second SIGTERM during the drain only logs a line (see balancebeam.signals).
    reactor.callWhenRunning(guard_stop_signals, reactor)
    if not options["demo"]:
        return BalancerService(balancer_config, reactor, exit_on_listen_failure=True)

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
    except BaseException:
        demo_service.stopService()
        raise
    root = MultiService()
    demo_service.setServiceParent(root)
    balancer.setServiceParent(root)
    return root
