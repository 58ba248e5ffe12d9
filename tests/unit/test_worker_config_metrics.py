"""Several workers (``gateway run --workers N``) without processes: what the config must allow, the
metric snapshots and their merge, the monitor's readings from them, and a reload refused in a worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.http.app import reload
from gateway.http.supervisor import _make_run_dir
from gateway.http.worker import RunDir, Worker, per_process_warnings, shared_state_problems
from gateway.observability.collector import GAUGES_BY_MAX, GAUGES_BY_MIN, decode, encode, merge, retired
from gateway.observability.history import Reading
from gateway.observability.metrics import DURATION_BUCKETS, Family, Histogram
from gateway.observability.monitor import readings, readings_of
from tests.conftest import CapturedLogs

BASE = "http://127.0.0.1:9"
# What N workers on memory:// may serve: no breaker, no idempotency (only GET is declared), no shared limit.
LOCAL_ONLY = f"""
[vendors.v]
base_url = "{BASE}"
circuit = {{ enabled = false }}
rate_limit = {{ requests = 10, per_seconds = 1 }}
"""
GET_ONLY = {"v": 'vendor = "v"\nexpose = "declared"\n[[route]]\nmethod = "GET"\npath = "/**"\n'}


def lines(problems: list[Any]) -> list[str]:
    return [str(problem) for problem in problems]


def test_one_worker_or_a_shared_store_needs_nothing(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(f'[vendors.v]\nbase_url = "{BASE}"\n'))
    assert shared_state_problems(config, 1) == []
    shared = load_config(
        write_config(f'[gateway]\nstore = "redis://127.0.0.1:1/0"\n[vendors.v]\nbase_url = "{BASE}"\n')
    )
    assert shared_state_problems(shared, 4) == []
    # A reload is checked against the store in use, not the one the new file names.
    assert shared_state_problems(shared, 4, store="memory://") != []


def test_memory_store_with_default_vendor_is_refused_naming_the_features(
    write_config: Callable[..., Path],
) -> None:
    config = load_config(write_config(f'[vendors.v]\nbase_url = "{BASE}"\n'))
    found = lines(shared_state_problems(config, 2))
    summary = found[0]
    assert summary.split(": ", 1)[0].endswith("config.toml")
    assert ": gateway.store: is memory://" in summary
    assert "--workers 2" in summary and "redis://" in summary
    assert "circuit breakers" in summary and "idempotency keys" in summary
    assert any("config.toml: vendors.v.circuit: " in line for line in found)
    # No routes file: every path passes through, POST and PATCH with a key included.
    assert any("config.toml: vendors.v: no routes file" in line for line in found)


def test_only_local_features_may_share_memory(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(LOCAL_ONLY, routes=GET_ONLY))
    assert shared_state_problems(config, 2) == []
    # ... though a local limit and per-process concurrency hold per worker: said, not refused.
    warned = lines(per_process_warnings(config, 2))
    assert len(warned) == 1 and "vendors.v.rate_limit" in warned[0] and "2x" in warned[0]


def test_every_shared_feature_is_named_where_it_is_set(write_config: Callable[..., Path]) -> None:
    config = load_config(
        write_config(
            f"""
            [vendors.v]
            base_url = "{BASE}"
            circuit = {{ enabled = false }}
            rate_limit = {{ requests = 10, scope = "global" }}
            [clients.app]
            key = "env:HOME"
            allow = ["v"]
            rate_limit = {{ requests = 5, scope = "global" }}
            """,
            routes={
                "v": """
                vendor = "v"
                expose = "declared"
                [[route]]
                method = "POST"
                path = "/charges"
                [[route]]
                method = "PUT"
                path = "/keyed"
                idempotency = "required"
                [[route]]
                method = "POST"
                path = "/jobs"
                idempotency = "off"
                delivery = "async"
                [[route]]
                method = "GET"
                path = "/free"
                rate_limit = { requests = 1, scope = "global" }
                """
            },
        )
    )
    found = lines(shared_state_problems(config, 3))
    assert "async delivery, global rate limits, idempotency keys need state" in found[0]
    keys = {line.split(": ")[1] for line in found[1:]}
    assert keys == {
        "vendors.v.rate_limit.scope",
        "clients.app.rate_limit.scope",
        "route[1].idempotency",  # POST: "optional" by default
        "route[2].idempotency",
        "route[3].delivery",
        "route[4].rate_limit.scope",
    }
    assert all(line.split(": ")[0].endswith(("config.toml", "routes/v.toml")) for line in found)


def test_webhooks_dedupe_across_workers(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "whsec_test")
    config = load_config(
        write_config(
            LOCAL_ONLY
            + """
            [bus]
            nats_url = "nats://127.0.0.1:4222"
            [webhooks.stripe]
            verify = { scheme = "stripe", secret = "env:HOOK_SECRET" }
            publish = { bus = "nats", subject = "vendors.stripe.{type}" }
            """,
            routes=GET_ONLY,
        )
    )
    found = lines(shared_state_problems(config, 2))
    assert "webhook event ids" in found[0]
    assert [line.split(": ")[1] for line in found[1:]] == ["webhooks.stripe"]


def hist(*values: float) -> Histogram:
    h = Histogram(DURATION_BUCKETS)
    for value in values:
        h.observe(value)
    return h


def families(requests: int, circuit: int, connections: int, *seconds: float) -> list[Family]:
    return [
        Family("gateway_requests", "Requests.", "counter", ("vendor", "status"), {("v", "200"): requests}),
        Family("gateway_request_duration_seconds", "Whole.", "histogram", ("vendor",), {"v": hist(*seconds)}),
        Family("gateway_circuit_open", "Open.", "gauge", ("vendor",), {"v": circuit}),
        Family("gateway_connections_open", "Per process.", "gauge", (), {(): connections}),
    ]


def by_name(merged: list[Family]) -> dict[str, dict[Any, Any]]:
    return {family.name: dict(family.samples) for family in merged}


def plain(merged: list[Family]) -> dict[str, dict[Any, Any]]:
    """``by_name`` with histograms as (cumulative buckets, sum), so two can be compared."""
    return {
        name: {k: (v.cumulative(), v.sum) if isinstance(v, Histogram) else v for k, v in samples.items()}
        for name, samples in by_name(merged).items()
    }


def test_merge_sums_counters_histograms_and_per_process_gauges_and_takes_the_max_of_shared_ones() -> None:
    assert {"gateway_circuit_open", "gateway_dlq_depth", "gateway_alert_active"} <= GAUGES_BY_MAX
    merged = by_name(merge(families(3, 0, 5, 0.002, 0.2), [families(4, 1, 7, 0.002), families(1, 0, 1)]))
    assert merged["gateway_requests"] == {("v", "200"): 8}
    histogram = merged["gateway_request_duration_seconds"][("v",)]
    assert histogram.count == 3 and histogram.sum == pytest.approx(0.204)
    assert histogram.cumulative()[1] == ("0.0025", 2)  # both 0.002 s observations
    assert merged["gateway_circuit_open"] == {("v",): 1}
    assert merged["gateway_connections_open"] == {(): 13}
    connected = [
        [Family("gateway_bus_connected", "Up.", "gauge", ("bus",), {"nats": up})] for up in (1, 0, 1)
    ]
    assert "gateway_bus_connected" in GAUGES_BY_MIN
    assert by_name(merge(connected[0], connected[1:]))["gateway_bus_connected"] == {("nats",): 0}


def test_merge_leaves_out_what_cannot_be_added() -> None:
    own = families(3, 0, 5, 0.1)
    other = [
        Family("gateway_requests", "Requests.", "gauge", ("vendor", "status"), {("v", "200"): 100}),
        Family(
            "gateway_request_duration_seconds", "Whole.", "histogram", ("vendor",), {"v": Histogram((1.0,))}
        ),
        Family("gateway_new", "Only elsewhere.", "counter", ("vendor",), {("v",): 2}),
    ]
    merged = by_name(merge(own, [other]))
    assert merged["gateway_requests"] == {("v", "200"): 3}
    assert merged["gateway_request_duration_seconds"][("v",)].count == 1
    assert merged["gateway_new"] == {("v",): 2}


def test_snapshots_round_trip_and_garbage_is_refused() -> None:
    meta, back = decode(encode(families(2, 1, 3, 0.5), worker=1, pid=42))
    assert meta["worker"] == 1 and meta["pid"] == 42
    assert plain(merge([], [back])) == plain(merge(families(2, 1, 3, 0.5), []))
    for garbage in (b"", b"{}", b"[1]", b'{"format": 1, "families": [{"name": "x"}]}'):
        with pytest.raises(ValueError):
            decode(garbage)
    assert [f.name for f in retired(back)] == ["gateway_requests", "gateway_request_duration_seconds"]


def total_requests(peers: list[Any]) -> int:
    merged = by_name(merge([], peers))
    return int(sum(merged.get("gateway_requests", {}).values()))


def test_run_dir_counts_every_worker_once_across_exits(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write(1, encode(families(5, 0, 1)))
    run.write(2, encode(families(7, 1, 1)))
    assert total_requests(run.peers(own=1)) == 7
    assert total_requests(run.peers()) == 12
    run.retire(2)  # worker 2 exited: its counters stay, its gauges go, its file goes
    assert not run.snapshot(2).exists()
    assert total_requests(run.peers()) == 12
    assert "gateway_circuit_open" not in by_name(merge([], run.peers(own=1)))
    run.write(3, encode(families(1, 0, 1)))  # its restart
    run.retire(3)
    run.retire(4)  # one that died before its first snapshot
    assert total_requests(run.peers()) == 13
    assert sorted(os.listdir(tmp_path)) == ["retired.json", "worker-1.json"]


def test_a_file_folded_while_a_scrape_reads_is_counted_once(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write(1, encode(families(5, 0, 1)))
    run.write(2, encode(families(7, 0, 1)))
    data = run.snapshot(2).read_bytes()
    run.retire(2)
    run.write(2, data)  # as a scrape that listed and read worker-2.json just before it was folded
    assert total_requests(run.peers()) == 12


def notice(count: int, last_seen: float, sunset: str = "Wed, 01 Jan 2031 00:00:00 GMT") -> dict[str, Any]:
    """One worker's deprecation record (DeprecationTracker.export) for vendor v, route /x."""
    return {
        "vendor": "v",
        "route": "/x",
        "deprecation": "true",
        "sunset": sunset,
        "link": None,
        "method": "GET",
        "path": "/v/x",
        "count": count,
        "first_seen": last_seen - 1,
        "last_seen": last_seen,
    }


def test_deprecation_notices_of_workers_that_exited_stay(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write(1, encode([], deprecations=[notice(2, 100.0)]))
    run.write(2, encode([], deprecations=[notice(3, 200.0)]))
    run.retire(2)  # worker 2 exited: its notice stays, for the other workers to show
    assert run.deprecations(own=1) == [notice(3, 200.0)]
    run.write(3, encode([], deprecations=[notice(4, 300.0, sunset="Thu, 01 Jan 2032 00:00:00 GMT")]))
    data = run.snapshot(3).read_bytes()
    run.retire(3)  # its restart exited too: one record for the pair, the latest headers, counts summed
    (kept,) = run.deprecations(own=1)
    assert (kept["count"], kept["first_seen"], kept["last_seen"]) == (7, 199.0, 300.0)
    assert kept["sunset"] == "Thu, 01 Jan 2032 00:00:00 GMT"
    run.write(3, data)  # as a reader that listed and read worker-3.json just before it was folded
    assert sum(record["count"] for record in run.deprecations(own=1)) == 7
    assert sum(record["count"] for record in run.deprecations()) == 9  # worker 1's own 2 as well


async def test_readings_of_a_process_own_families_are_the_readings_its_features_keep(gateway: Any) -> None:
    # Vendor names longer than one letter: a label value read as a string instead of a tuple would
    # come out as its first letter, and match no vendor.
    client = await gateway(
        f'[vendors.acme]\nbase_url = "{BASE}"\nconcurrency = 1\n[vendors.quiet]\nbase_url = "{BASE}"\n'
    )
    services, config = client.app.services, client.app.live.runtime.config
    for status in (200, 200, 404, 429, 499, 502, 503):
        services.metrics.observe("acme", "/x", "GET", status, status / 1e5, 0.0, 0, 0)
    services.metrics.observe("-", "*", "GET", 404, 0.001, 0.0, 0, 0)  # no vendor: in no reading
    services.retries.sent[("acme", "503")] += 2
    services.retries.sent[("acme", "timeout")] += 1
    services.ratelimits.count_rejection("acme", "queue_full")
    services.deliveries.dead = {"acme": 3}
    breaker = services.circuits.breaker(config.vendors["quiet"])
    assert breaker is not None
    breaker.state = "open"
    limiter = services.ratelimits.vendor(config.vendors["acme"])
    held = await limiter.acquire(None, time.monotonic() + 60)  # the one concurrency slot
    waiting = asyncio.ensure_future(limiter.acquire(None, time.monotonic() + 60))
    await asyncio.sleep(0)
    try:
        vendors = frozenset(config.vendors)
        own = [family for reporter in services.reporters() for family in reporter.families()]
        kept = readings(services, vendors)
        assert readings_of(merge(own, []), vendors) == kept
        acme, quiet = kept["acme"], kept["quiet"]
        assert (acme.requests, acme.client_errors, acme.server_errors) == (7, 3, 2)
        assert (acme.rejected, acme.retries, acme.queued, acme.dead_letters) == (1, 3, 1, 3)
        assert sum(acme.latency) == 7 and acme.circuit_open == 0
        assert quiet.circuit_open == 1 and quiet.requests == 0 and sum(quiet.latency) == 0
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        if held:
            limiter.release()


def worker_families(ok: int, failed: int, queued: int, circuit: int, dead: int) -> list[Family]:
    """One worker's families for vendor acme, named and labelled as the features report them."""
    labels = ("vendor", "route", "method", "status")
    return [
        Family(
            "gateway_requests",
            "",
            "counter",
            labels,
            {("acme", "/x", "GET", "200"): ok, ("acme", "/x", "GET", "503"): failed},
        ),
        Family(
            "gateway_request_duration_seconds",
            "",
            "histogram",
            ("vendor",),
            {"acme": hist(*[0.01] * (ok + failed))},
        ),
        Family("gateway_ratelimit_queue_depth", "", "gauge", ("vendor",), {"acme": queued}),
        Family("gateway_circuit_open", "", "gauge", ("vendor",), {"acme": circuit}),
        Family("gateway_dlq_depth", "", "gauge", ("vendor",), {"acme": dead}),
    ]


def test_readings_of_several_workers_count_them_all_and_never_go_down_when_one_exits(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    own = worker_families(5, 1, queued=2, circuit=1, dead=3)

    def reading() -> Reading:
        return readings_of(merge(own, run.peers(own=1)), {"acme"})["acme"]

    run.write(2, encode(worker_families(7, 3, queued=1, circuit=1, dead=3)))
    both = reading()
    assert (both.requests, both.server_errors, sum(both.latency)) == (16, 4, 16)
    # Queues are each process's own (summed); the breaker and the dead letters are the store's (the
    # largest: one worker's view may be a second behind another's).
    assert (both.queued, both.circuit_open, both.dead_letters) == (3, 1, 3)
    run.retire(2)  # worker 2 exited: its counters stay (retired.json), its gauges go with it
    gone = reading()
    assert (gone.requests, gone.server_errors, sum(gone.latency)) == (16, 4, 16)
    assert (gone.queued, gone.circuit_open, gone.dead_letters) == (2, 1, 3)
    run.write(3, encode(worker_families(1, 0, queued=0, circuit=0, dead=3)))  # its restart
    assert reading().requests == 17


async def test_a_reload_the_workers_could_not_share_is_refused(
    gateway: Any, write_config: Callable[..., Path], logs: CapturedLogs, tmp_path: Path
) -> None:
    client = await gateway(LOCAL_ONLY, routes=GET_ONLY)
    client.app.worker = Worker(index=1, workers=2, run_dir=RunDir(tmp_path), incarnation=1, ready_fd=-1)
    before = client.app.live.runtime
    write_config(f'[vendors.v]\nbase_url = "{BASE}"\n', routes=GET_ONLY)  # the breaker back on
    assert await reload(client.app, reason="test") is False
    assert client.app.live.runtime is before
    failed = [r for r in logs.records() if r["event"] == "config_reload_failed"]
    assert len(failed) == 1
    assert any("vendors.v.circuit" in problem for problem in failed[0]["problems"])
    assert "redis://" in failed[0]["problems"][0]


def test_run_dirs_left_by_a_killed_supervisor_are_removed_and_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    stale, stale_fd = _make_run_dir()
    live, live_fd = _make_run_dir()
    (stale / "worker-1.json").write_bytes(b"{}")
    os.close(stale_fd)  # as when its supervisor and workers are gone
    try:
        fresh, fresh_fd = _make_run_dir()
        try:
            assert not stale.exists()
            assert live.exists() and fresh.exists() and (fresh / "supervisor.lock").exists()
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, fresh.name])
        finally:
            os.close(fresh_fd)
    finally:
        os.close(live_fd)
