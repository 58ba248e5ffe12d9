"""The history's ring buffers, the quantile estimates, and the alert states, on times the test chooses."""

from __future__ import annotations

import io
import time
from typing import Any

import orjson
import pytest

from gateway.config.model import AlertRule
from gateway.observability.alerts import Alerts
from gateway.observability.history import RINGS, History, Reading, estimate_quantile
from gateway.observability.logging import Logger
from gateway.observability.metrics import DURATION_BUCKETS, Histogram

BUCKETS = len(DURATION_BUCKETS) + 1


class Vendor:
    """Cumulative figures of one made-up vendor, as the features would count them."""

    def __init__(self) -> None:
        self.requests = self.c4 = self.c5 = self.rejected = self.retries = 0
        self.histogram = Histogram(DURATION_BUCKETS)
        self.queued = self.circuit = self.dead = 0

    def answer(self, status: int, seconds: float = 0.01, count: int = 1) -> None:
        for _ in range(count):
            self.requests += 1
            self.c4 += 400 <= status < 500
            self.c5 += status >= 500
            self.rejected += status == 429
            self.histogram.observe(seconds)

    def reading(self) -> Reading:
        return Reading(
            self.requests,
            self.c4,
            self.c5,
            self.rejected,
            self.retries,
            list(self.histogram.counts),
            self.queued,
            self.circuit,
            self.dead,
        )


def test_quantiles_are_interpolated_within_the_bucket_as_prometheus_does() -> None:
    bounds = (0.1, 0.5, 1.0)
    assert estimate_quantile(0.5, [0, 0, 0, 0], bounds) is None
    assert estimate_quantile(0.5, [10, 0, 0, 0], bounds) == pytest.approx(0.05)  # 0 .. 0.1, half way
    assert estimate_quantile(0.99, [0, 100, 0, 0], bounds) == pytest.approx(0.1 + 0.4 * 0.99)
    assert estimate_quantile(0.5, [50, 50, 0, 0], bounds) == pytest.approx(0.1)
    assert estimate_quantile(0.75, [50, 50, 0, 0], bounds) == pytest.approx(0.3)
    assert estimate_quantile(0.99, [1, 0, 0, 99], bounds) == 1.0  # in +Inf: the last bound, as Prometheus


def test_a_window_is_the_sum_of_its_last_slots_and_old_ones_roll_off() -> None:
    history, v = History(), Vendor()
    history.record(1000.0, {"v": v.reading()})
    for second in range(1, 121):  # two minutes: 10 answers a second, 2 of them 503s, from second 61 on
        v.answer(200, count=8)
        v.answer(503 if second > 60 else 200, count=2)
        history.record(1000.0 + second, {"v": v.reading()})
    last_minute = history.window("v", 60)
    assert (last_minute.requests, last_minute.server_errors) == (600, 120)
    assert last_minute.ratio(last_minute.server_errors) == pytest.approx(0.2)
    both = history.window("v", 120)
    assert (both.requests, both.server_errors) == (1200, 120)
    # Past the fine ring's five minutes, the 10 s ring answers: the same totals.
    hour = history.window("v", 3600)
    assert (hour.requests, hour.server_errors) == (1200, 120)
    # Six quiet minutes later the fine ring has nothing left of it, the hour still has all of it.
    history.record(1120.0 + 360, {"v": v.reading()})
    assert history.window("v", 300).requests == 0
    assert history.window("v", 3600).requests == 1200
    # And after more than an hour, nothing: the rings are bounded.
    history.record(1120.0 + 3700, {"v": v.reading()})
    assert history.window("v", 3600).requests == 0


def test_series_cut_the_window_into_points_of_whole_slots() -> None:
    history, v = History(), Vendor()
    history.record(0.0, {"v": v.reading()})
    for second in range(1, 301):
        v.answer(200, count=second // 60)  # 0 a second in the first minute, then 1, 2, 3, 4, 5
        v.queued = second // 60
        history.record(float(second), {"v": v.reading()})
    points = history.series("v", 300, 60)
    assert len(points) == 60 and all(p.seconds == 5 for p in points)
    assert [p.requests for p in points[:12]] == [0] * 11 + [1]  # second 60 is the first with one
    assert points[-1].requests == 4 * 4 + 5  # seconds 296-299 four each, second 300 five
    assert points[-1].queued == 5 and points[0].queued == 0
    assert len(history.series("v", 90, 60)) == 45  # 90 slots: two a point, so the points cover 90 s
    # Never sampled: points with nothing in them, not an error.
    assert [p.sampled for p in History().series("v", 300, 60)] == [False] * 60


def test_vendors_gone_with_a_reload_are_forgotten_and_memory_is_bounded() -> None:
    history, a, b = History(), Vendor(), Vendor()
    history.record(0.0, {"a": a.reading(), "b": b.reading()})
    per_vendor = history.nbytes() // 2
    for second in range(1, 4000):
        a.answer(200, count=50)
        history.record(float(second), {"a": a.reading()})
    assert list(history.vendors()) == ["a"]
    assert history.nbytes() == per_vendor  # an hour of 50 requests a second costs no more than none
    assert per_vendor < 130_000
    slots = sum(size + 1 for _, size in RINGS)  # one more each: the reading before the oldest window
    assert per_vendor == slots * 8 * (1 + 5 + BUCKETS + 3)


def test_recording_costs_microseconds_per_vendor() -> None:
    history = History()
    vendors = {f"v{i}": Vendor() for i in range(20)}
    for v in vendors.values():
        v.answer(200, count=100)
    started = time.perf_counter()
    for second in range(300):
        history.record(float(second), {name: v.reading() for name, v in vendors.items()})
    per_vendor = (time.perf_counter() - started) / (300 * 20)
    print(f"history.record: {per_vendor * 1e6:.1f} us per vendor and tick")
    assert per_vendor < 0.002  # generous for a loaded 2-core machine; measured ~15-30 us


class Captured(io.BytesIO):
    def events(self, name: str) -> list[dict[str, Any]]:
        out = [orjson.loads(line) for line in self.getvalue().splitlines()]
        return [r for r in out if r["event"] == name]


def alerts_with(*rules: AlertRule, vendors: tuple[str, ...] = ("v",)) -> tuple[Alerts, Captured, list[Any]]:
    stream = Captured()
    alerts = Alerts(Logger(stream=stream), wall=lambda: 1_767_225_600.0)  # 2026-01-01T00:00:00Z
    notices: list[Any] = []
    alerts.notify = notices.append
    alerts.configure(rules, frozenset(vendors))
    return alerts, stream, notices


def active(alerts: Alerts) -> dict[tuple[str, str], int]:
    (family,) = alerts.families()
    return dict(family.samples)


ERRORS = AlertRule(
    name="errors", vendor="*", kind="error_ratio", threshold=0.2, window_seconds=60, for_seconds=10
)


def test_error_ratio_pends_for_its_for_seconds_then_fires_then_resolves() -> None:
    alerts, stream, notices = alerts_with(ERRORS, vendors=("v", "w"))
    assert active(alerts) == {("v", "errors"): 0, ("w", "errors"): 0}  # every series from the start
    history, v, w = History(), Vendor(), Vendor()
    t = 1000.0
    history.record(t, {"v": v.reading(), "w": w.reading()})
    states = []
    for _ in range(15):  # 30% 5xx on v, all fine on w
        t += 1
        v.answer(200, count=7)
        v.answer(500, count=3)
        w.answer(200, count=10)
        history.record(t, {"v": v.reading(), "w": w.reading()})
        alerts.evaluate(history, t)
        states.append(alerts._alerts[("errors", "v")].state)
    # Holds from t=1002 on (20 answers: min_requests); fires when it has held 10 s, at t=1012.
    assert states[:1] == ["ok"]
    assert states[1:11] == ["pending"] * 10
    assert states[11:] == ["firing"] * 4
    assert active(alerts) == {("v", "errors"): 1, ("w", "errors"): 0}
    (firing,) = stream.events("alert_firing")
    assert firing["alert"] == "errors" and firing["vendor"] == "v" and firing["threshold"] == 0.2
    assert firing["value"] == pytest.approx(0.3)
    assert notices == [
        {
            "status": "firing",
            "alert": "errors",
            "vendor": "v",
            "kind": "error_ratio",
            "value": pytest.approx(0.3),
            "threshold": 0.2,
            "since": "2026-01-01T00:00:00.000Z",
            "gateway": alerts.hostname,
        }
    ]
    assert alerts.firing() == notices
    # Good answers only: the ratio over the last minute falls under 0.2 once enough of them are in.
    resolved_at = None
    for _ in range(60):
        t += 1
        v.answer(200, count=10)
        history.record(t, {"v": v.reading(), "w": w.reading()})
        alerts.evaluate(history, t)
        if resolved_at is None and alerts._alerts[("errors", "v")].state == "ok":
            resolved_at = t
    # 45 errors (15 s of 3) stay in the minute's window while the answers grow by 10 a second:
    # 45 / (10 * (15 + k)) is first at most 0.2 (not above it) at k = 8 good seconds.
    assert resolved_at == 1015.0 + 8
    (resolved,) = stream.events("alert_resolved")
    assert resolved["vendor"] == "v" and resolved["value"] <= 0.2
    assert [n["status"] for n in notices] == ["firing", "resolved"]
    assert active(alerts) == {("v", "errors"): 0, ("w", "errors"): 0}
    assert alerts.firing() == []


def test_alerts_that_do_not_announce_keep_their_states_and_say_nothing() -> None:
    # All but one of several workers: the same states, no log line and no notice of their own.
    rule = AlertRule(name="errors", vendor="v", kind="error_ratio", threshold=0.2, window_seconds=60)
    alerts, stream, notices = alerts_with(rule)
    alerts.announces = False
    history, v = History(), Vendor()
    history.record(0.0, {"v": v.reading()})
    v.answer(500, count=30)
    history.record(1.0, {"v": v.reading()})
    alerts.evaluate(history, 1.0)
    assert [(a["alert"], a["vendor"]) for a in alerts.firing()] == [("errors", "v")]
    assert active(alerts) == {("v", "errors"): 1}
    assert stream.events("alert_firing") == [] and notices == []


def test_ratios_stay_quiet_below_min_requests_and_a_short_spike_never_fires() -> None:
    rule = AlertRule(
        name="e", vendor="v", kind="error_ratio", threshold=0.1, window_seconds=60, min_requests=50
    )
    alerts, _, notices = alerts_with(rule)
    history, v = History(), Vendor()
    history.record(0.0, {"v": v.reading()})
    v.answer(503, count=49)  # all failing, but fewer than min_requests
    history.record(1.0, {"v": v.reading()})
    alerts.evaluate(history, 1.0)
    assert notices == []
    v.answer(503)
    history.record(2.0, {"v": v.reading()})
    alerts.evaluate(history, 2.0)
    assert [n["status"] for n in notices] == ["firing"]

    spiky = AlertRule(name="s", vendor="v", kind="error_ratio", threshold=0.1, for_seconds=30, min_requests=1)
    alerts, _, notices = alerts_with(spiky)
    history, v = History(), Vendor()
    history.record(0.0, {"v": v.reading()})
    for second in range(1, 120):
        v.answer(503 if second < 20 else 200, count=1 if second < 20 else 50)  # 19 s of failures, then fine
        history.record(float(second), {"v": v.reading()})
        alerts.evaluate(history, float(second))
    assert notices == []


def test_rejected_ratio_p99_dlq_and_circuit_rules() -> None:
    rules = (
        AlertRule(name="rej", vendor="v", kind="rejected_ratio", threshold=0.25, min_requests=4),
        AlertRule(name="slow", vendor="v", kind="p99_latency", threshold=2.0),
        AlertRule(name="dlq", vendor="v", kind="dlq_depth", threshold=2),
        AlertRule(name="open", vendor="v", kind="circuit_open"),
    )
    alerts, _, notices = alerts_with(*rules)
    history, v = History(), Vendor()
    history.record(0.0, {"v": v.reading()})
    v.answer(200, count=6)
    v.answer(429, count=2)  # 25%: not above the threshold
    v.dead = 2  # not above 2
    history.record(1.0, {"v": v.reading()})
    alerts.evaluate(history, 1.0)
    assert notices == []
    v.answer(429)
    v.answer(200, seconds=4.0, count=1)  # one of 10 answers slow: p99 in the 2.5-5 s bucket
    v.dead = 3
    v.circuit = 1
    history.record(2.0, {"v": v.reading()})
    alerts.evaluate(history, 2.0)
    fired = {n["alert"]: n for n in notices}
    assert set(fired) == {"rej", "slow", "dlq", "open"}
    assert fired["rej"]["value"] == pytest.approx(0.3)
    assert 2.5 < fired["slow"]["value"] <= 5.0
    assert fired["dlq"]["value"] == 3 and fired["open"]["value"] == 1 and fired["open"]["threshold"] == 0
    v.circuit = 0
    history.record(3.0, {"v": v.reading()})
    alerts.evaluate(history, 3.0)
    assert [n["alert"] for n in notices if n["status"] == "resolved"] == ["open"]


def test_a_reload_that_removes_a_firing_alert_resolves_it() -> None:
    rule = AlertRule(name="open", vendor="*", kind="circuit_open")
    alerts, _, notices = alerts_with(rule, vendors=("v", "w"))
    history, v, w = History(), Vendor(), Vendor()
    v.circuit = 1
    history.record(0.0, {"v": v.reading(), "w": w.reading()})
    alerts.evaluate(history, 0.0)
    assert [(n["status"], n["vendor"]) for n in notices] == [("firing", "v")]
    alerts.configure((rule,), frozenset({"w"}))  # v removed from the config
    assert [(n["status"], n["vendor"]) for n in notices] == [("firing", "v"), ("resolved", "v")]
    assert active(alerts) == {("w", "open"): 0}
