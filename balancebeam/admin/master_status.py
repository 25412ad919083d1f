# -*- test-case-name: tests.test_admin_master -*-
"""
The master's status (C{--workers N}): L{master_status_data}, what
C{/status.json} shows (every key the single process's has, made from the
workers' reports as the metrics are, plus the generation, one line per
worker and the summed counters); L{not_ready_reason}, what C{/ready} says;
and L{render_master_page}, the C{/status} page (a plain HTML page of the
same data, every value escaped, reloading itself).
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping
from typing import Any

from balancebeam.admin.master_metrics import GAUGES, admin_state, upstream_metrics
from balancebeam.admin.status import CLASSES, runtime_data
from balancebeam.registry import ENABLED
from balancebeam.workers.counters import MasterSnapshot, UpstreamStatus

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
    requests_per_second: float | None = None,
    admin: Collection[str] = (),
) -> dict[str, Any]:
    """
    Everything the master's status shows, as JSON-able data: the single
    process's keys (L{balancebeam.admin.status.status_data}), counters
    summed over every worker and gauges over the live ones, then the
    master's own: C{not_ready_reason}, C{generation}, C{workers} and
    C{counters}, and for each upstream the C{workers} that see it C{up}
    and C{down}.

    @param requests_per_second: the request rate over the last minute, or
        C{None} when it is not measured.
    @param admin: the admin listener's addresses.
    """
    started = started_at if started_at is not None else now
    counters = snapshot.counters
    gauges = snapshot.gauges
    upstreams = [_upstream_data(snapshot, row, states, now) for row in snapshot.upstream_states()]
    reason = not_ready_reason(snapshot, states)
    last = snapshot.last_reload
    responses = _mapping(counters.get("responses"))
    return {
        **runtime_data(now, started),
        "listeners": list(snapshot.listeners),
        "admin": list(admin),
        "ready": reason is None,
        "not_ready_reason": reason,
        "draining": snapshot.draining,
        "strategy": snapshot.strategy,
        "requests": _int(counters.get("requests")),
        "requests_per_second": requests_per_second,
        "responses": {code: _int(responses.get(code)) for code in CLASSES},
        "requests_in_flight": _int(gauges.get("requests_in_flight")),
        "client_connections": _int(gauges.get("client_connections_open")),
        "rate_limited": _int(counters.get("rate_limited")),
        "retries": _int(counters.get("retries")),
        "no_upstream": _int(counters.get("no_upstream")),
        "client_errors": _int(counters.get("client_errors")),
        "upstream_timeouts": _int(counters.get("upstream_timeouts")),
        "pool_opened": _int(counters.get("pool_connections_opened")),
        "pool_reused": _int(counters.get("pool_connections_reused")),
        "reloads": {
            "success": _int(counters.get("reloads")),
            "failure": _int(counters.get("reloads_failed")),
            "last_ok": last.ok,
            "last_at": last.at,
            "last_error": last.error,
        },
        "upstreams_up": sum(1 for u in upstreams if u["serving"]),
        "upstreams": upstreams,
        "features": _features(snapshot),
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
        "counters": counters,
    }


def _upstream_data(
    snapshot: MasterSnapshot, row: UpstreamStatus, states: Mapping[str, str], now: float
) -> dict[str, Any]:
    """
    One upstream's row: the single process's keys
    (L{balancebeam.admin.status.upstream_data}), and the workers that see it
    up and down.
    """
    state = admin_state(row, states)
    values = upstream_metrics(snapshot, row)
    counts = values.counters
    return {
        "name": row.name,
        "state": ("up" if row.alive else "down") if state == ENABLED else state,
        "healthy": row.alive,
        "admin_state": state,
        "serving": row.alive and state == ENABLED,
        "since": row.since,
        "since_seconds": max(0.0, now - row.since),
        "last_probe": dict(row.last_probe) if row.last_probe is not None else None,
        "in_flight": values.in_flight,
        "pool_idle": values.idle,
        "pool_open": values.open,
        "requests": values.requests,
        "responses": {code: values.responses.get(code, 0) for code in CLASSES},
        "failures": {
            "connect": counts.get("connect_failures", 0),
            "response": counts.get("response_errors", 0),
            "timeout": counts.get("timeouts", 0),
            "check": counts.get("check_failures", 0),
        },
        "retries": counts.get("retries", 0),
        "state_changes": counts.get("state_changes", 0),
        "weight": row.weight,
        "connections_opened": counts.get("connections_opened", 0),
        "connections_reused": counts.get("connections_reused", 0),
        "workers": {"up": list(row.workers_up), "down": list(row.workers_down)},
    }


def _features(snapshot: MasterSnapshot) -> dict[str, dict[str, Any]]:
    """
    Each feature's counters (summed over every worker, with C{_total}) and
    gauges (summed over the live ones), as the single process shows them:
    C{{"cache": {"hits_total": 3, "bytes": 120, ...}}}.
    """
    features: dict[str, dict[str, Any]] = {}
    for name, gauges in _mapping(snapshot.gauges.get("features")).items():
        values: dict[str, Any] = {}
        prefix = f"{name}_"
        for key, value in snapshot.counters.items():
            if not key.startswith(prefix) or key in GAUGES or key[len(prefix) :] in gauges:
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                values[key[len(prefix) :] + "_total"] = value
        for key, value in _mapping(gauges).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = value
        features[name] = values
    return features


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


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
        [
            "upstream",
            "state",
            "admin state",
            "workers up/down",
            "since",
            "last probe",
            "weight",
            "in flight",
            "pool idle/open",
            "requests",
            *CLASSES,
            "failures",
        ],
        [
            [
                u["name"],
                u["state"],
                u["admin_state"],
                f"{len(u['workers']['up'])}/{len(u['workers']['down'])}",
                f"{u['since_seconds']:.0f} s ago",
                u["last_probe"]["reason"] if u["last_probe"] else "-",
                u["weight"],
                u["in_flight"],
                f"{u['pool_idle']}/{u['pool_open']}",
                u["requests"],
                *(u["responses"][code] for code in CLASSES),
                _failures(u["failures"]),
            ]
            for u in data["upstreams"]
        ],
        "upstreams",
    )
    rate = data["requests_per_second"]
    summary = _table(
        ["requests", "req/s (1 min)", "in flight", "connections", *CLASSES],
        [
            [
                data["requests"],
                "-" if rate is None else f"{rate:.1f}",
                data["requests_in_flight"],
                data["client_connections"],
                *(data["responses"][code] for code in CLASSES),
            ]
        ],
        "summary",
    )
    counters = _table(
        ["counter", "sum"],
        [
            [name, value]
            for name, value in _flatten(data["counters"])
            if not name.startswith(_SHOWN_APART)
        ],
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
{summary}
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


_SHOWN_APART = ("upstreams.", "durations.", "duration_sum")
"""Counters the page shows in the upstream table (or not at all: the
request duration histogram is on C{/metrics} and in C{/status.json})."""


def _failures(failures: Mapping[str, int]) -> str:
    """
    An upstream's failures as the single process's page shows them:
    connect + response + timeout / failed health checks.
    """
    handled = failures["connect"] + failures["response"] + failures["timeout"]
    return f"{handled} / {failures['check']}"


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
