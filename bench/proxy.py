"""Load benchmark: the gateway in four scenarios against nginx ``proxy_pass`` and a direct call, all on
this machine, in one run.

    .venv/bin/python bench/proxy.py [--scenarios pass-through,policy,idempotency,workers] [--rounds 3]
        [--duration 8] [--warmup 2] [--connections 50] [--threads 1] [--workers-cpus all|proxy]
        [--workers-store redis|memory] [--with-logs] [--profile [SECONDS]] [--profile-scenarios LIST]
        [--no-pin] [--json] [--keep]
    .venv/bin/python bench/proxy.py --ab REV [--scenarios pass-through,policy,idempotency] [--rounds 3] ...
    .venv/bin/python bench/proxy.py --versus pass-through [--scenarios policy,idempotency] [--rounds 3] ...

One nginx worker plays the vendor (a fixed ~100-byte JSON body). A second single-worker nginx with an
upstream keep-alive pool is the reference proxy. Each gateway is its own process (``python -m gateway
run``) with its own config, all passing to the same vendor:

- ``pass-through``: one vendor, no routes, no callers: everything passes through (access log to
  /dev/null, or a file with ``--with-logs``);
- ``policy``, the full policy: a caller key (``[clients]``, sent as ``Authorization: Bearer``), a
  local rate limit far above the load (it never refuses), the vendor's bearer token injected, a version
  pin header, and the JSON access log written to a file;
- ``idempotency``: POSTs on a route with ``idempotency = "required"``, every request with a fresh
  ``Idempotency-Key`` (a wrk Lua script), the store a private ``redis-server`` this script starts on a
  free port in the work dir (skipped, loudly, when redis-server is missing); its CPU is reported apart;
- ``workers``: ``gateway run --workers 2`` and, as its reference, ``gateway run`` on the same config:
  the pass-through config with the bench's Redis as store (``--workers`` refuses memory:// while the
  circuit breaker or idempotency keys are on), or with ``--workers-store memory`` the breaker off and
  GET routes only. Skipped, loudly, when ``gateway run --help`` lists no ``--workers`` or when it does
  not start. CPU is the sum over the supervisor and its workers.

``wrk`` drives them in turn, round after round (pass-through, nginx, policy, idempotency, 1 worker,
2 workers, ...), then the vendor once directly. Each process is pinned: wrk, the vendor and Redis share
cpu 0, the gateway under test has cpu 1 to itself; the 2 workers by default may use both cores
(``--workers-cpus all``: their throughput against one worker's on cpu 1) or are held to cpu 1
(``proxy``: the same CPU per request as one worker means the workers add no cost). Everything is
written under ``bench/.work/`` and every process started here is stopped on exit, Ctrl-C or failure.
Missing ``nginx`` or ``wrk`` are installed with apt-get (Debian). Shared machinery: bench/harness.py.

``--ab REV`` measures a change instead: each scenario's gateway from git revision REV (a worktree in the
work dir) and from this checkout, both on the gateway's core, loaded at once by two wrk; the report is
the difference in CPU per request (bench/README.md says why and how). ``--versus SCENARIO`` measures
the cost of a scenario the same way: each other scenario's gateway against SCENARIO's, both from this
checkout, loaded at once (the full policy against the pass-through: what the policy costs per request).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from harness import (
    DIRECT,
    ECHO_PATH,
    MAX_CONNECTIONS,
    NGINX,
    REPO_DIR,
    VENDOR_BODY,
    VENDOR_PATH,
    BenchError,
    Child,
    Load,
    Probe,
    Run,
    Supervisor,
    Target,
    TargetSummary,
    Tools,
    check_ranges,
    drive,
    find_py_spy,
    free_port,
    gateway_revision,
    http,
    load_averages,
    loud,
    machine_info,
    main_frame,
    measure_direct,
    plan_cpus,
    prepare,
    profile_table,
    profile_target,
    raise_fd_limit,
    rounds_table,
    sample_processes,
    say,
    start_reference,
    start_vendor,
    stop_everything,
    summarize,
    summary_table,
    tree_pids,
    vendor_probe,
    version,
    wait_ready,
)

GATEWAY_VENDOR = "bench"  # the gateway reaches it at /bench/<path>

# Scenario keys (--scenarios). The workers scenario is two gateways: 1 and 2 workers on the same config.
PASS, POLICY, IDEMPOTENCY, WORKERS = "pass-through", "policy", "idempotency", "workers"
SCENARIOS = (PASS, POLICY, IDEMPOTENCY, WORKERS)
ONE_WORKER = "workers-1"  # the gateway key of the workers scenario's one-process reference
WORKER_COUNT = 2
NAME_WIDTH = 18


def row_names(workers_store: str) -> dict[str, str]:
    """Gateway key -> the name its rows carry."""
    return {
        PASS: "pass-through",
        POLICY: "full policy",
        IDEMPOTENCY: "idempotent POST",
        ONE_WORKER: f"1 worker, {workers_store}",
        WORKERS: f"{WORKER_COUNT} workers, {workers_store}",
    }


VERSION_HEADER, VERSION_VALUE = "Bench-Version", "2024-06-20"
POST_BODY = '{"amount":1999,"currency":"eur","customer":"cus_0001"}'

GATEWAY_HEAD = """\
# Generated by bench/proxy.py: {what}.
[gateway]
listen = "127.0.0.1:{port}"
routes_dir = "routes"
transforms_dir = "transforms"
shutdown_timeout_seconds = 2
"""

PASS_CONFIG = """
[vendors.{vendor}]
base_url = "http://127.0.0.1:{vendor_port}"
"""

POLICY_CONFIG = """
# Every caller needs a key; this one may call the bench vendor, at most 1,000,000 requests a second.
[clients.bench]
key = "env:BENCH_CLIENT_KEY"
allow = ["{vendor}"]

[vendors.{vendor}]
base_url = "http://127.0.0.1:{vendor_port}"
auth = {{ type = "bearer", token = "env:BENCH_VENDOR_TOKEN" }}
version = {{ header = "{version_header}", value = "{version_value}" }}
rate_limit = {{ requests = 1000000, per_seconds = 1.0, scope = "local" }}
"""

STORE_LINE = """\
store = "redis://127.0.0.1:{redis_port}/0"
"""

IDEMPOTENCY_CONFIG = """
[vendors.{vendor}]
base_url = "http://127.0.0.1:{vendor_port}"
idempotency = {{ ttl_seconds = 600 }}
"""

# What `gateway run --workers N` accepts with a memory:// store: no state that must be shared.
WORKERS_MEMORY_CONFIG = """
[vendors.{vendor}]
base_url = "http://127.0.0.1:{vendor_port}"
circuit = {{ enabled = false }}
"""

WORKERS_MEMORY_ROUTES = """\
# Generated by bench/proxy.py: every GET passes (no idempotency keys, which workers would have to share).
vendor = "{vendor}"
expose = "declared"

[[route]]
method = "GET"
path = "/**"
"""

IDEMPOTENCY_ROUTES = """\
# Generated by bench/proxy.py: every POST must carry an Idempotency-Key (else 400).
vendor = "{vendor}"
expose = "all"

[[route]]
method = "POST"
path = "/**"
idempotency = "required"
"""

# Every request a fresh key: the run's token (the script's argument), the wrk thread, a counter.
IDEMPOTENCY_LUA = """\
-- Generated by bench/proxy.py: a POST with a fresh Idempotency-Key on every request.
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(tid or 0) .. "-"
  counter = 0
end

function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. counter
  return wrk.format()
end
"""


# --------------------------------------------------------------------------- arguments


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items or any(item not in choices for item in items):
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)} (comma-separated)")
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load-test the gateway (pass-through, full policy, idempotent POST via Redis, "
        "2 workers) against nginx proxy_pass and a direct call (all on 127.0.0.1)."
    )
    parser.add_argument(
        "--scenarios",
        type=_csv(SCENARIOS),
        default=list(SCENARIOS),
        help=f"comma-separated, of {','.join(SCENARIOS)} (default all)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every target (default 3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds measured per run (default 8)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="unmeasured seconds before each run (default 2)"
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--workers-cpus",
        choices=("all", "proxy"),
        default="all",
        help="the 2 workers may use every core (all, the default; wrk and the vendor stay pinned) or "
        "only the gateway's core (proxy)",
    )
    parser.add_argument(
        "--workers-store",
        choices=("redis", "memory"),
        default="redis",
        help="the workers scenario's store: redis (the pass-through config with the bench's Redis, the "
        "default) or memory (circuit breaker off, GET routes only: what --workers accepts without one)",
    )
    parser.add_argument(
        "--with-logs",
        action="store_true",
        help="pass-through: the access log to a file under bench/.work/ instead of /dev/null",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=10,
        default=0,
        metavar="SECONDS",
        help="after the rounds, record gateways under load with py-spy (default 10s; needs py-spy)",
    )
    parser.add_argument(
        "--profile-scenarios",
        type=_csv(SCENARIOS[:3]),
        default=[PASS],
        help="which gateways --profile records (default pass-through)",
    )
    parser.add_argument(
        "--ab",
        metavar="REV",
        help="instead: each scenario (of pass-through,policy,idempotency) from git revision REV and from "
        "this checkout, loaded at once on the same core; reports the difference in CPU per request",
    )
    parser.add_argument(
        "--versus",
        metavar="SCENARIO",
        choices=AB_SCENARIOS,
        help="instead: each other scenario (of pass-through,policy,idempotency) against SCENARIO, both from "
        "this checkout, loaded at once on the same core; reports the difference in CPU per request",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs, wrk output)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = parser.parse_args(argv)
    limits = {
        "rounds": (1, 20),
        "duration": (1, 300),
        "warmup": (0, 60),
        "connections": (1, MAX_CONNECTIONS),
        "threads": (1, 64),
        "profile": (0, 120),
    }
    check_ranges(parser, args, limits)
    args.scenarios = [s for s in SCENARIOS if s in args.scenarios]  # the order of the rounds
    if args.ab is not None and args.versus is not None:
        parser.error("--ab and --versus do not go together")
    mode = "--ab" if args.ab is not None else "--versus" if args.versus is not None else None
    if mode is not None:
        others = [s for s in args.scenarios if s not in AB_SCENARIOS]
        if others and args.scenarios != list(SCENARIOS):  # asked for by name, not the default "all"
            parser.error(f"{mode} compares {','.join(AB_SCENARIOS)}, not {','.join(others)}")
        if args.profile:
            parser.error(f"{mode} and --profile do not go together")
        args.scenarios = [s for s in args.scenarios if s in AB_SCENARIOS and s != args.versus]
        if not args.scenarios:
            parser.error(f"--versus {args.versus}: name at least one other scenario to measure against it")
    return args


# --------------------------------------------------------------------------- the gateways


def gateway_supports_workers() -> bool:
    """Whether this checkout's ``gateway run`` has ``--workers`` (being written on branch workers)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO_DIR,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in done.stdout


def check_config(config: Path, env: dict[str, str]) -> None:
    """``gateway check`` on a generated config: a config the gateway would refuse stops the run here."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"gateway check refused {config}:\n{(done.stdout + done.stderr).strip()}")


@dataclass(frozen=True, slots=True)
class Gateway:
    """One gateway: its key (PASS, ..., ONE_WORKER, WORKERS), config folder, port, environment and
    how wrk loads it."""

    key: str
    folder: Path
    port: int
    env: dict[str, str]
    wrk_args: tuple[str, ...] = ()
    fresh_token: bool = False  # the wrk script needs a token of its own run (fresh idempotency keys)
    path: str = VENDOR_PATH
    access_log: Path | None = None
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{GATEWAY_VENDOR}{self.path}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/{GATEWAY_VENDOR}"


def write_gateway(
    work: Path,
    key: str,
    vendor_port: int,
    *,
    redis_port: int | None = None,
    with_logs: bool = False,
    workers_store: str = "redis",
    folder_name: str | None = None,
) -> Gateway:
    folder = work / (folder_name or key)
    for sub in ("routes", "transforms"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    fill = {
        "port": port,
        "vendor": GATEWAY_VENDOR,
        "vendor_port": vendor_port,
        "version_header": VERSION_HEADER,
        "version_value": VERSION_VALUE,
        "redis_port": redis_port,
    }
    env: dict[str, str] = {}
    wrk_args: tuple[str, ...] = ()
    fresh_token = False
    path, access_log, workers = VENDOR_PATH, None, 1
    if key == PASS:
        what = "one vendor, no routes, no callers: every path passes through"
        body = PASS_CONFIG.format(**fill)
        access_log = folder / "access.log" if with_logs else None
    elif key in (ONE_WORKER, WORKERS):
        workers = WORKER_COUNT if key == WORKERS else 1
        if workers_store == "redis":
            what = "the pass-through config with a Redis store (what --workers needs for breakers and keys)"
            body = STORE_LINE.format(**fill) + PASS_CONFIG.format(**fill)
        else:
            what = "memory store: no circuit breaker, GET routes only (nothing workers would have to share)"
            body = WORKERS_MEMORY_CONFIG.format(**fill)
            (folder / "routes" / f"{GATEWAY_VENDOR}.toml").write_text(WORKERS_MEMORY_ROUTES.format(**fill))
    elif key == POLICY:
        what = "caller key, local rate limit, vendor bearer token, version pin, access log to a file"
        body = POLICY_CONFIG.format(**fill)
        env = {"BENCH_CLIENT_KEY": secrets.token_hex(16), "BENCH_VENDOR_TOKEN": secrets.token_hex(16)}
        wrk_args = ("-H", f"Authorization: Bearer {env['BENCH_CLIENT_KEY']}")
        access_log = folder / "access.log"
    else:
        what = "idempotency keys required on POST, kept in Redis"
        body = STORE_LINE.format(**fill) + IDEMPOTENCY_CONFIG.format(**fill)
        (folder / "routes" / f"{GATEWAY_VENDOR}.toml").write_text(IDEMPOTENCY_ROUTES.format(**fill))
        script = folder / "idempotency.lua"
        script.write_text(IDEMPOTENCY_LUA.format(body=POST_BODY))
        wrk_args = ("-s", str(script))
        fresh_token = True
        path = "/v1/charges"
    config = folder / "config.toml"
    config.write_text(GATEWAY_HEAD.format(what=what, **fill) + body)
    check_config(config, env)
    return Gateway(key, folder, port, env, wrk_args, fresh_token, path, access_log, workers)


def start_gateway(
    supervisor: Supervisor,
    gateway: Gateway,
    cpu: int | None,
    code: Path = REPO_DIR,
    prefix: Sequence[str] = (),
) -> Child:
    """``code``: the checkout whose gateway package runs (another one's comes first on PYTHONPATH);
    ``prefix``: what runs the interpreter (valgrind, for bench/instructions.py)."""
    # fmt: off
    argv = [*prefix, sys.executable, "-m", "gateway", "run", "--config", str(gateway.folder / "config.toml"),
            "--listen", f"127.0.0.1:{gateway.port}", "--log-format", "json"]
    # fmt: on
    if gateway.workers > 1:
        argv += ["--workers", str(gateway.workers)]
    with contextlib.ExitStack() as stack:
        # Access records are written either way (the gateway formats and writes each line); /dev/null
        # only takes the disk out of the figure.
        out: IO[bytes] | int = (
            stack.enter_context(gateway.access_log.open("wb"))
            if gateway.access_log is not None
            else subprocess.DEVNULL
        )
        return supervisor.start(
            f"gateway ({gateway.key})",
            argv,
            cpu=cpu,
            stdout=out,
            log=gateway.folder / "stderr.log",
            cwd=code,
            env=gateway.env if code == REPO_DIR else {**gateway.env, "PYTHONPATH": str(code)},
        )


def policy_probe(gateway: Gateway) -> Probe:
    """Ready once a caller without the key is refused, one with it gets the vendor's body, and the vendor
    receives the gateway's bearer token and the version pin."""
    key = {"Authorization": f"Bearer {gateway.env['BENCH_CLIENT_KEY']}"}
    expected = f"authorization=Bearer {gateway.env['BENCH_VENDOR_TOKEN']} version={VERSION_VALUE}"
    passes = vendor_probe(gateway.url, key)

    def probe() -> str | None:
        if (status := http(gateway.url).status) != 401:
            return f"without the caller key: HTTP {status}, not 401"
        if problem := passes():
            return problem
        echo = http(gateway.base + ECHO_PATH, headers=key)
        if echo.body != expected:
            return f"the vendor did not get the bearer token and version pin: {echo.body[:200]!r}"
        return None

    return probe


def idempotency_probe(gateway: Gateway) -> Probe:
    """Ready once a keyed POST passes, its repeat is replayed (so Redis holds it) and one without a key
    is refused."""

    def post(key: str | None) -> tuple[int, dict[str, str], str]:
        headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
        reply = http(gateway.url, method="POST", headers=headers, body=POST_BODY.encode())
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.body

    def probe() -> str | None:
        key = f"probe-{secrets.token_hex(8)}"
        status, _, body = post(key)
        if status != 200 or body != VENDOR_BODY:
            return f"keyed POST: HTTP {status}: {body[:200]}"
        status, headers, body = post(key)
        if status != 200 or headers.get("idempotent-replayed") != "true":
            return f"the repeated key was not replayed: HTTP {status}, {headers.get('idempotent-replayed')!r}"
        if (status := post(None)[0]) != 400:
            return f"a POST without a key: HTTP {status}, not 400"
        return None

    return probe


def workers_probe(gateway: Gateway, child: Child) -> Probe:
    """Ready once the supervisor and its workers are all there and 20 fresh connections pass."""
    passes = vendor_probe(gateway.url)

    def probe() -> str | None:
        processes = len(tree_pids(sample_processes(), child.pid))
        if processes < gateway.workers + 1:
            return f"{processes} process(es), waiting for the supervisor and {gateway.workers} workers"
        for _ in range(20):  # urllib opens a connection per request: SO_REUSEPORT spreads them
            if problem := passes():
                return problem
        return None

    return probe


# --------------------------------------------------------------------------- Redis


def start_redis(supervisor: Supervisor, work: Path, cpu: int | None) -> tuple[Child, int] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    folder = work / "redis"
    folder.mkdir(exist_ok=True)
    port = free_port()
    # fmt: off
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
            "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
    # fmt: on
    child = supervisor.start("redis-server", argv, cpu=cpu, log=folder / "redis.log")

    def ping() -> str | None:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return None if sock.recv(16).startswith(b"+PONG") else "no PONG"

    wait_ready(child, f"redis://127.0.0.1:{port}", ping)
    return child, port


def redis_keys(port: int) -> int | None:
    """How many keys the bench's Redis holds (one per idempotency record)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"DBSIZE\r\n")
            reply = sock.recv(64)
    except OSError:
        return None
    return int(reply[1:].strip()) if reply.startswith(b":") else None


# --------------------------------------------------------------------------- the run


def plan_skips(args: argparse.Namespace) -> dict[str, str]:
    """Scenario -> why it cannot run here (said loudly at start and in the report)."""
    skipped = {}
    no_redis = "redis-server is not on PATH (Debian: apt-get install redis-server)"
    if IDEMPOTENCY in args.scenarios and shutil.which("redis-server") is None:
        skipped[IDEMPOTENCY] = no_redis
    if WORKERS in args.scenarios:
        if not gateway_supports_workers():
            skipped[WORKERS] = (
                "`gateway run --help` lists no --workers in this checkout (it is being written on branch "
                "workers); rerun once it is merged"
            )
        elif args.workers_store == "redis" and shutil.which("redis-server") is None:
            skipped[WORKERS] = f"{no_redis}; or --workers-store memory"
    for scenario, reason in skipped.items():
        loud(f"scenario {scenario} SKIPPED: {reason}")
    return skipped


def gateway_keys(scenarios: Sequence[str]) -> list[str]:
    """The gateways the scenarios need, in the order of the rounds."""
    keys = []
    for scenario in scenarios:
        keys += [ONE_WORKER, WORKERS] if scenario == WORKERS else [scenario]
    return keys


def ready_probe(gateway: Gateway, child: Child) -> Probe:
    if gateway.key == POLICY:
        return policy_probe(gateway)
    if gateway.key == IDEMPOTENCY:
        return idempotency_probe(gateway)
    if gateway.workers > 1:
        return workers_probe(gateway, child)
    return vendor_probe(gateway.url)


def run_settings(args: argparse.Namespace, scenarios: Sequence[str], pinning: str) -> dict[str, Any]:
    """What every report says of how it was measured."""
    return {
        "scenarios": list(scenarios),
        "rounds": args.rounds,
        "duration_seconds": args.duration,
        "warmup_seconds": args.warmup,
        "connections": args.connections,
        "threads": args.threads,
        "pinning": pinning,
    }


def run(args: argparse.Namespace, tools: Tools, work: Path, skipped: dict[str, str]) -> dict[str, Any]:
    """Start everything, measure, stop everything; the report as JSON-ready data."""
    load_cpu, proxy_cpu, pinning = plan_cpus(args.no_pin)
    say(f"pinning: {pinning}" + ("" if tools.taskset or load_cpu is None else " (sched_setaffinity)"))
    load_before = load_averages()
    if load_before[0] > 0.5:
        say(f"warning: load average is {load_before[0]:.2f} before starting; other work skews the figures")
    if args.profile:
        find_py_spy()  # fail before the rounds, not after
    scenarios = [s for s in args.scenarios if s not in skipped]
    names = row_names(args.workers_store)
    workers_cpu = proxy_cpu if args.workers_cpus == "proxy" else None
    needs_redis = IDEMPOTENCY in scenarios or (WORKERS in scenarios and args.workers_store == "redis")

    raise_fd_limit()
    supervisor = Supervisor(tools.taskset)
    profiles: dict[str, Any] = {}
    access_records: int | None = None
    idempotency_check: dict[str, int | None] | None = None
    try:
        vendor, vendor_port = start_vendor(supervisor, tools, work, load_cpu)
        reference, reference_port = start_reference(supervisor, tools, work, vendor_port, proxy_cpu)
        nginx = Target(NGINX, f"http://127.0.0.1:{reference_port}{VENDOR_PATH}", reference, proxy_cpu)
        redis: Child | None = None
        redis_port: int | None = None
        if needs_redis:
            started = start_redis(supervisor, work, load_cpu)
            if started is None:
                raise BenchError("redis-server is gone from PATH since the start")
            redis, redis_port = started
        gateways: dict[str, tuple[Gateway, Child]] = {}
        for key in gateway_keys(scenarios):
            gateway = write_gateway(
                work,
                key,
                vendor_port,
                redis_port=redis_port,
                with_logs=args.with_logs,
                workers_store=args.workers_store,
            )
            cpu = workers_cpu if key == WORKERS else proxy_cpu
            gateways[key] = (gateway, start_gateway(supervisor, gateway, cpu))
        targets: list[Target] = []
        for key, (gateway, child) in list(gateways.items()):
            try:
                wait_ready(child, gateway.url, ready_probe(gateway, child))
            except BenchError as exc:
                if key != WORKERS:
                    raise
                # New code from another branch: its failure to start should not cost the other figures.
                supervisor.stop(child)
                skipped[WORKERS] = f"`gateway run --workers {gateway.workers}` did not start: {exc}"
                loud(f"scenario {WORKERS} SKIPPED: {skipped[WORKERS]}")
                scenarios.remove(WORKERS)
                targets = [t for t in targets if t.name != names[ONE_WORKER]]
                for gone in (ONE_WORKER, WORKERS):
                    if gone != key:
                        supervisor.stop(gateways[gone][1])
                    del gateways[gone]
                continue
            uses_redis = redis is not None and (
                key == IDEMPOTENCY or (key in (ONE_WORKER, WORKERS) and args.workers_store == "redis")
            )
            note = ""
            if key == WORKERS:
                where = "both cores (wrk and the vendor stay on cpu 0)" if workers_cpu is None else "cpu 1"
                note = f"`gateway run --workers {gateway.workers}` on {where}; CPU: supervisor + workers"
            elif key == ONE_WORKER:
                note = f"`gateway run`, the same config as {names[WORKERS]}: the reference for its scaling"
            elif key == POLICY:
                note = f"access log to {gateway.access_log}"
            if uses_redis:
                note += ("; " if note else "") + "+helper: redis-server's CPU per request (on cpu 0)"
            targets.append(
                Target(
                    names[key],
                    gateway.url,
                    child,
                    proxy_cpu,
                    wrk_args=gateway.wrk_args,
                    fresh_token=gateway.fresh_token,
                    helpers=(redis,) if uses_redis and redis is not None else (),
                    note=note,
                )
            )
        # nginx second, as before: pass-through, nginx, then the other scenarios.
        targets.insert(1 if targets and scenarios[0] == PASS else 0, nginx)
        say(
            f"ready: vendor nginx :{vendor_port}, nginx proxy :{reference_port}, "
            + ", ".join(f"{names[k]} :{g.port}" for k, (g, _) in gateways.items())
            + f"; work dir {work}"
        )
        load = Load.of(args, tools.wrk, supervisor, load_cpu, work)
        runs = drive(load, targets, args.rounds)
        if IDEMPOTENCY in gateways and redis_port is not None:
            keyed = load.answered[names[IDEMPOTENCY]]
            idempotency_check = {"keyed_requests_answered": keyed, "redis_keys": redis_keys(redis_port)}
        runs.append(measure_direct(load, vendor, vendor_port, proxy_cpu))
        (work / "wrk-outputs.txt").write_text("\n".join(load.outputs))
        if args.profile:
            for key in args.profile_scenarios:
                if key in gateways:
                    target = next(t for t in targets if t.name == names[key])
                    raw = work / f"profile-{key}.raw"
                    profiles[target.name] = profile_target(load, target, args.profile, raw)
    finally:
        stop_everything(supervisor)
    load_after = load_averages()
    if POLICY in gateways and (log := gateways[POLICY][0].access_log) is not None and log.exists():
        with log.open("rb") as lines:
            access_records = sum(1 for line in lines if b'"status"' in line)

    targets.append(Target(DIRECT, f"http://127.0.0.1:{vendor_port}{VENDOR_PATH}", vendor, proxy_cpu))
    summaries = summarize(runs, targets, baseline=names[PASS] if PASS in scenarios else None)
    by_name = {s.target: s for s in summaries}
    passing = by_name.get(names[PASS])
    scaling = None
    one, two = by_name.get(names[ONE_WORKER]), by_name.get(names[WORKERS])
    if one is not None and two is not None:
        scaling = {
            "rps_2_workers_vs_1": round(two.rps_median / one.rps_median, 3) if one.rps_median else None,
            # Above 1: the 2 workers spend more CPU per request than the one process does.
            "cpu_per_request_2_workers_vs_1": (
                round(two.cpu_us_per_request_median / one.cpu_us_per_request_median, 3)
                if two.cpu_us_per_request_median and one.cpu_us_per_request_median
                else None
            ),
        }
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            **machine_info(),
            "load_average_at_start": load_before[0],
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "versions": {
            "gateway": gateway_revision(),
            "nginx": version([tools.nginx, "-v"]),
            "wrk": version([tools.wrk, "-v"]),
            "redis": version(["redis-server", "--version"]) if needs_redis else None,
        },
        "settings": {
            **run_settings(args, scenarios, pinning),
            "gateway_access_log": "file" if args.with_logs else "/dev/null",
            "workers_cpus": args.workers_cpus,
            "workers_store": args.workers_store,
        },
        "names": names,
        "skipped": skipped,
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
        "gateways": {key: asdict(by_name[names[key]]) for key in gateways if names[key] in by_name},
        "workers_scaling": scaling,
        "policy_access_records": access_records,
        # One record per key: as many keys as keyed requests (plus the probe's, and requests cut off at the
        # end of a run) shows every request had a fresh key, none was a replay.
        "idempotency_check": idempotency_check,
        # The pass-through figures under the names earlier versions of this script used.
        "gateway_to_nginx_rps_ratio": passing.rps_vs_nginx if passing else None,
        "gateway_to_nginx_cpu_ratio": passing.cpu_efficiency_vs_nginx if passing else None,
        "profiles": profiles,
    }


# --------------------------------------------------------------------------- --ab REV

AB_SCENARIOS = (PASS, POLICY, IDEMPOTENCY)


def checkout(revision: str, folder: Path) -> str:
    """A detached worktree of ``revision`` in ``folder``; its short commit."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"git {' '.join(args)}: {(done.stdout + done.stderr).strip()}")
        return done.stdout.strip()

    commit = git("rev-parse", "--verify", "--short", f"{revision}^{{commit}}")
    git("worktree", "add", "--detach", "--force", str(folder), commit)
    return commit


def remove_checkout(folder: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO_DIR), "worktree", "remove", "--force", str(folder)],
        capture_output=True,
        timeout=60,
        check=False,
    )


def run_ab(args: argparse.Namespace, tools: Tools, work: Path, skipped: dict[str, str]) -> dict[str, Any]:
    """Two gateways per scenario, both on the gateway's core, loaded at once by two wrk (the first started
    alternating by round): their difference in CPU per request, with every disturbance of the machine
    shared by both. ``--ab REV``: the scenario's gateway from REV and from this checkout; ``--versus
    SCENARIO``: SCENARIO's gateway and the scenario's, both from this checkout."""
    load_cpu, proxy_cpu, pinning = plan_cpus(args.no_pin)
    scenarios = [s for s in args.scenarios if s not in skipped]
    names = row_names(args.workers_store)
    raise_fd_limit()
    supervisor = Supervisor(tools.taskset)
    base_code = work / "base"
    this = gateway_revision()
    if args.versus is None:
        revision = checkout(args.ab, base_code)
        # scenario -> (base gateway: its scenario, code, name), (this one's)
        plan = {
            key: ((key, base_code, f"{names[key]} (base)"), (key, REPO_DIR, f"{names[key]} (this)"))
            for key in scenarios
        }
    else:
        revision = this
        versus = (args.versus, REPO_DIR, names[args.versus])
        plan = {key: (versus, (key, REPO_DIR, names[key])) for key in scenarios}
    pairs: dict[str, tuple[Target, Target]] = {}
    runs: list[Run] = []
    pair_runs: dict[str, list[Run]] = {key: [] for key in plan}
    started: dict[tuple[str, Path], Target] = {}  # one gateway per scenario and code, shared by pairs
    try:
        _, vendor_port = start_vendor(supervisor, tools, work, load_cpu)
        redis: Child | None = None
        redis_port: int | None = None
        if IDEMPOTENCY in scenarios or args.versus == IDEMPOTENCY:
            with_redis = start_redis(supervisor, work, load_cpu)
            if with_redis is None:
                raise BenchError("redis-server is gone from PATH since the start")
            redis, redis_port = with_redis
        for key, sides in plan.items():
            pair = []
            for side, (scenario, code, name) in zip(("base", "this"), sides, strict=True):
                if (target := started.get((scenario, code))) is None:
                    gateway = write_gateway(
                        work,
                        scenario,
                        vendor_port,
                        redis_port=redis_port,
                        folder_name=f"{scenario}-{side}",
                        with_logs=args.with_logs,
                    )
                    child = start_gateway(supervisor, gateway, proxy_cpu, code)
                    wait_ready(child, gateway.url, ready_probe(gateway, child))
                    helpers = (redis,) if scenario == IDEMPOTENCY and redis is not None else ()
                    wrk_args, fresh = gateway.wrk_args, gateway.fresh_token
                    target = started[(scenario, code)] = Target(
                        name, gateway.url, child, proxy_cpu, wrk_args, (), fresh, helpers
                    )
                pair.append(target)
            pairs[key] = (pair[0], pair[1])
        say(f"ready: {', '.join(t.name for pair in pairs.values() for t in pair)}; work dir {work}")
        load = Load.of(args, tools.wrk, supervisor, load_cpu, work)
        for round_no in range(1, args.rounds + 1):
            for key, (base, new) in pairs.items():
                order = [base, new] if round_no % 2 else [new, base]
                say(f"round {round_no}/{args.rounds}: {names[key]}, both at once ({order[0].name} first)")
                measured = sorted(load.measure_together(round_no, order), key=lambda r: r.target != base.name)
                pair_runs[key] += measured
                runs += measured
        (work / "wrk-outputs.txt").write_text("\n".join(load.outputs))
    finally:
        stop_everything(supervisor)
        if args.versus is None:
            remove_checkout(base_code)
    differences = {}
    for key, (base, new) in pairs.items():
        deltas = []
        for round_no in range(1, args.rounds + 1):
            this_round = [r for r in pair_runs[key] if r.round == round_no]
            a, b = (next(r for r in this_round if r.target == t.name) for t in (base, new))
            if a.cpu_us_per_request and b.cpu_us_per_request:
                deltas.append((b.cpu_us_per_request - a.cpu_us_per_request, a.cpu_us_per_request))
        differences[names[key]] = {
            "base": base.name,
            "this": new.name,
            "us_per_request": [round(d, 1) for d, _ in deltas],
            "median_us": round(statistics.median(d for d, _ in deltas), 1) if deltas else None,
            "median_percent": round(statistics.median(100 * d / a for d, a in deltas), 1) if deltas else None,
        }
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(), "load_average_after": load_averages()},
        "versions": {"base": revision, "this": this, "nginx": version([tools.nginx, "-v"])},
        "settings": {"ab": args.ab, "versus": args.versus, **run_settings(args, scenarios, pinning)},
        "skipped": skipped,
        "runs": [asdict(r) for r in runs],
        "differences": differences,
    }


def report_ab(result: dict[str, Any]) -> str:
    settings = result["settings"]
    runs = [Run(**r) for r in result["runs"]]

    def median_cpu(name: str) -> str:
        values = [r.cpu_us_per_request for r in runs if r.target == name and r.cpu_us_per_request]
        return f"{statistics.median(values):.1f}" if values else "-"

    head = (
        f"{'scenario':<{NAME_WIDTH}} {'rounds':>6} {'base µs/req':>11} {'this µs/req':>11} {'this-base':>9}"
    )
    lines = [head + f" {'%':>6}  per round"]
    for scenario, diff in result["differences"].items():
        deltas = diff["us_per_request"]
        lines.append(
            f"{scenario:<{NAME_WIDTH}} {len(deltas):>6} {median_cpu(diff['base']):>11} "
            f"{median_cpu(diff['this']):>11} {diff['median_us'] or 0:>+9.1f} "
            f"{diff['median_percent'] or 0:>+6.1f}"
            f"  {', '.join(f'{d:+.1f}' for d in deltas)}"
        )
    if (versus := settings.get("versus")) is not None:
        for scenario, diff in result["differences"].items():
            if diff["median_percent"] is not None:
                lines.append(
                    f"{scenario}: {100 / (100 + diff['median_percent']):.3f}x the {diff['base']}'s "
                    "requests per CPU second (its throughput on a core of its own)"
                )
        sides = f"base: the {versus} gateway, this: each scenario's, both from {result['versions']['this']}"
    else:
        sides = f"base: {result['versions']['base']} ({settings['ab']}); this: {result['versions']['this']}"
    lines += [
        "(CPU µs per request of each gateway, both loaded at once on the same core; this-base: median of "
        "the rounds' differences, negative is cheaper; --ab HEAD on a clean tree shows the method's noise)",
        f"{sides}; pinning: {settings['pinning']}; two wrk -t{settings['threads']} "
        f"-c{settings['connections']}, {settings['warmup_seconds']}s warm-up + "
        f"{settings['duration_seconds']}s per round",
    ]
    width = max((len(r.target) for r in runs), default=NAME_WIDTH)
    return rounds_table(runs, width=width) + "\n\n" + "\n".join(lines)


def report_text(result: dict[str, Any]) -> str:
    runs = [Run(**r) for r in result["runs"]]
    summaries = [TargetSummary(**s) for s in result["summary"]]
    settings, machine, names = result["settings"], result["machine"], result["names"]
    baseline = names[PASS] if PASS in settings["scenarios"] else None
    footer = [
        f"pinning: {settings['pinning']}; workers: {settings['workers_cpus']} cores, "
        f"{settings['workers_store']} store; wrk -t{settings['threads']} -c{settings['connections']}, "
        f"{settings['warmup_seconds']}s warm-up + {settings['duration_seconds']}s per run",
        f"load average (1, 5, 15 min): before {machine['load_average_before']}, "
        f"after {machine['load_average_after']}",
        f"gateway code: {result['versions']['gateway']}",
    ]
    if (scaling := result["workers_scaling"]) is not None:
        footer.append(
            f"{names[WORKERS]} / {names[ONE_WORKER]}: req/s {scaling['rps_2_workers_vs_1']}x, "
            f"CPU per request {scaling['cpu_per_request_2_workers_vs_1']}x"
        )
    if result["policy_access_records"] is not None:
        footer.append(f"full policy: {result['policy_access_records']:,} access records written to its file")
    if (check := result["idempotency_check"]) is not None:
        footer.append(
            f"idempotent POST: {check['keyed_requests_answered']:,} keyed requests answered (warm-ups "
            f"included), redis holds {check['redis_keys'] or 0:,} records: "
            + (
                "every key was fresh"
                if (check["redis_keys"] or 0) >= check["keyed_requests_answered"]
                else "FEWER records than requests: some were replays, the figures are off"
            )
        )
    parts = [
        rounds_table(runs, width=NAME_WIDTH),
        summary_table(summaries, baseline=baseline, width=NAME_WIDTH) + "\n" + "\n".join(footer),
    ]
    for scenario, reason in result["skipped"].items():
        parts.append(f"SKIPPED {scenario}: {reason}")
    for name, profile in result["profiles"].items():
        parts.append(profile_table(name, profile))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tools = prepare(("gateway", "aiohttp"), argv, Path(__file__))
    if tools is None:
        return 1
    skipped = plan_skips(args)
    if all(s in skipped for s in args.scenarios):
        say("error: every scenario asked for is skipped; nothing to measure")
        return 1
    if args.ab is not None or args.versus is not None:
        return main_frame(
            "proxy-ab" if args.ab is not None else "proxy-versus",
            lambda work: run_ab(args, tools, work, skipped),
            report_ab,
            as_json=args.json,
            keep=args.keep,
        )
    return main_frame(
        "proxy",
        lambda work: run(args, tools, work, skipped),
        report_text,
        as_json=args.json,
        keep=args.keep or args.with_logs or bool(args.profile),
    )


if __name__ == "__main__":
    sys.exit(main())
