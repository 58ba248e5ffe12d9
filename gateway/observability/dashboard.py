"""``/_gateway/dashboard``: one self-contained page for people, drawn from ``/_gateway/status``.

No external asset and no build step: the page is this HTML, its CSS and a small script. It arrives with
the status of the default window inside (so the first paint needs no second request), then fetches
``status?window=...`` every ``REFRESH_SECONDS`` and updates the numbers and the inline SVG sparklines in
place, without reloading. The script only ever sets ``textContent`` and SVG attributes it computes, never
HTML, so nothing a vendor sends (deprecation headers) can become markup; the embedded JSON has every
``<`` escaped, so it cannot close its script element.
"""

from __future__ import annotations

import orjson

from ..config import Config
from ..services import Services
from .status import DEFAULT_WINDOW, WINDOWS, status

REFRESH_SECONDS = 2

_STYLE = """
:root{--fg:#1d2330;--muted:#6b7385;--line:#e3e6ec;--bad:#c0262d;--warn:#b86e00;--ok:#1f7a45;--card:#fff}
*{box-sizing:border-box}body{font:14px/1.4 system-ui,sans-serif;margin:0;color:var(--fg);background:#f4f5f8}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.4em 1.2em;padding:1em 1.5em;
background:var(--card);border-bottom:1px solid var(--line)}h1{font-size:1.3em;margin:0}
.muted{color:var(--muted)}
main{padding:1em 1.5em}h2{font-size:1.05em;margin:1.4em 0 .6em}
.windows button{font:inherit;border:1px solid var(--line);background:var(--card);padding:.2em .7em;
cursor:pointer}
.windows button[aria-pressed=true]{background:var(--fg);color:#fff;border-color:var(--fg)}
#alerts{padding:.7em 1em;border-radius:6px;background:#e8f4ec;color:var(--ok)}
#alerts.firing{background:#fbe9ea;color:var(--bad)}#alerts ul{margin:.3em 0 0;padding-left:1.2em}
.vendors{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}
.vendor{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.8em 1em}
.vendor h3{margin:0 0 .5em;font-size:1.1em;display:flex;gap:.6em;align-items:center}
.badge{font-size:.75em;font-weight:600;padding:.1em .5em;border-radius:4px;background:#e8f4ec;color:var(--ok)}
.badge.open{background:#fbe9ea;color:var(--bad)}.badge.off{background:#eee;color:var(--muted)}
.vendor h3 .limit{font-size:.8em;font-weight:400}
.tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:.6em .9em}
.tile .label{font-size:.78em;color:var(--muted)}.tile .value{font-size:1.25em;font-weight:600}
.tile.bad .value{color:var(--bad)}svg.spark{display:block;width:100%;height:28px}
svg.spark path{fill:none;stroke-width:1.5}table{border-collapse:collapse;background:var(--card)}
td,th{padding:.3em .8em;border-bottom:1px solid var(--line);text-align:left}
"""

# Tiles per vendor: (metric key in status.vendors[], label, sparkline series or "", stroke colour).
_SCRIPT = r"""
"use strict";
const TILES = [
  ["rps", "requests/s", "rps", "#2f6fd6"],
  ["ratio_5xx", "5xx ratio", "ratio_5xx", "#c0262d"],
  ["ratio_4xx", "4xx ratio", "ratio_4xx", "#b86e00"],
  ["p50_seconds", "p50 latency", "p50", "#7a4cc2"],
  ["p99_seconds", "p99 latency", "p99", "#5b2a9e"],
  ["queued", "rate-limit queue", "queued", "#12808a"],
  ["rejected", "429 by gateway", "rejected", "#b86e00"],
  ["dead_letters", "dead letters", "", ""],
];
const SVG = "http://www.w3.org/2000/svg";
let windowName = document.body.dataset.window;
const cards = new Map();

function text(el, value) { if (el.textContent !== value) el.textContent = value; }
function num(v, digits) { return v === null || v === undefined ? "\u2013" : v.toFixed(digits); }
function fmt(key, v) {
  if (v === null || v === undefined) return "\u2013";
  if (key.startsWith("ratio")) return (v * 100).toFixed(1) + " %";
  if (key.endsWith("_seconds")) return v < 1 ? (v * 1000).toPrecision(3) + " ms" : v.toFixed(2) + " s";
  if (key === "rps") return num(v, v < 10 ? 2 : 1);
  return String(v);
}
function sparkPath(values) {
  const max = Math.max(0, ...values.filter(v => v !== null));
  const n = values.length, w = 120, h = 26;
  let d = "", pen = false;
  values.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    const x = n > 1 ? (i * w) / (n - 1) : 0;
    const y = max > 0 ? h + 1 - (v / max) * h : h + 1;
    d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
    pen = true;
  });
  return d || "M0 27";
}
function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}
function card(name) {
  let c = cards.get(name);
  if (c) return c;
  const root = el("section", "vendor");
  root.dataset.vendor = name;
  const h = el("h3", "", root);
  text(el("span", "name", h), name);
  const badge = el("span", "badge", h);
  const limit = el("span", "muted limit", h);
  const tiles = el("div", "tiles", root);
  const parts = {};
  for (const [key, label, series, colour] of TILES) {
    const tile = el("div", "tile", tiles);
    tile.dataset.metric = key;
    text(el("div", "label", tile), label);
    const value = el("div", "value", tile);
    let path = null;
    if (series) {
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("class", "spark");
      svg.setAttribute("viewBox", "0 0 120 28");
      svg.setAttribute("preserveAspectRatio", "none");
      const base = document.createElementNS(SVG, "path");
      base.setAttribute("d", "M0 27.5L120 27.5");
      base.setAttribute("stroke", "#e3e6ec");
      base.setAttribute("vector-effect", "non-scaling-stroke");
      svg.appendChild(base);
      path = document.createElementNS(SVG, "path");
      path.setAttribute("class", "line");
      path.setAttribute("stroke", colour);
      path.setAttribute("vector-effect", "non-scaling-stroke");
      svg.appendChild(path);
      tile.appendChild(svg);
    }
    parts[key] = {tile, value, path, series};
  }
  c = {root, badge, limit, parts};
  cards.set(name, c);
  return c;
}
function render(data) {
  const alerts = document.getElementById("alerts");
  alerts.className = data.alerts.length ? "firing" : "";
  alerts.replaceChildren();
  const count = data.alerts.length;
  const heading = count ? count + (count > 1 ? " alerts" : " alert") + " firing" : "No alerts firing";
  text(el("strong", "", alerts), heading);
  if (data.alerts.length) {
    const ul = el("ul", "", alerts);
    for (const a of data.alerts) {
      const as = a.kind === "p99_latency" ? "p99_seconds" : a.kind.endsWith("ratio") ? "ratio" : "count";
      const shown = a.kind === "circuit_open" ? "circuit open"
        : a.kind + " " + fmt(as, a.value) + " > " + fmt(as, a.threshold);
      const line = [a.alert, a.vendor, shown, "since " + a.since].join(" \u00b7 ");
      text(el("li", "", ul), line);
    }
  }
  const list = document.getElementById("vendors");
  const seen = new Set();
  for (const v of data.vendors) {
    seen.add(v.name);
    const c = card(v.name);
    if (c.root.parentNode !== list) list.appendChild(c.root);
    text(c.badge, "circuit " + v.circuit);
    c.badge.className = "badge " + v.circuit;
    text(c.limit, v.rate_limit ? "limit " + v.rate_limit : "");
    for (const [key, part] of Object.entries(c.parts)) {
      text(part.value, fmt(key, v[key]));
      const bad = (key === "ratio_5xx" && v[key] > 0) || (key === "dead_letters" && v[key] > 0) ||
        (key === "rejected" && v[key] > 0);
      part.tile.classList.toggle("bad", bad);
      if (part.path) {
        const d = sparkPath(v.series[part.series]);
        if (part.path.getAttribute("d") !== d) part.path.setAttribute("d", d);
      }
    }
  }
  for (const [name, c] of cards) if (!seen.has(name)) { c.root.remove(); cards.delete(name); }
  const deps = document.getElementById("deprecations");
  deps.replaceChildren();
  if (!data.deprecations.length) text(el("p", "muted", deps), "none seen");
  else {
    const table = el("table", "", deps);
    const head = el("tr", "", table);
    for (const h of ["vendor", "route", "seen", "deprecated", "sunset", "example"])
      text(el("th", "", head), h);
    for (const n of data.deprecations) {
      const row = el("tr", "", table);
      for (const v of [n.vendor, n.route, String(n.count), n.deprecated_at || n.deprecation || "",
                       n.sunset_at || n.sunset || "", n.example]) text(el("td", "", row), v);
    }
  }
  text(document.getElementById("pending"), String(data.deliveries_pending));
  text(document.getElementById("updated"), "updated " + data.time.slice(11, 19) + " UTC");
  document.body.dataset.updates = String(Number(document.body.dataset.updates || "0") + 1);
}
async function refresh() {
  try {
    const answer = await fetch("status?window=" + encodeURIComponent(windowName), {cache: "no-store"});
    if (!answer.ok) throw new Error("status answered " + answer.status);
    render(await answer.json());
    document.getElementById("updated").classList.remove("bad");
  } catch (e) {
    const u = document.getElementById("updated");
    text(u, "cannot reach the gateway: " + e.message);
    u.classList.add("bad");
  }
}
for (const button of document.querySelectorAll(".windows button")) {
  button.addEventListener("click", () => {
    windowName = button.dataset.window;
    for (const b of document.querySelectorAll(".windows button"))
      b.setAttribute("aria-pressed", String(b === button));
    refresh();
  });
}
render(JSON.parse(document.getElementById("initial").textContent));
setInterval(refresh, REFRESH_MS);
"""


def render_dashboard(config: Config, services: Services) -> str:
    initial = orjson.dumps(status(config, services, WINDOWS[DEFAULT_WINDOW])).replace(b"<", b"\\u003c")
    buttons = "".join(
        f'<button type="button" data-window="{name}" aria-pressed="{str(name == DEFAULT_WINDOW).lower()}">'
        f"{label}</button>"
        for name, label in (("5m", "5 min"), ("1h", "1 hour"))
    )
    script = _SCRIPT.replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Egress gateway</title><style>{_STYLE}</style></head>
<body data-window="{DEFAULT_WINDOW}">
<header><h1>Egress gateway</h1><span class="windows">{buttons}</span>
<span class="muted" id="updated"></span></header>
<main>
<div id="alerts"></div>
<h2>Vendors</h2><div class="vendors" id="vendors"></div>
<h2>Deprecation and sunset notices</h2><div id="deprecations"></div>
<p class="muted">Deliveries queued or in progress: <span id="pending"></span>. Latencies are estimates
from the request-duration histogram (as Prometheus' histogram_quantile). Machine-readable:
<a href="status">status</a>, <a href="alerts">alerts</a>, <a href="metrics">metrics</a>,
<a href="deprecations">deprecations</a>.</p>
</main>
<script id="initial" type="application/json">{initial.decode()}</script>
<script>{script}</script>
</body></html>
"""
