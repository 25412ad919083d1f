"""
Parsers of addresses: hosts and ports, upstreams (L{UpstreamSpec}) and their
weights, listening endpoints, IP networks, Redis URLs and TLS names.

Each parser takes one string and returns the value, or raises C{ValueError}
with a reason that either quotes the part it rejects or is a predicate
(C{"is ..."}, C{"must ..."}) about the whole value
(L{balancebeam.config.ConfigError} names the option).
L{balancebeam.config_values} lists every parser; this module imports nothing
from the rest of balancebeam but L{balancebeam.config_numbers}.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import serverFromString

from balancebeam.config_numbers import _is_digits


@dataclass(frozen=True)
class UpstreamSpec:
    """
    One upstream server as configured.

    @ivar host: hostname or IP literal (IPv6 without brackets).
    @ivar port: TCP port.
    @ivar weight: relative share of traffic for weighted strategies.
    @ivar tls: whether connections to it use TLS (C{--upstream https://...}).
    """

    host: str
    port: int
    weight: int = 1
    tls: bool = False

    @property
    def name(self) -> str:
        """
        The C{host:port} form used in logs and the C{Host} header.
        """
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# Hosts and ports.


def parse_port(text: str) -> int:
    """
    Parse a TCP port number.

    @raise ValueError: when C{text} is not an integer in 1..65535.
    """
    if not _is_digits(text):
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_hostname(host: str) -> None:
    """
    Check that C{host} is a hostname that can go into a C{Host} header:
    dot-separated labels of ASCII letters, digits, C{-} and C{_} (a trailing
    dot is allowed).

    @raise ValueError: otherwise.
    """
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"host {host!r} is not an IP address or a hostname "
            "(ASCII letters, digits, - and _ in dot-separated labels)"
        )


def parse_host_port(text: str) -> tuple[str, int]:
    """
    Split C{HOST:PORT} (or C{[IPv6]:PORT}) into its parts.

    @return: the host (IPv6 literals without brackets) and the port.
    @raise ValueError: when the text has no port, an empty or malformed host
        or a bad port.
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
        _check_hostname(host)
    return host, parse_port(port_text)


# Upstreams and listeners.


UPSTREAM_SCHEMES: dict[str, tuple[bool, int]] = {"http": (False, 80), "https": (True, 443)}
"""
The schemes an upstream may be written with: whether each means TLS, and its
default port.
"""


def split_upstream_scheme(text: str) -> tuple[bool | None, str]:
    """
    Take the scheme off an upstream address: C{https://HOST[:PORT]} is TLS,
    C{http://HOST[:PORT]} plain; a port left out is the scheme's default
    (443, 80). One trailing C{/} is allowed; a path is not.

    @return: C{True} for C{https://}, C{False} for C{http://}, C{None} when
        no scheme was written; and C{HOST:PORT}.
    @raise ValueError: on another scheme, or a path after the address.
    """
    text = text.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        return None, text
    known = UPSTREAM_SCHEMES.get(scheme.lower())
    if known is None:
        raise ValueError(f"scheme {scheme!r} must be http or https")
    tls, default_port = known
    if rest.endswith("/"):
        rest = rest[:-1]
    if "/" in rest or "?" in rest or "#" in rest:
        raise ValueError("must be an address without a path, such as https://HOST:PORT")
    bracketed = rest.startswith("[") and rest.endswith("]")
    if bracketed or (rest and ":" not in rest):
        rest = f"{rest}:{default_port}"
    return tls, rest


def parse_upstream(text: str) -> UpstreamSpec:
    """
    Parse an C{--upstream} value: C{HOST:PORT} or C{http://HOST[:PORT]}
    (plain), or C{https://HOST[:PORT]} (TLS).
    """
    tls, address = split_upstream_scheme(text)
    host, port = parse_host_port(address)
    return UpstreamSpec(host=host, port=port, tls=bool(tls))


def parse_weight(text: str) -> tuple[str, bool | None, int]:
    """
    Parse an C{--upstream-weight [SCHEME://]HOST:PORT=W} value.

    @return: the upstream name in canonical form (C{HOST:PORT}), whether
        the scheme written says TLS (C{None} when none is written), and the
        weight.
    @raise ValueError: when C{text} is not of that form or W is not a whole
        number of at least 1.
    """
    target, equals, weight_text = text.rpartition("=")
    if not equals:
        raise ValueError("is not of the form HOST:PORT=WEIGHT")
    tls, address = split_upstream_scheme(target)
    host, port = parse_host_port(address)
    if not _is_digits(weight_text) or int(weight_text) < 1:
        raise ValueError(f"weight {weight_text!r} must be a whole number of at least 1")
    return UpstreamSpec(host, port).name, tls, int(weight_text)


def bind_to_endpoint(text: str) -> str:
    """
    Turn a C{--bind HOST:PORT} value into a Twisted server endpoint string.
    """
    host, port = parse_host_port(text)
    escaped = host.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}"


_BACKLOG_POSITIONS: dict[str, int] = {"tcp": 3, "tcp6": 2, "ssl": 6, "unix": 3}
"""
The endpoint types whose listen queue length C{with_backlog} sets, each with
the position its C{backlog} argument would have among the positional ones
(the type is at 0): C{tcp:PORT:INTERFACE:BACKLOG},
C{tcp6:PORT:BACKLOG}, C{ssl:PORT:KEY:CERT:METHOD:INTERFACE:BACKLOG},
C{unix:PATH:MODE:BACKLOG}, as Twisted's parsers take them.
"""


def _endpoint_arguments(description: str) -> tuple[list[str], set[str]]:
    """
    Split an endpoint description as Twisted's C{serverFromString} does:
    arguments separated by C{:}, C{name=value} for keyword ones, a
    backslash escaping the next character.

    @return: the positional arguments (the endpoint type first) and the
        names of the keyword arguments.
    """
    positional: list[str] = []
    keywords: set[str] = set()
    current = ""
    key: str | None = None
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current += next(characters, "")
        elif character == ":":
            if key is None:
                positional.append(current)
            else:
                keywords.add(key)
            current, key = "", None
        elif character == "=" and key is None:
            key, current = current, ""
        else:
            current += character
    if key is None:
        positional.append(current)
    else:
        keywords.add(key)
    return positional, keywords


def with_backlog(description: str, backlog: int) -> str:
    """
    The endpoint description C{description} listening with a queue of
    C{backlog} connections (C{--listen-backlog}): C{:backlog=N} is added to
    the endpoint types that take one (C{tcp}, C{tcp6}, C{ssl}, C{unix}),
    unless the description gives its own backlog, which wins. Other types
    are left as they are: a C{systemd:} socket is already listening, with
    the backlog systemd gave it.
    """
    positional, keywords = _endpoint_arguments(description)
    position = _BACKLOG_POSITIONS.get(positional[0])
    if position is None or "backlog" in keywords or len(positional) > position:
        return description
    return f"{description}:backlog={backlog}"


_PARSE_ONLY_REACTOR: Any = object()
"""
Stands in for a reactor when C{--listen} values are checked: endpoint
constructors only store their reactor, so building one from a string
validates it without listening or touching the global reactor.
"""


_ASSUME_SYSTEMD_SOCKETS: ContextVar[bool] = ContextVar("assume_systemd_sockets", default=False)


@contextmanager
def assume_systemd_sockets() -> Iterator[None]:
    """
    While this is in effect, L{validate_endpoint} checks C{systemd:}
    endpoints' syntax only: C{--check-config} runs where systemd passes no
    socket (in C{ExecReload}, or by hand) and must still accept them.
    """
    token = _ASSUME_SYSTEMD_SOCKETS.set(True)
    try:
        yield
    finally:
        _ASSUME_SYSTEMD_SOCKETS.reset(token)


def _check_systemd_syntax(text: str) -> None:
    """
    Check a C{systemd:domain=D:index=N} or C{systemd:domain=D:name=NAME}
    endpoint without looking for the socket.

    @raise ValueError: otherwise.
    """
    arguments = dict(part.partition("=")[::2] for part in text.split(":")[1:])
    domain = arguments.pop("domain", "")
    index = arguments.pop("index", None)
    name = arguments.pop("name", None)
    if (
        arguments
        or not hasattr(socket, "AF_" + domain)
        or (index is None) == (name is None)
        or (index is not None and not _is_digits(index))
        or (name is not None and not name)
    ):
        raise ValueError(
            "is not a server endpoint such as systemd:domain=INET:index=0 "
            "or systemd:domain=INET:name=http"
        )


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
    if text.startswith("systemd:") and _ASSUME_SYSTEMD_SOCKETS.get():
        _check_systemd_syntax(text)
        return text
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


# Networks, Redis and loopback addresses.


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


DEFAULT_REDIS_PORT = 6379
"""The port of a C{redis://HOST/DB} backend URL without one."""


def parse_redis_url(text: str) -> tuple[str, int, int]:
    """
    Parse a Redis URL, C{redis://HOST[:PORT][/DB]}.

    The port defaults to L{DEFAULT_REDIS_PORT} and the database to 0; IPv6
    hosts go in brackets (C{redis://[::1]:6379/0}).

    @return: the host (IPv6 without brackets), the port and the database number.
    @raise ValueError: on another scheme, a missing or malformed host, a bad
        port or database, credentials, or a query string or fragment.
    """
    prefix = "redis://"
    if not text.startswith(prefix):
        raise ValueError("is not a URL of the form redis://HOST:PORT/DB")
    rest = text[len(prefix) :]
    if "?" in rest or "#" in rest:
        raise ValueError("query strings and fragments are not supported")
    location, _, database = rest.partition("/")
    if "@" in location:
        raise ValueError("credentials in the URL are not supported")
    if not location:
        raise ValueError("has no host")
    bracketed = location.startswith("[") and location.endswith("]")
    if bracketed or (":" not in location and not location.startswith("[")):
        location = f"{location}:{DEFAULT_REDIS_PORT}"
    host, port = parse_host_port(location)
    if database == "":
        database = "0"
    if not _is_digits(database):
        raise ValueError(f"database {database!r} must be a number such as 0")
    return host, port, int(database)


def parse_rate_limit_backend(text: str) -> str:
    """
    Parse a C{--rate-limit-backend} value: C{memory} or C{redis://HOST[:PORT][/DB]}.

    @return: C{"memory"}, or the URL in its canonical form
        C{redis://HOST:PORT/DB} (port and database filled in, IPv6 hosts in
        brackets), which L{parse_redis_url} splits.
    @raise ValueError: on anything else.
    """
    if text == "memory":
        return text
    if not text.startswith("redis://"):
        raise ValueError("must be memory or a URL of the form redis://HOST:PORT/DB")
    host, port, database = parse_redis_url(text)
    return f"redis://{UpstreamSpec(host, port).name}/{database}"


def is_loopback_host(host: str) -> bool:
    """
    Whether C{host} (as L{parse_host_port} returns it) can only be reached
    from this machine: C{localhost}, or an IP literal in 127.0.0.0/8 or C{::1}.
    """
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# TLS names.


def parse_tls_name(text: str) -> str:
    """
    Check an C{--upstream-tls-name} value: a DNS name (no wildcard) or an IP
    address, the name TLS upstreams' certificates must carry.

    @return: the name, lower-cased, without a trailing dot (an IPv6 address
        without brackets).
    @raise ValueError: otherwise.
    """
    name = text.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name:
        raise ValueError("is empty: give the name the upstreams' certificates carry")
    try:
        _check_hostname(name)
    except ValueError:
        raise ValueError("must be a DNS name (without wildcards) or an IP address") from None
    return name.rstrip(".")
