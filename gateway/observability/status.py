"""``/_gateway/status``: what the dashboard draws, as JSON, over a window of the in-memory history.

Per configured vendor: requests per second, the 4xx and 5xx ratios apart, p50 and p99 latency (estimates
from the histogram, not bucket bounds), rate-limit queue depth and rejections, retries, circuit state
and dead letters, each over the window and as ``POINTS`` values for a sparkline; then the firing
alerts, the deprecation notices and the delivery queue. ``window`` is ``5m`` (the default), ``1h``, or
a number of seconds from 60 to 3600. The gauges (queue depth, circuit, dead letters) are as of the
history's last reading, so every figure is the monitor's, the alerts' too (with several workers, those
of all the workers: ``gateway.observability.monitor``).
"""

from __future__ import annotations

import time
from typing import Any

from .. import __version__
from ..config import Config
from ..errors import BadRequest
from ..services import Services
from .alerts import iso
from .history import HISTORY_SECONDS, Figures

POINTS = 60
WINDOWS = {"5m": 300.0, "1h": 3600.0}
DEFAULT_WINDOW = "5m"
MIN_WINDOW_SECONDS = 60.0


def parse_window(text: str | None) -> float:
    """``5m``, ``1h`` or seconds -> seconds; a BadRequest (400 problem+json) naming what is accepted."""
    if text is None or text == "":
        return WINDOWS[DEFAULT_WINDOW]
    if text in WINDOWS:
        return WINDOWS[text]
    if text.isdigit() and len(text) <= 5 and MIN_WINDOW_SECONDS <= int(text) <= HISTORY_SECONDS:
        return float(text)
    raise BadRequest(
        f"window must be {', '.join(WINDOWS)} or a number of seconds from {MIN_WINDOW_SECONDS:g} to "
        f"{HISTORY_SECONDS:g} (the gateway keeps one hour), not {text[:20]!r}"
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _ratio(count: int, figures: Figures) -> float | None:
    return round(count / figures.requests, 4) if figures.requests else None


def _series(points: list[Figures]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {
        key: [] for key in ("rps", "ratio_4xx", "ratio_5xx", "p50", "p99", "queued", "rejected")
    }
    for f in points:
        sampled = f.sampled
        out["rps"].append(round(f.requests / f.seconds, 3) if sampled else None)
        out["ratio_4xx"].append(_ratio(f.client_errors, f))
        out["ratio_5xx"].append(_ratio(f.server_errors, f))
        out["p50"].append(_round(f.quantile(0.5), 6))
        out["p99"].append(_round(f.quantile(0.99), 6))
        out["queued"].append(f.queued)
        out["rejected"].append(f.rejected if sampled else None)
    return out


def status(config: Config, services: Services, window_seconds: float) -> dict[str, Any]:
    history = services.history
    vendors = []
    point_seconds = window_seconds / POINTS
    for name, vendor in sorted(config.vendors.items()):
        series = history.series(name, window_seconds, POINTS)
        point_seconds = series[0].seconds if series else point_seconds
        f = history.window(name, window_seconds)
        latest = history.latest(name)
        queued, circuit_open, dead = (
            (latest.queued, latest.circuit_open, latest.dead_letters) if latest else (0, 0, 0)
        )
        rate = vendor.rate_limit
        circuit = "off" if not vendor.circuit.enabled else "open" if circuit_open else "closed"
        vendors.append(
            {
                "name": name,
                "requests": f.requests,
                "rps": round(f.requests / f.seconds, 3),
                "client_errors": f.client_errors,
                "server_errors": f.server_errors,
                "ratio_4xx": _ratio(f.client_errors, f),
                "ratio_5xx": _ratio(f.server_errors, f),
                "p50_seconds": _round(f.quantile(0.5), 6),
                "p99_seconds": _round(f.quantile(0.99), 6),
                "rejected": f.rejected,
                "retries": f.retries,
                "queued": queued,
                "circuit": circuit,
                "dead_letters": dead,
                "rate_limit": f"{rate.requests}/{rate.per_seconds:g}s {rate.scope}" if rate else None,
                "series": _series(series),
            }
        )
    return {
        "version": __version__,
        "time": iso(time.time()),
        "store": services.store.url,
        "window_seconds": window_seconds,
        "point_seconds": point_seconds,
        "alerts": services.alerts.firing(),
        "vendors": vendors,
        "deprecations": [notice.as_dict() for notice in services.deprecations.notices()],
        "deliveries_pending": services.deliveries.pending,
    }
