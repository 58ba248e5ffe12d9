"""``gateway run --workers N`` with real processes: a supervisor and its workers on one port.

Every wait here is for something the gateway says (a log event, a snapshot file, a metric), bounded by a
generous deadline, never a fixed sleep that a loaded machine could outrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.collector import decode
from tests.gateway_proc import GatewayProcess, free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

WAIT = 30.0  # the deadline of every wait: far beyond what any of them takes on an idle machine

# memory:// is allowed with several workers only for features that need no shared state: no breaker,
# no idempotency keys (only GET is declared), no global limit, no async delivery.
LOCAL_ONLY_ROUTES = {"v": 'vendor = "v"\nexpose = "declared"\n[[route]]\nmethod = "GET"\npath = "/**"\n'}


def local_only(server: Any, extra: str = "") -> str:
    return f"""
    [gateway]
    shutdown_timeout_seconds = 5
    {extra}
    [vendors.v]
    base_url = "{server.make_url("/")}"
    circuit = {{ enabled = false }}
    """


class Vendor:
    """Answers /ok at once, /fail with a 500, /slow after ``slow_seconds`` and /old with a Sunset
    header; records what arrived."""

    def __init__(self, slow_seconds: float = 1.5) -> None:
        self.slow_seconds = slow_seconds
        self.arrived: list[str] = []
        self.calls = 0

    def app(self) -> web.Application:
        async def ok(request: web.Request) -> web.Response:
            self.calls += 1
            return web.Response(text="ok")

        async def fail(request: web.Request) -> web.Response:
            return web.Response(status=500, text="failed")

        async def slow(request: web.Request) -> web.Response:
            self.arrived.append(request.path)
            await asyncio.sleep(self.slow_seconds)
            return web.Response(text="finished")

        async def charge(request: web.Request) -> web.Response:
            self.calls += 1
            return web.json_response({"id": f"ch_{self.calls}"}, status=201)

        async def old(request: web.Request) -> web.Response:
            return web.Response(text="ok", headers={"Sunset": "Wed, 01 Dec 2027 00:00:00 GMT"})

        app = web.Application()
        app.router.add_get("/old", old)
        app.router.add_get("/ok", ok)
        app.router.add_get("/fail", fail)
        app.router.add_get("/slow", slow)
        app.router.add_post("/charges", charge)
        return app


def events(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in gw.output().splitlines():
        if f'"event":"{name}"' in line:
            try:
                found.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return found


async def wait_for(gw: GatewayProcess, what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {WAIT} s:\n{gw.output()}")
        if gw.proc.poll() is not None:
            raise AssertionError(f"the supervisor exited with {gw.proc.returncode}:\n{gw.output()}")
        await asyncio.sleep(0.05)


def worker_pids(gw: GatewayProcess) -> dict[int, int]:
    """Worker index -> the pid of its latest process, from the ``started`` events."""
    return {record["worker"]: record["pid"] for record in events(gw, "started") if "worker" in record}


async def start_workers(config: Path, workers: int = 2) -> GatewayProcess:
    gw = GatewayProcess(config, None, "--workers", str(workers))
    await asyncio.to_thread(gw.wait_ready)
    await wait_for(gw, f"{workers} started workers", lambda: len(worker_pids(gw)) == workers)
    return gw


async def stop(gw: GatewayProcess) -> None:
    """SIGTERM first, so the supervisor removes its run dir; then GatewayProcess.stop's kill -9."""
    if gw.proc.poll() is None:
        gw.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(gw.proc.wait, WAIT)
    gw.stop()


def run_dir(gw: GatewayProcess) -> Path:
    return Path(events(gw, "supervisor_started")[0]["run_dir"])


def requests_in(families: list[Any], vendor: str = "v") -> int:
    return int(
        sum(
            count
            for family in families
            if family.name == "gateway_requests"
            for key, count in family.samples.items()
            if key[0] == vendor
        )
    )


def per_worker(gw: GatewayProcess, vendor: str = "v") -> dict[int, int]:
    """Requests for ``vendor`` each running worker counted, from its own snapshot file."""
    counts = {}
    for path in run_dir(gw).glob("worker-*.json"):
        try:
            meta, families = decode(path.read_bytes())
        except (FileNotFoundError, ValueError):
            continue
        counts[meta["worker"]] = requests_in(families, vendor)
    return counts


async def scrape(session: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, float]:
    """Sample name -> value summed over every label set (vendor v only where there is a vendor)."""
    async with session.get(f"{gw.url}/_gateway/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("vendor", "v") == "v" and "le" not in sample.labels:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def call(gw: GatewayProcess, n: int, path: str = "/v/ok") -> list[int]:
    """``n`` requests, each on a new connection (so the kernel spreads them over the workers)."""
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(n):
            async with session.get(f"{gw.url}{path}") as resp:
                await resp.read()
                statuses.append(resp.status)
    return statuses


async def session_per_worker(
    gw: GatewayProcess, stack: contextlib.AsyncExitStack, workers: int = 2
) -> dict[int, aiohttp.ClientSession]:
    """Worker index -> a session whose one connection (kept alive) that worker serves: each new session
    sends a request for no vendor, which the worker that served it counts under vendor "-" in its
    snapshot. The test must send no other request for no vendor."""
    found: dict[int, aiohttp.ClientSession] = {}
    before: dict[int, int] = {}
    probes = 0
    while len(found) < workers:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        await stack.enter_async_context(session)
        async with session.get(f"{gw.url}/nobody/probe") as resp:
            await resp.read()
        probes += 1
        counts = await wait_for(
            gw,
            f"snapshots of {probes} requests for no vendor",
            lambda n=probes: (c := per_worker(gw, "-")) and sum(c.values()) == n and c,
        )
        (index,) = [i for i, n in counts.items() if n != before.get(i, 0)]
        found.setdefault(index, session)
        before = counts
    return found


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def until_answered(what: str, ask: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    """``ask()`` again until ``done`` says its answer is the one awaited (bounded by ``WAIT``)."""
    deadline = time.monotonic() + WAIT
    while not done(answer := await ask()):
        assert time.monotonic() < deadline, f"no {what} after {WAIT} s: {answer}"
        await asyncio.sleep(0.1)
    return answer


VendorFactory = Callable[[web.Application], Awaitable[Any]]


async def local_workers(
    vendor: VendorFactory, write_config: Callable[..., Path], tables: str = "", backend: Vendor | None = None
) -> GatewayProcess:
    """``gateway run --workers 2`` with ``local_only``'s config (then ``tables``) on ``backend``, served."""
    server = await vendor((backend or Vendor()).app())
    return await start_workers(write_config(local_only(server) + tables, routes=LOCAL_ONLY_ROUTES))


async def test_two_workers_serve_one_port_and_metrics_answer_for_both(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    gw = await local_workers(vendor, write_config)
    try:
        pids = worker_pids(gw)
        assert len(set(pids.values())) == 2 and gw.proc.pid not in pids.values()
        sent = 40
        assert await call(gw, sent) == [200] * sent
        # Each worker counted its own share (both served: 40 new connections all hashed to one
        # worker would be a 1 in 2**39 chance), and together they counted every request once.
        counts = await wait_for(
            gw, "snapshots of every request", lambda: (c := per_worker(gw)) and sum(c.values()) == sent and c
        )
        assert set(counts) == {1, 2} and all(counts.values()), counts
        # Whichever worker answers a scrape, it answers for both.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(6):
                figures = await scrape(session, gw)
                assert figures["gateway_requests_total"] == sent, figures
                assert figures["gateway_request_duration_seconds_count"] == sent, figures
    finally:
        await stop(gw)


def vendor_v(status: dict[str, Any]) -> dict[str, Any]:
    (found,) = [entry for entry in status["vendors"] if entry["name"] == "v"]
    return found


async def test_status_deprecations_and_the_dashboard_on_either_worker_count_the_requests_of_both(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    gw = await local_workers(vendor, write_config)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sessions = await session_per_worker(gw, stack)
            sent = 40
            assert await call(gw, sent) == [200] * sent
            counts = await wait_for(
                gw,
                "snapshots of every request",
                lambda: (c := per_worker(gw)) and sum(c.values()) == sent and c,
            )
            assert set(counts) == {1, 2} and all(counts.values()), counts  # each served a share, not all
            for index, session in sessions.items():

                async def figures(session: aiohttp.ClientSession = session) -> tuple[int, int, int]:
                    v = vendor_v(await get_json(session, f"{gw.url}/_gateway/status"))
                    return v["requests"], v["client_errors"], v["server_errors"]

                answered = await until_answered(
                    f"every request in worker {index}'s /_gateway/status", figures, lambda f: f[0] >= sent
                )
                assert answered == (sent, 0, 0), (index, answered)
                async with session.get(f"{gw.url}/_gateway/dashboard") as resp:
                    page = await resp.text()
                initial = page.split('<script id="initial" type="application/json">')[1].split("</script>")[0]
                assert vendor_v(orjson.loads(initial))["requests"] == sent, index
            # Each worker sees the vendor's Sunset on its own connection; either shows both's count.
            for session in sessions.values():
                for _ in range(3):
                    async with session.get(f"{gw.url}/v/old") as resp:
                        assert resp.status == 200
            for index, session in sessions.items():
                notices = await until_answered(
                    f"both workers' deprecation notices in worker {index}'s /_gateway/deprecations",
                    lambda session=session: get_json(session, f"{gw.url}/_gateway/deprecations"),
                    lambda answer: sum(n["count"] for n in answer["deprecations"]) >= 6,
                )
                assert [
                    (n["vendor"], n["route"], n["count"], n["sunset_at"]) for n in notices["deprecations"]
                ] == [("v", "/**", 6, "2027-12-01T00:00:00Z")], index
    finally:
        await stop(gw)


async def test_an_alert_on_both_workers_errors_fires_on_each_and_is_sent_once(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    notices: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        notices.append(await request.json())
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/alerts", hook)
    receiver = await vendor(receiver_app)
    failed = 20
    # No worker alone gets min_requests answers: only both workers' requests together fire the alert.
    alerts = f"""
    [alerts]
    webhook_url = "{receiver.make_url("/alerts")}"
    evaluate_seconds = 1

    [[alerts.rule]]
    name = "v-errors"
    vendor = "v"
    kind = "error_ratio"
    threshold = 0.5
    min_requests = {failed}
    """
    gw = await local_workers(vendor, write_config, alerts)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sessions = await session_per_worker(gw, stack)
            assert await call(gw, failed, "/v/fail") == [500] * failed
            counts = await wait_for(
                gw,
                "snapshots of every request",
                lambda: (c := per_worker(gw)) and sum(c.values()) == failed and c,
            )
            assert set(counts) == {1, 2} and all(n < failed for n in counts.values()), counts
            for index, session in sessions.items():
                firing = await until_answered(
                    f"the alert in worker {index}'s /_gateway/alerts",
                    lambda session=session: get_json(session, f"{gw.url}/_gateway/alerts"),
                    lambda answer: answer["alerts"],
                )
                assert [(a["alert"], a["vendor"], a["value"]) for a in firing["alerts"]] == [
                    ("v-errors", "v", 1.0)
                ]
                # Both workers' gauges say 1: merged, it is still 1 (the largest), not their sum.
                assert (await scrape(session, gw))["gateway_alert_active"] == 1.0, index
            # Enough good answers to bring the ratio under the threshold: the alert resolves.
            assert await call(gw, failed + 10) == [200] * (failed + 10)
            for index, session in sessions.items():
                await until_answered(
                    f"the alert resolved in worker {index}'s /_gateway/alerts",
                    lambda session=session: get_json(session, f"{gw.url}/_gateway/alerts"),
                    lambda answer: not answer["alerts"],
                )
            await wait_for(gw, "the resolved notice", lambda: any(n["status"] == "resolved" for n in notices))
            # Both workers fired and resolved the alert (above); one of them said so, once each in the
            # log and to the webhook: a second one, as the other worker fired, would have come long before.
            assert len(events(gw, "alert_firing")) == 1 and len(events(gw, "alert_resolved")) == 1
            assert [(n["status"], n["alert"], n["vendor"]) for n in notices] == [
                ("firing", "v-errors", "v"),
                ("resolved", "v-errors", "v"),
            ], notices
    finally:
        await stop(gw)


async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    gw = await local_workers(vendor, write_config)
    try:
        assert await call(gw, 20) == [200] * 20
        await wait_for(gw, "snapshots of 20 requests", lambda: sum(per_worker(gw).values()) == 20)
        victim = worker_pids(gw)[1]
        os.kill(victim, signal.SIGKILL)
        exited = await wait_for(
            gw, "worker_exited", lambda: [e for e in events(gw, "worker_exited") if e["pid"] == victim]
        )
        assert exited[0]["worker"] == 1 and "SIGKILL" in exited[0]["status"]
        assert exited[0]["restart_in_seconds"] > 0
        # The kernel sends new connections to the listening socket that is left.
        assert await call(gw, 20) == [200] * 20
        restarted = await wait_for(gw, "a restarted worker 1", lambda: worker_pids(gw)[1] != victim)
        assert restarted
        assert await call(gw, 20) == [200] * 20
        # The killed worker's counts were kept (its last snapshot had all of them): nothing went down.
        async with aiohttp.ClientSession() as session:

            async def total() -> float:
                figures = await scrape(session, gw)
                assert figures["gateway_requests_total"] <= 60, figures
                return figures["gateway_requests_total"]

            await until_answered("all 60 requests in the merged counters", total, lambda n: n == 60)
        assert gw.proc.poll() is None
    finally:
        await stop(gw)


async def test_a_worker_dying_again_soon_waits_longer_before_its_restart(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    gw = await local_workers(vendor, write_config)
    try:
        delays = []
        for _ in range(3):
            victim = worker_pids(gw)[1]
            os.kill(victim, signal.SIGKILL)  # each time soon after it started: a crash loop
            exited = await wait_for(
                gw,
                "worker_exited",
                lambda v=victim: [e for e in events(gw, "worker_exited") if e["pid"] == v],
            )
            delays.append(exited[0]["restart_in_seconds"])
            await wait_for(gw, "a restarted worker 1", lambda v=victim: worker_pids(gw)[1] != v)
        # 0.5 s, then doubling (the first is 0.1 s instead if worker 1 had already served for 10 s).
        assert delays in ([0.5, 1.0, 2.0], [0.1, 0.5, 1.0]), delays
        assert await call(gw, 10) == [200] * 10
    finally:
        await stop(gw)


async def test_sighup_reaches_every_worker_and_a_refused_reload_keeps_them_serving(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    backend = Vendor()
    server = await vendor(backend.app())
    config = write_config(local_only(server), routes=LOCAL_ONLY_ROUTES)
    gw = await start_workers(config)
    try:
        gw.proc.send_signal(signal.SIGHUP)

        def reloaded() -> list[dict[str, Any]]:
            return [e for e in events(gw, "config_reloaded") if e["reason"] == "SIGHUP"]

        await wait_for(gw, "two config_reloaded", lambda: len(reloaded()) >= 2)
        assert len(reloaded()) == 2  # one per worker
        # A config the workers could not share (the breaker on again, on memory://) is refused.
        config.write_text(config.read_text().replace("circuit = { enabled = false }", ""))
        gw.proc.send_signal(signal.SIGHUP)
        failed = await wait_for(gw, "config_reload_failed", lambda: events(gw, "config_reload_failed"))
        assert any("vendors.v.circuit" in problem for problem in failed[0]["problems"]), failed
        assert await call(gw, 10) == [200] * 10
    finally:
        await stop(gw)


async def test_sigterm_drains_a_slow_request_then_exits_0(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    backend = Vendor(slow_seconds=1.5)
    gw = await local_workers(vendor, write_config, backend=backend)
    try:
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"{gw.url}/v/slow"))
            await wait_for(gw, "the slow request at the vendor", lambda: backend.arrived)
            gw.proc.send_signal(signal.SIGTERM)
            resp = await in_flight
            assert resp.status == 200 and await resp.text() == "finished"
        code = await asyncio.to_thread(gw.proc.wait, WAIT)
        assert code == 0, gw.output()
        exits = events(gw, "worker_exited")
        assert sorted(e["worker"] for e in exits) == [1, 2], exits
        assert all(e["status"] == "exit code 0" for e in exits), exits
        last = events(gw, "stopped")[-1]  # the supervisor's, after both workers'
        assert (last["workers"], last["code"]) == (2, 0), last
        assert not run_dir(gw).exists()  # the supervisor removed its folder
    finally:
        await stop(gw)


async def test_a_worker_that_does_not_drain_is_killed_and_the_exit_is_1(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    backend = Vendor()
    server = await vendor(backend.app())
    config = write_config(
        local_only(server).replace("shutdown_timeout_seconds = 5", "shutdown_timeout_seconds = 0.5"),
        routes=LOCAL_ONLY_ROUTES,
    )
    gw = await start_workers(config)
    try:
        stuck = worker_pids(gw)[2]
        os.kill(stuck, signal.SIGSTOP)  # it cannot see SIGTERM, let alone drain
        gw.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(gw.proc.wait, WAIT)
        assert code == 1, gw.output()
        killed = events(gw, "worker_killed")
        assert [e["pid"] for e in killed] == [stuck], gw.output()
    finally:
        await stop(gw)


async def test_several_workers_refuse_memory_store_for_shared_features(
    vendor: VendorFactory, write_config: Callable[..., Path]
) -> None:
    config = write_config('[vendors.v]\nbase_url = "http://127.0.0.1:9"\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{free_port()}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    refused = await asyncio.to_thread(run, "--workers", "2")
    assert refused.returncode == 1, refused
    first, *rest = refused.stderr.splitlines()
    assert "gateway.store: is memory://" in first and "redis://" in first
    assert "circuit breakers" in first and "idempotency keys" in first
    assert any("vendors.v.circuit" in line for line in rest)
    for bad in ("0", "two"):
        usage = await asyncio.to_thread(run, "--workers", bad)
        assert usage.returncode == 2 and usage.stderr.startswith("--workers: "), usage


async def test_a_port_in_use_stops_the_supervisor_with_exit_1(write_config: Callable[..., Path]) -> None:
    config = write_config(
        '[vendors.v]\nbase_url = "http://127.0.0.1:9"\ncircuit = { enabled = false }\n',
        routes=LOCAL_ONLY_ROUTES,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done


IDEMPOTENT_ROUTES = {
    "v": 'vendor = "v"\nexpose = "all"\n[[route]]\nmethod = "POST"\npath = "/charges"\nidempotency = "required"\n'
}


@pytest.mark.redis
async def test_workers_on_redis_share_idempotency_keys_and_breakers(
    vendor: VendorFactory, write_config: Callable[..., Path], redis_server: RedisServer
) -> None:
    backend = Vendor()
    server = await vendor(backend.app())
    config = write_config(
        f'[gateway]\nstore = "{redis_server.url}"\n[vendors.v]\nbase_url = "{server.make_url("/")}"\n',
        routes=IDEMPOTENT_ROUTES,
    )
    gw = await start_workers(config)
    try:
        sent = 12
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(sent):  # new connections: spread over both workers
                async with session.post(
                    f"{gw.url}/v/charges", data=b"{}", headers={"Idempotency-Key": "k-1"}
                ) as resp:
                    assert resp.status == 201
                    assert (await resp.json()) == {"id": "ch_1"}
        assert backend.calls == 1
        await wait_for(gw, "snapshots of every request", lambda: sum(per_worker(gw).values()) == sent)
        async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/_gateway/metrics") as resp:
            text = await resp.text()
        outcomes = {
            s.labels["outcome"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "gateway_idempotency_total" and s.value  # every outcome's series exists, at 0
        }
        assert outcomes == {"stored": 1, "replayed": sent - 1}, outcomes
    finally:
        await stop(gw)


def children(pid: int) -> dict[int, str]:
    """pid -> state letter of each process whose parent is ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) == pid:
                found[int(entry.name)] = state
    return found


def can_make_pid_namespaces() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=WAIT
    )
    return probe.returncode == 0


def test_as_pid_1_the_supervisor_reaps_orphans(write_config: Callable[..., Path]) -> None:
    if not can_make_pid_namespaces():
        pytest.skip("needs unshare --pid and nsenter (root, or user namespaces)")
    config = write_config(
        '[vendors.v]\nbase_url = "http://127.0.0.1:9"\ncircuit = { enabled = false }\n',
        routes=LOCAL_ONLY_ROUTES,
    )
    log_path = config.parent / "pid1.log"
    command = [
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{free_port()}",
    ]
    with log_path.open("wb") as log:
        outer = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", *command, "--workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WAIT
        # unshare -> the supervisor (PID 1 in its namespace) -> two workers
        while not (inner := children(outer.pid)) or len(children(next(iter(inner)))) < 2:
            assert time.monotonic() < deadline and outer.poll() is None, log_path.read_text()
            time.sleep(0.05)
        supervisor = next(iter(inner))
        started = [
            orjson.loads(line) for line in log_path.read_text().splitlines() if "supervisor_started" in line
        ]
        assert started[0]["pid"] == 1
        workers = set(children(supervisor))
        # A process whose parent exits is handed to PID 1, which must reap it once it ends.
        subprocess.run(
            ["nsenter", "-t", str(supervisor), "-p", "--", "sh", "-c", "(sleep 0.2 &); exit 0"],
            check=True,
            timeout=WAIT,
        )
        while set(children(supervisor)) != workers:
            leftover = {pid: state for pid, state in children(supervisor).items() if pid not in workers}
            assert time.monotonic() < deadline, f"not reaped: {leftover}"
            time.sleep(0.05)
        os.kill(supervisor, signal.SIGTERM)
        assert outer.wait(WAIT) == 0, log_path.read_text()
    finally:
        if outer.poll() is None:
            os.killpg(outer.pid, signal.SIGKILL)
            outer.wait(10)
