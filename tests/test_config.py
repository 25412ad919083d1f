"""
Tests for L{balancebeam.config}: the option table, every parser and
L{build_config}.

L{GOOD_VALUES} and L{BAD_VALUES} cover every option; L{tests.test_tap} runs
the same tables through the command line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from balancebeam import config
from balancebeam.config import (
    FLAG,
    LIST,
    OPTIONS,
    VALUE,
    BalancerConfig,
    CacheConfig,
    ConfigError,
    Limits,
    Timeouts,
    TlsConfig,
    UpstreamSpec,
    WafConfig,
    build_config,
    with_backlog,
)
from balancebeam.config_values import (
    default_health_check_timeout,
    parse_health_check_path,
    parse_host_port,
    parse_rate_limit_backend,
    parse_redis_url,
    parse_size,
    parse_trusted_network,
)

#: A file this process can read (the option parsers only check that; the
#: certificates themselves are loaded by the service, see tests.test_tls_balancer).
READABLE_FILE = os.path.abspath(__file__)

#: A directory this process can list.
READABLE_DIRECTORY = os.path.dirname(READABLE_FILE)

#: A path that does not exist.
MISSING = "/nonexistent/balancebeam/missing.pem"

#: Values every case is built on, unless it gives C{upstream} or C{demo} itself.
BASE: Mapping[str, object] = {"upstream": ["a:1"]}


def with_base(values: Mapping[str, object]) -> dict[str, object]:
    """
    C{values} with L{BASE} added, unless they say which upstreams there are.
    """
    if "upstream" in values or "demo" in values:
        return dict(values)
    return {**BASE, **values}


#: For every option: values given, what to read from the config, and what it must be.
GOOD_VALUES: list[tuple[str, Mapping[str, object], Callable[[BalancerConfig], object], object]] = [
    ("bind", {"bind": "127.0.0.1:8080"}, lambda c: c.listen, ("tcp:8080:interface=127.0.0.1",)),
    ("bind", {"bind": "[::1]:8080"}, lambda c: c.listen, ("tcp:8080:interface=\\:\\:1",)),
    (
        "listen",
        {"listen": ["tcp:8081", "tcp:8082:interface=127.0.0.1"]},
        lambda c: c.listen,
        ("tcp:8081", "tcp:8082:interface=127.0.0.1"),
    ),
    (
        "upstream",
        {"upstream": ["127.0.0.1:8082", "[::1]:8080", "backend.example:80"]},
        lambda c: c.upstreams,
        (
            UpstreamSpec("127.0.0.1", 8082),
            UpstreamSpec("::1", 8080),
            UpstreamSpec("backend.example", 80),
        ),
    ),
    (
        "upstream-weight",
        {"upstream": ["a:1", "[::1]:2"], "upstream-weight": ["[::1]:2=3"]},
        lambda c: c.upstreams,
        (UpstreamSpec("a", 1, 1), UpstreamSpec("::1", 2, 3)),
    ),
    (
        "upstream",
        {"upstream": ["https://a.example", "http://[::1]", "HTTPS://10.0.0.1:8443/", "b:2"]},
        lambda c: c.upstreams,
        (
            UpstreamSpec("a.example", 443, tls=True),
            UpstreamSpec("::1", 80),
            UpstreamSpec("10.0.0.1", 8443, tls=True),
            UpstreamSpec("b", 2),
        ),
    ),
    (
        "upstream-weight",
        {"upstream": ["https://a:1", "b:2"], "upstream-weight": ["https://a:1=4", "http://b:2=2"]},
        lambda c: c.upstreams,
        (UpstreamSpec("a", 1, 4, tls=True), UpstreamSpec("b", 2, 2)),
    ),
    (
        "tls-bind",
        {"tls-bind": ["127.0.0.1:8443", "[::1]:8443"], "tls-cert": [READABLE_FILE]},
        lambda c: (c.tls.listen, c.listen),
        (("tcp:8443:interface=127.0.0.1", "tcp:8443:interface=\\:\\:1"), ()),
    ),
    (
        "tls-bind",
        {"bind": "127.0.0.1:8080", "tls-bind": ["127.0.0.1:8443"], "tls-cert": [READABLE_FILE]},
        lambda c: (c.listen, c.tls.listen),
        (("tcp:8080:interface=127.0.0.1",), ("tcp:8443:interface=127.0.0.1",)),
    ),
    (
        "tls-cert",
        {
            "tls-bind": ["127.0.0.1:8443"],
            "tls-cert": [READABLE_FILE, os.path.join(READABLE_DIRECTORY, ".", "test_config.py")],
        },
        lambda c: c.tls.certificates,
        (READABLE_FILE, READABLE_FILE),
    ),
    (
        "tls-cert-dir",
        {"tls-bind": ["127.0.0.1:8443"], "tls-cert-dir": [READABLE_DIRECTORY + "/"]},
        lambda c: (c.tls.certificates, c.tls.certificate_dirs),
        ((), (READABLE_DIRECTORY,)),
    ),
    (
        "upstream-ca",
        {"upstream": ["https://a:1"], "upstream-ca": READABLE_FILE},
        lambda c: c.tls.upstream_ca,
        READABLE_FILE,
    ),
    (
        "upstream-tls-name",
        {"upstream": ["https://10.0.0.1:443"], "upstream-tls-name": "API.Example."},
        lambda c: c.tls.upstream_name,
        "api.example",
    ),
    (
        "upstream-tls-name",
        {"upstream": ["https://a:1"], "upstream-tls-name": "[2001:DB8::1]"},
        lambda c: c.tls.upstream_name,
        "2001:db8::1",
    ),
    (
        "upstream-tls-verify",
        {"upstream": ["https://a:1"], "upstream-tls-verify": "none"},
        lambda c: c.tls.upstream_verify,
        "none",
    ),
    (
        "upstream-client-cert",
        {"upstream": ["https://a:1"], "upstream-client-cert": READABLE_FILE},
        lambda c: c.tls.upstream_client_cert,
        READABLE_FILE,
    ),
    ("demo", {"demo": True}, lambda c: c.upstreams, ()),
    ("strategy", {"strategy": "p2c"}, lambda c: c.strategy, "p2c"),
    (
        "active-health-check-interval",
        {"active-health-check-interval": "0.5"},
        lambda c: (c.active_health_check_interval, c.health_check_timeout),
        (0.5, 0.5),
    ),
    (
        "active-health-check-path",
        {"active-health-check-path": "/health?full=1&x=%C3%A9"},
        lambda c: c.active_health_check_path,
        "/health?full=1&x=%C3%A9",
    ),
    (
        "health-check-timeout",
        {"health-check-timeout": "7.5"},
        lambda c: c.health_check_timeout,
        7.5,
    ),
    ("health-check-rise", {"health-check-rise": "3"}, lambda c: c.health_check_rise, 3),
    ("health-check-fall", {"health-check-fall": "4"}, lambda c: c.health_check_fall, 4),
    (
        "passive-retry-interval",
        {"passive-retry-interval": "0"},
        lambda c: c.passive_retry_interval,
        0.0,
    ),
    ("connect-timeout", {"connect-timeout": "1.5"}, lambda c: c.timeouts.connect, 1.5),
    ("upstream-timeout", {"upstream-timeout": "2"}, lambda c: c.timeouts.upstream, 2.0),
    (
        "client-header-timeout",
        {"client-header-timeout": "3"},
        lambda c: c.timeouts.client_header,
        3.0,
    ),
    ("client-idle-timeout", {"client-idle-timeout": "4"}, lambda c: c.timeouts.client_idle, 4.0),
    ("client-body-timeout", {"client-body-timeout": "5"}, lambda c: c.timeouts.client_body, 5.0),
    (
        "tunnel-idle-timeout",
        {"tunnel-idle-timeout": "90.5"},
        lambda c: c.timeouts.tunnel_idle,
        90.5,
    ),
    ("queue-timeout", {"queue-timeout": "0"}, lambda c: c.queue_timeout, 0.0),
    ("max-head-size", {"max-head-size": "32k"}, lambda c: c.limits.max_head_size, 32768),
    ("max-header-count", {"max-header-count": "7"}, lambda c: c.limits.max_header_count, 7),
    ("max-body-size", {"max-body-size": "10m"}, lambda c: c.limits.max_body_size, 10485760),
    ("max-body-size", {"max-body-size": "0"}, lambda c: c.limits.max_body_size, None),
    (
        "max-client-connections",
        {"max-client-connections": "0"},
        lambda c: c.max_client_connections,
        0,
    ),
    (
        "max-connections-per-client",
        {"max-connections-per-client": "8"},
        lambda c: c.max_connections_per_client,
        8,
    ),
    ("listen-backlog", {"listen-backlog": "4096"}, lambda c: c.listen_backlog, 4096),
    ("listen-backlog", {"listen-backlog": "1"}, lambda c: c.listen_backlog, 1),
    ("shutdown-timeout", {"shutdown-timeout": "2.5"}, lambda c: c.shutdown_timeout, 2.5),
    (
        "max-requests-per-minute",
        {"max-requests-per-minute": "5"},
        lambda c: c.max_requests_per_minute,
        5,
    ),
    ("rate-limit-window", {"rate-limit-window": "10"}, lambda c: c.rate_limit_window, 10.0),
    (
        "rate-limit-algorithm",
        {"rate-limit-algorithm": "fixed"},
        lambda c: c.rate_limit_algorithm,
        "fixed",
    ),
    (
        "rate-limit-backend",
        {"rate-limit-backend": "redis://[::1]/3"},
        lambda c: c.rate_limit_backend,
        "redis://[::1]:6379/3",
    ),
    ("rate-limit-headers", {"rate-limit-headers": True}, lambda c: c.rate_limit_headers, True),
    (
        "rate-limit-redis-timeout",
        {"rate-limit-redis-timeout": "0.2"},
        lambda c: c.rate_limit_redis_timeout,
        0.2,
    ),
    (
        "rate-limit-on-error",
        {"rate-limit-on-error": "deny"},
        lambda c: c.rate_limit_on_error,
        "deny",
    ),
    ("rate-limit-max-keys", {"rate-limit-max-keys": "500"}, lambda c: c.rate_limit_max_keys, 500),
    (
        "trust-forwarded-for",
        {"trust-forwarded-for": ["10.1.2.3/8", "2001:db8::1"]},
        lambda c: c.trusted_proxies,
        ("10.0.0.0/8", "2001:db8::1/128"),
    ),
    (
        "pool-max-idle-per-upstream",
        {"pool-max-idle-per-upstream": "8"},
        lambda c: c.pool_max_idle_per_upstream,
        8,
    ),
    ("pool-idle-timeout", {"pool-idle-timeout": "4.5"}, lambda c: c.pool_idle_timeout, 4.5),
    (
        "pool-max-requests-per-connection",
        {"pool-max-requests-per-connection": "100"},
        lambda c: c.pool_max_requests_per_connection,
        100,
    ),
    ("pool-warm", {"pool-warm": "2"}, lambda c: c.pool_warm, 2),
    (
        "pool-max-connections-per-upstream",
        {"pool-max-connections-per-upstream": "16"},
        lambda c: c.pool_max_connections_per_upstream,
        16,
    ),
    ("access-log", {"access-log": True}, lambda c: c.access_log, True),
    ("cache-size", {"cache-size": "64M"}, lambda c: c.cache.size, 64 * 1024 * 1024),
    ("cache-max-object-size", {"cache-max-object-size": "2m"},
     lambda c: c.cache.max_object_size, 2 * 1024 * 1024),
    ("cache-lock-timeout", {"cache-lock-timeout": "0.5"}, lambda c: c.cache.lock_timeout, 0.5),
    ("cache-store-set-cookie", {"cache-store-set-cookie": True},
     lambda c: c.cache.store_set_cookie, True),
    ("waf", {"waf": "Off"}, lambda c: c.waf.mode, "off"),
    ("waf-rules", {"waf-rules": ["a.conf", "rules/*.conf"]}, lambda c: c.waf.rules,
     ("a.conf", "rules/*.conf")),
    ("waf-paranoia", {"waf-paranoia": "3"}, lambda c: c.waf.paranoia, 3),
    ("waf-anomaly-threshold", {"waf-anomaly-threshold": "10"},
     lambda c: c.waf.anomaly_threshold, 10),
    ("waf-body-limit", {"waf-body-limit": "64k"}, lambda c: c.waf.body_limit, 65536),
    ("waf-threads", {"waf-threads": "4"}, lambda c: c.waf.threads, 4),
    (
        "admin-bind",
        {"admin-bind": "127.0.0.1:9100"},
        lambda c: c.admin_bind,
        "tcp:9100:interface=127.0.0.1",
    ),
    (
        "admin-token-file",
        {"admin-bind": "0.0.0.0:9100", "admin-token-file": "/etc/bb/token"},
        lambda c: (c.admin_bind, c.admin_token_file),
        ("tcp:9100:interface=0.0.0.0", "/etc/bb/token"),
    ),
    ("workers", {"workers": "4"}, lambda c: c.workers, 4),
    ("workers", {"workers": "AUTO"}, lambda c: c.workers, config.usable_cpus()),
    (
        "workers",
        {"workers": "2", "max-requests-per-minute": "10", "rate-limit-backend": "redis://r"},
        lambda c: (c.workers, c.rate_limit_backend),
        (2, "redis://r:6379/0"),
    ),
    ("reuse-port", {"reuse-port": True, "workers": "2"}, lambda c: c.reuse_port, True),
]

#: For every option taking a value: bad values and the start of the error message.
BAD_VALUES: list[tuple[str, Mapping[str, object], str]] = [
    ("bind", {"bind": "0.0.0.0:70000"}, "--bind '0.0.0.0:70000': port 70000 is out of range"),
    ("bind", {"bind": "nocolon"}, "--bind 'nocolon' is not of the form HOST:PORT"),
    ("listen", {"listen": ["tcp:abc"]}, "--listen 'tcp:abc' is not a server endpoint"),
    ("listen", {"listen": ["nosuch:80"]}, "--listen 'nosuch:80' is not a server endpoint"),
    ("listen", {"listen": [""]}, "--listen '' is empty"),
    (
        "listen",
        {"listen": ["tcp:81", "tcp:81"]},
        "--listen 'tcp:81': this endpoint is given twice",
    ),
    ("upstream", {"upstream": ["nocolon"]}, "--upstream 'nocolon' is not of the form HOST:PORT"),
    ("upstream", {"upstream": ["ftp://a:1"]}, "--upstream 'ftp://a:1': scheme 'ftp' must be http"),
    (
        "upstream",
        {"upstream": ["https://a:1/api"]},
        "--upstream 'https://a:1/api' must be an address without a path",
    ),
    (
        "upstream",
        {"upstream": ["https://a:99999"]},
        "--upstream 'https://a:99999': port 99999 is out of range",
    ),
    ("upstream", {"upstream": ["https://"]}, "--upstream 'https://': '' is not of the form"),
    (
        "upstream",
        {"upstream": ["https://a:1", "http://a:1"]},
        "--upstream 'http://a:1': a:1 is given twice",
    ),
    (
        "tls-bind",
        {"tls-bind": ["127.0.0.1:8443"]},
        "--tls-bind '127.0.0.1:8443' has no certificate: give --tls-cert FILE or --tls-cert-dir",
    ),
    (
        "tls-bind",
        {"tls-bind": ["8443"], "tls-cert": [READABLE_FILE]},
        "--tls-bind '8443' is not of the form HOST:PORT",
    ),
    (
        "tls-bind",
        {"tls-bind": ["127.0.0.1:8443", "127.0.0.1:8443"], "tls-cert": [READABLE_FILE]},
        "--tls-bind '127.0.0.1:8443': this address is given twice",
    ),
    (
        "tls-bind",
        {"bind": "127.0.0.1:8443", "tls-bind": ["127.0.0.1:8443"], "tls-cert": [READABLE_FILE]},
        "--tls-bind '127.0.0.1:8443' is also a plain-HTTP listener (--bind)",
    ),
    (
        "tls-cert",
        {"tls-bind": ["127.0.0.1:8443"], "tls-cert": [MISSING]},
        f"--tls-cert '{MISSING}': cannot be read: No such file or directory",
    ),
    (
        "tls-cert",
        {"tls-bind": ["127.0.0.1:8443"], "tls-cert": [READABLE_DIRECTORY]},
        f"--tls-cert '{READABLE_DIRECTORY}' is a directory, not a file",
    ),
    ("tls-cert", {"tls-bind": ["127.0.0.1:8443"], "tls-cert": [""]}, "--tls-cert '' is empty"),
    (
        "tls-cert",
        {"tls-cert": [READABLE_FILE]},
        f"--tls-cert '{READABLE_FILE}' is given without --tls-bind",
    ),
    (
        "tls-cert-dir",
        {"tls-bind": ["127.0.0.1:8443"], "tls-cert-dir": ["/nonexistent/balancebeam"]},
        "--tls-cert-dir '/nonexistent/balancebeam': cannot be listed: No such file or directory",
    ),
    (
        "tls-cert-dir",
        {"tls-bind": ["127.0.0.1:8443"], "tls-cert-dir": [READABLE_FILE]},
        f"--tls-cert-dir '{READABLE_FILE}' is not a directory",
    ),
    (
        "tls-cert-dir",
        {"tls-cert-dir": [READABLE_DIRECTORY]},
        f"--tls-cert-dir '{READABLE_DIRECTORY}' is given without --tls-bind",
    ),
    (
        "upstream-ca",
        {"upstream": ["https://a:1"], "upstream-ca": MISSING},
        f"--upstream-ca '{MISSING}': cannot be read: No such file or directory",
    ),
    (
        "upstream-ca",
        {"upstream": ["a:1"], "upstream-ca": READABLE_FILE},
        f"--upstream-ca '{READABLE_FILE}': applies to TLS upstreams, and no --upstream is https://",
    ),
    (
        "upstream-tls-name",
        {"upstream": ["https://a:1"], "upstream-tls-name": "*.example"},
        "--upstream-tls-name '*.example' must be a DNS name (without wildcards) or an IP address",
    ),
    (
        "upstream-tls-name",
        {"upstream": ["http://a:1"], "upstream-tls-name": "a"},
        "--upstream-tls-name 'a': applies to TLS upstreams",
    ),
    (
        "upstream-tls-verify",
        {"upstream": ["https://a:1"], "upstream-tls-verify": "partial"},
        "--upstream-tls-verify 'partial' must be one of full, none",
    ),
    (
        "upstream-client-cert",
        {"upstream": ["https://a:1"], "upstream-client-cert": MISSING},
        f"--upstream-client-cert '{MISSING}': cannot be read: No such file or directory",
    ),
    (
        "upstream-client-cert",
        {"upstream-client-cert": READABLE_FILE},
        f"--upstream-client-cert '{READABLE_FILE}': applies to TLS upstreams",
    ),
    (
        "upstream",
        {"upstream": ["127.0.0.1:70000"]},
        "--upstream '127.0.0.1:70000': port 70000 is out of range 1-65535",
    ),
    (
        "upstream",
        {"upstream": ["::1:80"]},
        "--upstream '::1:80': put IPv6 addresses in brackets",
    ),
    ("upstream", {"upstream": ["[fe80::zz]:80"]}, "--upstream '[fe80::zz]:80': 'fe80::zz' is"),
    (
        "upstream",
        {"upstream": ["caf\u00e9.example:80"]},
        "--upstream 'caf\u00e9.example:80': host 'caf\u00e9.example' is not an IP address",
    ),
    ("upstream", {"upstream": ["a b:80"]}, "--upstream 'a b:80': host 'a b' is not"),
    ("upstream", {"upstream": ["a:1", "a:1"]}, "--upstream 'a:1': a:1 is given twice"),
    (
        "upstream",
        {"upstream": []},
        "--upstream is required: give at least one HOST:PORT "
        "(e.g. --upstream 127.0.0.1:8081), or use --demo",
    ),
    (
        "upstream-weight",
        {"upstream-weight": ["a:1"]},
        "--upstream-weight 'a:1' is not of the form HOST:PORT=WEIGHT",
    ),
    (
        "upstream-weight",
        {"upstream-weight": ["a:1=0"]},
        "--upstream-weight 'a:1=0': weight '0' must be a whole number of at least 1",
    ),
    (
        "upstream-weight",
        {"upstream-weight": ["b:2=3"]},
        "--upstream-weight 'b:2=3': b:2 is not an --upstream (configured: a:1)",
    ),
    (
        "upstream-weight",
        {"upstream-weight": ["https://a:1=3"]},
        "--upstream-weight 'https://a:1=3': a:1 is an --upstream over plain HTTP",
    ),
    (
        "upstream-weight",
        {"upstream": ["https://a:1"], "upstream-weight": ["http://a:1=3"]},
        "--upstream-weight 'http://a:1=3': a:1 is an --upstream over https",
    ),
    (
        "upstream-weight",
        {"upstream-weight": ["a:1=2", "a:1=3"]},
        "--upstream-weight 'a:1=3': a:1 is weighted twice",
    ),
    (
        "strategy",
        {"strategy": "fastest"},
        "--strategy 'fastest' must be one of random, round-robin, least-connections, p2c",
    ),
    (
        "active-health-check-interval",
        {"active-health-check-interval": "-1"},
        "--active-health-check-interval '-1' must be a finite number of at least 0",
    ),
    (
        "active-health-check-interval",
        {"active-health-check-interval": "nan"},
        "--active-health-check-interval 'nan' must be a finite number",
    ),
    (
        "active-health-check-path",
        {"active-health-check-path": "/caf\u00e9"},
        "--active-health-check-path '/caf\u00e9' must contain only printable ASCII without"
        " spaces (percent-encode the rest, e.g. /caf%C3%A9)",
    ),
    (
        "active-health-check-path",
        {"active-health-check-path": "health"},
        "--active-health-check-path 'health' must start with /",
    ),
    (
        "active-health-check-path",
        {"active-health-check-path": "/a b"},
        "--active-health-check-path '/a b' must contain only printable ASCII",
    ),
    (
        "health-check-timeout",
        {"health-check-timeout": "0"},
        "--health-check-timeout '0' must be a finite number greater than 0",
    ),
    (
        "health-check-rise",
        {"health-check-rise": "0"},
        "--health-check-rise '0' must be a whole number of at least 1",
    ),
    (
        "health-check-fall",
        {"health-check-fall": "1.5"},
        "--health-check-fall '1.5' must be a whole number of at least 1",
    ),
    (
        "passive-retry-interval",
        {"passive-retry-interval": "-3"},
        "--passive-retry-interval '-3' must be a finite number",
    ),
    (
        "connect-timeout",
        {"connect-timeout": "0"},
        "--connect-timeout '0' must be a finite number greater than 0",
    ),
    ("upstream-timeout", {"upstream-timeout": "inf"}, "--upstream-timeout 'inf' must be a finite"),
    (
        "client-header-timeout",
        {"client-header-timeout": "ten"},
        "--client-header-timeout 'ten' is not a number",
    ),
    (
        "client-idle-timeout",
        {"client-idle-timeout": "-60"},
        "--client-idle-timeout '-60' must be a finite number",
    ),
    (
        "client-body-timeout",
        {"client-body-timeout": ""},
        "--client-body-timeout '' is not a number",
    ),
    (
        "tunnel-idle-timeout",
        {"tunnel-idle-timeout": "0"},
        "--tunnel-idle-timeout '0' must be a finite number greater than 0",
    ),
    ("queue-timeout", {"queue-timeout": "-1"}, "--queue-timeout '-1' must be a finite number"),
    ("max-head-size", {"max-head-size": "0"}, "--max-head-size '0' must be at least 1 byte"),
    ("max-head-size", {"max-head-size": "lots"}, "--max-head-size 'lots' is not a size"),
    (
        "max-header-count",
        {"max-header-count": "0"},
        "--max-header-count '0' must be a whole number of at least 1",
    ),
    ("max-body-size", {"max-body-size": "-1"}, "--max-body-size '-1' is not a size"),
    (
        "max-client-connections",
        {"max-client-connections": "many"},
        "--max-client-connections 'many' must be a whole number of at least 0",
    ),
    (
        "max-connections-per-client",
        {"max-connections-per-client": "-1"},
        "--max-connections-per-client '-1' must be a whole number of at least 0",
    ),
    (
        "listen-backlog",
        {"listen-backlog": "0"},
        "--listen-backlog '0' must be a whole number from 1 to 65535",
    ),
    (
        "listen-backlog",
        {"listen-backlog": "65536"},
        "--listen-backlog '65536' must be a whole number from 1 to 65535",
    ),
    (
        "listen-backlog",
        {"listen-backlog": "1.5"},
        "--listen-backlog '1.5' must be a whole number from 1 to 65535",
    ),
    (
        "shutdown-timeout",
        {"shutdown-timeout": "-1"},
        "--shutdown-timeout '-1' must be a finite number",
    ),
    (
        "max-requests-per-minute",
        {"max-requests-per-minute": "-5"},
        "--max-requests-per-minute '-5' must be a whole number of at least 0",
    ),
    (
        "max-requests-per-minute",
        {"max-requests-per-minute": "\u0661\u0662"},
        "--max-requests-per-minute '\u0661\u0662' must be a whole number",
    ),
    (
        "rate-limit-window",
        {"rate-limit-window": "0"},
        "--rate-limit-window '0' must be a finite number greater",
    ),
    (
        "rate-limit-algorithm",
        {"rate-limit-algorithm": "leaky"},
        "--rate-limit-algorithm 'leaky' must be one of fixed, sliding",
    ),
    (
        "rate-limit-backend",
        {"rate-limit-backend": "redis"},
        "--rate-limit-backend 'redis' must be memory or a URL of the form redis://HOST:PORT/DB",
    ),
    (
        "rate-limit-backend",
        {"rate-limit-backend": "redis://h:1/x"},
        "--rate-limit-backend 'redis://h:1/x': database 'x' must be a number",
    ),
    (
        "rate-limit-backend",
        {"rate-limit-backend": "redis://h:99999/0"},
        "--rate-limit-backend 'redis://h:99999/0': port 99999 is out of range",
    ),
    (
        "rate-limit-backend",
        {"rate-limit-backend": "redis://u:p@h:1/0"},
        "--rate-limit-backend 'redis://u:p@h:1/0': credentials in the URL are not supported",
    ),
    (
        "rate-limit-redis-timeout",
        {"rate-limit-redis-timeout": "0"},
        "--rate-limit-redis-timeout '0' must be a finite number greater than 0",
    ),
    (
        "rate-limit-on-error",
        {"rate-limit-on-error": "maybe"},
        "--rate-limit-on-error 'maybe' must be one of allow, deny",
    ),
    (
        "rate-limit-max-keys",
        {"rate-limit-max-keys": "0"},
        "--rate-limit-max-keys '0' must be a whole number of at least 1",
    ),
    (
        "trust-forwarded-for",
        {"trust-forwarded-for": ["10.0.0.0/33"]},
        "--trust-forwarded-for '10.0.0.0/33' is not an IP network",
    ),
    (
        "trust-forwarded-for",
        {"trust-forwarded-for": ["everyone"]},
        "--trust-forwarded-for 'everyone' is not an IP network",
    ),
    (
        "pool-max-idle-per-upstream",
        {"pool-max-idle-per-upstream": "-1"},
        "--pool-max-idle-per-upstream '-1' must be a whole number",
    ),
    (
        "pool-idle-timeout",
        {"pool-idle-timeout": "0"},
        "--pool-idle-timeout '0' must be a finite number greater than 0",
    ),
    (
        "pool-max-requests-per-connection",
        {"pool-max-requests-per-connection": "x"},
        "--pool-max-requests-per-connection 'x' must be a whole number",
    ),
    (
        "pool-warm",
        {"pool-warm": "33"},
        "--pool-warm '33': cannot exceed --pool-max-idle-per-upstream (32)",
    ),
    (
        "pool-warm",
        {"pool-warm": "4", "pool-max-connections-per-upstream": "2"},
        "--pool-warm '4': cannot exceed --pool-max-connections-per-upstream (2)",
    ),
    (
        "pool-max-connections-per-upstream",
        {"pool-max-connections-per-upstream": "1.5"},
        "--pool-max-connections-per-upstream '1.5' must be a whole number",
    ),
    ("cache-size", {"cache-size": "big"}, "--cache-size 'big' is not a size"),
    ("cache-max-object-size", {"cache-max-object-size": "0"},
     "--cache-max-object-size '0' must be at least 1 byte"),
    ("cache-lock-timeout", {"cache-lock-timeout": "-1"},
     "--cache-lock-timeout '-1' must be a finite number"),
    ("waf", {"waf": "on"}, "--waf 'on' must be one of off, detect, block"),
    ("waf-rules", {"waf-rules": [" "]}, "--waf-rules ' ' is empty"),
    ("waf-paranoia", {"waf-paranoia": "5"}, "--waf-paranoia '5' must be a paranoia level"),
    ("waf-anomaly-threshold", {"waf-anomaly-threshold": "0"},
     "--waf-anomaly-threshold '0' must be a whole number of at least 1"),
    ("waf-body-limit", {"waf-body-limit": "lots"}, "--waf-body-limit 'lots' is not a size"),
    ("waf-threads", {"waf-threads": "0"},
     "--waf-threads '0' must be a whole number of at least 1"),
    ("admin-bind", {"admin-bind": "9100"}, "--admin-bind '9100' is not of the form HOST:PORT"),
    (
        "admin-bind",
        {"admin-bind": "0.0.0.0:9100"},
        "--admin-bind '0.0.0.0:9100' is not a loopback address: give --admin-token-file",
    ),
    (
        "admin-bind",
        {"admin-bind": "admin.example:9100"},
        "--admin-bind 'admin.example:9100' is not a loopback address",
    ),
    (
        "admin-token-file",
        {"admin-bind": "[::1]:9100", "admin-token-file": " "},
        "--admin-token-file ' ' is empty",
    ),
    (
        "admin-token-file",
        {"admin-token-file": "/etc/bb/token"},
        "--admin-token-file '/etc/bb/token' is given without --admin-bind",
    ),
    ("workers", {"workers": "0"}, "--workers '0' must be a whole number of at least 1"),
    ("workers", {"workers": "some"}, "--workers 'some' must be a whole number of at least 1"),
    ("workers", {"workers": "257"}, "--workers '257' must be auto or a whole number from 1"),
    (
        "workers",
        {"workers": "2", "max-requests-per-minute": "100"},
        "--workers '2': cannot share the memory rate limiter: each of the 2 workers would "
        "allow --max-requests-per-minute on its own (2 times the limit); use "
        "--rate-limit-backend redis://HOST:PORT/DB",
    ),
    (
        "listen",
        {"workers": "3", "listen": ["tcp:81", "unix:/run/bb.sock"]},
        "--listen 'unix:/run/bb.sock' is a unix socket, which --workers 3 cannot share",
    ),
]

#: For every flag: a value of the wrong type (possible in a config file, not on the command line).
BAD_FLAGS: list[tuple[str, Mapping[str, object], str]] = [
    ("reuse-port", {"reuse-port": "yes"}, "--reuse-port 'yes' must be true or false"),
    ("demo", {"demo": "yes"}, "--demo 'yes' must be true or false"),
    ("rate-limit-headers", {"rate-limit-headers": 1}, "--rate-limit-headers 1 must be true"),
    ("access-log", {"access-log": None}, "--access-log must be true or false"),
    ("cache-store-set-cookie", {"cache-store-set-cookie": "no"},
     "--cache-store-set-cookie 'no' must be true or false"),
]


class OptionTableTests(SynchronousTestCase):
    """
    L{OPTIONS}: one entry per option, consistent with the records.
    """

    def test_keys_are_names(self) -> None:
        """
        Each option is stored under its own name, and the table cannot be changed.
        """
        self.assertEqual([name for name in OPTIONS], [o.name for o in OPTIONS.values()])

        def change() -> None:
            # The point of the test: Mapping has no __setitem__ for mypy either.
            OPTIONS["x"] = OPTIONS["bind"]  # type: ignore[index]

        self.assertRaises(TypeError, change)

    def test_kinds(self) -> None:
        """
        Flags have no parser and no default; the others have a parser.
        """
        for option in OPTIONS.values():
            self.assertIn(option.kind, (VALUE, LIST, FLAG), option.name)
            if option.kind == FLAG:
                self.assertEqual((option.parse, option.default), (None, None), option.name)
            else:
                self.assertIsNotNone(option.parse, option.name)
            if option.kind == LIST:
                self.assertIsNone(option.default, option.name)

    def test_fields_exist(self) -> None:
        """
        Every field named by an option is a field of L{BalancerConfig} (or of
        its L{Timeouts} or L{Limits}), and no two options set the same field.
        """
        records = {
            "": {f.name for f in dataclasses.fields(BalancerConfig)},
            "timeouts": {f.name for f in dataclasses.fields(Timeouts)},
            "limits": {f.name for f in dataclasses.fields(Limits)},
            "waf": {f.name for f in dataclasses.fields(WafConfig)},
            "cache": {f.name for f in dataclasses.fields(CacheConfig)},
            "tls": {f.name for f in dataclasses.fields(TlsConfig)},
        }
        seen = []
        for option in OPTIONS.values():
            if option.field is not None:
                record, _, name = option.field.rpartition(".")
                self.assertIn(name, records[record], option.name)
                seen.append(option.field)
        self.assertEqual(len(seen), len(set(seen)))
        self.assertIn("timeouts.tunnel_idle", seen)

    def test_record_defaults_are_option_defaults(self) -> None:
        """
        A configuration built from one upstream equals the record built
        directly with that upstream: both take their defaults from the table.
        """
        self.assertEqual(
            build_config({"upstream": ["a:1"]}), BalancerConfig(upstreams=(UpstreamSpec("a", 1),))
        )

    def test_defaults(self) -> None:
        """
        The defaults are those of the original balancebeam and the documentation.
        """
        self.assertEqual(
            build_config({"upstream": ["127.0.0.1:8081"]}),
            BalancerConfig(
                upstreams=(UpstreamSpec("127.0.0.1", 8081),),
                listen=("tcp:1100:interface=0.0.0.0",),
                timeouts=Timeouts(
                    connect=5.0,
                    upstream=60.0,
                    client_header=10.0,
                    client_idle=60.0,
                    client_body=60.0,
                    tunnel_idle=3600.0,
                ),
                limits=Limits(max_head_size=16384, max_header_count=100, max_body_size=None),
                strategy="random",
                active_health_check_interval=10.0,
                active_health_check_path="/",
                health_check_timeout=2.0,
                health_check_rise=2,
                health_check_fall=2,
                passive_retry_interval=10.0,
                max_requests_per_minute=0,
                rate_limit_window=60.0,
                rate_limit_algorithm="sliding",
                rate_limit_backend="memory",
                rate_limit_headers=False,
                rate_limit_redis_timeout=0.05,
                rate_limit_on_error="allow",
                rate_limit_max_keys=1_000_000,
                trusted_proxies=(),
                pool_max_idle_per_upstream=32,
                pool_idle_timeout=30.0,
                pool_max_requests_per_connection=0,
                pool_warm=0,
                pool_max_connections_per_upstream=0,
                queue_timeout=10.0,
                access_log=False,
                max_client_connections=10000,
                max_connections_per_client=0,
                listen_backlog=511,
                shutdown_timeout=10.0,
            ),
        )

    def test_default_texts(self) -> None:
        """
        The public flags keep the defaults of the original balancebeam, as written.
        """
        self.assertEqual(
            [
                OPTIONS[name].default
                for name in (
                    "bind",
                    "active-health-check-interval",
                    "active-health-check-path",
                    "max-requests-per-minute",
                    "tunnel-idle-timeout",
                )
            ],
            ["0.0.0.0:1100", "10", "/", "0", "3600"],
        )
        self.assertEqual(config.DEFAULT_BIND, "0.0.0.0:1100")

    def test_choices_match_implementations(self) -> None:
        """
        The choices config accepts are exactly those the implementations know.
        """
        from balancebeam.ratelimit.memory import ALGORITHMS
        from balancebeam.ratelimit.redis import ON_ERROR_POLICIES
        from balancebeam.strategies import STRATEGY_NAMES

        self.assertEqual(config.STRATEGIES, STRATEGY_NAMES)
        self.assertEqual(config.RATE_LIMIT_ALGORITHMS, ALGORITHMS)
        self.assertEqual(config.RATE_LIMIT_ON_ERROR, ON_ERROR_POLICIES)


class TableCoverageTests(SynchronousTestCase):
    """
    L{GOOD_VALUES} and L{BAD_VALUES} cover every option, so a new option
    cannot be added without tests of both.
    """

    def test_every_option_has_a_good_value(self) -> None:
        """
        Each option has at least one good value case.
        """
        self.assertEqual({name for name, _, _, _ in GOOD_VALUES}, set(OPTIONS))

    def test_every_option_has_a_bad_value(self) -> None:
        """
        Each option taking a value has a bad value case, and each flag a bad type case.
        """
        names = {name for name, _, _ in BAD_VALUES}
        self.assertEqual(names, {o.name for o in OPTIONS.values() if o.kind != FLAG})
        self.assertEqual(
            {name for name, _, _ in BAD_FLAGS},
            {o.name for o in OPTIONS.values() if o.kind == FLAG},
        )


class BuildConfigTests(SynchronousTestCase):
    """
    L{build_config} on good and bad values of every option.
    """

    def assert_error(self, values: Mapping[str, object], option: str, message: str) -> None:
        """
        Building from C{values} raises a L{ConfigError} for C{option} whose
        text starts with C{message}.
        """
        error = self.assertRaises(ConfigError, build_config, values)
        self.assertEqual(error.option, option, str(error))
        self.assertTrue(str(error).startswith(message), f"{str(error)!r} vs {message!r}")
        self.assertIsInstance(error, ValueError)

    def test_good_values(self) -> None:
        """
        Each good value lands, normalised, in its field.
        """
        for name, values, getter, expected in GOOD_VALUES:
            self.assertEqual(getter(build_config(with_base(values))), expected, name)

    def test_bad_values(self) -> None:
        """
        Each bad value is a L{ConfigError} naming its option and the value.
        """
        for name, values, message in BAD_VALUES:
            self.assert_error(with_base(values), name, message)

    def test_bad_flags(self) -> None:
        """
        A flag given anything but a C{bool} is a L{ConfigError} naming it.
        """
        for name, values, message in BAD_FLAGS:
            self.assert_error(with_base(values), name, message)

    def test_health_check_cafe_path(self) -> None:
        """
        C{/café}, which the probe cannot send, is refused when the
        configuration is built (it used to crash the service later).
        """
        error = self.assertRaises(
            ConfigError, build_config, with_base({"active-health-check-path": "/caf\u00e9"})
        )
        self.assertEqual((error.option, error.value), ("active-health-check-path", "/caf\u00e9"))

    def test_unknown_keys(self) -> None:
        """
        A key that is not an option is refused by name, with the closest option as a hint.
        """
        self.assert_error(
            with_base({"upstream-timout": "5"}),
            "upstream-timout",
            "--upstream-timout is not an option (did you mean --upstream-timeout?)",
        )
        error = self.assertRaises(ConfigError, build_config, with_base({"zzz": "1"}))
        self.assertEqual(str(error), "--zzz is not an option")
        self.assertIsNone(error.value)

    def test_unknown_key_before_bad_value(self) -> None:
        """
        An unknown key is reported even when another value is bad too.
        """
        self.assert_error(
            {"upstream": ["nocolon"], "help": True}, "help", "--help is not an option"
        )

    def test_wrong_types(self) -> None:
        """
        A single string for a repeatable option, or a list for a single one, is refused.
        """
        self.assert_error({"upstream": "a:1"}, "upstream", "--upstream 'a:1' must be a list")
        self.assert_error({"upstream": ["a:1", 2]}, "upstream", "--upstream 2 must be a string")
        self.assert_error(
            with_base({"strategy": ["p2c"]}), "strategy", "--strategy ['p2c'] must be a string"
        )
        self.assert_error(
            with_base({"queue-timeout": True}), "queue-timeout", "--queue-timeout True must be"
        )

    def test_numbers_as_values(self) -> None:
        """
        Numbers are taken as their text, as a configuration file would give them.
        """
        built = build_config(
            with_base({"queue-timeout": 2.5, "pool-warm": 3, "rate-limit-window": 30})
        )
        self.assertEqual(
            (built.queue_timeout, built.pool_warm, built.rate_limit_window), (2.5, 3, 30.0)
        )

    def test_missing_upstreams(self) -> None:
        """
        No upstream is an error, unless C{demo} is on; an empty list counts as none.
        """
        self.assert_error({}, "upstream", "--upstream is required")
        self.assert_error({"upstream": []}, "upstream", "--upstream is required")
        self.assert_error({"demo": False}, "upstream", "--upstream is required")
        self.assertEqual(build_config({"demo": True}).upstreams, ())
        self.assertEqual(
            build_config({"demo": True, "upstream": ["b:2"]}).upstreams, (UpstreamSpec("b", 2),)
        )

    def test_repeated_upstreams(self) -> None:
        """
        The same upstream twice is refused, also when spelled differently.
        """
        self.assert_error(
            {"upstream": ["b:2", "a:1", "a:1"]}, "upstream", "--upstream 'a:1': a:1 is given twice"
        )
        self.assert_error(
            {"upstream": ["[::1]:8080", " [::1]:8080"]},
            "upstream",
            "--upstream ' [::1]:8080': [::1]:8080 is given twice",
        )

    def test_weights(self) -> None:
        """
        Weights apply to the upstream they name, in its canonical spelling;
        the order of upstreams is kept and the others keep weight 1.
        """
        built = build_config(
            {
                "upstream": ["c:3", "a:1", "[::1]:2"],
                "upstream-weight": ["[::1]:2=5", "a:1=2"],
            }
        )
        self.assertEqual(
            built.upstreams,
            (UpstreamSpec("c", 3, 1), UpstreamSpec("a", 1, 2), UpstreamSpec("::1", 2, 5)),
        )

    def test_weight_for_demo_only(self) -> None:
        """
        With C{demo} and no upstream, a weight names no configured upstream.
        """
        self.assert_error(
            {"demo": True, "upstream-weight": ["a:1=2"]},
            "upstream-weight",
            "--upstream-weight 'a:1=2': a:1 is not an --upstream (configured: none)",
        )

    def test_listen_and_bind(self) -> None:
        """
        Listen alone replaces the default bind; with an explicit bind, the bind comes first.
        """
        self.assertEqual(build_config(with_base({})).listen, ("tcp:1100:interface=0.0.0.0",))
        self.assertEqual(build_config(with_base({"listen": ["tcp:8081"]})).listen, ("tcp:8081",))
        self.assertEqual(
            build_config(with_base({"listen": ["tcp:8081"], "bind": "127.0.0.1:8080"})).listen,
            ("tcp:8080:interface=127.0.0.1", "tcp:8081"),
        )
        self.assert_error(
            with_base({"listen": ["tcp:8080:interface=127.0.0.1"], "bind": "127.0.0.1:8080"}),
            "listen",
            "--listen 'tcp:8080:interface=127.0.0.1': this endpoint is given twice",
        )

    def test_systemd_without_socket(self) -> None:
        """
        A systemd endpoint outside socket activation is an error pointing at the docs.
        """
        self.assert_error(
            with_base({"listen": ["systemd:domain=INET:index=0"]}),
            "listen",
            "--listen 'systemd:domain=INET:index=0' names a socket that systemd did not pass",
        )

    def test_health_check_timeout(self) -> None:
        """
        Without a timeout, the probe timeout is the lesser of the interval and
        2 seconds, and 2 seconds with checks off; a given timeout wins.
        """
        cases: list[tuple[dict[str, object], float]] = [
            ({}, 2.0),
            ({"active-health-check-interval": "0.5"}, 0.5),
            ({"active-health-check-interval": "0"}, 2.0),
            ({"active-health-check-interval": "0.5", "health-check-timeout": "7.5"}, 7.5),
        ]
        for values, timeout in cases:
            self.assertEqual(build_config(with_base(values)).health_check_timeout, timeout)

    def test_pool_warm_limits(self) -> None:
        """
        C{pool-warm} may equal its caps; an unlimited connection cap does not limit it.
        """
        built = build_config(
            with_base(
                {
                    "pool-warm": "4",
                    "pool-max-idle-per-upstream": "4",
                    "pool-max-connections-per-upstream": "4",
                }
            )
        )
        self.assertEqual(built.pool_warm, 4)
        self.assert_error(
            with_base({"pool-max-idle-per-upstream": "0", "pool-warm": "1"}),
            "pool-warm",
            "--pool-warm '1': cannot exceed --pool-max-idle-per-upstream (0)",
        )
        self.assertEqual(build_config(with_base({"pool-max-idle-per-upstream": "0"})).pool_warm, 0)

    def test_first_bad_value_in_table_order(self) -> None:
        """
        With several bad values, the one of the option first in the table is reported.
        """
        self.assert_error(
            {"upstream": ["a:1"], "access-log": "x", "connect-timeout": "0"},
            "connect-timeout",
            "--connect-timeout '0'",
        )


class ConfigErrorTests(SynchronousTestCase):
    """
    The text of L{ConfigError}.
    """

    def test_forms(self) -> None:
        """
        Predicates follow the value; other reasons follow a colon; no value, no quotes.
        """
        self.assertEqual(str(ConfigError("x", "is bad", "v")), "--x 'v' is bad")
        self.assertEqual(str(ConfigError("x", "must be good", "v")), "--x 'v' must be good")
        self.assertEqual(str(ConfigError("x", "port 0 is out", "v")), "--x 'v': port 0 is out")
        self.assertEqual(str(ConfigError("x", "is required")), "--x is required")

    def test_attributes(self) -> None:
        """
        The option, value and reason are kept apart for other front ends.
        """
        error = ConfigError("x", "is bad", "v")
        self.assertEqual((error.option, error.value, error.reason), ("x", "v", "is bad"))


class ParserTests(SynchronousTestCase):
    """
    The parsers on their own.
    """

    def test_health_check_path(self) -> None:
        """
        Exactly C{/} then printable ASCII without spaces is accepted.
        """
        for path in ["/", "/health", "/h?x=1&y=%20", "/~!$'()*+,;=:@"]:
            self.assertEqual(parse_health_check_path(path), path)
        for path in ["", "health", "/a b", "/caf\u00e9", "/x\r\nEvil: 1", "/\x7f", "/\t"]:
            self.assertRaises(ValueError, parse_health_check_path, path)

    def test_host_port(self) -> None:
        """
        Hostnames, IPv4 and bracketed IPv6 are accepted; other hosts are refused.
        """
        self.assertEqual(parse_host_port(" web-1.example_x.:80"), ("web-1.example_x.", 80))
        self.assertEqual(parse_host_port("10.0.0.5:8080"), ("10.0.0.5", 8080))
        self.assertEqual(parse_host_port("[2001:db8::7]:443"), ("2001:db8::7", 443))
        for text in [
            ":80",
            "a..b:80",
            "-a:80",
            "a/b:80",
            "a=b:80",
            "caf\u00e9:80",
            f"{'a' * 64}:80",
            "a:\u0661",
            "a:0",
            "[::1]80",
            "[::1:80",
        ]:
            self.assertRaises(ValueError, parse_host_port, text)

    def test_size(self) -> None:
        """
        Sizes take k, m and g suffixes in powers of 1024, also spelled kb or KiB.
        """
        cases = {"0": 0, "512": 512, "16k": 16384, "16KiB": 16384, "2kb": 2048, "1g": 1024**3}
        for text, size in cases.items():
            self.assertEqual(parse_size(text), size)
        for text in ["", "k", "-1", "1.5k", "1t", "\u0661"]:
            self.assertRaises(ValueError, parse_size, text)

    def test_trusted_network(self) -> None:
        """
        Networks are canonical, host bits cleared; a bare address is a single host.
        """
        self.assertEqual(parse_trusted_network(" 10.1.2.3/8"), "10.0.0.0/8")
        self.assertEqual(parse_trusted_network("192.0.2.7"), "192.0.2.7/32")
        self.assertEqual(parse_trusted_network("2001:db8::1"), "2001:db8::1/128")
        for text in ["proxy.example", "10.0.0.0/33", "10.0.0.0/8/8", ""]:
            self.assertRaises(ValueError, parse_trusted_network, text)

    def test_redis_url(self) -> None:
        """
        Host, port and database are taken from the URL; port 6379 and
        database 0 are the defaults; IPv6 hosts come without brackets.
        """
        cases = {
            "redis://10.0.0.5:6380/3": ("10.0.0.5", 6380, 3),
            "redis://cache.internal": ("cache.internal", 6379, 0),
            "redis://cache.internal:7000/": ("cache.internal", 7000, 0),
            "redis://[::1]:6379/1": ("::1", 6379, 1),
            "redis://[::1]/2": ("::1", 6379, 2),
        }
        for url, parts in cases.items():
            self.assertEqual(parse_redis_url(url), parts)

    def test_bad_redis_url(self) -> None:
        """
        Other schemes, missing hosts, bad ports and databases, credentials and
        queries are refused.
        """
        for url in (
            "http://h:1/0",
            "h:6379",
            "redis://",
            "redis://:6379/0",
            "redis://h:0/0",
            "redis://h:70000/0",
            "redis://h:x/0",
            "redis://h:6379/db",
            "redis://h:6379/0/1",
            "redis://user:secret@h:6379/0",
            "redis://h:6379/0?timeout=1",
            "redis://h:6379/0#x",
            "redis://::1/0",
            "redis://[::1/0",
            "redis://caf\u00e9/0",
        ):
            self.assertRaises(ValueError, parse_redis_url, url)

    def test_rate_limit_backend(self) -> None:
        """
        C{memory} stays; Redis URLs get their canonical form, which
        L{parse_redis_url} splits back into the same parts.
        """
        cases = {
            "memory": "memory",
            "redis://cache": "redis://cache:6379/0",
            "redis://[::1]/3": "redis://[::1]:6379/3",
            "redis://[::1]:7000/": "redis://[::1]:7000/0",
            "redis://h:6380/007": "redis://h:6380/7",
        }
        for text, canonical in cases.items():
            self.assertEqual(parse_rate_limit_backend(text), canonical)
        self.assertEqual(
            parse_redis_url(parse_rate_limit_backend("redis://[::1]/3")), ("::1", 6379, 3)
        )
        for text in ["Memory", "disk", "", "redis://127.0.0.1:6379/x", "rediss://h/0"]:
            self.assertRaises(ValueError, parse_rate_limit_backend, text)

    def test_default_health_check_timeout(self) -> None:
        """
        The default probe timeout is the lesser of the interval and 2 s, or 2 s with checks off.
        """
        self.assertEqual(
            [default_health_check_timeout(i) for i in (10.0, 2.0, 0.5, 0.0)],
            [2.0, 2.0, 0.5, 2.0],
        )


class ListenBacklogTests(SynchronousTestCase):
    """
    L{with_backlog} gives endpoint descriptions the C{--listen-backlog}.
    """

    def listened_backlog(self, description: str) -> int:
        """
        The backlog Twisted listens with for C{description}.
        """
        reactor = MemoryReactor()
        serverFromString(reactor, description).listen(Factory())
        servers = reactor.tcpServers + reactor.unixServers
        [(_, _, backlog, *_)] = servers
        return int(backlog)

    def test_added(self) -> None:
        """
        The endpoint types that take a backlog get it, escaped arguments
        included; Twisted then listens with it.
        """
        for description, expected in [
            ("tcp:1100:interface=0.0.0.0", "tcp:1100:interface=0.0.0.0:backlog=511"),
            ("tcp6:1100:interface=\\:\\:1", "tcp6:1100:interface=\\:\\:1:backlog=511"),
            ("unix:/run/bb.sock:mode=660", "unix:/run/bb.sock:mode=660:backlog=511"),
            (
                "ssl:443:privateKey=C\\:/key.pem:certKey=cert.pem",
                "ssl:443:privateKey=C\\:/key.pem:certKey=cert.pem:backlog=511",
            ),
        ]:
            self.assertEqual(with_backlog(description, 511), expected)
        for description in ("tcp:1100:interface=127.0.0.1", "tcp6:1100", "unix:/nonexistent/a"):
            self.assertEqual(self.listened_backlog(with_backlog(description, 700)), 700)

    def test_own_backlog_kept(self) -> None:
        """
        An endpoint that gives its own backlog, by name or by position,
        keeps it.
        """
        for description, own in [
            ("tcp:1100:backlog=64", 64),
            ("tcp:1100:127.0.0.1:64", 64),
            ("tcp6:1100:64", 64),
            ("unix:/nonexistent/a:600:64", 64),
        ]:
            self.assertEqual(with_backlog(description, 511), description)
            self.assertEqual(self.listened_backlog(with_backlog(description, 511)), own)

    def test_other_types_left_alone(self) -> None:
        """
        A C{systemd:} socket is already listening (systemd chose its
        backlog), and endpoint types this does not know are left as given.
        """
        for description in ("systemd:domain=INET:index=0", "onion:443", "TCP:1100"):
            self.assertEqual(with_backlog(description, 511), description)


class DocumentationTests(SynchronousTestCase):
    """
    C{doc/options.md} documents every option with its default.
    """

    def test_every_option_documented(self) -> None:
        """
        Each option has exactly one row in the reference, showing its default as written.
        """
        path = os.path.join(os.path.dirname(os.path.dirname(config.__file__)), "doc", "options.md")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for name, option in OPTIONS.items():
            rows = [line for line in lines if line.startswith((f"| `--{name} ", f"| `--{name}`"))]
            self.assertEqual(len(rows), 1, name)
            if option.default is not None:
                self.assertIn(f"| `{option.default}` |", rows[0], name)
