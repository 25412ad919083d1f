# -*- test-case-name: tests.test_workers_admin -*-
"""
A worker's side of the master's admin (L{balancebeam.workers.fleet_admin}):
applying the upstreams' admin states the master sends
(L{apply_admin_states}), and purging its cache when asked (L{purge}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.admin.providers import IPurger
from balancebeam.registry import DISABLED, DRAINING, ENABLED, REMOVED, UpstreamRegistry
from balancebeam.workers.control import PURGED, Message

log = Logger()


def apply_admin_states(registry: UpstreamRegistry, states: Mapping[str, Any]) -> int:
    """
    Put each upstream named in C{states} in its admin state, as the single
    process's admin does (C{registry.set_admin_state}). Unknown names (an
    older or newer configuration), removed upstreams and unknown states are
    skipped.

    @return: how many states changed.
    """
    changed = 0
    if not isinstance(states, Mapping):
        return changed
    for name, state in states.items():
        upstream = registry.get(name)
        if upstream is None or upstream.admin_state == REMOVED:
            continue
        if state not in (ENABLED, DRAINING, DISABLED):
            continue
        if registry.set_admin_state(upstream, state, "requested on the master's admin"):
            changed += 1
    return changed


def purge(purger: IPurger | None, message: Message) -> Deferred[Message]:
    """
    Purge the URL of a L{PURGE <balancebeam.workers.control.PURGE>} message.

    @return: fires with the L{PURGED} answer (0 purged without a cache; an
        C{error} when purging failed).
    """
    serial = message.get("serial")
    url = message.get("url")
    if purger is None or not isinstance(url, str):
        return succeed({"type": PURGED, "serial": serial, "purged": 0})
    call: Callable[[str], Any] = purger.purge
    purging: Deferred[int] = maybeDeferred(call, url)

    def purged(count: int) -> Message:
        return {"type": PURGED, "serial": serial, "purged": count}

    def failed(reason: Failure) -> Message:
        log.failure("purging {url} failed", reason, url=url)
        return {"type": PURGED, "serial": serial, "purged": 0, "error": "purging failed"}

    return purging.addCallbacks(purged, failed)
