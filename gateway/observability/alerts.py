"""Alerts (docs/operations.md): ``[[alerts.rule]]`` evaluated on the in-memory history, per vendor.

Each (rule, vendor) pair is one alert, in one of three states. "ok": the condition does not hold.
"pending": it holds, for less than the rule's ``for_seconds`` so far. "firing": it has held that long
(at once with ``for_seconds = 0``), until an evaluation finds it no longer holds: then it is resolved
and "ok" again. Firing and resolving each log one event (``alert_firing``, ``alert_resolved``) and hand
one notice to ``notify`` (the webhook notifier, when configured), unless ``announces`` is off (all
but one of several workers: they keep the same states, one of them says so);
``gateway_alert_active{vendor,alert}`` is 1 while firing and 0 otherwise, for every pair from the start.

Evaluation is a plain function of the history and the clock time it is given (``Alerts.evaluate``):
the monitor calls it every ``evaluate_seconds``; tests call it with the time they choose.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ..config.model import AlertRule
from .history import History
from .logging import Logger
from .metrics import Family

Notice = dict[str, Any]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def measure(rule: AlertRule, vendor: str, history: History) -> tuple[float, bool]:
    """The rule's figure for the vendor as of the history's last reading, and whether it is over the
    threshold (the ratios only with at least ``min_requests`` answers in the window)."""
    kind = rule.kind
    if kind in ("dlq_depth", "circuit_open"):
        reading = history.latest(vendor)
        if reading is None:
            return 0.0, False
        value = float(reading.dead_letters if kind == "dlq_depth" else reading.circuit_open)
        return value, value > rule.threshold
    figures = history.window(vendor, rule.window_seconds)
    if kind == "p99_latency":
        p99 = figures.quantile(0.99)
        return (p99 or 0.0), p99 is not None and p99 > rule.threshold
    count = figures.server_errors if kind == "error_ratio" else figures.rejected
    value = figures.ratio(count)
    return value, figures.requests >= max(1, rule.min_requests) and value > rule.threshold


@dataclass(slots=True, eq=False)
class Alert:
    rule: AlertRule
    vendor: str
    state: Literal["ok", "pending", "firing"] = "ok"
    holds_since: float = 0.0  # clock time the condition began to hold (pending or firing)
    since: float = 0.0  # wall time of the last transition to firing or back to ok
    value: float = 0.0  # as of the last evaluation

    def notice(self, status: str, gateway: str) -> Notice:
        """The webhook body (docs/operations.md)."""
        return {
            "status": status,
            "alert": self.rule.name,
            "vendor": self.vendor,
            "kind": self.rule.kind,
            "value": round(self.value, 6),
            "threshold": self.rule.threshold,
            "since": iso(self.since),
            "gateway": gateway,
        }


class Alerts:
    """Every alert's state, kept across reloads (a rule that keeps its name keeps its state)."""

    def __init__(self, logger: Logger, *, wall: Callable[[], float] = time.time) -> None:
        self.logger = logger
        self.wall = wall  # for the ``since`` people read; the evaluation itself uses the clock it is given
        self.hostname = socket.gethostname()
        self.notify: Callable[[Notice], None] | None = None
        self.announces = True  # log each firing and resolving, and hand it to notify
        self._alerts: dict[tuple[str, str], Alert] = {}
        self.evaluations = 0

    def configure(self, rules: tuple[AlertRule, ...], vendors: Mapping[str, object] | frozenset[str]) -> None:
        """The alerts ``rules`` make for ``vendors`` (a "*" rule, one per vendor). A pair that goes away
        (its rule or vendor removed by a reload) while firing is resolved first."""
        wanted: dict[tuple[str, str], AlertRule] = {}
        for rule in rules:
            for vendor in sorted(vendors) if rule.vendor == "*" else (rule.vendor,):
                if vendor in vendors:
                    wanted[(rule.name, vendor)] = rule
        for key, alert in list(self._alerts.items()):
            if key not in wanted:
                if alert.state == "firing":
                    self._resolve(alert)
                del self._alerts[key]
        for key, rule in wanted.items():
            known = self._alerts.get(key)
            if known is None:
                self._alerts[key] = Alert(rule=rule, vendor=key[1])
            else:
                known.rule = rule  # a changed threshold or window applies from the next evaluation

    def evaluate(self, history: History, now: float) -> None:
        """One evaluation of every alert, at clock time ``now``."""
        self.evaluations += 1
        for alert in self._alerts.values():
            alert.value, holds = measure(alert.rule, alert.vendor, history)
            if not holds:
                if alert.state == "firing":
                    self._resolve(alert)
                alert.state = "ok"
                continue
            if alert.state == "ok":
                alert.state, alert.holds_since = "pending", now
            if alert.state == "pending" and now - alert.holds_since >= alert.rule.for_seconds:
                alert.state = "firing"
                alert.since = self.wall()
                self._announce(alert, "firing")

    def _resolve(self, alert: Alert) -> None:
        alert.state = "ok"
        alert.since = self.wall()
        self._announce(alert, "resolved")

    def _announce(self, alert: Alert, status: str) -> None:
        if not self.announces:
            return
        notice = alert.notice(status, self.hostname)
        self.logger.event(
            f"alert_{status}",
            level="warning" if status == "firing" else "info",
            alert=notice["alert"],
            vendor=notice["vendor"],
            kind=notice["kind"],
            value=notice["value"],
            threshold=notice["threshold"],
            since=notice["since"],
        )
        if self.notify is not None:
            self.notify(notice)

    def firing(self) -> list[Notice]:
        """The firing alerts, as ``/_gateway/alerts`` lists them."""
        return [
            alert.notice("firing", self.hostname)
            for alert in sorted(self._alerts.values(), key=lambda a: (a.rule.name, a.vendor))
            if alert.state == "firing"
        ]

    def families(self) -> Iterator[Family]:
        yield Family(
            "gateway_alert_active",
            "1 while the alert fires for the vendor, else 0 (one series per rule and vendor).",
            "gauge",
            ("vendor", "alert"),
            {(vendor, name): int(a.state == "firing") for (name, vendor), a in self._alerts.items()},
        )
