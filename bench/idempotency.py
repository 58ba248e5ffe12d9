"""Added latency of the idempotency stage with Redis: what an Idempotency-Key costs a request.

    .venv/bin/python bench/idempotency.py [--requests 2000] [--store redis|memory] [--json]

Everything runs on loopback: a private ``redis-server`` (own port, temp folder, no persistence), a
small aiohttp vendor answering 201 with ~100 bytes of JSON, and one ``python -m gateway run``
process. One client sends requests one at a time (latency, not throughput), interleaving:

- ``off``     POST on a route with ``idempotency = "off"`` (the baseline: forwarder only);
- ``first``   POST with a fresh key: read body, fingerprint, claim (1 Redis round trip), vendor call,
              complete (1 Redis round trip);
- ``replay``  POST repeating a completed key: claim returns the stored answer, no vendor call.

It prints median and p99 for each and the added latency of ``first`` over ``off``; then the store's
own round trips (claim + complete) timed in-process, which is the stage's floor. Bounded: every
process is stopped on exit, each request has a 10 s timeout, and the default run takes ~15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from harness import free_port

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.features.idempotency.store import IdempotencyKey, StoredResponse
from gateway.store import open_store

REPO_DIR = Path(__file__).resolve().parent.parent

VENDOR_SCRIPT = """
import sys
from aiohttp import web
BODY = b'{"id":"ch_0001","object":"charge","amount":1999,"currency":"eur","status":"succeeded"}'
async def charge(request):
    await request.read()
    return web.Response(status=201, body=BODY, content_type="application/json")
app = web.Application()
app.router.add_post("/{tail:.*}", charge)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

ROUTES = """
vendor = "bench"
expose = "all"

[[route]]
method = "POST"
path = "/v1/off"
idempotency = "off"

[[route]]
method = "POST"
path = "/v1/charges"
idempotency = "optional"
"""

BODY = b'{"amount":1999,"currency":"eur","customer":"cus_0001","description":"bench"}'


def wait_for(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not come up within {timeout:g}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return bool(resp.status == 200)


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def spawn(started: list[subprocess.Popen[bytes]], args: list[str], log: Path) -> None:
    with log.open("wb") as out:
        started.append(
            subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_DIR)
        )


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000, "n": len(ordered)}


async def measure(gateway_url: str, requests: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"off": [], "first": [], "replay": []}
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def send(kind: str, path: str, key: str | None, record: bool) -> None:
            extra = {"Idempotency-Key": key} if key else {}
            started = time.perf_counter()
            async with session.post(gateway_url + path, data=BODY, headers={**headers, **extra}) as resp:
                await resp.read()
                elapsed = time.perf_counter() - started
                expected = "true" if kind == "replay" else None
                if resp.status != 201 or resp.headers.get("Idempotent-Replayed") != expected:
                    raise SystemExit(
                        f"bench: unexpected answer for {kind}: {resp.status} {dict(resp.headers)}"
                    )
            if record:
                samples[kind].append(elapsed)

        run = os.urandom(4).hex()
        await send("first", "/bench/v1/charges", f"{run}-replayed", record=False)
        for i in range(requests + requests // 10):
            record = i >= requests // 10  # the first tenth warms up connections, scripts and caches
            await send("off", "/bench/v1/off", None, record)
            await send("first", "/bench/v1/charges", f"{run}-{i}", record)
            await send("replay", "/bench/v1/charges", f"{run}-replayed", record)
    return samples


async def store_round_trips(url: str, requests: int) -> dict[str, float]:
    store = open_store(url)
    answer = StoredResponse(status=201, headers=(("Content-Type", "application/json"),), body=b"x" * 100)
    samples: list[float] = []
    try:
        for i in range(requests + requests // 10):
            key = IdempotencyKey(vendor="bench", client=None, key=f"direct-{os.getpid()}-{i}")
            started = time.perf_counter()
            await store.idempotency.claim(key, fingerprint="f" * 64, owner="o", lease_seconds=10)
            await store.idempotency.complete(key, owner="o", response=answer, ttl_seconds=60)
            if i >= requests // 10:
                samples.append(time.perf_counter() - started)
    finally:
        await store.close()
    return summary(samples)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed requests of each kind")
    parser.add_argument("--store", choices=("redis", "memory"), default="redis")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    requests = max(10, min(args.requests, 100_000))

    with tempfile.TemporaryDirectory(prefix="bench-idem-") as tmp, processes() as started:
        work = Path(tmp)
        store_url = "memory://"
        if args.store == "redis":
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("bench: redis-server is not on PATH (apt-get install redis-server)")
            redis_port = free_port()
            spawn(
                started,
                [
                    binary,
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    tmp,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                work / "redis.log",
            )
            wait_for(lambda: redis_ping(redis_port), "redis-server")
            store_url = f"redis://127.0.0.1:{redis_port}/0"

        vendor_port, gateway_port = free_port(), free_port()
        spawn(started, [sys.executable, "-c", VENDOR_SCRIPT, str(vendor_port)], work / "vendor.log")
        (work / "routes").mkdir()
        (work / "routes" / "bench.toml").write_text(ROUTES)
        (work / "config.toml").write_text(
            textwrap.dedent(
                f"""
                [gateway]
                store = "{store_url}"

                [vendors.bench]
                base_url = "http://127.0.0.1:{vendor_port}"
                idempotency = {{ forward_header = "Idempotency-Key" }}
                """
            )
        )
        spawn(
            started,
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(work / "config.toml"),
                "--listen",
                f"127.0.0.1:{gateway_port}",
            ],
            work / "gateway.log",
        )
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_for(lambda: http_ok(f"{gateway_url}/_gateway/ready"), "the gateway")

        samples = asyncio.run(measure(gateway_url, requests))
        figures: dict[str, Any] = {kind: summary(values) for kind, values in samples.items()}
        figures["added_first_vs_off"] = {
            "median_ms": figures["first"]["median_ms"] - figures["off"]["median_ms"],
            "p99_ms": figures["first"]["p99_ms"] - figures["off"]["p99_ms"],
        }
        figures["store_claim_plus_complete"] = asyncio.run(store_round_trips(store_url, requests))
        figures["store"] = args.store

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"idempotency stage, store={args.store}, {requests} sequential requests of each kind, loopback")
    print(f"{'':34}{'median ms':>10}{'p99 ms':>10}")
    rows = [
        ("POST, idempotency off (baseline)", figures["off"]),
        ("POST, new key (claim+vendor+store)", figures["first"]),
        ("POST, replayed key (no vendor)", figures["replay"]),
        ("added by the stage (new - off)", figures["added_first_vs_off"]),
        ("store claim+complete, in-process", figures["store_claim_plus_complete"]),
    ]
    for label, row in rows:
        print(f"{label:34}{row['median_ms']:>10.3f}{row['p99_ms']:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
