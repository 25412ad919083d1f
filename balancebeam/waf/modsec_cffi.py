"""
libmodsecurity through cffi in ABI mode: Debian's C{libmodsecurity3}, no compiler needed.

cffi lets go of the GIL around every call into the C library, so several
threads can inspect at once and the reactor thread keeps running while they
do; the engine takes the GIL back only for the moments its log callback
reports a matched rule. The C API is small and stable across 3.0.x; only the
functions used here are declared.
"""

from __future__ import annotations

import ctypes.util
import importlib
import threading
from collections.abc import Sequence
from typing import Any

from zope.interface import implementer

from balancebeam.waf.engine import (
    IInspector,
    InspectedRequest,
    InspectionError,
    MatchCollector,
    RulesError,
    RuleSource,
    Verdict,
)

LIBRARY_NAMES = ("libmodsecurity.so.3", "libmodsecurity.so")
"""The shared library names tried in order (Debian: C{libmodsecurity3})."""

_CDEF = """
typedef struct ModSecurity_t ModSecurity;
typedef struct Transaction_t Transaction;
typedef struct RulesSet_t RulesSet;
typedef struct ModSecurityIntervention_t {
    int status;
    int pause;
    char *url;
    char *log;
    int disruptive;
} ModSecurityIntervention;
typedef void (*ModSecLogCb)(void *, const void *);

ModSecurity *msc_init(void);
const char *msc_who_am_i(ModSecurity *msc);
void msc_set_connector_info(ModSecurity *msc, const char *connector);
void msc_set_log_cb(ModSecurity *msc, ModSecLogCb cb);
void msc_cleanup(ModSecurity *msc);

RulesSet *msc_create_rules_set(void);
int msc_rules_add_file(RulesSet *rules, const char *file, const char **error);
int msc_rules_add(RulesSet *rules, const char *plain_rules, const char **error);
int msc_rules_cleanup(RulesSet *rules);

Transaction *msc_new_transaction_with_id(ModSecurity *ms, RulesSet *rules, char *id,
                                         void *logCbData);
int msc_process_connection(Transaction *transaction, const char *client, int cPort,
                           const char *server, int sPort);
int msc_process_uri(Transaction *transaction, const char *uri, const char *protocol,
                    const char *http_version);
int msc_add_n_request_header(Transaction *transaction, const unsigned char *key,
                             size_t len_key, const unsigned char *value, size_t len_value);
int msc_process_request_headers(Transaction *transaction);
int msc_append_request_body(Transaction *transaction, const unsigned char *body, size_t size);
int msc_process_request_body(Transaction *transaction);
int msc_intervention(Transaction *transaction, ModSecurityIntervention *it);
void msc_transaction_cleanup(Transaction *transaction);

void free(void *ptr);
"""


def _load(library_names: Sequence[str] = LIBRARY_NAMES) -> tuple[Any, Any, Any]:
    """
    Import cffi and open the first library of C{library_names} that opens.

    @return: the C{FFI}, the library and the C library (for C{free}).
    @raise ImportError: when cffi is missing.
    @raise OSError: when no libmodsecurity can be opened.
    """
    # Imported by name: cffi is optional and ships no type information.
    cffi = importlib.import_module("cffi")
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    errors = []
    for name in library_names:
        try:
            lib = ffi.dlopen(name)
        except OSError as e:
            errors.append(str(e))
            continue
        libc = ffi.dlopen(ctypes.util.find_library("c") or "libc.so.6")
        return ffi, lib, libc
    raise OSError("; ".join(errors))


def unavailable_reason(library_names: Sequence[str] = LIBRARY_NAMES) -> str | None:
    """
    Why this binding cannot be used here, or C{None} when it can.

    @param library_names: the shared libraries to try.
    """
    try:
        _load(library_names)
    except ImportError:
        return "the Python package cffi is not installed"
    except OSError as e:
        return f"libmodsecurity (libmodsecurity.so.3) cannot be loaded: {e}"
    return None


@implementer(IInspector)
class CffiModSecurity:
    """
    A ModSecurity engine and one rule set, through cffi.

    Build it with L{load}; the engine and the rules live until L{close}.
    """

    releases_gil = True

    def __init__(self, ffi: Any, lib: Any, libc: Any, msc: Any, rules: Any) -> None:
        self._ffi = ffi
        self._lib = lib
        self._libc = libc
        self._msc = msc
        self._rules = rules
        self._closed = False
        self._close_lock = threading.Lock()
        version = ffi.string(lib.msc_who_am_i(msc)).decode("utf-8", "replace")
        self.name = f"cffi {version}"
        # Kept referenced: C holds a pointer to this callback.
        self._log_callback = ffi.callback("ModSecLogCb", self._on_log)
        lib.msc_set_log_cb(msc, self._log_callback)

    @classmethod
    def load(cls, sources: Sequence[RuleSource]) -> CffiModSecurity:
        """
        Start an engine and load C{sources} into one rule set, in order.

        @raise RulesError: naming the source that failed and the engine's message.
        @raise ImportError: when cffi is missing.
        @raise OSError: when the library cannot be opened.
        """
        ffi, lib, libc = _load()
        msc = lib.msc_init()
        lib.msc_set_connector_info(msc, b"balancebeam")
        rules = lib.msc_create_rules_set()
        try:
            for source in sources:
                error = ffi.new("const char **")
                if source.text is None:
                    loaded = lib.msc_rules_add_file(rules, source.name.encode(), error)
                else:
                    loaded = lib.msc_rules_add(rules, source.text.encode(), error)
                message = ""
                if error[0] != ffi.NULL:
                    message = ffi.string(error[0]).decode("utf-8", "replace").strip()
                    libc.free(ffi.cast("void *", error[0]))
                if loaded < 0:
                    raise RulesError(source.name, message or "the engine refused the rules")
        except BaseException:
            lib.msc_rules_cleanup(rules)
            lib.msc_cleanup(msc)
            raise
        return cls(ffi, lib, libc, msc, rules)

    def _on_log(self, data: Any, line: Any) -> None:
        """
        The engine's log callback: one line per matched rule that logs.
        """
        try:
            if data != self._ffi.NULL and line != self._ffi.NULL:
                collector: MatchCollector = self._ffi.from_handle(data)
                collector.add_log_line(
                    self._ffi.string(self._ffi.cast("const char *", line)).decode(
                        "utf-8", "replace"
                    )
                )
        except Exception:  # noqa: BLE001 - must not unwind through C
            pass

    def _intervention(
        self, transaction: Any, intervention: Any, collector: MatchCollector
    ) -> int | None:
        """
        The status of the engine's disruptive action so far, if any; the
        rule that took it goes to C{collector}.
        """
        ffi = self._ffi
        intervention.status = 200
        intervention.url = ffi.NULL
        intervention.log = ffi.NULL
        intervention.disruptive = 0
        disruptive = self._lib.msc_intervention(transaction, intervention)
        if intervention.log != ffi.NULL:
            collector.add_log_line(ffi.string(intervention.log).decode("utf-8", "replace"))
        for pointer in (intervention.url, intervention.log):
            if pointer != ffi.NULL:
                self._libc.free(pointer)
        if disruptive:
            return int(intervention.status)
        return None

    def inspect(self, request: InspectedRequest) -> Verdict:
        """
        Run phases 1 and 2 on C{request}; see L{IInspector.inspect}.
        """
        if self._closed:
            raise InspectionError("the engine is closed")
        ffi = self._ffi
        lib = self._lib
        collector = MatchCollector()
        handle = ffi.new_handle(collector)
        transaction = lib.msc_new_transaction_with_id(
            self._msc, self._rules, ffi.new("char[]", request.request_id.encode()), handle
        )
        if transaction == ffi.NULL:
            raise InspectionError("the engine could not start a transaction")
        intervention = ffi.new("ModSecurityIntervention *")
        try:
            lib.msc_process_connection(
                transaction, request.client_ip.encode(), 0, b"0.0.0.0", 0
            )
            status = self._intervention(transaction, intervention, collector)
            if status is None:
                lib.msc_process_uri(
                    transaction,
                    request.target.encode("latin-1", "replace"),
                    request.method.encode("latin-1", "replace"),
                    request.http_version.encode(),
                )
                status = self._intervention(transaction, intervention, collector)
            if status is None:
                for name, value in request.headers:
                    lib.msc_add_n_request_header(transaction, name, len(name), value, len(value))
                lib.msc_process_request_headers(transaction)
                status = self._intervention(transaction, intervention, collector)
            if status is None:
                if request.body:
                    lib.msc_append_request_body(transaction, request.body, len(request.body))
                lib.msc_process_request_body(transaction)
                status = self._intervention(transaction, intervention, collector)
        finally:
            lib.msc_transaction_cleanup(transaction)
        return collector.verdict(status)

    def close(self) -> None:
        """
        Free the rules and the engine (idempotent).
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._lib.msc_rules_cleanup(self._rules)
        self._lib.msc_cleanup(self._msc)
