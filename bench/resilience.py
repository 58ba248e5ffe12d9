"""What the retry and circuit-breaker stages cost a request that needs neither: the hot-path price of
having them on by default.

    .venv/bin/python bench/resilience.py [--requests 200000] [--store memory|redis] [--json]

In one process, no network: a pass-through handler (the stages ``route_stages`` builds for a vendor
with no routes) around an endpoint that returns a prebuilt response, run with the default retry policy
and breaker, and with both turned off (``retry.attempts = 1``, ``circuit.enabled = false``). It prints
the CPU microseconds per request of each and the difference. With ``--store redis`` a private
redis-server is started (breaker outcomes are batched, one report per 0.2 s, so it should cost the
same). The whole run takes a few seconds and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import free_port
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import load_config
from gateway.messages import Answer, Request
from gateway.observability.logging import Logger
from gateway.pipeline import Exchange, compose
from gateway.services import Services
from gateway.stages import route_stages
from gateway.store import open_store

CONFIG = """
[gateway]
store = "{store}"

[vendors.on]
base_url = "http://127.0.0.1:9"

[vendors.off]
base_url = "http://127.0.0.1:9"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}
"""


async def measure(store_url: str, requests: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp())
    (folder / "config.toml").write_text(CONFIG.format(store=store_url))
    config = load_config(folder / "config.toml")
    services = Services(logger=Logger(stream=io.BytesIO()), store=open_store(store_url))
    answer = Answer(status=200, body=b'{"ok":true}')

    async def endpoint(ex: Exchange) -> Answer:
        ex.attempts += 1
        return answer

    request = Request(method="GET", headers=CIMultiDictProxy(CIMultiDict()))
    results: dict[str, float] = {}
    try:
        for name in ("off", "on", "off", "on"):
            vendor = config.vendors[name]
            handler = compose(route_stages(config, vendor, None, services), endpoint)
            started = time.process_time()
            for _ in range(requests):
                ex = Exchange(
                    request=request,
                    request_id="r",
                    vendor=vendor,
                    route=None,
                    method="GET",
                    path="/x",
                    query="",
                    headers=CIMultiDict(),
                )
                await handler(ex)
            per_request = (time.process_time() - started) / requests * 1e6
            results[name] = min(results.get(name, float("inf")), per_request)
    finally:
        services.circuits.close()
        await services.pool.close()
        await services.store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    redis: subprocess.Popen[bytes] | None = None
    folder = Path(tempfile.mkdtemp())
    store_url = "memory://"
    try:
        if args.store == "redis":
            binary = shutil.which("redis-server")
            if binary is None:
                print("redis-server is not on PATH", file=sys.stderr)
                return 2
            port = free_port()
            redis = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)
            store_url = f"redis://127.0.0.1:{port}/0"
        results: dict[str, Any] = asyncio.run(measure(store_url, args.requests))
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    results["added"] = results["on"] - results["off"]
    if args.json:
        print(json.dumps({"store": args.store, **{k: round(v, 2) for k, v in results.items()}}))
    else:
        print(
            f"store {args.store}: pass-through handler CPU per request: retry+breaker off "
            f"{results['off']:.2f} us, on {results['on']:.2f} us, added {results['added']:.2f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
