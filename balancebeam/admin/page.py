"""
The status page (C{/status}): one HTML document with its style and a few
lines of plain JavaScript that poll C{/status.json} and redraw the page,
marking the counters that changed. The first data is embedded, so the page
shows at once; without JavaScript it shows the same data as JSON and
reloads itself.
"""

from __future__ import annotations

import html
import json
from typing import Any

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>balancebeam status</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
body { font: 14px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d2733; background: #f4f6f8; }
header { background: #24384d; color: #fff; padding: 10px 14px; }
header h1 { font-size: 17px; margin: 0; display: inline-block; }
header .meta { opacity: .8; margin-left: 10px; font-size: 12px; }
main { padding: 10px 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 12px; }
.card { background: #fff; border-radius: 6px; padding: 6px 10px; min-width: 96px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .label { font-size: 11px; color: #5a6a7a; text-transform: uppercase; }
.card .value { font-size: 18px; font-variant-numeric: tabular-nums; }
.wrap { overflow-x: auto; background: #fff; border-radius: 6px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e3e8ed; text-align: right;
         white-space: nowrap; }
th { background: #e9eef3; font-size: 12px; color: #3b4b5b; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
tr.up td.state { background: #d8f3dc; }
tr.down td.state { background: #f8d7da; }
tr.draining td.state, tr.removed td.state { background: #fff1c2; }
tr.disabled td.state { background: #dfe3e8; }
td.changed, .card .changed { animation: flash 1.5s ease-out; font-weight: 600; }
@keyframes flash { from { background: #ffe58a; } to { background: transparent; } }
.muted { color: #6b7b8b; font-size: 12px; }
.error { color: #a4161a; }
h2 { font-size: 14px; margin: 14px 0 6px; }
footer { padding: 8px 14px; color: #6b7b8b; font-size: 12px; }
@media (max-width: 720px) {
  table.upstreams thead { display: none; }
  table.upstreams tr { display: block; border-bottom: 6px solid #f4f6f8; }
  table.upstreams td { display: flex; justify-content: space-between; text-align: right;
                       border: none; padding: 3px 10px; white-space: normal; }
  table.upstreams td::before { content: attr(data-label); color: #5a6a7a; margin-right: 10px;
                               text-align: left; }
}
</style>
</head>
<body data-refreshes="0">
<header><h1>balancebeam</h1><span class="meta" id="meta"></span></header>
<main>
<div class="cards" id="summary"></div>
<div class="wrap"><table class="upstreams" id="upstreams">
<thead><tr><th>Upstream</th><th class="text">State</th><th>Since</th>
<th class="text">Last probe</th><th>Weight</th>
<th>In flight</th><th>Pool idle/open</th><th>Requests</th><th>1xx</th><th>2xx</th><th>3xx</th>
<th>4xx</th><th>5xx</th><th>Failures</th></tr></thead>
<tbody></tbody></table></div>
<div id="features"></div>
<noscript><pre>__JSON_TEXT__</pre></noscript>
</main>
<footer><span id="updated"></span> <span id="error" class="error"></span></footer>
<script id="initial" type="application/json">__JSON__</script>
<script>
"use strict";
var previous = {}, refreshes = 0;
var query = new URLSearchParams(location.search);
var every = Math.max(0.2, parseFloat(query.get("refresh") || "2")) * 1000;
function duration(s) {
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor(s % 3600 / 60) + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s % 86400 / 3600) + "h";
}
function cell(row, label, text, key, cls) {
  var td = document.createElement("td");
  td.textContent = text;
  td.setAttribute("data-label", label);
  if (cls) td.className = cls;
  if (key !== null) {
    td.setAttribute("data-key", key);
    if (key in previous && previous[key] !== text) td.classList.add("changed");
    previous[key] = text;
  }
  row.appendChild(td);
  return td;
}
function card(parent, label, text, key) {
  var div = document.createElement("div"), l = document.createElement("div"),
      v = document.createElement("div");
  div.className = "card"; l.className = "label"; v.className = "value";
  l.textContent = label; v.textContent = text; v.setAttribute("data-key", key);
  if (key in previous && previous[key] !== text) v.classList.add("changed");
  previous[key] = text;
  div.appendChild(l); div.appendChild(v); parent.appendChild(div);
}
function render(d) {
  document.getElementById("meta").textContent = "v" + d.version + " \\u00b7 up " +
    duration(d.uptime_seconds) + " \\u00b7 " + d.listeners.join(", ") +
    (d.draining ? " \\u00b7 draining" : "");
  var summary = document.getElementById("summary");
  summary.textContent = "";
  var rps = d.requests_per_second === null ? "-" : d.requests_per_second.toFixed(1);
  card(summary, "req/s (1 min)", rps, "rps");
  card(summary, "requests", String(d.requests), "requests");
  card(summary, "in flight", String(d.requests_in_flight), "in_flight");
  card(summary, "connections", String(d.client_connections), "connections");
  ["2xx", "4xx", "5xx"].forEach(function (c) {
    card(summary, c, String(d.responses[c]), "r" + c);
  });
  card(summary, "rate limited", String(d.rate_limited), "rate_limited");
  card(summary, "retries", String(d.retries), "retries");
  card(summary, "upstreams serving", d.upstreams_up + "/" + d.upstreams.length, "up");
  card(summary, "reloads ok/failed", d.reloads.success + "/" + d.reloads.failure, "reloads");
  var body = document.querySelector("#upstreams tbody");
  body.textContent = "";
  d.upstreams.forEach(function (u) {
    var row = document.createElement("tr"), k = u.name + "|";
    row.className = u.state;
    row.setAttribute("data-upstream", u.name);
    cell(row, "Upstream", u.name, null, "text");
    cell(row, "State", u.state, k + "state", "state text");
    cell(row, "Since", duration(u.since_seconds), null);
    cell(row, "Last probe", u.last_probe ? u.last_probe.reason : "-", null, "text");
    cell(row, "Weight", String(u.weight), k + "weight");
    cell(row, "In flight", String(u.in_flight), k + "in_flight");
    cell(row, "Pool idle/open", u.pool_idle + "/" + u.pool_open, k + "pool");
    cell(row, "Requests", String(u.requests), k + "requests");
    ["1xx", "2xx", "3xx", "4xx", "5xx"].forEach(function (c) {
      cell(row, c, String(u.responses[c]), k + c);
    });
    var f = u.failures;
    cell(row, "Failures", f.connect + f.response + f.timeout + " / " + f.check,
         k + "failures").title = "connect " + f.connect + ", response " + f.response +
         ", timeout " + f.timeout + " / health checks " + f.check;
    body.appendChild(row);
  });
  var features = document.getElementById("features");
  features.textContent = "";
  Object.keys(d.features).forEach(function (name) {
    var h = document.createElement("h2"), cards = document.createElement("div");
    h.textContent = name; cards.className = "cards";
    Object.keys(d.features[name]).forEach(function (key) {
      card(cards, key.replace(/_total$/, ""), String(d.features[name][key]), name + "|" + key);
    });
    features.appendChild(h); features.appendChild(cards);
  });
  refreshes += 1;
  document.body.setAttribute("data-refreshes", String(refreshes));
  document.getElementById("updated").textContent =
    "updated " + new Date(d.now * 1000).toLocaleTimeString();
}
function poll() {
  fetch("status.json", {cache: "no-store", credentials: "same-origin"})
    .then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    })
    .then(function (d) { render(d); document.getElementById("error").textContent = ""; })
    .catch(function (e) {
      document.getElementById("error").textContent = "refresh failed: " + e.message;
    })
    .then(function () { setTimeout(poll, every); });
}
render(JSON.parse(document.getElementById("initial").textContent));
setTimeout(poll, every);
</script>
</body>
</html>
"""


def render_page(data: dict[str, Any]) -> bytes:
    """
    The status page, with C{data} (L{balancebeam.admin.status.status_data})
    embedded for its first paint.
    """
    embedded = json.dumps(data, sort_keys=True).replace("<", "\\u003c").replace("&", "\\u0026")
    text = html.escape(json.dumps(data, indent=1, sort_keys=True))
    return _PAGE.replace("__JSON_TEXT__", text).replace("__JSON__", embedded).encode("utf-8")
