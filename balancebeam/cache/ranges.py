"""
Single byte ranges served from a stored full response (RFC 9110 section 14).

A C{Range} request on a stored C{200} gets a C{206} with that one range, or
a C{416} when it cannot be satisfied. Anything the cache does not serve
itself (several ranges, another unit) passes through to the upstream; a
syntactically invalid C{Range} is ignored (the whole response is sent), as
RFC 9110 section 14.2 allows.
"""

from __future__ import annotations

import re
from typing import Final, Union

from balancebeam.cache.directives import is_token

_BYTES_RANGE: Final = re.compile(rb"bytes[ \t]*=[ \t]*(.*)", re.IGNORECASE | re.DOTALL)
_SPEC: Final = re.compile(rb"([0-9]*)[ \t]*-[ \t]*([0-9]*)")
_MAX_DIGITS: Final = 18


class Unsatisfiable:
    """
    The range asks for nothing in the representation: answer C{416}.
    """

    __slots__ = ()


class PassThrough:
    """
    A range the cache does not serve (several ranges, another unit).
    """

    __slots__ = ()


UNSATISFIABLE: Final = Unsatisfiable()
PASS_THROUGH: Final = PassThrough()

RangeResult = Union[tuple[int, int], Unsatisfiable, PassThrough, None]
"""C{(first, last)} inclusive, L{UNSATISFIABLE}, L{PASS_THROUGH}, or C{None} to ignore it."""


def _number(digits: bytes) -> int:
    # Longer than any body: avoid int() on huge strings (CPython limits them).
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_range(value: bytes, length: int) -> RangeResult:
    """
    Interpret a C{Range} value against a representation of C{length} bytes.

    @return: the inclusive byte range to send, L{UNSATISFIABLE},
        L{PASS_THROUGH} (several ranges, or a unit other than C{bytes}),
        or C{None} when the value is invalid and is to be ignored.
    """
    unit = _BYTES_RANGE.fullmatch(value.strip(b" \t"))
    if unit is None:
        name, equals, _ = value.partition(b"=")
        return PASS_THROUGH if equals and is_token(name.strip(b" \t")) else None
    specs = [spec.strip(b" \t") for spec in unit[1].split(b",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return PASS_THROUGH if specs else None
    spec = _SPEC.fullmatch(specs[0])
    if spec is None:
        return None
    first_text, last_text = spec.groups()
    if first_text:
        first = _number(first_text)
        if last_text:
            last = _number(last_text)
            if last < first:
                return None
        else:
            last = length - 1
        if first >= length:
            return UNSATISFIABLE
        return first, min(last, length - 1)
    if not last_text:
        return None
    suffix = _number(last_text)
    if suffix == 0:
        return UNSATISFIABLE
    if length == 0:
        # Satisfiable (RFC 9110 section 14.1.1: a non-zero suffix-length),
        # yet no Content-Range can name an empty range: the whole (empty)
        # representation is sent, as a server may always ignore Range.
        return None
    return max(0, length - suffix), length - 1


def content_range(first: int, last: int, length: int) -> bytes:
    """
    The C{Content-Range} value of a C{206}.
    """
    return b"bytes %d-%d/%d" % (first, last, length)


def unsatisfied_range(length: int) -> bytes:
    """
    The C{Content-Range} value of a C{416}.
    """
    return b"bytes */%d" % length
