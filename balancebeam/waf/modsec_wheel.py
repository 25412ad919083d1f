"""
libmodsecurity through the C{libmodsecurity} wheel from PyPI (pybind11, 3.0.15 bundled).

The wheel installs with pip alone, but its calls keep the GIL while the
engine works: an inspection stops every other Python thread, the reactor's
included. It is the fallback binding, run one inspection at a time on the
reactor thread (see L{balancebeam.waf.runner.TurnTakingRunner}).
"""

from __future__ import annotations

import importlib
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


def unavailable_reason(module: str = "libmodsecurity") -> str | None:
    """
    Why this binding cannot be used here, or C{None} when it can.

    @param module: the module to import.
    """
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"the Python package libmodsecurity cannot be imported: {e}"
    return None


def _ignore(line: str) -> None:
    """
    The engine's text log callback: matches are read from the transaction.
    """


@implementer(IInspector)
class WheelModSecurity:
    """
    A ModSecurity engine and one rule set, through the PyPI wheel.
    """

    releases_gil = False

    def __init__(self, module: Any, msc: Any, rules: Any) -> None:
        self._module = module
        self._msc = msc
        self._rules = rules
        self._closed = False
        self.name = f"wheel {msc.who_am_i()}"

    @classmethod
    def load(cls, sources: Sequence[RuleSource]) -> WheelModSecurity:
        """
        Start an engine and load C{sources} into one rule set, in order.

        @raise RulesError: naming the source that failed and the engine's message.
        @raise ImportError: when the wheel is not installed.
        """
        # Imported by name: the wheel is optional (and may be absent when mypy runs).
        libmodsecurity = importlib.import_module("libmodsecurity")
        msc = libmodsecurity.ModSecurity()
        msc.set_connector_information("balancebeam")
        # Without a callback the engine prints every match to stderr; the
        # matches are read from the transaction instead.
        msc.set_log_callback(_ignore)
        rules = libmodsecurity.RulesSet()
        for source in sources:
            if source.text is None:
                loaded = rules.load_from_uri(source.name)
            else:
                loaded = rules.load(source.text)
            if loaded < 0:
                message = rules.get_parser_error().strip()
                raise RulesError(source.name, message or "the engine refused the rules")
        return cls(libmodsecurity, msc, rules)

    def inspect(self, request: InspectedRequest) -> Verdict:
        """
        Run phases 1 and 2 on C{request}; see L{IInspector.inspect}.
        """
        if self._closed:
            raise InspectionError("the engine is closed")
        try:
            transaction = self._module.Transaction(self._msc, self._rules, request.request_id)
            transaction.process_connection(request.client_ip, 0, "0.0.0.0", 0)
            intervention = transaction.intervention()
            if intervention is None:
                transaction.process_uri(request.target, request.method, request.http_version)
                intervention = transaction.intervention()
            if intervention is None:
                for name, value in request.headers:
                    transaction.add_request_header(
                        name.decode("latin-1"), value.decode("latin-1")
                    )
                transaction.process_request_headers()
                intervention = transaction.intervention()
            if intervention is None:
                if request.body:
                    transaction.append_request_body(request.body)
                transaction.process_request_body()
                intervention = transaction.intervention()
            messages = transaction.get_rule_messages()
        except Exception as e:
            raise InspectionError(f"{type(e).__name__}: {e}") from e
        collector = MatchCollector()
        for message in messages:
            collector.add(message.rule_id, message.message, message.data)
        status = None
        if intervention is not None and intervention.disruptive:
            status = int(intervention.status)
            if intervention.log:
                collector.add_log_line(intervention.log)
        return collector.verdict(status)

    def close(self) -> None:
        """
        Drop the engine and the rules (the wheel frees them when collected).
        """
        if self._closed:
            return
        self._closed = True
        self._msc.set_log_callback(None)
        self._rules = None
        self._msc = None
