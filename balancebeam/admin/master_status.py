# -*- test-case-name: tests.test_admin_master -*-
"""
The master's status (C{--workers N}): L{master_status_data}, what
C{/status.json} shows (the generation, one line per worker, the upstreams,
the summed counters); L{not_ready_reason}, what C{/ready} says; and
L{render_master_page}, the C{/status} page (a plain HTML page of the same
data, every value escaped, reloading itself).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from balancebeam.admin.status import runtime_data
from balancebeam.registry import ENABLED
from balancebeam.workers.counters import MasterSnapshot

REFRESH = 5
"""Seconds between two reloads of the status page."""


def serving(snapshot: MasterSnapshot, states: Mapping[str, str]) -> list[str]:
    """
    The upstreams that take requests: up, and enabled on the admin.
    """
    return [name for name in snapshot.upstreams_up if states.get(name, ENABLED) == ENABLED]


def not_ready_reason(snapshot: MasterSnapshot, states: Mapping[str, str]) -> str | None:
    """
    Why the master's workers cannot serve (C{/ready} answers 503 with it),
    or C{None} when a worker is ready and an upstream takes requests.
    """
    if not any(worker.state == "ready" for worker in snapshot.workers):
        return "no worker is ready"
    if not serving(snapshot, states):
        if snapshot.upstreams_up:
            return "no upstream takes requests: the ones up are drained or disabled"
        return "no upstream is up"
    return None


def master_status_data(
    snapshot: MasterSnapshot,
    states: Mapping[str, str],
    now: float,
    started_at: float | None,
) -> dict[str, Any]:
    """
    Everything the master's status shows, as JSON-able data.
    """
    started = started_at if started_at is not None else now
    up = set(snapshot.upstreams_up)
    upstreams = []
    for name in (*snapshot.upstreams_up, *snapshot.upstreams_down):
        admin_state = states.get(name, ENABLED)
        health = "up" if name in up else "down"
        upstreams.append(
            {
                "name": name,
                "state": health if admin_state == ENABLED else admin_state,
                "healthy": name in up,
                "admin_state": admin_state,
                "serving": name in up and admin_state == ENABLED,
            }
        )
    reason = not_ready_reason(snapshot, states)
    return {
        **runtime_data(now, started),
        "ready": reason is None,
        "not_ready_reason": reason,
        "generation": snapshot.generation,
        "workers": [
            {
                "pid": w.pid,
                "slot": w.slot,
                "generation": w.generation,
                "started": w.started,
                "uptime_seconds": max(0.0, now - w.started),
                "state": w.state,
                "requests": w.requests,
                "connections": w.connections,
            }
            for w in snapshot.workers
        ],
        "upstreams_up": len(serving(snapshot, states)),
        "upstreams": upstreams,
        "counters": snapshot.counters,
    }


def _row(cells: list[object], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def _table(head: list[str], rows: list[list[object]], name: str) -> str:
    body = "".join(_row(row) for row in rows)
    head_row = _row(list(head), "th")
    return f'<table class="{name}"><thead>{head_row}</thead><tbody>{body}</tbody></table>'


def render_master_page(data: Mapping[str, Any]) -> bytes:
    """
    The master's C{/status} page for C{data} (L{master_status_data}).
    """
    workers = _table(
        ["pid", "slot", "generation", "started", "state", "requests", "connections"],
        [
            [
                w["pid"],
                w["slot"],
                w["generation"],
                f"{w['uptime_seconds']:.0f} s ago",
                w["state"],
                w["requests"],
                w["connections"],
            ]
            for w in data["workers"]
        ],
        "workers",
    )
    upstreams = _table(
        ["upstream", "state", "admin state"],
        [[u["name"], u["state"], u["admin_state"]] for u in data["upstreams"]],
        "upstreams",
    )
    counters = _table(
        ["counter", "sum"],
        [[name, value] for name, value in _flatten(data["counters"])],
        "counters",
    )
    ready = "ready" if data["ready"] else f"not ready: {data['not_ready_reason']}"
    meta = (
        f"v{data['version']} &middot; generation {data['generation']} &middot; "
        f"up {data['uptime_seconds']:.0f} s &middot; {html.escape(ready)}"
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH}">
<title>balancebeam master status</title>
<style>
body {{ font: 14px/1.35 system-ui, sans-serif; margin: 0; color: #1d2733; background: #f4f6f8; }}
header {{ background: #24384d; color: #fff; padding: 10px 14px; }}
main {{ padding: 10px 14px; }}
table {{ border-collapse: collapse; background: #fff; margin-bottom: 12px;
         font-variant-numeric: tabular-nums; }}
th, td {{ padding: 4px 8px; border-bottom: 1px solid #e3e8ed; text-align: left; }}
th {{ background: #e9eef3; font-size: 12px; }}
</style>
</head>
<body>
<header><b>balancebeam master</b> <span id="meta">{meta}</span></header>
<main>
<h2>Workers</h2>
{workers}
<h2>Upstreams ({data["upstreams_up"]} serving)</h2>
{upstreams}
<h2>Counters (all workers)</h2>
{counters}
</main>
</body>
</html>
"""
    return page.encode("utf-8")


def _flatten(counters: Mapping[str, Any], prefix: str = "") -> list[tuple[str, object]]:
    """
    C{(name, value)} of every counter, nested ones as C{responses.2xx}.
    """
    rows: list[tuple[str, object]] = []
    for name in sorted(counters):
        value = counters[name]
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{prefix}{name}."))
        else:
            rows.append((prefix + name, value))
    return rows
