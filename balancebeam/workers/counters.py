# -*- test-case-name: tests.test_workers_master -*-
"""
The master's counters: L{MasterSnapshot}, what it knows of all its workers
(the sums of their counters, each one's L{WorkerStatus}, the upstreams'
state), and L{add_counters}, how a worker's counters are added into the
sums. L{balancebeam.workers.fleet.WorkerFleet.snapshot} builds the one and
uses the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from balancebeam.workers.processes import WorkerStatus


def add_counters(total: dict[str, Any], values: Mapping[str, Any]) -> None:
    """
    Add C{values} into C{total}: integers are summed and nested
    dictionaries added the same way; anything else is left out.
    """
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            current = total.get(name, 0)
            total[name] = (current if isinstance(current, int) else 0) + value
        elif isinstance(value, Mapping):
            nested = total.get(name)
            if not isinstance(nested, dict):
                nested = total[name] = {}
            add_counters(nested, value)


@dataclass(frozen=True)
class MasterSnapshot:
    """
    What the master knows of all its workers.

    @ivar counters: the sums of every worker's counters (the keys of
        L{balancebeam.service.BalancerService.snapshot}, C{responses}
        nested), those of workers gone included, plus the master's own:
        C{worker_starts}, C{worker_crashes}, C{reloads}, C{reloads_failed},
        C{health_probes_sent} and C{health_probes_failed}. None ever goes down.
    @ivar workers: one entry per live worker, by generation and slot.
    @ivar generation: the generation serving now.
    @ivar upstreams_up: names of the upstreams in rotation.
    @ivar upstreams_down: names of the upstreams out of rotation.
    """

    counters: dict[str, Any]
    workers: tuple[WorkerStatus, ...]
    generation: int
    upstreams_up: tuple[str, ...]
    upstreams_down: tuple[str, ...]
