"""
Cache keys: the primary key of a request (scheme, host and target) and the
secondary key built from the request fields a response's C{Vary} names
(RFC 9111 sections 2 and 4.1).

Only the host is normalised (its case, the scheme's default port). The
target is the one sent upstream, byte for byte, as nginx's
C{$request_uri} key: normalising it (dot segments, percent-encodings) would
let a client store the upstream's answer to C{/x/../victim} under
C{/victim} for every other client, wherever the upstream does not resolve
the target exactly as the normalisation does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import urljoin, urlsplit

from balancebeam.cache.directives import collapse_whitespace, is_token, split_list

VaryNames = tuple[bytes, ...]
"""The lower-cased, sorted, distinct field names of a response's C{Vary}."""

VaryValues = tuple["bytes | None", ...]
"""The normalised request values of the L{VaryNames} fields (C{None}: absent)."""

NO_VARY: Final[VaryNames] = ()

CASE_INSENSITIVE_VALUES: Final = frozenset(
    {b"accept-encoding", b"accept-charset", b"accept-language", b"te"}
)
"""Fields whose values are compared case-insensitively (their tokens are)."""

_DEFAULT_PORTS: Final = {b"http": b":80", b"https": b":443"}
_MAYBE_DEFAULT_PORT: Final = re.compile(rb":(?:80|443)?\Z").search


def normalise_host(scheme: bytes, host: bytes | None) -> bytes:
    """
    A C{Host} value in normal form: lower case, without the scheme's default
    port or an empty port. A missing host (HTTP/1.0) is the empty string.
    """
    if not host:
        return b""
    host = host.lower()
    if host[-1:] == b":":
        return host[:-1]
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(default):
        return host[: -len(default)]
    return host


def primary_key(scheme: bytes, host: bytes | None, target: bytes) -> bytes:
    """
    The primary cache key of a request: C{scheme://host/target}, the host
    normalised (L{normalise_host}), the target as it is sent upstream.
    """
    if host:
        host = host.lower()
        if _MAYBE_DEFAULT_PORT(host) is not None:
            host = normalise_host(scheme, host)
    else:
        host = b""
    return b"%s://%s%s" % (scheme, host, target)


def vary_names(values: Sequence[bytes]) -> VaryNames | None:
    """
    The field names of a response's C{Vary} field lines.

    @return: the names (L{NO_VARY} for none), or C{None} when the response
        cannot be stored: C{Vary: *}, or a member that is not a field name.
    """
    names = set()
    for member in split_list(values):
        if member == b"*" or not is_token(member):
            return None
        names.add(member.lower())
    return tuple(sorted(names))


def normalise_value(name: bytes, values: Sequence[bytes]) -> bytes:
    """
    The request value of a varying field, normalised: field lines joined,
    members stripped and joined with C{", "}, runs of whitespace made one
    space, and lower-cased for fields whose tokens are case-insensitive.
    """
    joined = b", ".join(collapse_whitespace(member) for member in split_list(values))
    if name in CASE_INSENSITIVE_VALUES:
        joined = joined.lower()
    return joined


def secondary_key(fields: Sequence[tuple[bytes, bytes, bytes]], names: VaryNames) -> VaryValues:
    """
    The secondary key of a request for a response that varies on C{names}.

    @param fields: the request's fields (lower-cased name, value, raw line).
    """
    if not names:
        return ()
    found: dict[bytes, list[bytes]] = {}
    for field_name, value, _ in fields:
        if field_name in names:
            found.setdefault(field_name, []).append(value)
    return tuple(
        normalise_value(name, found[name]) if name in found else None for name in names
    )


def same_origin_key(scheme: bytes, host: bytes | None, target: bytes, reference: bytes) -> (
    bytes | None
):
    """
    The primary key of a URI reference from a response (C{Location},
    C{Content-Location}) resolved against the request, when it has the same
    scheme and host as the request (RFC 9111 section 4.4).

    @return: the key, or C{None} for another origin or an unusable reference.
    """
    base_host = normalise_host(scheme, host)
    base = scheme + b"://" + base_host + target
    try:
        resolved = urlsplit(urljoin(base, reference.strip(b" \t")))
    except ValueError:
        return None
    resolved_scheme = resolved.scheme.lower()
    if resolved_scheme != scheme or normalise_host(scheme, resolved.netloc) != base_host:
        return None
    resolved_target = resolved.path or b"/"
    if resolved.query:
        resolved_target += b"?" + resolved.query
    return primary_key(scheme, resolved.netloc, resolved_target)
