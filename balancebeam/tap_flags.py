# -*- test-case-name: tests.test_tap -*-
"""
The flags of C{twistd balancebeam} as L{balancebeam.tap.Options} declares
them: the long description (L{LONGDESC}), the flags that are on or off
(L{OPT_FLAGS}) and the options taking one value (L{OPT_PARAMETERS}), each
with its help text and its default from L{balancebeam.config.OPTIONS}.

The repeatable options are declared as C{opt_*} methods of
L{balancebeam.tap.Options}, whose docstrings are their help texts.
"""

from __future__ import annotations

from typing import Any

from balancebeam import config

LONGDESC = """\
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
"""The long description C{--help} shows above the options."""


def _parameter(name: str, help_text: str, short: str | None = None) -> list[Any]:
    """
    Declare the option C{--name} taking one value, with its default from
    L{config.OPTIONS} (shown by C{--help} unless it is C{None}).
    """
    return [name, short, config.OPTIONS[name].default, help_text]


OPT_FLAGS: list[list[str | None]] = [
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
"""C{usage.Options.optFlags}: the flags that are on or off."""

OPT_PARAMETERS: list[list[Any]] = [
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
        "max-connections-per-client",
        "Most client connections one client IP address may hold open at once "
        "(per process: per worker with --workers); more are answered 503 and "
        "closed, as nginx's limit_conn. 0 = unlimited.",
    ),
    _parameter(
        "listen-backlog",
        "Length of the queue of connections not yet accepted on every listening "
        "socket (--bind, --listen, --tls-bind, --admin-bind); the kernel caps it "
        "at net.core.somaxconn. Sockets from systemd keep their own. Needs a restart.",
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
"""C{usage.Options.optParameters}: the options taking one value."""
