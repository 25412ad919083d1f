"""
What the exchanges of one configuration share (L{RelaySettings}).

A reload builds new settings and hands them to the relay factory; every
exchange keeps the settings it started with, so a request in flight
finishes on the configuration it began under (its timeouts, its filters,
its dispatcher), while new requests take the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorTime

from balancebeam.config import Limits, Timeouts
from balancebeam.http1.dates import DateField
from balancebeam.interfaces import IRequestFilter
from balancebeam.relay.detached import DetachedClient
from balancebeam.relay.filtering import FilterChain
from balancebeam.relay.states import deadline_table
from balancebeam.relay.transport import acked_bytes
from balancebeam.routing import Dispatcher
from balancebeam.stats import Stats


class RelaySettings:
    """
    One generation of the relay's configuration, and the shared objects an
    exchange reports to.

    @ivar clock: the clock deadlines are measured on.
    @ivar dispatcher: finds upstream connections.
    @ivar stats: the counters (shared by every generation).
    @ivar timeouts: the timeouts, in seconds.
    @ivar deadlines: seconds allowed in each exchange state (see
        L{balancebeam.relay.states.deadline_table}).
    @ivar limits: size limits on what clients send.
    @ivar filters: the request filters, in order, or C{None} when there are none.
    @ivar access_log: whether to log one line per request.
    @ivar detached: stand-ins for clients gone while an observer still
        wants their response; their deadlines are enforced like the
        connections' (shared by every generation).
    @ivar progress: how many bytes a connection's peer has acknowledged
        (L{balancebeam.relay.transport.acked_bytes}; C{-1}: unknown): a
        slow reader that still reads is not cut at a blocked state's deadline.
    @ivar date: the C{Date} line of the balancer's own responses and of
        upstream responses that come without one.
    """

    __slots__ = (
        "clock",
        "dispatcher",
        "stats",
        "timeouts",
        "deadlines",
        "limits",
        "filters",
        "access_log",
        "detached",
        "progress",
        "date",
    )

    def __init__(
        self,
        clock: IReactorTime,
        dispatcher: Dispatcher,
        stats: Stats,
        timeouts: Timeouts,
        limits: Limits,
        filters: Sequence[IRequestFilter],
        access_log: bool,
        detached: set[DetachedClient],
        progress: Callable[[object], int] = acked_bytes,
    ) -> None:
        self.clock = clock
        self.dispatcher = dispatcher
        self.stats = stats
        self.timeouts = timeouts
        self.deadlines = deadline_table(timeouts)
        self.limits = limits
        self.filters = FilterChain(filters, stats) if filters else None
        self.access_log = access_log
        self.detached = detached
        self.progress = progress
        self.date = DateField(clock.seconds)
