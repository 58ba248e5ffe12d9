"""Memory and failure figures of one gateway process under the conditions issue 12 names.

    .venv/bin/python bench/stress.py [--stream-mib 1024] [--idle 2000] [--load-seconds 6] [--json]

Three measurements, each against a real gateway process (``gateway run``) in front of a real vendor
process (a small aiohttp app started here), all on 127.0.0.1, every process stopped on exit:

1. **Streaming**: one answer of ``--stream-mib`` MiB through the gateway, read by the caller as fast as
   it can; the gateway's RSS is sampled every 50 ms: flat means the answer is never buffered.
2. **Idle connections**: ``--idle`` keep-alive connections opened to the gateway, each after one
   request; the gateway's RSS before and after, and per connection.
3. **Vendor restarts under load**: 16 callers send GETs for ``--load-seconds``; meanwhile the vendor is
   restarted twice: gracefully (a new process takes over the port with SO_REUSEPORT, then the old one
   gets SIGTERM: its idle keep-alive connections close under the gateway) and hard (SIGKILL, then a new
   process). Every failed request is counted by status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from harness import free_port

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

VENDOR = textwrap.dedent(
    """
    import asyncio, socket, sys
    from aiohttp import web

    CHUNK = b"\\0" * 65536

    async def ok(request):
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def big(request):
        left = int(request.query["bytes"])
        response = web.StreamResponse(headers={"Content-Length": str(left)})
        await response.prepare(request)
        while left > 0:
            part = CHUNK[: min(left, len(CHUNK))]
            await response.write(part)
            left -= len(part)
        return response

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/big", big)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    print("ready", flush=True)
    web.run_app(app, sock=sock, print=None, shutdown_timeout=5)
    """
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Processes:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.children: list[subprocess.Popen[bytes]] = []

    def vendor(self, port: int) -> subprocess.Popen[bytes]:
        script = self.work / "vendor.py"
        script.write_text(VENDOR)
        child = subprocess.Popen([PYTHON, str(script), str(port)], stdout=subprocess.PIPE)
        self.children.append(child)
        assert child.stdout is not None
        child.stdout.readline()  # "ready": the socket is bound and listening
        wait_port(port)
        return child

    def gateway(self, port: int, vendor_port: int) -> subprocess.Popen[bytes]:
        config = self.work / "config.toml"
        (self.work / "routes").mkdir(exist_ok=True)
        (self.work / "transforms").mkdir(exist_ok=True)
        config.write_text(
            textwrap.dedent(
                f"""
                [gateway]
                listen = "127.0.0.1:{port}"
                [vendors.v]
                base_url = "http://127.0.0.1:{vendor_port}"
                timeout = {{ connect_seconds = 1.0, total_seconds = 10.0 }}
                """
            )
        )
        gateway = [PYTHON, "-m", "gateway", "run", "--config", str(config)]
        child = subprocess.Popen(gateway, stdout=subprocess.DEVNULL, cwd=REPO)
        self.children.append(child)
        wait_port(port)
        return child

    def stop_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


def wait_port(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"stress: nothing listens on {port} after {seconds:g}s")


async def stream(port: int, pid: int, mib: int) -> dict[str, Any]:
    samples = [rss_kib(pid)]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_kib(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    received = 0
    timeout = aiohttp.ClientTimeout(total=600)
    url = f"http://127.0.0.1:{port}/v/big?bytes={mib * 1024 * 1024}"
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        async for chunk in response.content.iter_chunked(1 << 20):
            received += len(chunk)
    done.set()
    await sampler
    seconds = time.monotonic() - started
    return {
        "mib": mib,
        "received_bytes": received,
        "seconds": round(seconds, 2),
        "mib_per_second": round(received / 1048576 / seconds, 1),
        "rss_kib_before": samples[0],
        "rss_kib_max": max(samples),
        "rss_kib_growth": max(samples) - samples[0],
    }


async def idle(port: int, pid: int, count: int) -> dict[str, Any]:
    before = rss_kib(pid)
    held: list[asyncio.StreamWriter] = []
    request = b"GET /v/ok HTTP/1.1\r\nHost: gw\r\n\r\n"
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            held.append(writer)
        await asyncio.sleep(1.0)
        after = rss_kib(pid)
    finally:
        for writer in held:
            writer.close()
    return {
        "connections": len(held),
        "rss_kib_before": before,
        "rss_kib_after": after,
        "kib_per_connection": round((after - before) / max(1, len(held)), 2),
    }


async def restarts(port: int, vendor_port: int, procs: Processes, seconds: float) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    phase = ["steady"]  # which restart the requests ran through
    failures: Counter[str] = Counter()

    async def caller(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            try:
                async with session.get(f"http://127.0.0.1:{port}/v/ok") as response:
                    await response.read()
                    outcome = str(response.status)
            except aiohttp.ClientError as exc:
                outcome = type(exc).__name__
            outcomes[outcome] += 1
            if outcome != "200":
                failures[f"{phase[0]}: {outcome}"] += 1

    async def restart() -> None:
        await asyncio.sleep(seconds / 3)
        phase[0] = "graceful"
        old = procs.children[0]
        procs.children[0] = await asyncio.to_thread(procs.vendor, vendor_port)  # takes over the port
        old.send_signal(signal.SIGTERM)  # graceful: in-flight answers finish, idle connections close
        await asyncio.to_thread(old.wait)
        phase[0] = "steady"
        await asyncio.sleep(seconds / 3)
        phase[0] = "hard"
        procs.children[0].kill()  # hard: connections reset, the port refuses until the new one binds
        procs.children[0].wait()
        procs.children[0] = await asyncio.to_thread(procs.vendor, vendor_port)
        phase[0] = "steady"

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(restart(), *(caller(session) for _ in range(16)))
    total = sum(outcomes.values())
    return {
        "seconds": seconds,
        "requests": total,
        "ok": outcomes.get("200", 0),
        "failed": total - outcomes.get("200", 0),
        "failures_by_phase": dict(failures),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.idle + 1024)), hard))
    with tempfile.TemporaryDirectory(prefix="gateway-stress-") as tmp:
        procs = Processes(Path(tmp))
        try:
            vendor_port, port = free_port(), free_port()
            procs.vendor(vendor_port)
            gateway = procs.gateway(port, vendor_port)
            report: dict[str, Any] = {"load_average_at_start": os.getloadavg()[0]}
            report["stream"] = await stream(port, gateway.pid, args.stream_mib)
            print(f"stress: streaming {json.dumps(report['stream'])}", file=sys.stderr)
            report["idle"] = await idle(port, gateway.pid, args.idle)
            print(f"stress: idle {json.dumps(report['idle'])}", file=sys.stderr)
            report["restarts"] = await restarts(port, vendor_port, procs, args.load_seconds)
            print(f"stress: restarts {json.dumps(report['restarts'])}", file=sys.stderr)
            return report
        finally:
            procs.stop_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream-mib", type=int, default=1024)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--load-seconds", type=float, default=6.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    options = parser.parse_args()
    result = asyncio.run(main(options))
    if options.json:
        print(json.dumps(result, indent=2))
