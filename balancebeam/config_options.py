"""
The option table, L{OPTIONS}: every option once, with its long name (the
command-line flag without dashes, and the configuration file's key), how its
value is given, its parser and its default as the operator would write it;
and L{ConfigError}, the error that names an option.

The records (L{balancebeam.config_records}) take their defaults from this
table, so a default is defined in exactly one place. Callers import all of
this from L{balancebeam.config}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from balancebeam.config_addresses import (
    bind_to_endpoint,
    parse_rate_limit_backend,
    parse_tls_name,
    parse_trusted_network,
    parse_upstream,
    parse_weight,
    validate_endpoint,
)
from balancebeam.config_numbers import (
    count_parser,
    parse_listen_backlog,
    parse_max_body_size,
    parse_non_negative,
    parse_positive,
    parse_positive_size,
    parse_size,
    parse_workers,
)
from balancebeam.config_values import (
    RATE_LIMIT_ALGORITHMS,
    RATE_LIMIT_ON_ERROR,
    STRATEGIES,
    UPSTREAM_TLS_VERIFY,
    choice_parser,
    parse_file_path,
    parse_health_check_path,
    parse_readable_directory,
    parse_readable_file,
    parse_rule_pattern,
    parse_waf_mode,
    parse_waf_paranoia,
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
        and the key L{build_config <balancebeam.config.build_config>} takes.
    @ivar kind: L{VALUE}, L{LIST} or L{FLAG}.
    @ivar parse: turns one string into the value (each element, for a
        L{LIST}); C{None} for a L{FLAG}.
    @ivar default: for a L{VALUE}, the default as the operator would write
        it, or C{None} when the default is no value at all (then the option's
        help says what that means). C{None} for the other kinds, whose
        default is the empty list or C{False}.
    @ivar field: the L{BalancerConfig <balancebeam.config.BalancerConfig>}
        field set by the parsed value, as C{"strategy"} or, in a nested
        record, C{"timeouts.connect"}; C{None} for options
        L{build_config <balancebeam.config.build_config>} combines with others.
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
    Option("listen-backlog", VALUE, parse_listen_backlog, "511", "listen_backlog"),
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
    Option("max-connections-per-client", VALUE, count_parser(0), "0",
           "max_connections_per_client"),
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
(C{doc/options.md}). L{balancebeam.config.build_config} reports the first bad value in this
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
