"""
What the firewall asks of a ModSecurity binding, whichever one is installed.

A binding (L{IInspector}) is built once from an ordered list of rule sources
(L{RuleSource}) and then inspects one request at a time, on whatever thread
calls it, and says what the rules thought (L{Verdict}). Two bindings exist:
L{balancebeam.waf.modsec_cffi} (Debian's C library through cffi, which lets
other threads run while it works) and L{balancebeam.waf.modsec_wheel} (the
C{libmodsecurity} wheel from PyPI, which does not). Nothing here imports
Twisted: an inspection is a plain, blocking call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from zope.interface import Attribute, Interface


class RulesError(ValueError):
    """
    A rule or configuration file the engine would not load.

    @ivar source: the file (or the name of the generated text) that failed.
    @ivar message: the engine's own message.
    """

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class InspectionError(Exception):
    """
    The engine failed while inspecting one request (not a rule match).
    """


@dataclass(frozen=True)
class RuleSource:
    """
    One step of the rule loading order: a file, or text made by balancebeam.

    @ivar name: the file's path, or a label such as C{<balancebeam engine settings>}.
    @ivar text: the rules themselves for generated text; C{None} for a file.
    """

    name: str
    text: str | None = None


@dataclass(frozen=True)
class InspectedRequest:
    """
    The parts of a request the engine looks at.

    @ivar request_id: the balancer's request id, used as the transaction id.
    @ivar client_ip: the client's address.
    @ivar method: the method, e.g. C{"GET"}.
    @ivar target: the request target as received, e.g. C{"/search?q=x"}.
    @ivar http_version: C{"1.1"} or C{"1.0"}.
    @ivar headers: every header field as received, C{(name, value)} bytes in order.
    @ivar body: the whole request body (C{b""} for none).
    """

    request_id: str
    client_ip: str
    method: str
    target: str
    http_version: str
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class Verdict:
    """
    What the rules decided about one request.

    @ivar status: the status of the engine's disruptive action (403 for the
        CRS's blocking rule), or C{None} when the rules let it through.
    @ivar rule_ids: the ids of the rules that matched and logged, in order,
        without repeats.
    @ivar anomaly_score: the CRS inbound anomaly score (0 without the CRS).
    @ivar messages: the C{msg} of each matched rule, in the order of
        C{rule_ids}.
    """

    status: int | None
    rule_ids: tuple[int, ...] = ()
    anomaly_score: int = 0
    messages: tuple[str, ...] = ()

    @property
    def matched(self) -> bool:
        """
        Whether any rule matched or the engine intervened.
        """
        return self.status is not None or bool(self.rule_ids)


class IInspector(Interface):
    """
    A ModSecurity engine with its rules loaded, ready to inspect requests.
    """

    name: str = Attribute("A short name for logs, such as C{'cffi libmodsecurity 3.0.9'}.")
    releases_gil: bool = Attribute(
        "Whether L{inspect} lets other Python threads run while the engine "
        "works, so that it may run in a thread pool without stalling the reactor."
    )

    def inspect(request: InspectedRequest) -> Verdict:
        """
        Run request phases 1 and 2 on C{request}; blocking.

        Safe to call from several threads at once when L{releases_gil} is true.

        @raise InspectionError: when the engine itself fails.
        """

    def close() -> None:
        """
        Free the engine and its rules; L{inspect} must not be called afterwards.
        """


# The id of every rule scoring the request, and the score: the fields of
# ModSecurity's text log line (the same in 3.0.9 and 3.0.15).
_ID = re.compile(r'\[id "(\d+)"\]')
_MSG = re.compile(r'\[msg "((?:[^"\\]|\\.)*)"\]')
_DATA = re.compile(r'\[data "((?:[^"\\]|\\.)*)"\]')
_TOTAL_SCORE = re.compile(r"Total Score: (\d+)")

SCORE_RULE_ID = 99903
"""The id of the rule balancebeam appends to report the CRS anomaly score."""


class MatchCollector:
    """
    Gathers the rule matches of one transaction from the engine's log lines
    (or from structured messages) and turns them into a L{Verdict}.
    """

    __slots__ = ("rule_ids", "messages", "score")

    def __init__(self) -> None:
        self.rule_ids: list[int] = []
        self.messages: list[str] = []
        self.score = 0

    def add(self, rule_id: int, message: str, data: str) -> None:
        """
        Record one matched rule: its id, C{msg} and C{logdata}.
        """
        if rule_id == SCORE_RULE_ID:
            for word in data.split():
                if word.isdigit():
                    self.score = max(self.score, int(word))
            return
        found = _TOTAL_SCORE.search(message)
        if found is not None:
            self.score = max(self.score, int(found.group(1)))
        if rule_id not in self.rule_ids:
            self.rule_ids.append(rule_id)
            self.messages.append(message)

    def add_log_line(self, line: str) -> None:
        """
        Record one of ModSecurity's text log lines (C{[id "942100"] [msg "..."]}).
        """
        found = _ID.search(line)
        if found is None:
            return
        msg = _MSG.search(line)
        data = _DATA.search(line)
        self.add(
            int(found.group(1)),
            msg.group(1) if msg is not None else "",
            data.group(1) if data is not None else "",
        )

    def verdict(self, status: int | None) -> Verdict:
        """
        The verdict for these matches and the engine's intervention C{status}.
        """
        return Verdict(status, tuple(self.rule_ids), self.score, tuple(self.messages))
