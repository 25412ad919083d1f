"""
The one home of balancebeam's configuration: the frozen records, every
option with its parser and default, and L{build_config}, which turns raw
option values into a L{BalancerConfig}. Import all of it from here.

Every option is declared once, in L{OPTIONS}: its long name (the command-line
flag without dashes, and the key of the configuration file), how its value is
given, its parser and its default, written as the operator would write it.
The records' own defaults are parsed from that table, so a default is defined
in exactly one place.

Parsers take one string and raise C{ValueError} with a reason;
L{build_config} raises L{ConfigError}, which names the option, and the
command line (L{balancebeam.tap}) turns that into C{usage.UsageError}.

Where each part lives (each is imported here, so every name that was ever
importable from this module still is):
  - L{balancebeam.config_options}: the option table (L{OPTIONS}, L{Option},
    L{VALUE}, L{LIST}, L{FLAG}, L{DEFAULT_BIND}) and L{ConfigError};
  - L{balancebeam.config_records}: the frozen records (L{BalancerConfig},
    L{Timeouts}, L{Limits}, L{CacheConfig}, L{WafConfig}, L{TlsConfig});
  - L{balancebeam.config_build}: L{build_config} and the checks of the
    options that must fit together;
  - L{balancebeam.config_values}: the parsers of single values, which it
    lists; among them, L{balancebeam.config_numbers} holds the numbers,
    sizes and C{--workers} (L{parse_workers}, L{usable_cpus},
    L{MAX_WORKERS}), and L{balancebeam.config_addresses} the hosts, ports,
    upstreams (L{UpstreamSpec}), endpoints and networks.

These modules import nothing from the rest of balancebeam (but
L{balancebeam.waf.build}, imported only while checking an enabled
firewall), so that everything else can import this one.
"""

from __future__ import annotations

from balancebeam.config_addresses import (
    UpstreamSpec,
    bind_to_endpoint,
    is_loopback_host,
    parse_host_port,
    parse_rate_limit_backend,
    parse_tls_name,
    parse_trusted_network,
    parse_upstream,
    parse_weight,
    validate_endpoint,
    with_backlog,
)
from balancebeam.config_build import build_config
from balancebeam.config_numbers import (
    MAX_WORKERS,
    count_parser,
    parse_count,
    parse_listen_backlog,
    parse_max_body_size,
    parse_non_negative,
    parse_positive,
    parse_positive_size,
    parse_size,
    parse_workers,
    usable_cpus,
)
from balancebeam.config_options import (
    DEFAULT_BIND,
    FLAG,
    LIST,
    OPTIONS,
    VALUE,
    ConfigError,
    Option,
)
from balancebeam.config_records import (
    BalancerConfig,
    CacheConfig,
    Limits,
    Timeouts,
    TlsConfig,
    WafConfig,
)
from balancebeam.config_values import (
    RATE_LIMIT_ALGORITHMS,
    RATE_LIMIT_ON_ERROR,
    STRATEGIES,
    UPSTREAM_TLS_VERIFY,
    choice_parser,
    default_health_check_timeout,
    parse_file_path,
    parse_health_check_path,
    parse_readable_directory,
    parse_readable_file,
    parse_rule_pattern,
    parse_waf_mode,
    parse_waf_paranoia,
)

__all__ = [
    "DEFAULT_BIND",
    "FLAG",
    "LIST",
    "MAX_WORKERS",
    "OPTIONS",
    "RATE_LIMIT_ALGORITHMS",
    "RATE_LIMIT_ON_ERROR",
    "STRATEGIES",
    "UPSTREAM_TLS_VERIFY",
    "VALUE",
    "BalancerConfig",
    "CacheConfig",
    "ConfigError",
    "Limits",
    "Option",
    "Timeouts",
    "TlsConfig",
    "UpstreamSpec",
    "WafConfig",
    "bind_to_endpoint",
    "build_config",
    "choice_parser",
    "count_parser",
    "default_health_check_timeout",
    "is_loopback_host",
    "parse_count",
    "parse_file_path",
    "parse_health_check_path",
    "parse_host_port",
    "parse_listen_backlog",
    "parse_max_body_size",
    "parse_non_negative",
    "parse_positive",
    "parse_positive_size",
    "parse_rate_limit_backend",
    "parse_readable_directory",
    "parse_readable_file",
    "parse_rule_pattern",
    "parse_size",
    "parse_tls_name",
    "parse_trusted_network",
    "parse_upstream",
    "parse_waf_mode",
    "parse_waf_paranoia",
    "parse_weight",
    "parse_workers",
    "usable_cpus",
    "validate_endpoint",
    "with_backlog",
]
