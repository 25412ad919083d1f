"""
Configuration records and the pure parsers that build them.

Every parser raises C{ValueError} with a message fit for a usage error; the
command line (L{balancebeam.tap}) turns it into C{usage.UsageError}.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UpstreamSpec:
    """
    One upstream server as configured.

    @ivar host: hostname or IP literal (IPv6 without brackets).
    @ivar port: TCP port.
    @ivar weight: relative share of traffic for weighted strategies.
    """

    host: str
    port: int
    weight: int = 1

    @property
    def name(self) -> str:
        """
        The C{host:port} form used in logs and the C{Host} header.
        """
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_port(text: str) -> int:
    """
    Parse a TCP port number.

    @raise ValueError: when C{text} is not an integer in 1..65535.
    """
    if not text.isdigit():
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def parse_host_port(text: str) -> tuple[str, int]:
    """
    Split C{HOST:PORT} (or C{[IPv6]:PORT}) into its parts.

    @return: the host (IPv6 literals without brackets) and the port.
    @raise ValueError: when the text has no port, an empty host or a bad port.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close == -1 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r} is not of the form [IPV6]:PORT")
        host = text[1:close]
        port_text = text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} is not of the form HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: put IPv6 addresses in brackets, as [::1]:8080")
    if not host:
        raise ValueError(f"{text!r} has an empty host")
    return host, parse_port(port_text)


def parse_upstream(text: str) -> UpstreamSpec:
    """
    Parse an C{--upstream} value.
    """
    host, port = parse_host_port(text)
    return UpstreamSpec(host=host, port=port)


def parse_weight(text: str) -> tuple[str, int]:
    """
    Parse an C{--upstream-weight HOST:PORT=W} value.

    @return: the upstream name in canonical form and the weight.
    """
    target, equals, weight_text = text.rpartition("=")
    if not equals:
        raise ValueError(f"{text!r} is not of the form HOST:PORT=WEIGHT")
    host, port = parse_host_port(target)
    if not weight_text.isdigit() or int(weight_text) < 1:
        raise ValueError(f"weight {weight_text!r} must be a whole number of at least 1")
    return UpstreamSpec(host, port).name, int(weight_text)


def bind_to_endpoint(text: str) -> str:
    """
    Turn a C{--bind HOST:PORT} value into a Twisted server endpoint string.
    """
    host, port = parse_host_port(text)
    escaped = host.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}"


def parse_size(text: str) -> int:
    """
    Parse a byte count with an optional C{k}, C{m} or C{g} suffix (powers of 1024).

    @raise ValueError: when the text is not a non-negative size.
    """
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    cleaned = text.strip().lower().removesuffix("b").removesuffix("i")
    multiplier = 1
    if cleaned and cleaned[-1] in units:
        multiplier = units[cleaned[-1]]
        cleaned = cleaned[:-1]
    if not cleaned.isdigit():
        raise ValueError(f"{text!r} is not a size such as 16384, 16k or 10m")
    return int(cleaned) * multiplier


def parse_non_negative(text: str) -> float:
    """
    Parse a non-negative number of seconds (or a count).

    @raise ValueError: on negatives, NaN, infinities and non-numbers.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} must be a finite number of at least 0")
    return value


def parse_positive(text: str) -> float:
    """
    Parse a strictly positive, finite number.
    """
    value = parse_non_negative(text)
    if value == 0:
        raise ValueError(f"{text!r} must be greater than 0")
    return value


def parse_count(text: str, minimum: int = 0) -> int:
    """
    Parse a whole number of at least C{minimum}.
    """
    stripped = text.strip()
    if not stripped.isdigit() or int(stripped) < minimum:
        raise ValueError(f"{text!r} must be a whole number of at least {minimum}")
    return int(stripped)


@dataclass(frozen=True)
class Timeouts:
    """
    Deadlines, in seconds, for each phase of a request.

    @ivar connect: connecting to an upstream.
    @ivar upstream: waiting for the upstream's response head once the request is sent.
    @ivar client_header: whole request head, from its first byte.
    @ivar client_idle: an idle keep-alive client connection.
    @ivar client_body: inactivity while a request body is being received.
    @ivar tunnel_idle: a tunnel (after C{101 Switching Protocols}) with no
        byte in either direction.
    """

    connect: float = 5.0
    upstream: float = 60.0
    client_header: float = 10.0
    client_idle: float = 60.0
    client_body: float = 60.0
    tunnel_idle: float = 3600.0


@dataclass(frozen=True)
class Limits:
    """
    Size limits on what clients send.

    @ivar max_head_size: bytes in a request head (request line and headers).
    @ivar max_header_count: number of header lines in a request head.
    @ivar max_body_size: bytes in a request body, or C{None} for no limit.
    """

    max_head_size: int = 16 * 1024
    max_header_count: int = 100
    max_body_size: int | None = None


@dataclass(frozen=True)
class BalancerConfig:
    """
    Everything L{balancebeam.service.BalancerService} needs to build the balancer.
    """

    upstreams: tuple[UpstreamSpec, ...]
    listen: tuple[str, ...] = ("tcp:1100:interface=0.0.0.0",)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    strategy: str = "random"
    active_health_check_interval: float = 10.0
    active_health_check_path: str = "/"
    health_check_timeout: float | None = None
    health_check_rise: int = 2
    health_check_fall: int = 2
    passive_retry_interval: float = 10.0
    max_requests_per_minute: int = 0
    rate_limit_window: float = 60.0
    rate_limit_algorithm: str = "sliding"
    rate_limit_backend: str = "memory"
    rate_limit_headers: bool = False
    rate_limit_redis_timeout: float = 0.05
    rate_limit_on_error: str = "allow"
    rate_limit_max_keys: int = 1_000_000
    trusted_proxies: tuple[str, ...] = ()
    pool_max_idle_per_upstream: int = 32
    pool_idle_timeout: float = 30.0
    pool_max_requests_per_connection: int = 0
    pool_warm: int = 0
    pool_max_connections_per_upstream: int = 0
    queue_timeout: float = 10.0
    access_log: bool = False
    shutdown_timeout: float = 10.0
    max_client_connections: int = 10000
    #: Seed for the strategies' random source; C{None} (the default) seeds
    #: from the operating system. Tests fix it to make choices reproducible.
    random_seed: int | None = None
