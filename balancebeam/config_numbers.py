"""
Parsers of numbers: durations in seconds, byte sizes, whole numbers, and
C{--workers}.

Each parser takes one string and returns the value, or raises C{ValueError}
with a reason fit for a usage error (L{balancebeam.config.ConfigError} names
the option). L{balancebeam.config_values} lists every parser; this module
imports nothing from the rest of balancebeam.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable


def _is_digits(text: str) -> bool:
    """
    Whether C{text} is a non-empty run of the ASCII digits 0-9 (C{str.isdigit}
    also accepts other scripts' digits and superscripts).
    """
    return text.isascii() and text.isdigit()


def parse_size(text: str) -> int:
    """
    Parse a byte count with an optional C{k}, C{m} or C{g} suffix (powers of
    1024; C{kb}, C{KiB} and the like too).

    @raise ValueError: when the text is not a non-negative size.
    """
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    cleaned = text.strip().lower().removesuffix("b").removesuffix("i")
    multiplier = 1
    if cleaned and cleaned[-1] in units:
        multiplier = units[cleaned[-1]]
        cleaned = cleaned[:-1]
    if not _is_digits(cleaned):
        raise ValueError("is not a size such as 16384, 16k or 10m")
    return int(cleaned) * multiplier


def parse_positive_size(text: str) -> int:
    """
    Parse a size that must be at least one byte.

    @raise ValueError: when C{text} is not a size, or is 0.
    """
    size = parse_size(text)
    if size < 1:
        raise ValueError("must be at least 1 byte")
    return size


def parse_max_body_size(text: str) -> int | None:
    """
    Parse a C{--max-body-size} value.

    @return: the limit in bytes, or C{None} (no limit) for C{0}.
    @raise ValueError: when C{text} is not a size.
    """
    size = parse_size(text)
    return size if size > 0 else None


def parse_non_negative(text: str) -> float:
    """
    Parse a non-negative, finite number of seconds.

    @raise ValueError: on negatives, NaN, infinities and non-numbers.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not 0 <= value < math.inf:
        raise ValueError("must be a finite number of at least 0")
    return value


def parse_positive(text: str) -> float:
    """
    Parse a strictly positive, finite number of seconds.

    @raise ValueError: on 0, negatives, NaN, infinities and non-numbers.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not 0 < value < math.inf:
        raise ValueError("must be a finite number greater than 0")
    return value


def parse_count(text: str, minimum: int = 0) -> int:
    """
    Parse a whole number of at least C{minimum}.

    @raise ValueError: on anything else, fractions and signs included.
    """
    stripped = text.strip()
    if not _is_digits(stripped) or int(stripped) < minimum:
        raise ValueError(f"must be a whole number of at least {minimum}")
    return int(stripped)


def count_parser(minimum: int) -> Callable[[str], int]:
    """
    Build a parser of whole numbers of at least C{minimum}.
    """

    def parse(text: str) -> int:
        return parse_count(text, minimum)

    return parse


# --listen-backlog.

MAX_LISTEN_BACKLOG = 65535
"""The largest C{--listen-backlog}; the kernel caps it lower still
(C{net.core.somaxconn} on Linux)."""


def parse_listen_backlog(text: str) -> int:
    """
    Parse C{--listen-backlog}: the length of a listening socket's queue of
    connections not yet accepted, a whole number from 1 to
    L{MAX_LISTEN_BACKLOG}.

    @raise ValueError: on anything else.
    """
    stripped = text.strip()
    if not _is_digits(stripped) or not 1 <= int(stripped) <= MAX_LISTEN_BACKLOG:
        raise ValueError(f"must be a whole number from 1 to {MAX_LISTEN_BACKLOG}")
    return int(stripped)


# --workers (issue 14).

MAX_WORKERS = 256
"""The most worker processes C{--workers} accepts."""


def usable_cpus() -> int:
    """
    The CPUs this process may run on (its affinity mask, as C{taskset}
    sets it), or every CPU where the platform has no affinity; at least 1.
    CPU quotas of control groups are not counted.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return max(1, len(affinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_workers(text: str) -> int:
    """
    Parse C{--workers}: a whole number from 1 to L{MAX_WORKERS}, or
    C{auto} for L{usable_cpus}.

    @raise ValueError: on anything else.
    """
    if text.strip().lower() == "auto":
        return min(MAX_WORKERS, usable_cpus())
    count = parse_count(text, 1)
    if count > MAX_WORKERS:
        raise ValueError(f"must be auto or a whole number from 1 to {MAX_WORKERS}")
    return count
