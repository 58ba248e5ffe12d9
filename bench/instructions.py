"""Instructions per request: the gateway under valgrind's callgrind, counted, not timed.

    .venv/bin/python bench/instructions.py [--ab REV] [--scenarios pass-through,policy,idempotency]
        [--requests 2000] [--connections 4] [--repeats 2] [--keep] [--json]

CPU time per request on a shared VM moves with everything else the machine does; the number of
instructions the gateway executes per request does not. Each scenario's gateway (the configs of
bench/proxy.py) runs under ``valgrind --tool=callgrind``, from this checkout and, with ``--ab REV``,
from git revision REV (a worktree in the work dir). Once it answers, it is warmed up, its counters are
zeroed (``callgrind_control -z``), exactly ``--requests`` requests are sent over ``--connections``
keep-alive connections by a small client here (each answer must be the vendor's 200), and the counters
are dumped (``callgrind_control -d``): their total over the requests is the figure, every thread of the
gateway included, the kernel's work not (callgrind sees user space only). ``--repeats`` measures each
gateway again on the same process to show the spread. Needs valgrind (Debian: valgrind); nginx as the
vendor like bench/proxy.py. A gateway starts in about a minute under callgrind; a default run takes
about 3 minutes per gateway. Everything is stopped on exit.
"""

from __future__ import annotations

import argparse
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    REPO_DIR,
    VENDOR_BODY,
    BenchError,
    Supervisor,
    Tools,
    check_ranges,
    gateway_revision,
    machine_info,
    main_frame,
    prepare,
    raise_fd_limit,
    say,
    start_vendor,
    stop_everything,
    wait_ready,
)
from proxy import (
    AB_SCENARIOS,
    IDEMPOTENCY,
    NAME_WIDTH,
    PASS,
    POLICY,
    POST_BODY,
    Gateway,
    checkout,
    ready_probe,
    remove_checkout,
    row_names,
    start_gateway,
    start_redis,
    write_gateway,
)

READY_SECONDS = 300.0  # python, aiohttp and the gateway imported instruction by instruction
WARMUP_REQUESTS = 200
CLIENT_TIMEOUT_SECONDS = 120.0


def request_bytes(gateway: Gateway) -> list[bytes]:
    """What the client sends, per request: the scenario's method, path and headers (as wrk would)."""
    head = [
        f"{'POST' if gateway.key == IDEMPOTENCY else 'GET'} /bench{gateway.path} HTTP/1.1",
        "Host: 127.0.0.1",
    ]
    args = list(gateway.wrk_args)
    head += [args[i + 1] for i, arg in enumerate(args) if arg == "-H"]
    if gateway.key != IDEMPOTENCY:
        return [("\r\n".join(head) + "\r\n\r\n").encode()]
    body = POST_BODY.encode()
    head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    # A fresh key on every request: built as they are sent (see send_requests).
    return [("\r\n".join(head) + "\r\nIdempotency-Key: ").encode(), b"\r\n\r\n" + body]


def send_requests(gateway: Gateway, count: int, connections: int, token: str) -> None:
    """Exactly ``count`` requests, at most one outstanding per connection; every answer a 200 with the
    vendor's body, else BenchError."""
    parts = request_bytes(gateway)
    expected = VENDOR_BODY.encode()
    sent = 0

    def next_request() -> bytes:
        nonlocal sent
        sent += 1
        return parts[0] if len(parts) == 1 else parts[0] + f"{token}-{sent}".encode() + parts[1]

    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    for _ in range(min(connections, count)):
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT_SECONDS)
        sock.sendall(next_request())
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    answered = 0
    deadline = time.monotonic() + CLIENT_TIMEOUT_SECONDS + count
    try:
        while answered < count:
            if time.monotonic() > deadline:
                raise BenchError(f"{answered} of {count} requests answered in time")
            for key, _ in selector.select(5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(65536)
                if not data:
                    raise BenchError(f"the gateway closed a connection after {answered} answers")
                buffers[sock] += data
                while (end := buffers[sock].find(b"\r\n\r\n")) >= 0:
                    head = buffers[sock][:end].decode("latin-1")
                    lines = head.split("\r\n")
                    length = next(
                        (
                            int(v)
                            for k, _, v in (x.partition(":") for x in lines[1:])
                            if k.lower() == "content-length"
                        ),
                        None,
                    )
                    if length is None:
                        raise BenchError(f"an answer without Content-Length: {head[:300]}")
                    body = buffers[sock][end + 4 : end + 4 + length]
                    if len(body) < length:
                        break
                    if not lines[0].startswith("HTTP/1.1 200") or body != expected:
                        raise BenchError(f"not the vendor's 200: {lines[0]} {body[:200]!r}")
                    buffers[sock] = buffers[sock][end + 4 + length :]
                    answered += 1
                    if sent < count:
                        sock.sendall(next_request())
    finally:
        for sock in buffers:
            sock.close()
        selector.close()


def control(pid: int, flag: str) -> None:
    done = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {flag} {pid}: {(done.stdout + done.stderr).strip()}")


def dumped_total(folder: Path, before: set[Path]) -> int:
    """The ``summary:`` line (instructions) of the dump that appeared since ``before``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fresh = sorted(set(folder.glob("callgrind.out.*")) - before)
        for dump in fresh:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise BenchError(f"no callgrind dump appeared in {folder}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Instructions per request of the gateway, under callgrind.")
    parser.add_argument("--ab", metavar="REV", help="also measure git revision REV; report the difference")
    parser.add_argument(
        "--scenarios",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=[PASS, POLICY],
        help=f"comma-separated, of {','.join(AB_SCENARIOS)} (default pass-through,policy)",
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests counted per measure (default 2000)"
    )
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="measures per gateway (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs, dumps)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = parser.parse_args(argv)
    if unknown := [s for s in args.scenarios if s not in AB_SCENARIOS]:
        parser.error(f"--scenarios: choose from {','.join(AB_SCENARIOS)}, not {','.join(unknown)}")
    check_ranges(parser, args, {"requests": (100, 100_000), "connections": (1, 64), "repeats": (1, 10)})
    return args


def run(args: argparse.Namespace, tools: Tools, work: Path) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        raise BenchError("valgrind is not on PATH (Debian: apt-get install valgrind)")
    raise_fd_limit()
    supervisor = Supervisor(tools.taskset)
    sides = {"base": work / "base", "this": REPO_DIR} if args.ab else {"this": REPO_DIR}
    revisions = {"base": checkout(args.ab, sides["base"])} if args.ab else {}
    revisions["this"] = gateway_revision()
    names = row_names("memory")
    figures: dict[str, dict[str, list[float]]] = {}
    try:
        _, vendor_port = start_vendor(supervisor, tools, work, None)
        redis_port = None
        if IDEMPOTENCY in args.scenarios:
            started = start_redis(supervisor, work, None)
            if started is None:
                raise BenchError("the idempotency scenario needs redis-server on PATH")
            redis_port = started[1]
        started_gateways = []
        for key in args.scenarios:
            for side, code in sides.items():
                gateway = write_gateway(
                    work, key, vendor_port, redis_port=redis_port, folder_name=f"{key}-{side}"
                )
                out = gateway.folder / "callgrind.out.%p"
                prefix = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
                child = start_gateway(supervisor, gateway, None, code, prefix=prefix)
                started_gateways.append((key, side, gateway, child))
        say(f"{len(started_gateways)} gateway(s) starting under callgrind (about a minute); work dir {work}")
        for key, side, gateway, child in started_gateways:
            wait_ready(child, gateway.url, ready_probe(gateway, child), timeout=READY_SECONDS)
            send_requests(gateway, WARMUP_REQUESTS, args.connections, f"warm-{time.time_ns()}")
            row = figures.setdefault(names[key], {})
            for repeat in range(args.repeats):
                before = set(gateway.folder.glob("callgrind.out.*"))
                control(child.pid, "-z")
                send_requests(gateway, args.requests, args.connections, f"run-{time.time_ns()}")
                control(child.pid, "-d")
                total = dumped_total(gateway.folder, before)
                row.setdefault(side, []).append(round(total / args.requests))
                say(f"{names[key]} ({side}) measure {repeat + 1}: {total / args.requests:,.0f} per request")
            supervisor.stop(child)
    finally:
        stop_everything(supervisor)
        if args.ab:
            remove_checkout(sides["base"])
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "versions": revisions,
        "settings": {
            "ab": args.ab,
            "scenarios": args.scenarios,
            "requests": args.requests,
            "connections": args.connections,
            "repeats": args.repeats,
        },
        "instructions_per_request": figures,
    }


def report(result: dict[str, Any]) -> str:
    sides = list(result["versions"])
    head = f"{'scenario':<{NAME_WIDTH}}" + "".join(f" {side + ' (each measure)':>28}" for side in sides)
    lines = [head + (f" {'this-base':>10} {'%':>6}" if "base" in sides else "")]
    for scenario, row in result["instructions_per_request"].items():
        cells = "".join(f" {', '.join(f'{v:,.0f}' for v in row.get(side, [])):>28}" for side in sides)
        if "base" in row and "this" in row:
            base, this = statistics.median(row["base"]), statistics.median(row["this"])
            cells += f" {this - base:>+10,.0f} {100 * (this - base) / base:>+6.1f}"
        lines.append(f"{scenario:<{NAME_WIDTH}}{cells}")
    settings = result["settings"]
    lines += [
        "(instructions the gateway process executed per request, every thread, user space only, under "
        "callgrind; this-base: of the medians)",
        "revisions: "
        + ", ".join(f"{side} {rev}" for side, rev in result["versions"].items())
        + (f" ({settings['ab']})" if settings["ab"] else "")
        + f"; {settings['requests']:,} requests per measure over {settings['connections']} connections",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tools = prepare(("gateway", "aiohttp"), argv, Path(__file__))
    if tools is None:
        return 1
    return main_frame(
        "instructions", lambda work: run(args, tools, work), report, as_json=args.json, keep=args.keep
    )


if __name__ == "__main__":
    sys.exit(main())
