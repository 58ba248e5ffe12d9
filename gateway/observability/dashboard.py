"""``/_gateway/dashboard``: one HTML page for people, from the same figures as ``/_gateway/metrics``.

Rendered on request from what ``Services`` holds (nothing extra is kept for it) and refreshed by the
browser every few seconds. Every value is escaped: vendor and route names come from config, but a
vendor's deprecation headers do not.
"""

from __future__ import annotations

import html
import time
from collections import Counter

from .. import __version__
from ..config import Config
from ..services import Services

REFRESH_SECONDS = 5

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}.bad{color:#b00;font-weight:600}.muted{color:#888}
"""


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return "&gt; 30 s"
    return f"&le; {seconds * 1000:g} ms"


def _row(cells: list[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _resilience(config: Config, services: Services) -> str:
    circuits = services.circuits.open_state()
    deliveries = services.deliveries
    retries: Counter[str] = Counter()
    for (label, _reason), count in services.retries.sent.items():
        retries[label] += count
    rows = [_row(["vendor", "circuit", "retries sent", "delivered", "dead letters"], True)]
    for name, vendor in sorted(config.vendors.items()):
        if not vendor.circuit.enabled:
            circuit = '<span class="muted">off</span>'
        else:
            circuit = '<span class="bad">open</span>' if circuits.get(name) else "closed"
        dead = deliveries.dead.get(name, 0)
        rows.append(
            _row(
                [
                    html.escape(name),
                    circuit,
                    str(retries[name]),
                    str(deliveries.delivered[name]),
                    f'<span class="bad">{dead}</span>' if dead else "0",
                ]
            )
        )
    pending = f"<p>Deliveries queued or in progress: {deliveries.pending}</p>"
    return "<table>" + "".join(rows) + "</table>" + pending


def render_dashboard(config: Config, services: Services) -> str:
    m = services.metrics
    limits = services.ratelimits
    totals: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for (label, _route, _method, status), count in m.requests.items():
        totals[label] += count
        if status >= 500:
            errors[label] += count
    rows = [
        _row(
            ["vendor", "requests", "5xx", "p50", "p99", "upstream p50", "429 by gateway", "rate limit"], True
        )
    ]
    for name, vendor in sorted(config.vendors.items()):
        duration = m.duration.get(name)
        upstream = m.upstream.get(name)
        rate = vendor.rate_limit
        rate_text = (
            f"{rate.requests}/{rate.per_seconds:g}s {rate.scope}"
            if rate
            else '<span class="muted">none</span>'
        )
        five = errors[name]
        rows.append(
            _row(
                [
                    html.escape(name),
                    str(totals[name]),
                    f'<span class="bad">{five}</span>' if five else "0",
                    _ms(duration.quantile(0.5) if duration else None),
                    _ms(duration.quantile(0.99) if duration else None),
                    _ms(upstream.quantile(0.5) if upstream else None),
                    str(limits.rejected[name]),
                    rate_text,
                ]
            )
        )
    notices = services.deprecations.notices()
    deprecation_rows = [_row(["vendor", "route", "seen", "deprecated", "sunset"], True)] + [
        _row(
            [
                html.escape(n.vendor),
                html.escape(n.route),
                str(n.count),
                html.escape(str(n.deprecated_at or n.deprecation or "")),
                html.escape(str(n.sunset_at or n.sunset or "")),
            ]
        )
        for n in notices
    ]
    idempotency = [
        _row([html.escape(label), html.escape(outcome), str(count)])
        for (label, outcome), count in sorted(services.idempotency_outcomes.items())
    ]
    resilience = _resilience(config, services)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>Egress gateway</title><style>{_STYLE}</style></head><body>
<h1>Egress gateway <span class="muted">{__version__} · {time.strftime("%Y-%m-%d %H:%M:%S")} ·
store {html.escape(services.store.url)}</span></h1>
<h2>Vendors</h2><table>{"".join(rows)}</table>
<h2>Deprecation and sunset notices</h2>
{"<table>" + "".join(deprecation_rows) + "</table>" if notices else '<p class="muted">none seen</p>'}
<h2>Retries, circuit breakers and async delivery</h2>
{resilience}
<h2>Idempotency</h2>
{
        "<table>" + _row(["vendor", "outcome", "count"], True) + "".join(idempotency) + "</table>"
        if idempotency
        else '<p class="muted">no keyed requests yet</p>'
    }
<p class="muted">Latencies are bucket upper bounds. Machine-readable: <a href="metrics">metrics</a>,
<a href="deprecations">deprecations</a>, <a href="ready">ready</a>.</p>
</body></html>
"""
