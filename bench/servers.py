"""Server comparison: which HTTP/1.1 server the gateway should stand on, measured as bench/proxy.py does.

    .venv/bin/python bench/servers.py [--rounds 2] [--duration 6] [--warmup 2] [--connections 50]
        [--servers aiohttp-app,aiohttp-lowlevel,granian-rsgi,granian-asgi,gateway] [--modes proxy,fixed]
        [--profile [SECONDS]] [--no-install] [--no-pin] [--json] [--keep]

Each server runs as a minimal pass-through proxy (bench/server_apps.py) that forwards every request
through the gateway's own vendor pool (``gateway.upstream.pool.Pool``) to the vendor nginx, and again
answering a fixed body without the vendor call ("fixed"): the difference is what the pool and the
vendor leg cost on that server. The servers: aiohttp's ``web.Application``, aiohttp's low-level server
(``aiohttp.web_server.Server``), granian RSGI and granian ASGI (one worker, one runtime thread, uvloop),
and the gateway's own server (``gateway.http.server.Server``). nginx ``proxy_pass`` is the reference,
measured in the same run. Method, pinning, figures and cleanup as bench/proxy.py (bench/harness.py):
cpu 0 runs wrk and the vendor, cpu 1 the server under test; CPU µs per request of all its processes.

granian is not a dependency of the project: when it is missing, this script installs it into the
running interpreter's environment with pip (say ``--no-install`` not to) and otherwise skips the two
granian servers, loudly. ``--profile`` records each proxy server with py-spy after the rounds
(``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    MAX_CONNECTIONS,
    NGINX,
    VENDOR_PATH,
    Child,
    Load,
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
    load_averages,
    loud,
    machine_info,
    main_frame,
    plan_cpus,
    prepare,
    profile_table,
    profile_target,
    raise_fd_limit,
    rounds_table,
    say,
    start_reference,
    start_vendor,
    stop_everything,
    summarize,
    summary_table,
    version,
    wait_ready,
)


@dataclass(frozen=True, slots=True)
class Kind:
    key: str  # as --servers names it
    label: str
    granian: str | None = None  # the granian interface, for granian's servers


KINDS = (
    Kind("aiohttp-app", "aiohttp web.Application"),
    Kind("aiohttp-lowlevel", "aiohttp low-level"),
    Kind("granian-rsgi", "granian RSGI", granian="rsgi"),
    Kind("granian-asgi", "granian ASGI", granian="asgi"),
    Kind("gateway", "gateway server"),
)
MODES = ("proxy", "fixed")
NAME_WIDTH = 32
PIP_TIMEOUT_SECONDS = 300.0


def target_name(kind: Kind, mode: str) -> str:
    return f"{kind.label} ({'pool' if mode == 'proxy' else 'fixed'})"


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)} (comma-separated)")
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare HTTP servers as pass-through proxies through the gateway's pool (127.0.0.1)."
    )
    keys = [k.key for k in KINDS]
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every target (default 2)")
    parser.add_argument("--duration", type=int, default=6, help="seconds measured per run (default 6)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="unmeasured seconds before each run (default 2)"
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--servers", type=_csv(keys), default=keys, help=f"comma-separated, of {','.join(keys)} (default all)"
    )
    parser.add_argument(
        "--modes", type=_csv(MODES), default=list(MODES), help="proxy (through the pool), fixed, or both"
    )
    parser.add_argument("--no-install", action="store_true", help="do not pip-install granian when missing")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=8,
        default=0,
        metavar="SECONDS",
        help="after the rounds, record each proxy server with py-spy (default 8s each; needs py-spy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, wrk output)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = parser.parse_args(argv)
    limits = {
        "rounds": (1, 20),
        "duration": (1, 120),
        "warmup": (0, 30),
        "connections": (1, MAX_CONNECTIONS),
        "threads": (1, 64),
        "profile": (0, 60),
    }
    check_ranges(parser, args, limits)
    return args


def ensure_granian(install: bool) -> str | None:
    """granian's version, installing it with pip when missing and allowed; None: not available."""
    if importlib.util.find_spec("granian") is None:
        if not install:
            loud("granian is not installed and --no-install was given: granian RSGI and ASGI are SKIPPED")
            return None
        say(
            f"granian is not installed for {sys.executable}: installing it from PyPI with pip (for this "
            f"benchmark only; it is not a dependency of the project)"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "granian"],
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            loud(f"could not install granian ({exc}): granian RSGI and ASGI are SKIPPED")
            return None
        if done.returncode != 0:
            loud(
                f"pip install granian failed (status {done.returncode}): granian RSGI and ASGI are SKIPPED\n"
                + (done.stderr or done.stdout).strip()[-1500:]
            )
            return None
        importlib.invalidate_caches()
    try:
        return importlib.metadata.version("granian")
    except importlib.metadata.PackageNotFoundError:
        loud("granian is importable but has no package metadata: granian RSGI and ASGI are SKIPPED")
        return None


def start_server(
    supervisor: Supervisor, work: Path, kind: Kind, mode: str, vendor_port: int, cpu: int | None
) -> tuple[Child, str]:
    port = free_port()
    name = f"{kind.key}-{mode}"
    log = work / f"{name}.log"
    if kind.granian is not None:
        # fmt: off
        argv = [sys.executable, "-m", "granian", "--interface", kind.granian, "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop",
                "--http", "1", "--no-ws", "--no-log", "--backlog", "1024", "--working-dir", str(BENCH_DIR),
                f"server_apps:{kind.granian}_app"]
        # fmt: on
        env = {"BENCH_MODE": mode, "BENCH_VENDOR_PORT": str(vendor_port), "PYTHONPATH": str(BENCH_DIR)}
        child = supervisor.start(name, argv, cpu=cpu, log=log, cwd=BENCH_DIR, env=env)
    else:
        argv = [
            sys.executable,
            str(BENCH_DIR / "server_apps.py"),
            kind.key,
            mode,
            str(port),
            str(vendor_port),
        ]
        child = supervisor.start(name, argv, cpu=cpu, log=log, cwd=BENCH_DIR)
    url = f"http://127.0.0.1:{port}{VENDOR_PATH}"
    return child, url


def pool_costs(summaries: Sequence[TargetSummary], kinds: Sequence[Kind]) -> list[dict[str, Any]]:
    """Per server: CPU per request through the pool, with a fixed body, and the difference."""
    by_name = {s.target: s for s in summaries}
    out = []
    for kind in kinds:
        proxy, fixed = by_name.get(target_name(kind, "proxy")), by_name.get(target_name(kind, "fixed"))
        if proxy is None and fixed is None:
            continue
        p = proxy.cpu_us_per_request_median if proxy else None
        f = fixed.cpu_us_per_request_median if fixed else None
        out.append(
            {
                "server": kind.label,
                "proxy_cpu_us": p,
                "fixed_cpu_us": f,
                "pool_and_vendor_leg_cpu_us": round(p - f, 1) if p is not None and f is not None else None,
                "proxy_cpu_efficiency_vs_nginx": proxy.cpu_efficiency_vs_nginx if proxy else None,
            }
        )
    return out


def pool_table(rows: Sequence[dict[str, Any]], nginx_cpu: float | None) -> str:
    def num(value: float | None, spec: str = ".0f") -> str:
        return "-" if value is None else f"{value:{spec}}"

    lines = [
        f"{'server':<26} {'via pool µs':>11} {'fixed µs':>9} {'pool+vendor leg µs':>18} {'cpu vs nginx':>12}"
    ]
    for row in rows:
        ratio = row["proxy_cpu_efficiency_vs_nginx"]
        lines.append(
            f"{row['server']:<26} {num(row['proxy_cpu_us']):>11} {num(row['fixed_cpu_us']):>9} "
            f"{num(row['pool_and_vendor_leg_cpu_us']):>18} {num(ratio, '.3f') + ('x' if ratio else ''):>12}"
        )
    lines.append(f"(CPU µs per request, medians; nginx proxy_pass in the same run: {num(nginx_cpu)} µs)")
    return "\n".join(lines)


def run(args: argparse.Namespace, tools: Tools, work: Path, granian: str | None) -> dict[str, Any]:
    load_cpu, proxy_cpu, pinning = plan_cpus(args.no_pin)
    say(f"pinning: {pinning}" + ("" if tools.taskset or load_cpu is None else " (sched_setaffinity)"))
    load_before = load_averages()
    if load_before[0] > 0.5:
        say(f"warning: load average is {load_before[0]:.2f} before starting; other work skews the figures")
    kinds = [k for k in KINDS if k.key in args.servers]
    skipped = []
    if granian is None:
        skipped = [k.label for k in kinds if k.granian is not None]
        kinds = [k for k in kinds if k.granian is None]
    if args.profile:
        find_py_spy()  # fail before the rounds, not after

    raise_fd_limit()
    supervisor = Supervisor(tools.taskset)
    profiles: dict[str, Any] = {}
    try:
        _, vendor_port = start_vendor(supervisor, tools, work, load_cpu)
        reference, reference_port = start_reference(supervisor, tools, work, vendor_port, proxy_cpu)
        targets = [Target(NGINX, f"http://127.0.0.1:{reference_port}{VENDOR_PATH}", reference, proxy_cpu)]
        started = []
        for kind in kinds:
            for mode in args.modes:
                child, url = start_server(supervisor, work, kind, mode, vendor_port, proxy_cpu)
                started.append((kind, mode, child, url))
        for kind, mode, child, url in started:
            wait_ready(child, url)
            targets.append(Target(target_name(kind, mode), url, child, proxy_cpu))
        say(f"ready: {len(targets)} targets (vendor nginx :{vendor_port}); work dir {work}")
        load = Load.of(args, tools.wrk, supervisor, load_cpu, work)
        runs = drive(load, targets, args.rounds)
        (work / "wrk-outputs.txt").write_text("\n".join(load.outputs))
        if args.profile:
            for target in targets:
                if target.name.endswith("(pool)"):
                    raw = work / f"profile-{target.server.name}.raw"
                    profiles[target.name] = profile_target(load, target, args.profile, raw)
    finally:
        stop_everything(supervisor)
    load_after = load_averages()

    summaries = summarize(runs, targets)
    nginx = next((s for s in summaries if s.target == NGINX), None)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": load_after},
        "versions": {
            "gateway": gateway_revision(),
            "nginx": version([tools.nginx, "-v"]),
            "wrk": version([tools.wrk, "-v"]),
            "granian": granian,
            "aiohttp": importlib.metadata.version("aiohttp"),
            "uvloop": importlib.metadata.version("uvloop"),
            "httptools": importlib.metadata.version("httptools"),
        },
        "settings": {
            "rounds": args.rounds,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "modes": args.modes,
            "pinning": pinning,
        },
        "skipped": skipped,
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
        "pool_costs": pool_costs(summaries, kinds),
        "nginx_cpu_us_per_request": nginx.cpu_us_per_request_median if nginx else None,
        "profiles": profiles,
    }


def report_text(result: dict[str, Any]) -> str:
    runs = [Run(**r) for r in result["runs"]]
    summaries = [TargetSummary(**s) for s in result["summary"]]
    settings, machine = result["settings"], result["machine"]
    parts = [
        rounds_table(runs, width=NAME_WIDTH),
        summary_table(summaries, width=NAME_WIDTH),
        pool_table(result["pool_costs"], result["nginx_cpu_us_per_request"])
        + f"\npinning: {settings['pinning']}; wrk -t{settings['threads']} -c{settings['connections']}, "
        f"{settings['warmup_seconds']}s warm-up + {settings['duration_seconds']}s per run"
        + f"\nload average (1, 5, 15 min): before {machine['load_average_before']}, "
        f"after {machine['load_average_after']}"
        + f"\ngateway code: {result['versions']['gateway']}; granian {result['versions']['granian'] or '-'}",
    ]
    if result["skipped"]:
        parts.append(f"SKIPPED (granian not available): {', '.join(result['skipped'])}")
    for name, profile in result["profiles"].items():
        parts.append(profile_table(name, profile, top=12))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tools = prepare(("gateway", "aiohttp", "uvloop", "httptools"), argv, Path(__file__))
    if tools is None:
        return 1
    wants_granian = any(k.granian for k in KINDS if k.key in args.servers)
    granian = ensure_granian(not args.no_install) if wants_granian else None
    return main_frame(
        "servers",
        lambda work: run(args, tools, work, granian),
        report_text,
        as_json=args.json,
        keep=args.keep or bool(args.profile),
    )


if __name__ == "__main__":
    sys.exit(main())
