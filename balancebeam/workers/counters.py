# -*- test-case-name: tests.test_workers_master -*-
"""
The master's counters: L{MasterSnapshot}, what it knows of all its workers
(the sums of their counters and gauges, each one's L{WorkerStatus}, the
upstreams' state as the master and the workers see it), and
L{add_counters}, how a worker's counters are added into the sums.
L{balancebeam.workers.fleet.WorkerFleet.snapshot} builds the one and uses
the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from balancebeam.workers.processes import WorkerStatus


def add_counters(total: dict[str, Any], values: Mapping[str, Any]) -> None:
    """
    Add C{values} into C{total}: numbers (integers, and floats such as the
    request durations' sum) are summed and nested dictionaries added the
    same way (a histogram's buckets, an upstream's counters); anything else
    (booleans, lists, text) is left out.
    """
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            current = total.get(name, 0)
            if not isinstance(current, (int, float)) or isinstance(current, bool):
                current = 0
            total[name] = current + value
        elif isinstance(value, Mapping):
            nested = total.get(name)
            if not isinstance(nested, dict):
                nested = total[name] = {}
            add_counters(nested, value)


@dataclass(frozen=True)
class UpstreamStatus:
    """
    One upstream as the master and its workers see it.

    @ivar name: C{host:port}.
    @ivar healthy: whether the master's health has it up (the state it
        sends every worker), or C{None} for an upstream only a draining
        generation has (it is shown C{removed}).
    @ivar weight: its weight.
    @ivar since: clock time of its last health or admin state change in the
        master.
    @ivar last_probe: the master's last health probe of it (C{healthy},
        C{reason}, C{at}), or C{None}.
    @ivar workers_up: the pids of the live workers whose last report has it
        up.
    @ivar workers_down: those whose last report has it down.
    @ivar removed: whether it is not in the serving generation's upstreams.
    """

    name: str
    healthy: bool | None
    weight: int = 1
    since: float = 0.0
    last_probe: Mapping[str, Any] | None = None
    workers_up: tuple[int, ...] = ()
    workers_down: tuple[int, ...] = ()
    removed: bool = False

    @property
    def alive(self) -> bool:
        """
        Whether it is up for all: the master has it up and no worker
        reports it down (an upstream of a draining generation only: every
        worker that reports it has it up).
        """
        if self.workers_down:
            return False
        if self.healthy is None:
            return bool(self.workers_up)
        return self.healthy


@dataclass(frozen=True)
class LastReload:
    """
    How the master's last reload (C{SIGHUP}: a new generation) went.

    @ivar ok: whether it applied (C{True} before any).
    @ivar at: clock time it ended, or C{None} before any.
    @ivar success_at: clock time of the last one that applied, or C{None}.
    @ivar error: why it failed, or C{None}.
    """

    ok: bool = True
    at: float | None = None
    success_at: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class MasterSnapshot:
    """
    What the master knows of all its workers.

    @ivar counters: the sums of every worker's counters (the keys of
        L{balancebeam.service.BalancerService.snapshot}, C{responses}
        nested, and those L{balancebeam.workers.worker_admin.report_counters}
        adds: the request duration histogram C{durations} and
        C{duration_sum}, and C{upstreams}, each upstream's counters by
        name), those of workers gone included, plus the master's own:
        C{worker_starts}, C{worker_crashes}, C{reloads}, C{reloads_failed},
        C{health_probes_sent}, C{health_probes_failed}, and each upstream's
        C{check_failures} and C{state_changes}. None ever goes down.
    @ivar workers: one entry per live worker, by generation and slot.
    @ivar generation: the generation serving now.
    @ivar upstreams_up: names of the upstreams in rotation (the master's
        health).
    @ivar upstreams_down: names of the upstreams out of rotation.
    @ivar gauges: the sums of the live workers' gauges
        (L{balancebeam.workers.worker_admin.report_gauges}:
        C{requests_in_flight}, C{client_connections_open}, C{upstreams} by
        name, C{features}); those of workers gone are not kept.
    @ivar upstreams: each upstream's state, the serving generation's first,
        then those of draining generations only.
    @ivar last_reload: how the master's last reload went.
    @ivar listeners: the addresses the master listens on for the workers.
    @ivar strategy: the serving generation's balancing strategy.
    @ivar draining: whether the master is stopping.
    """

    counters: dict[str, Any]
    workers: tuple[WorkerStatus, ...]
    generation: int
    upstreams_up: tuple[str, ...]
    upstreams_down: tuple[str, ...]
    gauges: dict[str, Any] = field(default_factory=dict)
    upstreams: tuple[UpstreamStatus, ...] = ()
    last_reload: LastReload = LastReload()
    listeners: tuple[str, ...] = ()
    strategy: str = ""
    draining: bool = False

    def upstream_states(self) -> tuple[UpstreamStatus, ...]:
        """
        L{upstreams}, or when it is empty (a snapshot built by hand) one
        entry per name of L{upstreams_up} and L{upstreams_down}.
        """
        if self.upstreams:
            return self.upstreams
        up = tuple(UpstreamStatus(name, True) for name in self.upstreams_up)
        return up + tuple(UpstreamStatus(name, False) for name in self.upstreams_down)
