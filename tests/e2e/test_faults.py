"""Fault injection (docs/configuration.md) end to end: the gateway in this process on a real socket, a real
local vendor that records every call. Shares are measured over 1,000 requests and held to exact
binomial bounds (tests/binomial.py); injected faults go through retries and the breaker like the
vendor's own, are marked in the access record and counted in /_gateway/metrics."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.binomial import interval
from tests.conftest import CapturedLogs
from tests.resilience_vendor import RECORDER, Recorder, resilience_vendor

N = 1000
BATCH = 50  # requests in flight at once: 1,000 of them take a few seconds


def config(server: Any, faults: str = "", extra: str = "") -> str:
    return f"""
[vendors.v]
base_url = "{server.make_url("/")}"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}
{extra}
{faults}
"""


async def start(gateway: Any, vendor: Any, *args: Any, **kwargs: Any) -> tuple[Any, Recorder]:
    server = await vendor(resilience_vendor())
    client = await gateway(config(server, *args), **kwargs)
    return client, server.app[RECORDER]


async def call(client: Any, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
    async with client.get(path, **kwargs) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def many(client: Any, n: int, path: str = "/v/x") -> list[tuple[int, str, bytes]]:
    out: list[tuple[int, str, bytes]] = []
    for start in range(0, n, BATCH):
        out += await asyncio.gather(*(call(client, f"{path}?i={i}") for i in range(start, start + BATCH)))
    return out


def metric(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def access(client: Any, logs: CapturedLogs) -> list[dict[str, Any]]:
    client.app.logger.flush()
    return logs.access()


async def test_faults_are_off_unless_configured_and_the_header_never_reaches_the_vendor(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    client, rec = await start(gateway, vendor)
    for value in ("abort=503", "reset", "delay=5"):
        status, _, _ = await call(client, "/v/x", headers={"X-Gateway-Fault": value})
        assert status == 200
    assert len(rec.calls) == 3 and all("X-Gateway-Fault" not in c.headers for c in rec.calls)
    assert all("fault" not in r for r in access(client, logs))
    text = await (await client.get("/_gateway/metrics")).text()
    assert metric(text, "gateway_faults_injected_total") == {}


async def test_without_header_control_the_header_is_ignored(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, "[vendors.v.faults]\ndelay = { percent = 0, seconds = 1 }")
    status, _, _ = await call(client, "/v/x", headers={"X-Gateway-Fault": "abort=503"})
    assert status == 200 and len(rec.calls) == 1
    assert "X-Gateway-Fault" not in rec.calls[0].headers


async def test_configured_shares_hold_over_1000_requests(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    faults = """
[vendors.v.faults]
abort = { percent = 10.0, status = 503 }
reset = { percent = 15.0 }
delay = { percent = 20.0, seconds = 0.02 }
"""
    client, rec = await start(gateway, vendor, faults)
    results = await many(client, N)

    aborted = [r for r in results if r[0] == 503]
    reset = [r for r in results if r[0] == 502]
    assert Counter(r[0] for r in results).keys() <= {200, 502, 503}
    # As if the vendor had answered: its kind of body, not the gateway's problem+json.
    assert all(ct == "application/json" and b"injected_fault" in body for _, ct, body in aborted)
    assert all(ct == "application/problem+json" and b"(injected fault)" in body for _, ct, body in reset)
    lo, hi = interval(N, 0.10)
    assert lo <= len(aborted) <= hi, len(aborted)
    lo, hi = interval(N, 0.15)
    assert lo <= len(reset) <= hi, len(reset)
    # Injected ones never reach the vendor; everything else does.
    assert len(rec.calls) == N - len(aborted) - len(reset)

    text = await (await client.get("/_gateway/metrics")).text()
    counted = metric(text, "gateway_faults_injected_total")
    assert counted[(("kind", "abort"), ("vendor", "v"))] == len(aborted)
    assert counted[(("kind", "reset"), ("vendor", "v"))] == len(reset)
    delayed = counted[(("kind", "delay"), ("vendor", "v"))]
    lo, hi = interval(N, 0.20)
    assert lo <= delayed <= hi, delayed

    records = [r for r in access(client, logs) if r["path"] == "/v/x"]
    assert len(records) == N
    marks = Counter(r.get("fault") for r in records)
    assert marks["abort"] == len(aborted) and marks["reset"] == len(reset)
    # A delay followed by an abort or reset is recorded as the latter; the rest say "delay", and
    # really waited (as upstream time, like a slow vendor).
    assert 0 < marks["delay"] <= delayed
    assert all(
        r["duration_ms"] >= 20 and r["upstream_ms"] >= 20 for r in records if r.get("fault") == "delay"
    )
    assert all(r["attempts"] == 1 for r in records)


async def test_injected_aborts_are_retried_like_the_vendors_own(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    server = await vendor(resilience_vendor())
    rec = server.app[RECORDER]
    client = await gateway(
        f"""
[vendors.v]
base_url = "{server.make_url("/")}"
retry = {{ attempts = 3, base_delay_seconds = 0.001, max_delay_seconds = 0.002, budget_ratio = 10, budget_min_per_second = 10000 }}
circuit = {{ enabled = false }}

[vendors.v.faults]
abort = {{ percent = 50.0, status = 503 }}
"""
    )
    results = await many(client, N)
    failed = sum(1 for status, _, _ in results if status == 503)
    # The caller sees a 503 only when all three attempts were aborted: 0.5 ** 3.
    lo, hi = interval(N, 0.125)
    assert lo <= failed <= hi, failed
    assert all(status in (200, 503) for status, _, _ in results)
    assert len(rec.calls) == N - failed

    text = await (await client.get("/_gateway/metrics")).text()
    aborts = metric(text, "gateway_faults_injected_total")[(("kind", "abort"), ("vendor", "v"))]
    # Every abort but the last of a failed request was retried, under the 503's own reason.
    retried = metric(text, "gateway_retries_total")[(("reason", "503"), ("vendor", "v"))]
    assert retried == aborts - failed
    records = [r for r in access(client, logs) if r["path"] == "/v/x"]
    assert sum(r["attempts"] for r in records) == aborts + len(rec.calls)
    assert all(r["attempts"] == 3 and r["fault"] == "abort" for r in records if r["status"] == 503)


async def test_a_chaos_test_sees_injected_503s_and_the_breaker_opens_on_them(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    server = await vendor(resilience_vendor())
    rec = server.app[RECORDER]
    client = await gateway(
        f"""
[vendors.v]
base_url = "{server.make_url("/")}"
retry = {{ attempts = 1 }}
circuit = {{ failure_ratio = 0.3, min_requests = 20, window_seconds = 60, open_seconds = 30 }}

[vendors.v.faults]
abort = {{ percent = 50.0, status = 503 }}
"""
    )
    seen: list[tuple[int, str, bytes]] = []
    while len(seen) < 200:
        seen.append(await call(client, "/v/x"))
        if seen[-1][0] == 503 and seen[-1][1] == "application/problem+json":
            break
    *before, refused = seen
    assert b"circuit-open" in refused[2]
    # Up to the opening, every 503 was an injected one and every other answer the vendor's.
    injected = [r for r in before if r[0] == 503]
    assert all(ct == "application/json" and b"injected_fault" in body for _, ct, body in injected)
    assert len(rec.calls) == len(before) - len(injected)
    assert len(before) >= 20 and len(injected) >= 0.3 * 20
    opened = [r for r in logs.records() if r["event"] == "circuit_opened"]
    assert len(opened) == 1 and opened[0]["vendor"] == "v"
    assert client.app.services.circuits.open_state() == {"v": 1}
    # While open the vendor is not called, and nothing is injected: the breaker answers first.
    calls = len(rec.calls)
    for _ in range(5):
        status, content_type, _ = await call(client, "/v/x")
        assert (status, content_type) == (503, "application/problem+json")
    assert len(rec.calls) == calls
    assert client.app.services.faults[("v", "abort")] == len(injected)


async def test_header_control_asks_for_a_fault_on_one_request(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    faults = "[vendors.v.faults]\nheader_control = true"
    retry = "retry = { attempts = 2, base_delay_seconds = 0.001, max_delay_seconds = 0.002 }"
    server = await vendor(resilience_vendor())
    rec = server.app[RECORDER]
    client = await gateway(
        f'[vendors.v]\nbase_url = "{server.make_url("/")}"\n{retry}\ncircuit = {{ enabled = false }}\n{faults}\n'
    )
    # No header: nothing is drawn (every share is 0).
    assert (await call(client, "/v/plain"))[0] == 200

    status, content_type, body = await call(client, "/v/a", headers={"X-Gateway-Fault": "abort=418"})
    assert (status, content_type) == (418, "application/json") and b"injected_fault" in body
    status, content_type, body = await call(client, "/v/r", headers={"X-Gateway-Fault": "reset"})
    assert (status, content_type) == (502, "application/problem+json") and b"connection reset" in body
    started = time.monotonic()
    status, _, _ = await call(client, "/v/d", headers={"X-Gateway-Fault": "delay=0.3"})
    assert status == 200 and time.monotonic() - started >= 0.3
    status, _, _ = await call(client, "/v/da", headers={"X-Gateway-Fault": "delay=0.05, abort=503"})
    assert status == 503
    assert [c.path for c in rec.calls] == ["/plain", "/d"]  # the others never reached the vendor
    assert "X-Gateway-Fault" not in rec.calls[1].headers

    records = {r["path"]: r for r in access(client, logs)}
    assert "fault" not in records["/v/plain"]
    assert records["/v/a"]["fault"] == "abort" and records["/v/a"]["attempts"] == 1  # 418 is not retried
    assert records["/v/r"]["fault"] == "reset" and records["/v/r"]["attempts"] == 2  # a reset is
    assert records["/v/d"]["fault"] == "delay" and records["/v/d"]["upstream_ms"] >= 300
    assert records["/v/da"]["fault"] == "abort" and records["/v/da"]["attempts"] == 2
    assert client.app.services.retries.sent[("v", "connection")] == 1
    assert client.app.services.faults == {("v", "abort"): 3, ("v", "reset"): 2, ("v", "delay"): 3}


async def test_an_injected_delay_past_the_vendors_timeout_is_a_timeout(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    client, rec = await start(
        gateway,
        vendor,
        "[vendors.v.faults]\nheader_control = true",
        "timeout = { total_seconds = 0.4 }",
    )
    started = time.monotonic()
    status, content_type, body = await call(client, "/v/x", headers={"X-Gateway-Fault": "delay=30"})
    elapsed = time.monotonic() - started
    assert (status, content_type) == (504, "application/problem+json") and b"within 0.4s" in body
    assert 0.4 <= elapsed < 5.0
    assert rec.calls == []
    (record,) = [r for r in access(client, logs) if r["path"] == "/v/x"]
    assert record["fault"] == "delay" and record["attempts"] == 1


async def test_a_bad_fault_header_is_a_400_naming_it(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, "[vendors.v.faults]\nheader_control = true")
    for value in (
        "abort=200",
        "abort",
        "delay=-1",
        "delay=nan",
        "explode",
        "abort=503, reset",
        "reset=1",
        ",",
    ):
        status, content_type, body = await call(client, "/v/x", headers={"X-Gateway-Fault": value})
        assert (status, content_type) == (400, "application/problem+json"), value
        assert b"X-Gateway-Fault" in body, (value, body)
    assert rec.calls == []


async def test_a_routes_faults_replace_the_vendors(gateway: Any, vendor: Any) -> None:
    routes = {
        "v": """
vendor = "v"
expose = "all"

[[route]]
path = "/calm/**"
faults = {}

[[route]]
path = "/cut"
faults = { reset = { percent = 100 } }
"""
    }
    client, rec = await start(
        gateway, vendor, "[vendors.v.faults]\nabort = { percent = 100, status = 500 }", routes=routes
    )
    assert (await call(client, "/v/other"))[0] == 500  # the vendor's faults: every call
    assert (await call(client, "/v/calm/x"))[0] == 200  # an empty table: none on this route
    status, content_type, _ = await call(client, "/v/cut")
    assert (status, content_type) == (502, "application/problem+json")
    assert [c.path for c in rec.calls] == ["/calm/x"]


async def test_queued_deliveries_meet_the_faults_too(gateway: Any, vendor: Any) -> None:
    routes = {
        "v": """
vendor = "v"
expose = "all"

[[route]]
method = "POST"
path = "/jobs"
delivery = "async"
faults = { abort = { percent = 100, status = 503 } }
"""
    }
    extra = 'idempotency = { forward_header = "Idempotency-Key" }\n[delivery]\nmax_attempts = 2'
    client, rec = await start(gateway, vendor, "", extra, routes=routes)
    resp = await client.post("/v/jobs", data=b"{}")
    assert resp.status == 202
    location = resp.headers["Location"]
    deadline = time.monotonic() + 20
    while (record := await (await client.get(location)).json())["state"] not in ("delivered", "dead"):
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.05)
    assert record["state"] == "dead" and record["attempts"] == 2 and "503" in record["last_error"]
    assert rec.calls == []
    assert client.app.services.faults[("v", "abort")] == 2
