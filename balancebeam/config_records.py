"""
The frozen configuration records: L{BalancerConfig} and the records it
holds (L{Timeouts}, L{Limits}, L{CacheConfig}, L{WafConfig}, L{TlsConfig}).

Every field's default is parsed from the option table
(L{balancebeam.config_options.OPTIONS}), so built directly, a record holds
the same defaults as one built by L{balancebeam.config.build_config}.
Callers import the records from L{balancebeam.config}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from balancebeam.config_addresses import UpstreamSpec, bind_to_endpoint
from balancebeam.config_options import DEFAULT_BIND, _default
from balancebeam.config_values import default_health_check_timeout


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
        Whether there is an HTTPS listener of its own (C{listen}).
        """
        return bool(self.listen)

    @property
    def serving(self) -> bool:
        """
        Whether HTTPS is served, and so a certificate store loaded: on
        C{listen}, or on the sockets a master shares with its workers
        (whose C{listen} is empty).
        """
        return bool(self.certificates or self.certificate_dirs)


@dataclass(frozen=True)
class BalancerConfig:
    """
    Everything L{balancebeam.service.BalancerService} needs to build the balancer.

    L{balancebeam.config.build_config} builds one from option values. Built
    directly, every field not given takes the option's default;
    C{health_check_timeout} is then that of the default interval, so give it
    with a short C{active_health_check_interval}
    (L{default_health_check_timeout}).
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
    #: The most client connections one client IP address may hold open at
    #: once (in this process), or 0 for no such limit.
    max_connections_per_client: int = _default("max-connections-per-client")
    #: The listen queue length of every socket balancebeam listens on
    #: (L{balancebeam.config_addresses.with_backlog}).
    listen_backlog: int = _default("listen-backlog")
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
