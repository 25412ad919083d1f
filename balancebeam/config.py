"""
The one home of balancebeam's configuration: the frozen records, every
option with its parser and default, and L{build_config}, which turns raw
option values into a L{BalancerConfig}. The parsers of single values are in
L{balancebeam.config_values}.

Every option is declared once, in L{OPTIONS}: its long name (the command-line
flag without dashes, and the key of a future configuration file), how its
value is given, its parser and its default, written as the operator would
write it. The records' own defaults are parsed from that table, so a default
is defined in exactly one place.

Parsers take one string and raise C{ValueError} with a reason;
L{build_config} raises L{ConfigError}, which names the option, and the
command line (L{balancebeam.tap}) turns that into C{usage.UsageError}.

This module imports nothing from the rest of balancebeam but
L{balancebeam.config_values}, so that everything else can import it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from balancebeam.config_values import (
    RATE_LIMIT_ALGORITHMS,
    RATE_LIMIT_ON_ERROR,
    STRATEGIES,
    UPSTREAM_TLS_VERIFY,
    UpstreamSpec,
    bind_to_endpoint,
    choice_parser,
    count_parser,
    default_health_check_timeout,
    is_loopback_host,
    parse_count,
    parse_file_path,
    parse_health_check_path,
    parse_host_port,
    parse_max_body_size,
    parse_non_negative,
    parse_positive,
    parse_positive_size,
    parse_rate_limit_backend,
    parse_readable_directory,
    parse_readable_file,
    parse_rule_pattern,
    parse_size,
    parse_tls_name,
    parse_trusted_network,
    parse_upstream,
    parse_waf_mode,
    parse_waf_paranoia,
    parse_weight,
    validate_endpoint,
)


class ConfigError(ValueError):
    """
    A bad configuration value, naming the option it was given for.

    C{str()} reads like C{--option 'value': reason} (or C{--option 'value'
    must ...} when the reason is a predicate), fit to be shown as a usage
    error.

    @ivar option: the option's long name, without dashes (C{"upstream"}).
    @ivar value: the offending value as given, or C{None} when the error is
        not about one value (a missing option, an unknown one).
    @ivar reason: what is wrong, without the option's name.
    """

    def __init__(self, option: str, reason: str, value: object | None = None) -> None:
        super().__init__(option, reason, value)
        self.option = option
        self.reason = reason
        self.value = value

    def __str__(self) -> str:
        if self.value is None:
            return f"--{self.option} {self.reason}"
        if self.reason.startswith(("is ", "must ", "has ", "names ")):
            return f"--{self.option} {self.value!r} {self.reason}"
        return f"--{self.option} {self.value!r}: {self.reason}"


# The parser of --workers (issue 14). It lives here rather than in
# config_values so that issue 14 edits one shared module only.

MAX_WORKERS = 256
"""The most worker processes C{--workers} accepts."""


def usable_cpus() -> int:
    """
    The CPUs this process may run on (its affinity mask, as C{taskset}
    sets it), or every CPU where the platform has no affinity; at least 1.
    CPU quotas of control groups are not counted.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return max(1, len(affinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_workers(text: str) -> int:
    """
    Parse C{--workers}: a whole number from 1 to L{MAX_WORKERS}, or
    C{auto} for L{usable_cpus}.

    @raise ValueError: on anything else.
    """
    if text.strip().lower() == "auto":
        return min(MAX_WORKERS, usable_cpus())
    count = parse_count(text, 1)
    if count > MAX_WORKERS:
        raise ValueError(f"must be auto or a whole number from 1 to {MAX_WORKERS}")
    return count


# The option table.

VALUE = "value"
"""The kind of an option that takes one string."""

LIST = "list"
"""The kind of a repeatable option: a sequence of strings."""

FLAG = "flag"
"""The kind of an option that is on or off: a C{bool}, C{False} by default."""


@dataclass(frozen=True)
class Option:
    """
    One configuration option.

    @ivar name: the long name: the command-line flag without its dashes,
        and the key L{build_config} takes.
    @ivar kind: L{VALUE}, L{LIST} or L{FLAG}.
    @ivar parse: turns one string into the value (each element, for a
        L{LIST}); C{None} for a L{FLAG}.
    @ivar default: for a L{VALUE}, the default as the operator would write
        it, or C{None} when the default is no value at all (then the option's
        help says what that means). C{None} for the other kinds, whose
        default is the empty list or C{False}.
    @ivar field: the L{BalancerConfig} field set by the parsed value, as
        C{"strategy"} or, in a nested record, C{"timeouts.connect"}; C{None}
        for options L{build_config} combines with others.
    """

    name: str
    kind: str
    parse: Callable[[str], Any] | None = None
    default: str | None = None
    field: str | None = None


DEFAULT_BIND = "0.0.0.0:1100"
"""The address C{--bind} listens on when neither it nor C{--listen} is given."""

# fmt: off
OPTIONS: Mapping[str, Option] = MappingProxyType({option.name: option for option in [
    # name, kind, parser, default as written, BalancerConfig field
    # Listening. The default of bind applies only when no listen is given.
    Option("bind", VALUE, bind_to_endpoint, DEFAULT_BIND),
    Option("listen", LIST, validate_endpoint),
    # HTTPS listeners.
    Option("tls-bind", LIST, bind_to_endpoint, field="tls.listen"),
    Option("tls-cert", LIST, parse_readable_file, field="tls.certificates"),
    Option("tls-cert-dir", LIST, parse_readable_directory, field="tls.certificate_dirs"),
    # Upstreams and balancing.
    Option("upstream", LIST, parse_upstream),
    Option("upstream-weight", LIST, parse_weight),
    Option("demo", FLAG),
    Option("strategy", VALUE, choice_parser(STRATEGIES), "random", "strategy"),
    # TLS to upstreams.
    Option("upstream-ca", VALUE, parse_readable_file, None, "tls.upstream_ca"),
    Option("upstream-tls-name", VALUE, parse_tls_name, None, "tls.upstream_name"),
    Option("upstream-tls-verify", VALUE, choice_parser(UPSTREAM_TLS_VERIFY), "full",
           "tls.upstream_verify"),
    Option("upstream-client-cert", VALUE, parse_readable_file, None,
           "tls.upstream_client_cert"),
    # Health checks. health-check-timeout has no default: see
    # default_health_check_timeout.
    Option("active-health-check-interval", VALUE, parse_non_negative, "10",
           "active_health_check_interval"),
    Option("active-health-check-path", VALUE, parse_health_check_path, "/",
           "active_health_check_path"),
    Option("health-check-timeout", VALUE, parse_positive),
    Option("health-check-rise", VALUE, count_parser(1), "2", "health_check_rise"),
    Option("health-check-fall", VALUE, count_parser(1), "2", "health_check_fall"),
    Option("passive-retry-interval", VALUE, parse_non_negative, "10", "passive_retry_interval"),
    # Timeouts.
    Option("connect-timeout", VALUE, parse_positive, "5", "timeouts.connect"),
    Option("upstream-timeout", VALUE, parse_positive, "60", "timeouts.upstream"),
    Option("client-header-timeout", VALUE, parse_positive, "10", "timeouts.client_header"),
    Option("client-idle-timeout", VALUE, parse_positive, "60", "timeouts.client_idle"),
    Option("client-body-timeout", VALUE, parse_positive, "60", "timeouts.client_body"),
    Option("tunnel-idle-timeout", VALUE, parse_positive, "3600", "timeouts.tunnel_idle"),
    Option("queue-timeout", VALUE, parse_non_negative, "10", "queue_timeout"),
    # Request limits. max-body-size has no default: unlimited, as 0 is.
    Option("max-head-size", VALUE, parse_positive_size, "16k", "limits.max_head_size"),
    Option("max-header-count", VALUE, count_parser(1), "100", "limits.max_header_count"),
    Option("max-body-size", VALUE, parse_max_body_size, None, "limits.max_body_size"),
    Option("max-client-connections", VALUE, count_parser(0), "10000", "max_client_connections"),
    # Shutdown.
    Option("shutdown-timeout", VALUE, parse_non_negative, "10", "shutdown_timeout"),
    # Rate limiting.
    Option("max-requests-per-minute", VALUE, count_parser(0), "0", "max_requests_per_minute"),
    Option("rate-limit-window", VALUE, parse_positive, "60", "rate_limit_window"),
    Option("rate-limit-algorithm", VALUE, choice_parser(RATE_LIMIT_ALGORITHMS), "sliding",
           "rate_limit_algorithm"),
    Option("rate-limit-backend", VALUE, parse_rate_limit_backend, "memory",
           "rate_limit_backend"),
    Option("rate-limit-headers", FLAG, field="rate_limit_headers"),
    Option("rate-limit-redis-timeout", VALUE, parse_positive, "0.05",
           "rate_limit_redis_timeout"),
    Option("rate-limit-on-error", VALUE, choice_parser(RATE_LIMIT_ON_ERROR), "allow",
           "rate_limit_on_error"),
    Option("rate-limit-max-keys", VALUE, count_parser(1), "1000000", "rate_limit_max_keys"),
    Option("trust-forwarded-for", LIST, parse_trusted_network, field="trusted_proxies"),
    # Upstream connection pool.
    Option("pool-max-idle-per-upstream", VALUE, count_parser(0), "32",
           "pool_max_idle_per_upstream"),
    Option("pool-idle-timeout", VALUE, parse_positive, "30", "pool_idle_timeout"),
    Option("pool-max-requests-per-connection", VALUE, count_parser(0), "0",
           "pool_max_requests_per_connection"),
    Option("pool-warm", VALUE, count_parser(0), "0", "pool_warm"),
    Option("pool-max-connections-per-upstream", VALUE, count_parser(0), "0",
           "pool_max_connections_per_upstream"),
    # Response cache.
    Option("cache-size", VALUE, parse_size, "0", "cache.size"),
    Option("cache-max-object-size", VALUE, parse_positive_size, "1m", "cache.max_object_size"),
    Option("cache-lock-timeout", VALUE, parse_non_negative, "5", "cache.lock_timeout"),
    Option("cache-store-set-cookie", FLAG, field="cache.store_set_cookie"),
    # Web application firewall.
    Option("waf", VALUE, parse_waf_mode, "off", "waf.mode"),
    Option("waf-rules", LIST, parse_rule_pattern, field="waf.rules"),
    Option("waf-paranoia", VALUE, parse_waf_paranoia, "1", "waf.paranoia"),
    Option("waf-anomaly-threshold", VALUE, count_parser(1), "5", "waf.anomaly_threshold"),
    Option("waf-body-limit", VALUE, parse_size, "128k", "waf.body_limit"),
    Option("waf-threads", VALUE, count_parser(1), "2", "waf.threads"),
    # Logging.
    Option("access-log", FLAG, field="access_log"),
    # Operations: the admin listener (see doc/operations.md).
    Option("admin-bind", VALUE, bind_to_endpoint, None, "admin_bind"),
    Option("admin-token-file", VALUE, parse_file_path, None, "admin_token_file"),
    # Processes (balancebeam.workers).
    Option("workers", VALUE, parse_workers, "1", "workers"),
    Option("reuse-port", FLAG, field="reuse_port"),
]})
# fmt: on
"""
Every option, by long name, in the order of the options reference
(C{doc/options.md}). L{build_config} reports the first bad value in this
order.
"""


def _default(name: str) -> Any:
    """
    The parsed default of the L{VALUE} option C{name} (C{None} when it has none).
    """
    option = OPTIONS[name]
    if option.default is None or option.parse is None:
        return None
    return option.parse(option.default)


# The records. Their defaults come from OPTIONS.


@dataclass(frozen=True)
class Timeouts:
    """
    Deadlines, in seconds, for each phase of a request.

    @ivar connect: connecting to an upstream.
    @ivar upstream: waiting for the upstream's response head once the
        request is sent, and then the longest silence between two reads of
        the response body.
    @ivar client_header: whole request head, from its first byte.
    @ivar client_idle: an idle keep-alive client connection.
    @ivar client_body: the longest silence while a request body is being received.
    @ivar tunnel_idle: a tunnel (after C{101 Switching Protocols}) with no
        byte in either direction.
    """

    connect: float = _default("connect-timeout")
    upstream: float = _default("upstream-timeout")
    client_header: float = _default("client-header-timeout")
    client_idle: float = _default("client-idle-timeout")
    client_body: float = _default("client-body-timeout")
    tunnel_idle: float = _default("tunnel-idle-timeout")


@dataclass(frozen=True)
class Limits:
    """
    Size limits on what clients send.

    @ivar max_head_size: bytes in a request head (request line and headers).
    @ivar max_header_count: number of header lines in a request head.
    @ivar max_body_size: bytes in a request body, or C{None} for no limit.
    """

    max_head_size: int = _default("max-head-size")
    max_header_count: int = _default("max-header-count")
    max_body_size: int | None = _default("max-body-size")


@dataclass(frozen=True)
class CacheConfig:
    """
    The response cache (L{balancebeam.cache}).

    @ivar size: the bytes the cache may hold (heads, bodies and a fixed
        overhead per entry); 0 turns it off.
    @ivar max_object_size: the largest body stored.
    @ivar lock_timeout: how long a request waits for another request's miss
        on the same key before it goes upstream itself.
    @ivar store_set_cookie: store responses carrying C{Set-Cookie} (without
        that field); by default they are not stored.
    """

    size: int = _default("cache-size")
    max_object_size: int = _default("cache-max-object-size")
    lock_timeout: float = _default("cache-lock-timeout")
    store_set_cookie: bool = False


@dataclass(frozen=True)
class WafConfig:
    """
    The web application firewall (L{balancebeam.waf}).

    @ivar mode: C{off}, C{detect} or C{block}.
    @ivar rules: rule files and globs, in loading order; empty for the
        system's Core Rule Set.
    @ivar paranoia: the CRS paranoia level, 1 to 4.
    @ivar anomaly_threshold: the CRS inbound anomaly score threshold.
    @ivar body_limit: the most request body bytes inspected.
    @ivar threads: inspection threads, when the engine releases the GIL.
    @ivar binding: the engine binding: C{auto}, C{cffi} or C{wheel}.
    @ivar max_queued: the most inspections waiting before requests are refused.
    """

    mode: str = _default("waf")
    rules: tuple[str, ...] = ()
    paranoia: int = _default("waf-paranoia")
    anomaly_threshold: int = _default("waf-anomaly-threshold")
    body_limit: int = _default("waf-body-limit")
    threads: int = _default("waf-threads")
    binding: str = "auto"
    max_queued: int = 256


@dataclass(frozen=True)
class TlsConfig:
    """
    TLS on both sides (L{balancebeam.tls}, C{doc/tls.md}).

    @ivar listen: the endpoint strings of the HTTPS listeners (C{--tls-bind}).
    @ivar certificates: PEM files, each with a certificate, its chain and
        its key (C{--tls-cert}), in order; the first certificate loaded is
        served when no name matches.
    @ivar certificate_dirs: directories whose C{*.pem} files are loaded too,
        after C{certificates} (C{--tls-cert-dir}).
    @ivar upstream_ca: a PEM file of the authorities TLS upstreams must
        chain to, or C{None} for the system trust store.
    @ivar upstream_name: the name every TLS upstream's certificate must
        carry (and the SNI sent), or C{None} for each upstream's host.
    @ivar upstream_verify: C{full}, or C{none} to accept any certificate.
    @ivar upstream_client_cert: a PEM file (certificate, chain, key) to
        present to TLS upstreams, or C{None}.
    """

    listen: tuple[str, ...] = ()
    certificates: tuple[str, ...] = ()
    certificate_dirs: tuple[str, ...] = ()
    upstream_ca: str | None = None
    upstream_name: str | None = None
    upstream_verify: str = _default("upstream-tls-verify")
    upstream_client_cert: str | None = None

    @property
    def listening(self) -> bool:
        """
        Whether there is an HTTPS listener (and so a certificate store).
        """
        return bool(self.listen)


@dataclass(frozen=True)
class BalancerConfig:
    """
    Everything L{balancebeam.service.BalancerService} needs to build the balancer.

    L{build_config} builds one from option values. Built directly, every
    field not given takes the option's default; C{health_check_timeout} is
    then that of the default interval, so give it with a short
    C{active_health_check_interval} (L{default_health_check_timeout}).
    """

    upstreams: tuple[UpstreamSpec, ...]
    listen: tuple[str, ...] = (bind_to_endpoint(DEFAULT_BIND),)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    cache: CacheConfig = field(default_factory=CacheConfig)
    waf: WafConfig = field(default_factory=WafConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    strategy: str = _default("strategy")
    active_health_check_interval: float = _default("active-health-check-interval")
    active_health_check_path: str = _default("active-health-check-path")
    health_check_timeout: float = default_health_check_timeout(
        _default("active-health-check-interval")
    )
    health_check_rise: int = _default("health-check-rise")
    health_check_fall: int = _default("health-check-fall")
    passive_retry_interval: float = _default("passive-retry-interval")
    max_requests_per_minute: int = _default("max-requests-per-minute")
    rate_limit_window: float = _default("rate-limit-window")
    rate_limit_algorithm: str = _default("rate-limit-algorithm")
    rate_limit_backend: str = _default("rate-limit-backend")
    rate_limit_headers: bool = False
    rate_limit_redis_timeout: float = _default("rate-limit-redis-timeout")
    rate_limit_on_error: str = _default("rate-limit-on-error")
    rate_limit_max_keys: int = _default("rate-limit-max-keys")
    trusted_proxies: tuple[str, ...] = ()
    pool_max_idle_per_upstream: int = _default("pool-max-idle-per-upstream")
    pool_idle_timeout: float = _default("pool-idle-timeout")
    pool_max_requests_per_connection: int = _default("pool-max-requests-per-connection")
    pool_warm: int = _default("pool-warm")
    pool_max_connections_per_upstream: int = _default("pool-max-connections-per-upstream")
    queue_timeout: float = _default("queue-timeout")
    access_log: bool = False
    shutdown_timeout: float = _default("shutdown-timeout")
    max_client_connections: int = _default("max-client-connections")
    #: The admin listener's endpoint (from C{--admin-bind HOST:PORT}), or
    #: C{None} for none (see L{balancebeam.admin}).
    admin_bind: str | None = None
    #: The file holding the admin's bearer token, or C{None} for no token
    #: (then C{admin_bind} is a loopback address).
    admin_token_file: str | None = None
    #: Worker processes: 1 is a single process; more make this process a
    #: master that serves no requests itself (L{balancebeam.workers}).
    workers: int = _default("workers")
    #: With several workers, give each its own C{SO_REUSEPORT} listening
    #: socket instead of one socket shared by all.
    reuse_port: bool = False
    #: Seed for the strategies' random source; C{None} (the default) seeds
    #: from the operating system. Tests fix it to make choices reproducible.
    random_seed: int | None = None


# Building a configuration.


def _raw_value(option: Option, value: object) -> Any:
    """
    Check the type of a raw value given for C{option}.

    @return: a C{str} for a L{VALUE} (numbers are turned into their text),
        a C{tuple} of C{str} for a L{LIST}, a C{bool} for a L{FLAG}.
    @raise ConfigError: when the value has the wrong type.
    """
    if option.kind == FLAG:
        if not isinstance(value, bool):
            raise ConfigError(option.name, "must be true or false", value)
        return value
    if option.kind == LIST:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(option.name, "must be a list of strings", value)
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(option.name, "must be a string", item)
        return tuple(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(option.name, "must be a string", value)
    return value


def _parse_one(option: Option, text: str) -> Any:
    """
    Run C{option}'s parser on one string.

    @raise ConfigError: naming the option and the value, when the parser
        refuses it.
    """
    assert option.parse is not None
    try:
        return option.parse(text)
    except ValueError as e:
        reason = str(e)
        if reason.startswith(repr(text)):
            reason = reason[len(repr(text)) :].lstrip(": ")
        raise ConfigError(option.name, reason, text) from None


def _unknown(name: str) -> ConfigError:
    """
    The error for a key that is not an option, suggesting a close one.
    """
    close = difflib.get_close_matches(name, list(OPTIONS), n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return ConfigError(name, f"is not an option{hint}")


def build_config(values: Mapping[str, object]) -> BalancerConfig:
    """
    Validate and normalise option values and build the configuration.

    @param values: option values by long name (L{OPTIONS}): a string for
        an option that takes one value (an C{int} or C{float} is taken as
        its text), a list of strings for a repeatable one, a C{bool} for a
        flag. A missing key takes the option's default.
    @return: the configuration. Without C{demo}, it has at least one
        upstream; with it, the configured upstreams may be none.
    @raise ConfigError: for an unknown key, or the first bad value, naming
        its option.
    """
    for name in values:
        if name not in OPTIONS:
            raise _unknown(name)
    raw: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    for option in OPTIONS.values():
        value = _raw_value(option, values[option.name]) if option.name in values else None
        raw[option.name] = value
        if option.kind == FLAG:
            parsed[option.name] = bool(value)
        elif option.kind == LIST:
            parsed[option.name] = tuple(_parse_one(option, text) for text in value or ())
        elif value is not None:
            parsed[option.name] = _parse_one(option, value)
        else:
            parsed[option.name] = _default(option.name)

    records: dict[str, dict[str, Any]] = {
        record: {} for record in ("", "timeouts", "limits", "cache", "waf", "tls")
    }
    for option in OPTIONS.values():
        if option.field is not None:
            record, _, name = option.field.rpartition(".")
            records[record][name] = parsed[option.name]

    interval = parsed["active-health-check-interval"]
    if raw["health-check-timeout"] is None:
        health_check_timeout = default_health_check_timeout(interval)
    else:
        health_check_timeout = parsed["health-check-timeout"]
    _check_pool(raw, parsed)
    waf = WafConfig(**records["waf"])
    _check_waf(waf)
    _check_admin(raw)
    upstreams = _upstreams(raw, parsed)
    listen = _listen(raw, parsed)
    tls = TlsConfig(**records["tls"])
    _check_tls(raw, tls, listen, upstreams)
    _check_workers(raw, parsed, listen)
    return BalancerConfig(
        upstreams=upstreams,
        listen=listen,
        timeouts=Timeouts(**records["timeouts"]),
        limits=Limits(**records["limits"]),
        cache=CacheConfig(**records["cache"]),
        waf=waf,
        tls=tls,
        health_check_timeout=health_check_timeout,
        **records[""],
    )


def _upstreams(raw: Mapping[str, Any], parsed: Mapping[str, Any]) -> tuple[UpstreamSpec, ...]:
    """
    The upstreams, in order, with their C{upstream-weight}s.

    @raise ConfigError: on an upstream given twice, none without C{demo}, or
        a weight for an upstream that is not configured or weighted twice.
    """
    specs: dict[str, UpstreamSpec] = {}
    for text, spec in zip(raw["upstream"] or (), parsed["upstream"]):
        if spec.name in specs:
            raise ConfigError("upstream", f"{spec.name} is given twice", text)
        specs[spec.name] = spec
    if not specs and not parsed["demo"]:
        raise ConfigError(
            "upstream",
            "is required: give at least one HOST:PORT (e.g. --upstream 127.0.0.1:8081), "
            "or use --demo",
        )
    weighted: set[str] = set()
    for text, (name, tls, weight) in zip(
        raw["upstream-weight"] or (), parsed["upstream-weight"]
    ):
        if name not in specs:
            known = ", ".join(specs) or "none"
            raise ConfigError(
                "upstream-weight", f"{name} is not an --upstream (configured: {known})", text
            )
        if name in weighted:
            raise ConfigError("upstream-weight", f"{name} is weighted twice", text)
        spec = specs[name]
        if tls is not None and tls != spec.tls:
            given = "https" if spec.tls else "plain HTTP"
            raise ConfigError("upstream-weight", f"{name} is an --upstream over {given}", text)
        weighted.add(name)
        specs[name] = replace(spec, weight=weight)
    return tuple(specs.values())


def _listen(raw: Mapping[str, Any], parsed: Mapping[str, Any]) -> tuple[str, ...]:
    """
    The endpoint strings to listen on for plain HTTP: C{bind} (or its
    default) first, then every C{listen}; C{listen} or C{tls-bind} alone
    replaces the default C{bind} (an HTTPS-only balancer opens no plain port
    it was not asked for).

    @raise ConfigError: on an endpoint given twice.
    """
    endpoints: list[str] = []
    if raw["bind"] is not None or not (parsed["listen"] or parsed["tls-bind"]):
        endpoints.append(parsed["bind"])
    for text, endpoint in zip(raw["listen"] or (), parsed["listen"]):
        if endpoint in endpoints:
            raise ConfigError("listen", "this endpoint is given twice", text)
        endpoints.append(endpoint)
    return tuple(endpoints)


def _check_pool(raw: Mapping[str, Any], parsed: Mapping[str, Any]) -> None:
    """
    Check that C{pool-warm} fits under the pool's caps.

    @raise ConfigError: when it exceeds C{pool-max-idle-per-upstream}, or a
        non-zero C{pool-max-connections-per-upstream}.
    """
    warm = parsed["pool-warm"]
    text = raw["pool-warm"] if raw["pool-warm"] is not None else OPTIONS["pool-warm"].default
    for cap_name in ("pool-max-idle-per-upstream", "pool-max-connections-per-upstream"):
        cap = parsed[cap_name]
        if cap_name == "pool-max-connections-per-upstream" and cap == 0:
            continue
        if warm > cap:
            raise ConfigError("pool-warm", f"cannot exceed --{cap_name} ({cap})", text)


def _check_waf(waf: WafConfig) -> None:
    """
    With the firewall on, check that its engine is installed and that its
    rules can be found (the rules themselves load when the service is built).

    @raise ConfigError: naming C{--waf} (and what to install) or C{--waf-rules}.
    """
    if waf.mode == "off":
        return
    # Imported only when the firewall is on: it loads the engine's bindings.
    from balancebeam.waf.build import rule_files, unavailable_reason

    reason = unavailable_reason(waf.binding)
    if reason is not None:
        raise ConfigError("waf", reason.removeprefix("--waf "), waf.mode)
    try:
        rule_files(waf)
    except ValueError as error:
        if waf.rules:
            raise ConfigError("waf-rules", str(error), " ".join(waf.rules)) from None
        raise ConfigError("waf", str(error), waf.mode) from None


def _check_admin(raw: Mapping[str, Any]) -> None:
    """
    Check that an admin listener reachable from other machines has a token.

    @raise ConfigError: when C{admin-bind} is not a loopback address and no
        C{admin-token-file} is given, or a token file is given without it.
    """
    bind = raw["admin-bind"]
    if bind is None:
        if raw["admin-token-file"] is not None:
            raise ConfigError(
                "admin-token-file", "is given without --admin-bind", raw["admin-token-file"]
            )
        return
    host, _ = parse_host_port(bind)
    if not is_loopback_host(host) and raw["admin-token-file"] is None:
        raise ConfigError(
            "admin-bind",
            "is not a loopback address: give --admin-token-file too (the bearer "
            "token clients must send)",
            bind,
        )


# Not upstream-tls-verify: the command line always gives its default.
_UPSTREAM_TLS_OPTIONS = ("upstream-ca", "upstream-tls-name", "upstream-client-cert")


def _check_tls(
    raw: Mapping[str, Any],
    tls: TlsConfig,
    listen: tuple[str, ...],
    upstreams: tuple[UpstreamSpec, ...],
) -> None:
    """
    Check that the TLS options fit together: an HTTPS listener has a
    certificate and certificates have a listener, no address is given twice
    (as HTTPS, or as HTTPS and plain HTTP), and the upstream TLS files and
    name are given only with an C{https://} upstream. The files themselves are loaded
    when the service is built.

    @raise ConfigError: naming the option that does not fit.
    """
    for number, (text, endpoint) in enumerate(zip(raw["tls-bind"] or (), tls.listen)):
        if endpoint in tls.listen[:number]:
            raise ConfigError("tls-bind", "this address is given twice", text)
        if endpoint in listen:
            raise ConfigError("tls-bind", "is also a plain-HTTP listener (--bind)", text)
    has_certificates = bool(tls.certificates or tls.certificate_dirs)
    if tls.listen and not has_certificates:
        raise ConfigError(
            "tls-bind",
            "has no certificate: give --tls-cert FILE or --tls-cert-dir DIR",
            raw["tls-bind"][0],
        )
    if has_certificates and not tls.listen:
        name = "tls-cert" if tls.certificates else "tls-cert-dir"
        raise ConfigError(
            name, "is given without --tls-bind: no listener would serve it", raw[name][0]
        )
    if not any(spec.tls for spec in upstreams):
        for name in _UPSTREAM_TLS_OPTIONS:
            if raw[name] is not None:
                raise ConfigError(
                    name,
                    "applies to TLS upstreams, and no --upstream is https://HOST:PORT",
                    raw[name],
                )
def _check_workers(
    raw: Mapping[str, Any], parsed: Mapping[str, Any], listen: tuple[str, ...]
) -> None:
    """
    Refuse what several worker processes cannot do: count rate limits in
    each worker's memory (that would allow N times the limit), or share a
    unix socket (Twisted removes its path when a worker stops listening).

    @raise ConfigError: naming C{workers}, or the C{listen} endpoint.
    """
    workers = parsed["workers"]
    if workers <= 1:
        return
    text = raw["workers"] if raw["workers"] is not None else str(workers)
    if parsed["max-requests-per-minute"] > 0 and parsed["rate-limit-backend"] == "memory":
        raise ConfigError(
            "workers",
            f"cannot share the memory rate limiter: each of the {workers} workers would "
            f"allow --max-requests-per-minute on its own ({workers} times the limit); "
            "use --rate-limit-backend redis://HOST:PORT/DB, which every worker shares",
            text,
        )
    for endpoint in listen:
        kind, _, rest = endpoint.partition(":")
        if kind.lower() == "unix" or (
            kind.lower() == "systemd" and "domain=unix" in rest.lower()
        ):
            raise ConfigError(
                "listen",
                f"is a unix socket, which --workers {text} cannot share yet "
                "(a worker that stops would remove its path); listen on TCP, or run one "
                "process",
                endpoint,
            )
