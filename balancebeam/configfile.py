# -*- test-case-name: tests.test_configfile -*-
"""
The configuration file: TOML, with the command line's options as keys.

    # /etc/balancebeam/balancebeam.toml
    bind = "0.0.0.0:80"
    strategy = "least-connections"
    active-health-check-interval = 5

    [[upstream]]
    address = "10.0.0.11:8080"
    weight = 3

    [[upstream]]
    address = "10.0.0.12:8080"

Every key is an option's long name (L{balancebeam.config.OPTIONS}), written
as on the command line without its dashes: a value option takes a string
(or a number, for numbers), a repeatable one an array of strings (or one
string), a flag C{true} or C{false}. C{upstream} also takes tables, whose
keys are per-upstream settings (L{UPSTREAM_KEYS}). L{load_config} reads the
file, lets the options given on the command line replace the file's, and
builds the L{BalancerConfig}; every error names the file, the line and the
key (L{ConfigFileError}).

Nothing here listens, connects or starts: C{--check-config} and a reload
call L{load_config} and nothing else until it succeeds.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from balancebeam.config import (
    FLAG,
    LIST,
    OPTIONS,
    VALUE,
    BalancerConfig,
    ConfigError,
    build_config,
)
from balancebeam.config_values import UpstreamSpec, parse_upstream

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (Python 3.9 and 3.10, PyPy)
    import tomli as tomllib

COMMAND_LINE_ONLY: frozenset[str] = frozenset({"config", "check-config"})
"""Options that make no sense in the file itself."""

UPSTREAM_KEYS: tuple[str, ...] = ("address", "weight")
"""The keys of an C{[[upstream]]} table."""


class ConfigFileError(ValueError):
    """
    A configuration file that cannot be used: unreadable, not TOML, an
    unknown key or a bad value.

    C{str()} reads like C{balancebeam.toml:7: strategy 'fast' must be one of
    random, ...}: the file, the line (when known), the key and the reason.

    @ivar path: the file.
    @ivar line: the line of the key (1-based), or C{None} when the error is
        about the file as a whole.
    @ivar key: the key, as written in the file (C{upstream[2].weight} for a
        table's), or C{None}.
    @ivar reason: what is wrong.
    """

    def __init__(self, path: str, line: int | None, key: str | None, reason: str) -> None:
        super().__init__(path, line, key, reason)
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.key is None:
            return f"{where}: {self.reason}"
        return f"{where}: {self.key} {self.reason}"


def _describe(reason: str, value: object | None) -> str:
    """
    The reason of a L{ConfigError}, with its value, as C{str(ConfigError)}
    words it but without the option's name.
    """
    if value is None:
        return reason
    if reason.startswith(("is ", "must ", "has ", "names ")):
        return f"{value!r} {reason}"
    return f"{value!r}: {reason}"


@dataclass
class FileValues:
    """
    What a configuration file says, as L{build_config} takes it.

    @ivar path: the file.
    @ivar values: option values by long name.
    @ivar table_weights: C{HOST:PORT=W} weights given in C{[[upstream]]}
        tables (kept apart from the C{upstream-weight} key, so that a
        command-line C{--upstream} replaces them with the upstreams).
    @ivar lines: the line of each top-level key.
    @ivar item_lines: the line of each element of an array value, by key.
    @ivar table_lines: the line of each key of each C{upstream} table, by
        C{(index, key)}.
    """

    path: str
    values: dict[str, object] = field(default_factory=dict)
    table_weights: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)
    item_lines: dict[str, list[int]] = field(default_factory=dict)
    table_lines: dict[tuple[int, str], int] = field(default_factory=dict)


# Where the keys are: tomllib reports values, not lines, so the text is
# scanned once for the line of every key and array element.

_KEY = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*=')
_TABLE = re.compile(r"\s*\[\[\s*([A-Za-z0-9_-]+)\s*\]\]")
_PLAIN_TABLE = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")


def _skip_string(text: str, at: int) -> int:
    """
    The index just past the string that starts at C{text[at]} (basic,
    literal, or either multi-line form).
    """
    quote = text[at]
    if text.startswith(quote * 3, at):
        end = text.find(quote * 3, at + 3)
        if end == -1:
            return len(text)
        end += 3
        while text.startswith(quote, end):  # up to two quotes may end the content
            end += 1
        return end
    index = at + 1
    while index < len(text):
        char = text[index]
        if char == "\\" and quote == '"':
            index += 2
            continue
        if char == quote or char == "\n":
            return index + 1
        index += 1
    return index


def _locate(values: FileValues, text: str) -> None:
    """
    Record in C{values} the line of every top-level key, of every element of
    a top-level array, and of every key of every C{[[upstream]]} table.
    The text is valid TOML (tomllib parsed it first).
    """
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(index: int) -> int:
        low, high = 0, len(line_starts) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if line_starts[middle] <= index:
                low = middle
            else:
                high = middle - 1
        return low + 1

    table: tuple[str, int] | None = None  # ("upstream", index) inside [[upstream]]
    in_other_table = False
    counts: dict[str, int] = {}
    index = 0
    length = len(text)
    while index < length:
        # At the start of a line, outside any value.
        end_of_line = text.find("\n", index)
        if end_of_line == -1:
            end_of_line = length
        line = text[index:end_of_line]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            index = end_of_line + 1
            continue
        match = _TABLE.match(line)
        if match:
            name = match.group(1)
            counts[name] = counts.get(name, -1) + 1
            table = (name, counts[name])
            in_other_table = False
            values.lines.setdefault(name, line_of(index))
            index = end_of_line + 1
            continue
        match = _PLAIN_TABLE.match(line)
        if match:
            table = None
            in_other_table = True
            values.lines.setdefault(match.group(1).split(".")[0], line_of(index))
            index = end_of_line + 1
            continue
        match = _KEY.match(line)
        if not match:
            index = end_of_line + 1
            continue
        key = match.group(1).strip("\"'")
        key_line = line_of(index)
        if table is not None and table[0] == "upstream":
            values.table_lines.setdefault((table[1], key), key_line)
        elif table is None and not in_other_table:
            values.lines.setdefault(key, key_line)
        # Skip the value, recording where each element of an array starts.
        index += match.end()
        depth = 0
        elements: list[int] = []
        expecting_element = False
        while index < length:
            char = text[index]
            if char in "\"'":
                if expecting_element:
                    elements.append(line_of(index))
                    expecting_element = False
                index = _skip_string(text, index)
                continue
            if char == "#":
                newline = text.find("\n", index)
                index = length if newline == -1 else newline
                continue
            if char in "[{":
                if expecting_element:
                    elements.append(line_of(index))
                    expecting_element = False
                depth += 1
                if char == "[" and depth == 1:
                    expecting_element = True
            elif char in "]}":
                depth -= 1
                expecting_element = False
            elif char == "," and depth == 1:
                expecting_element = True
            elif char == "\n" and depth == 0:
                index += 1
                break
            elif not char.isspace() and expecting_element:
                elements.append(line_of(index))
                expecting_element = False
            index += 1
        if elements and table is None and not in_other_table:
            values.item_lines.setdefault(key, elements)


MAX_CONFIG_BYTES = 1 << 20
"""The largest configuration file read (1 MiB; real ones are a few KiB)."""


def _read_bounded(path: str, limit: int) -> bytes:
    """
    The bytes of the regular file C{path}, at most C{limit} of them.

    Opened without blocking, so that a FIFO or a device is refused at once
    instead of waiting for a writer or reading without end.

    @raise OSError: when the file cannot be opened or read.
    @raise ValueError: for a file that is not regular or is larger than
        C{limit}, saying which.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(21, os.strerror(21))
        if not stat.S_ISREG(mode):
            raise ValueError("is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(descriptor, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ValueError(f"is larger than {limit // 1024} KiB")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def read_config_file(path: str) -> FileValues:
    """
    Read and check a configuration file: TOML, known keys, values of the
    right types. Values are checked further by L{build_config} (see
    L{load_config}).

    @raise ConfigFileError: when the file cannot be read, is not TOML, or
        has an unknown key or a value of the wrong type.
    """
    try:
        raw = _read_bounded(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise ConfigFileError(path, None, None, f"cannot be read: {e.strerror}") from None
    except ValueError as e:
        raise ConfigFileError(path, None, None, str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(path, None, None, f"is not UTF-8 text ({e.reason})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        found = re.search(r"line (\d+)", message)
        line = int(found.group(1)) if found else None
        raise ConfigFileError(path, line, None, f"is not valid TOML: {message}") from None
    values = FileValues(path)
    _locate(values, text)
    for key, value in document.items():
        _take(values, key, value)
    return values


def _take(values: FileValues, key: str, value: object) -> None:
    """
    Check one top-level key and its value's type, and store it.

    @raise ConfigFileError: on an unknown key or a value of the wrong type.
    """
    line = values.lines.get(key)

    def error(reason: str) -> ConfigFileError:
        return ConfigFileError(values.path, line, key, reason)

    if key in COMMAND_LINE_ONLY:
        raise error("is a command-line option only")
    option = OPTIONS.get(key)
    if option is None:
        close = difflib.get_close_matches(key.replace("_", "-"), list(OPTIONS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise error(f"is not an option{hint}")
    if key == "upstream":
        _take_upstreams(values, value)
        return
    if option.kind == FLAG:
        if not isinstance(value, bool):
            raise error(f"must be true or false, not {value!r}")
    elif option.kind == LIST:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise error(f"must be an array of strings, not {value!r}")
    elif option.kind == VALUE:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise error(f"must be a string or a number, not {value!r}")
    values.values[key] = value


def _take_upstreams(values: FileValues, value: object) -> None:
    """
    Store the C{upstream} key: an array of C{HOST:PORT} strings and of
    tables with L{UPSTREAM_KEYS}.

    @raise ConfigFileError: on anything else, naming the element or the
        table's key and its line.
    """
    items = [value] if isinstance(value, (str, dict)) else value
    lines = values.item_lines.get("upstream", [])
    if not isinstance(items, list):
        raise ConfigFileError(
            values.path,
            values.lines.get("upstream"),
            "upstream",
            f"must be an array of HOST:PORT strings or tables, not {value!r}",
        )
    addresses: list[str] = []
    for number, item in enumerate(items):
        item_line = lines[number] if number < len(lines) else values.lines.get("upstream")
        if isinstance(item, str):
            addresses.append(item)
            continue
        if not isinstance(item, dict):
            raise ConfigFileError(
                values.path,
                item_line,
                f"upstream[{number + 1}]",
                f"must be a HOST:PORT string or a table, not {item!r}",
            )

        def line_of(
            key: str, number: int = number, item_line: int | None = item_line
        ) -> int | None:
            found = values.table_lines.get((number, key))
            return found if found is not None else item_line

        for key in item:
            if key not in UPSTREAM_KEYS:
                raise ConfigFileError(
                    values.path,
                    line_of(key),
                    f"upstream[{number + 1}].{key}",
                    f"is not an upstream setting (known: {', '.join(UPSTREAM_KEYS)})",
                )
        address = item.get("address")
        if not isinstance(address, str):
            raise ConfigFileError(
                values.path,
                line_of("address"),
                f"upstream[{number + 1}].address",
                "is required: the upstream's HOST:PORT",
            )
        try:
            spec = parse_upstream(address)
        except ValueError as e:
            raise ConfigFileError(
                values.path, line_of("address"), f"upstream[{number + 1}].address", str(e)
            ) from None
        addresses.append(address)
        if "weight" in item:
            weight = item["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ConfigFileError(
                    values.path,
                    line_of("weight"),
                    f"upstream[{number + 1}].weight",
                    f"{weight!r} must be a whole number of at least 1",
                )
            values.table_weights.append(f"{UpstreamSpec(spec.host, spec.port).name}={weight}")
    values.values["upstream"] = addresses


def merge(file: FileValues, command_line: Mapping[str, object]) -> dict[str, object]:
    """
    The option values of the file, each replaced by the command line's when
    it gives that option (a repeatable option is replaced whole).

    Weights from C{[[upstream]]} tables go with the file's upstreams: a
    command-line C{--upstream} replaces them too, and a C{--upstream-weight}
    or C{upstream-weight} key for the same upstream takes precedence.
    """
    merged: dict[str, object] = dict(file.values)
    merged.update(command_line)
    explicit = list(merged.get("upstream-weight") or ())  # type: ignore[call-overload]  # a list of str, checked by build_config
    if file.table_weights and "upstream" not in command_line:
        named = {str(text).rpartition("=")[0] for text in explicit}
        kept = [w for w in file.table_weights if w.rpartition("=")[0] not in named]
        merged["upstream-weight"] = kept + explicit
    return merged


def load_config(path: str, command_line: Mapping[str, object]) -> BalancerConfig:
    """
    Read C{path}, let C{command_line} (the options given there, keyed as
    L{build_config} takes them) replace its values, and build the
    configuration.

    @raise ConfigFileError: for any error in the file, naming its line and
        key. An error in a value given on the command line is reported as
        L{ConfigError} (naming the flag).
    """
    file = read_config_file(path)
    merged = merge(file, command_line)
    try:
        return build_config(merged)
    except ConfigError as e:
        raise _from_file(e, file, command_line) from None


def _from_file(
    error: ConfigError, file: FileValues, command_line: Mapping[str, object]
) -> ValueError:
    """
    Name the line and key of a value from the file that L{build_config}
    refused; leave errors of command-line values as they are.
    """
    name = error.option
    if name in command_line:
        return error
    if name == "upstream-weight" and error.value is not None:
        text = str(error.value)
        if text in file.table_weights:
            address = text.rpartition("=")[0]
            addresses = [str(a) for a in file.values.get("upstream", [])]  # type: ignore[attr-defined]  # a list, checked by _take_upstreams
            for number, given in enumerate(addresses):
                if parse_upstream(given).name == address:
                    line = file.table_lines.get((number, "weight"))
                    return ConfigFileError(
                        file.path,
                        line,
                        f"upstream[{number + 1}].weight",
                        _describe(error.reason, error.value),
                    )
    if name not in file.values and not (name == "upstream-weight" and file.table_weights):
        # Not given at all, or a combination of options: no single line.
        return ConfigFileError(file.path, None, name, _describe(error.reason, error.value))
    line = file.lines.get(name)
    value = file.values.get(name)
    key = name
    if isinstance(value, list) and error.value in value:
        # The last element with that text: for "given twice", the repeat.
        number = len(value) - 1 - value[::-1].index(error.value)
        lines = file.item_lines.get(name, [])
        if number < len(lines):
            line = lines[number]
        if name == "upstream":
            key = f"upstream[{number + 1}]"
            if (number, "address") in file.table_lines:
                line = file.table_lines[(number, "address")]
                key += ".address"
    return ConfigFileError(file.path, line, key, _describe(error.reason, error.value))
