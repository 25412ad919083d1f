"""
Which client a request comes from, for rate limiting.

By default the client is the TCP peer. Behind trusted proxies (C{--trust-forwarded-for
CIDR}), the client is taken from C{X-Forwarded-For} with the rightmost-untrusted
rule: walk the list from the right (the entry appended by the proxy nearest to
us) towards the left, skip addresses of trusted proxies, and take the first
address that is not trusted. Everything left of it was written by the client
or by proxies we know nothing about, so a client cannot escape its limit by
sending a forged C{X-Forwarded-For} of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Union

from balancebeam.config_values import parse_trusted_network

TrustedNetworks = tuple[Union[IPv4Network, IPv6Network], ...]
"""
The parsed form of the C{--trust-forwarded-for} values.
"""


def parse_trusted_networks(values: Sequence[str]) -> TrustedNetworks:
    """
    Turn C{--trust-forwarded-for} values (C{BalancerConfig.trusted_proxies})
    into network objects. Each value is checked and normalised by
    L{balancebeam.config_values.parse_trusted_network}: a CIDR network or a single
    address (a C{/32} or C{/128} network), host bits cleared (C{10.1.2.3/8}
    is C{10.0.0.0/8}).

    @raise ValueError: with C{parse_trusted_network}'s reason, when a value
        is not an IPv4 or IPv6 network.
    """
    return tuple(ip_network(parse_trusted_network(value)) for value in values)


def _unmap(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """
    Turn an IPv4-mapped IPv6 address (C{::ffff:192.0.2.1}, as seen on a
    dual-stack listener) into the IPv4 address, so one client has one key.
    """
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPv4Address | IPv6Address, trusted: TrustedNetworks) -> bool:
    """
    Whether C{address} belongs to one of the C{trusted} networks.
    """
    return any(address in network for network in trusted)


def _parse_forwarded_entry(entry: bytes) -> IPv4Address | IPv6Address | None:
    """
    Parse one element of an C{X-Forwarded-For} list.

    Accepted forms: C{192.0.2.1}, C{192.0.2.1:5678}, C{2001:db8::1},
    C{[2001:db8::1]}, C{[2001:db8::1]:443}, each optionally in double quotes.

    @return: the address, or C{None} when the entry is anything else
        (C{unknown}, an obfuscated identifier, a hostname, garbage).
    """
    try:
        text = entry.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    bracketed = text.startswith("[")
    if bracketed:
        close = text.find("]")
        if close == -1:
            return None
        host, rest = text[1:close], text[close + 1 :]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
    else:
        host = text
    try:
        address = ip_address(host)
    except ValueError:
        return None
    if bracketed and not isinstance(address, IPv6Address):
        return None
    return _unmap(address)


def client_key(peer_ip: str, forwarded_for: bytes | None, trusted: TrustedNetworks) -> str:
    """
    The rate limiting key of a request: its client's IP address.

    The TCP peer is the client unless it is in a C{trusted} network and the
    request has an C{X-Forwarded-For} header. Then the header is walked from
    the right, trusted addresses are skipped, and the first untrusted address
    is the client. A malformed entry stops the walk: the last trusted hop
    (the proxy that wrote it, or the peer) is used, as nothing left of it can
    be believed. When every entry is trusted, the leftmost one is used.

    @param peer_ip: the TCP peer's address (C{IAddress.host}).
    @param forwarded_for: the C{X-Forwarded-For} value; several headers
        joined with C{b", "}; C{None} when absent.
    @param trusted: the parsed C{--trust-forwarded-for} networks.
    @return: an address in normal form (C{ipaddress}' compressed form;
        IPv4-mapped IPv6 addresses as IPv4). A peer that is not an IP
        address (a UNIX socket) is returned unchanged.
    """
    try:
        peer = _unmap(ip_address(peer_ip))
    except ValueError:
        return peer_ip
    if forwarded_for is None or not trusted or not _is_trusted(peer, trusted):
        return str(peer)
    hop = peer
    for raw in reversed(forwarded_for.split(b",")):
        entry = raw.strip(b" \t")
        if not entry:
            continue
        address = _parse_forwarded_entry(entry)
        if address is None:
            return str(hop)
        if not _is_trusted(address, trusted):
            return str(address)
        hop = address
    return str(hop)
