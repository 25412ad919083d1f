"""
Parsing the list-valued fields the cache reads: C{Cache-Control}, C{Vary},
C{If-None-Match} and the like.

Everything here is total: any byte string gives a result, never an
exception. Malformed members are kept in a form the caller can recognise
(see L{CONFLICT} and L{delta_seconds}), so that RFC 9111's rules for invalid
values ("consider the response stale") are applied by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

Directives = dict[bytes, "bytes | None"]
"""Cache directives: lower-cased name to argument (unquoted), or C{None} for none."""

CONFLICT: Final = b"\x00conflict"
"""
The argument recorded for a directive given twice with different arguments
(RFC 9111 section 4.2.1: use the first, or consider the response stale; we
consider it invalid, which is the restrictive choice for every directive).
It never parses as L{delta_seconds}.
"""

DELTA_SECONDS_MAX: Final = 2147483648
"""RFC 9111 section 1.2.2: a larger delta-seconds value is taken as this one."""

_DIGITS: Final = re.compile(rb"[0-9]+")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED_PAIR: Final = re.compile(rb"\\(.)", re.DOTALL)
_WHITESPACE: Final = re.compile(rb"[ \t]+")


def split_list(values: Iterable[bytes]) -> list[bytes]:
    """
    The members of a comma-separated list field (RFC 9110 section 5.6.1),
    from every field line of it in order, each stripped of surrounding
    whitespace; empty members are dropped. Commas inside quoted strings do
    not split; an unterminated quoted string runs to the end of its line.
    """
    members: list[bytes] = []
    for value in values:
        if b'"' not in value:
            for member in value.split(b","):
                member = member.strip(b" \t")
                if member:
                    members.append(member)
            continue
        start = 0
        quoted = False
        index = 0
        length = len(value)
        while index < length:
            char = value[index]
            if quoted:
                if char == 0x5C:  # backslash: skip the quoted character
                    index += 1
                elif char == 0x22:
                    quoted = False
            elif char == 0x22:
                quoted = True
            elif char == 0x2C:
                member = value[start:index].strip(b" \t")
                if member:
                    members.append(member)
                start = index + 1
            index += 1
        member = value[start:].strip(b" \t")
        if member:
            members.append(member)
    return members


def unquote(value: bytes) -> bytes:
    """
    The content of a quoted string (RFC 9110 section 5.6.4), or C{value}
    itself when it is not quoted.
    """
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        return _QUOTED_PAIR.sub(rb"\1", value[1:-1])
    return value


def parse_cache_control(values: Iterable[bytes]) -> Directives:
    """
    The directives of every C{Cache-Control} field line, in one dict.

    Names are lower-cased; arguments are unquoted. A directive repeated with
    a different argument gets L{CONFLICT}; a member that is not a token
    (optionally with C{=argument}) is ignored, as an unknown extension is.
    """
    directives: Directives = {}
    for member in split_list(values):
        name, equals, argument = member.partition(b"=")
        name = name.rstrip(b" \t").lower()
        if _TOKEN.fullmatch(name) is None:
            continue
        parsed: bytes | None = unquote(argument.strip(b" \t")) if equals else None
        if name in directives and directives[name] != parsed:
            directives[name] = CONFLICT
        else:
            directives[name] = parsed
    return directives


def delta_seconds(argument: bytes | None) -> int | None:
    """
    A delta-seconds argument (RFC 9111 section 1.2.2): a non-negative
    integer, capped at L{DELTA_SECONDS_MAX}.

    @return: the number of seconds, or C{None} when the argument is missing
        or not a delta-seconds value.
    """
    if argument is None or _DIGITS.fullmatch(argument) is None:
        return None
    if len(argument) > 10:
        return DELTA_SECONDS_MAX
    return min(int(argument), DELTA_SECONDS_MAX)


def is_token(value: bytes) -> bool:
    """
    Whether C{value} is an HTTP token (a valid field name, say).
    """
    return _TOKEN.fullmatch(value) is not None


def collapse_whitespace(value: bytes) -> bytes:
    """
    C{value} with each run of spaces and tabs made one space.
    """
    return _WHITESPACE.sub(b" ", value)
