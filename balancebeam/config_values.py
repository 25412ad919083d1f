"""
Parsers of single option values, and the few constants they share.

Each parser takes one string and returns the parsed value, or raises
C{ValueError} with a reason fit for a usage error. L{balancebeam.config}
names the option when it calls them (L{balancebeam.config.ConfigError}).

This module holds the parsers of the features' own values (choices among
fixed words, health checks, the firewall, files), and lists every parser:
numbers, sizes, counts and C{--workers} are in L{balancebeam.config_numbers};
hosts, ports, upstreams (L{UpstreamSpec}), endpoints, networks, Redis URLs
and TLS names in L{balancebeam.config_addresses}. Both are imported here, so
every parser can still be imported from this module. This module imports
nothing from the rest of balancebeam but those two.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from balancebeam.config_addresses import (
    DEFAULT_REDIS_PORT,
    UPSTREAM_SCHEMES,
    UpstreamSpec,
    assume_systemd_sockets,
    bind_to_endpoint,
    is_loopback_host,
    parse_host_port,
    parse_port,
    parse_rate_limit_backend,
    parse_redis_url,
    parse_tls_name,
    parse_trusted_network,
    parse_upstream,
    parse_weight,
    split_upstream_scheme,
    validate_endpoint,
)
from balancebeam.config_numbers import (
    count_parser,
    parse_count,
    parse_listen_backlog,
    parse_max_body_size,
    parse_non_negative,
    parse_positive,
    parse_positive_size,
    parse_size,
    parse_workers,
)

__all__ = [
    "DEFAULT_REDIS_PORT",
    "MAX_DEFAULT_HEALTH_CHECK_TIMEOUT",
    "RATE_LIMIT_ALGORITHMS",
    "RATE_LIMIT_ON_ERROR",
    "STRATEGIES",
    "UPSTREAM_SCHEMES",
    "UPSTREAM_TLS_VERIFY",
    "WAF_MODES",
    "UpstreamSpec",
    "assume_systemd_sockets",
    "bind_to_endpoint",
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
    "parse_port",
    "parse_positive",
    "parse_positive_size",
    "parse_rate_limit_backend",
    "parse_readable_directory",
    "parse_readable_file",
    "parse_redis_url",
    "parse_rule_pattern",
    "parse_size",
    "parse_tls_name",
    "parse_trusted_network",
    "parse_upstream",
    "parse_waf_mode",
    "parse_waf_paranoia",
    "parse_weight",
    "parse_workers",
    "split_upstream_scheme",
    "validate_endpoint",
]


# The choices.


def choice_parser(choices: tuple[str, ...]) -> Callable[[str], str]:
    """
    Build a parser accepting exactly one of C{choices}.
    """

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


STRATEGIES: tuple[str, ...] = ("random", "round-robin", "least-connections", "p2c")
"""The values of C{--strategy} (as L{balancebeam.strategies.STRATEGY_NAMES})."""

RATE_LIMIT_ALGORITHMS: tuple[str, ...] = ("fixed", "sliding")
"""The values of C{--rate-limit-algorithm} (as L{balancebeam.ratelimit.memory.ALGORITHMS})."""

RATE_LIMIT_ON_ERROR: tuple[str, ...] = ("allow", "deny")
"""
The values of C{--rate-limit-on-error} (as
L{balancebeam.ratelimit.redis.ON_ERROR_POLICIES}, which is not imported here
because importing txredisapi installs the global reactor).
"""

UPSTREAM_TLS_VERIFY: tuple[str, ...] = ("full", "none")
"""The values of C{--upstream-tls-verify}."""


# Health checks.

_HEALTH_CHECK_PATH = re.compile(r"/[!-~]*")


def parse_health_check_path(text: str) -> str:
    """
    Check an C{--active-health-check-path} value: exactly what the probe can
    put in its request line, C{/} followed by printable ASCII without spaces.

    @return: C{text} unchanged.
    @raise ValueError: otherwise (non-ASCII text must be percent-encoded).
    """
    if not text.startswith("/"):
        raise ValueError("must start with /")
    if not _HEALTH_CHECK_PATH.fullmatch(text):
        raise ValueError(
            "must contain only printable ASCII without spaces "
            "(percent-encode the rest, e.g. /caf%C3%A9)"
        )
    return text


MAX_DEFAULT_HEALTH_CHECK_TIMEOUT = 2.0
"""The longest probe timeout chosen when none is configured."""


def default_health_check_timeout(interval: float) -> float:
    """
    The probe timeout used when C{--health-check-timeout} is not given: the
    lesser of the interval and L{MAX_DEFAULT_HEALTH_CHECK_TIMEOUT}, or that
    maximum when active checks are off (an interval of 0).

    This is the only place that computes it.
    """
    if interval > 0:
        return min(interval, MAX_DEFAULT_HEALTH_CHECK_TIMEOUT)
    return MAX_DEFAULT_HEALTH_CHECK_TIMEOUT


# The web application firewall.


WAF_MODES: tuple[str, ...] = ("off", "detect", "block")
"""The values of C{--waf}."""


def parse_waf_mode(text: str) -> str:
    """
    Parse C{--waf}: C{off}, C{detect} or C{block} (any case).

    @raise ValueError: on anything else.
    """
    mode = text.strip().lower()
    if mode not in WAF_MODES:
        raise ValueError("must be one of off, detect, block")
    return mode


def parse_waf_paranoia(text: str) -> int:
    """
    Parse C{--waf-paranoia}: the CRS paranoia level, 1 to 4.

    @raise ValueError: on anything else.
    """
    if text.strip() not in ("1", "2", "3", "4"):
        raise ValueError("must be a paranoia level from 1 to 4")
    return int(text.strip())


def parse_rule_pattern(text: str) -> str:
    """
    Check a C{--waf-rules} value: a file name or a glob pattern.

    @return: C{text} unchanged (files are found when the rules load).
    @raise ValueError: when it is empty.
    """
    if not text.strip():
        raise ValueError("is empty: give a rule file or a glob such as rules/*.conf")
    return text


# Files: the admin token (issue 13), and TLS.


def parse_file_path(text: str) -> str:
    """
    Check a file name given as an option value (its contents are read where
    it is used).

    @return: C{text} unchanged.
    @raise ValueError: when it is empty.
    """
    if not text.strip():
        raise ValueError("is empty")
    return text


# TLS (balancebeam.tls reads the files' contents when the service is built;
# here they are only checked to be there and readable).


def parse_readable_file(text: str) -> str:
    """
    Check a file option (a certificate or CA file): a regular file this
    process can read.

    @return: the file's absolute path, so that a reload reads the same file
        whatever the working directory is by then.
    @raise ValueError: when it is empty, missing, not a file, or unreadable.
    """
    if not text.strip():
        raise ValueError("is empty: give a file name")
    path = os.path.abspath(text)
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except OSError as error:
        raise ValueError(f"cannot be read: {error.strerror or error}") from None
    return path


def parse_readable_directory(text: str) -> str:
    """
    Check a directory option (C{--tls-cert-dir}): a directory this process
    can list.

    @return: the directory's absolute path.
    @raise ValueError: when it is empty, missing, not a directory, or cannot
        be listed.
    """
    if not text.strip():
        raise ValueError("is empty: give a directory")
    path = os.path.abspath(text)
    try:
        os.listdir(path)
    except NotADirectoryError:
        raise ValueError("is not a directory") from None
    except OSError as error:
        raise ValueError(f"cannot be listed: {error.strerror or error}") from None
    return path
