"""
Cache keys: the primary key of a request (scheme, host and normalised target)
and the secondary key built from the request fields a response's C{Vary}
names (RFC 9111 sections 2 and 4.1).

Normalisation is syntax-based (RFC 3986 section 6.2.2): host case, default
port, percent-encoding case, percent-encoded unreserved characters and dot
segments. Targets that differ only in these ways share an entry; the query
is kept in its order, since reordering it may change what it means.
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
_NEEDS_NORMALISING: Final = re.compile(rb"[%#]|/\.|^[^/]").search
_MAYBE_DEFAULT_PORT: Final = re.compile(rb":(?:80|443)?\Z").search
_PERCENT: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


def _percent(matched: re.Match[bytes]) -> bytes:
    code = int(matched[1], 16)
    if code in _UNRESERVED:
        return bytes((code,))
    return b"%" + matched[1].upper()


def remove_dot_segments(path: bytes) -> bytes:
    """
    RFC 3986 section 5.2.4 on an absolute path.
    """
    output: list[bytes] = []
    segments = path.split(b"/")
    # segments[0] is the empty string before the leading slash.
    for index, segment in enumerate(segments[1:], start=1):
        last = index == len(segments) - 1
        if segment == b".":
            if last:
                output.append(b"")
        elif segment == b"..":
            if output:
                output.pop()
            if last:
                output.append(b"")
        else:
            output.append(segment)
    return b"/" + b"/".join(output)


def normalise_target(target: bytes) -> bytes:
    """
    An origin-form target in normal form: no fragment, upper-case
    percent-encodings, unreserved characters decoded, no dot segments, and a
    non-empty path.
    """
    if _NEEDS_NORMALISING(target) is None:
        return target
    target = target.partition(b"#")[0]
    path, question, query = target.partition(b"?")
    if b"%" in path:
        path = _PERCENT.sub(_percent, path)
    if path[:1] != b"/":
        path = b"/" + path
    if b"/." in path:
        path = remove_dot_segments(path)
    if b"%" in query:
        query = _PERCENT.sub(_percent, query)
    return path + question + query


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
    The primary cache key of a request: C{scheme://host/target}, normalised.
    """
    if host:
        host = host.lower()
        if _MAYBE_DEFAULT_PORT(host) is not None:
            host = normalise_host(scheme, host)
    else:
        host = b""
    if _NEEDS_NORMALISING(target) is not None:
        target = normalise_target(target)
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
