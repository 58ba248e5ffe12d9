"""Load benchmark: the gateway against nginx ``proxy_pass`` and a direct call, all on this machine.

    .venv/bin/python bench/proxy.py [--rounds 3] [--duration 8] [--warmup 2] [--connections 50]
                                    [--threads 1] [--with-logs] [--json] [--profile] [--keep]

One nginx worker plays the vendor (a fixed ~100-byte JSON body). A second single-worker nginx with an
upstream keep-alive pool is the reference proxy. The gateway (one process) passes everything through
to the same vendor. ``wrk`` drives them in turn (gateway, nginx, gateway, nginx, ...), then the vendor
once directly. Each process is pinned: wrk and the vendor share one core, the proxy under test has
the other to itself. Everything is written under ``bench/.work/`` and every process started here is
stopped on exit, Ctrl-C or failure. Missing ``nginx`` or ``wrk`` are installed with apt-get (Debian).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_ROOT = BENCH_DIR / ".work"

# What the vendor answers: small, fixed, JSON, like a typical "get one object" API response.
VENDOR_BODY = '{"id":"obj_0001","object":"customer","email":"bench@example.com","balance":1999,"live":false}'
GATEWAY_VENDOR = "bench"  # the gateway reaches it at /bench/<path>
VENDOR_PATH = "/anything?x=1"

GATEWAY = "gateway"
NGINX = "nginx proxy"
DIRECT = "direct"

APT_PACKAGES = {"nginx": "nginx-light", "wrk": "wrk"}  # executable -> Debian package
EXTRA_PATH = "/usr/local/sbin:/usr/sbin:/sbin"  # nginx lives in sbin, not always on a user's PATH

READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 5.0
APT_TIMEOUT_SECONDS = 600.0
WRK_GRACE_SECONDS = 15.0  # how long past its -d a wrk run may take before it is killed
MAX_CONNECTIONS = 5000  # nginx gets 16384 connections (a proxied request holds two) and as many fds
NOISY_PERCENT = 10.0  # others' CPU, in % of one core, above which a run is flagged as disturbed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class BenchError(Exception):
    """A reason to stop the benchmark, phrased for the person running it."""


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True)
class Tools:
    nginx: str
    wrk: str
    taskset: str | None


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", os.defpath), EXTRA_PATH)))


def ensure_tools() -> Tools:
    missing = {exe: pkg for exe, pkg in APT_PACKAGES.items() if _which(exe) is None}
    if missing:
        _apt_install(sorted(missing.values()), missing_exes=sorted(missing))
    nginx, wrk = _which("nginx"), _which("wrk")
    if nginx is None or wrk is None:
        raise BenchError("nginx and wrk are still not on PATH after installing them; install them by hand")
    return Tools(nginx=nginx, wrk=wrk, taskset=_which("taskset"))


def _apt_install(packages: list[str], *, missing_exes: list[str]) -> None:
    manual = f"apt-get install -y {' '.join(packages)}"
    if _which("apt-get") is None:
        raise BenchError(
            f"{', '.join(missing_exes)} not found and this is not Debian (no apt-get); install "
            f"them yourself ({' and '.join(packages)} or your system's equivalent)"
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = _which("sudo")
        if sudo is None:
            raise BenchError(f"{', '.join(missing_exes)} not found and not root; run as root: {manual}")
        prefix = [sudo, "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    say(
        f"{', '.join(missing_exes)} not found: installing Debian packages {' '.join(packages)} "
        f"with apt-get (this can take a minute)"
    )
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", *packages]
    result = _apt(install)
    if result.returncode != 0:
        # Most often a fresh container without package lists: fetch them once and try again.
        say("apt-get install failed; running apt-get update, then trying again")
        update = _apt([*prefix, "apt-get", "update"])
        if update.returncode != 0:
            raise BenchError(f"apt-get update failed:\n{_tail(update.stdout)}\ninstall by hand: {manual}")
        result = _apt(install)
        if result.returncode != 0:
            raise BenchError(f"apt-get install failed:\n{_tail(result.stdout)}\ninstall by hand: {manual}")
    say(f"installed {' '.join(packages)}")


def _apt(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=APT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} took longer than {APT_TIMEOUT_SECONDS:.0f}s") from None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def gateway_revision() -> str:
    """The commit the measured gateway code comes from, and whether gateway/ differs from it."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "gateway")
    return f"{commit} + uncommitted changes in gateway/" if dirty else commit


# --------------------------------------------------------------------------- processes


PF_KTHREAD = 0x00200000  # /proc/PID/stat flags bit of kernel threads
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sample_processes() -> dict[int, tuple[int, int]]:
    """pid -> (process group, user + system CPU clock ticks, threads included) of user-space processes."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the command (which may hold spaces): state ppid pgrp ... flags ... utime stime
        fields = stat.rpartition(")")[2].split()
        if int(fields[6]) & PF_KTHREAD:
            continue
        out[int(entry)] = (int(fields[2]), int(fields[11]) + int(fields[12]))
    return out


def _pids_in_group(pgid: int) -> list[int]:
    return [pid for pid, (group, _) in sample_processes().items() if group == pgid]


def group_ticks(sample: dict[int, tuple[int, int]], pgid: int) -> int:
    return sum(ticks for group, ticks in sample.values() if group == pgid)


def foreign_ticks(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], ours: set[int]
) -> int:
    """CPU used between two samples by processes that are neither this script nor its children.

    Processes that came and went in between are missed; kernel threads (softirq work for the loopback
    traffic itself) are left out on purpose.
    """
    total = 0
    for pid, (group, ticks) in after.items():
        if group in ours or pid == os.getpid():
            continue
        previous = before.get(pid)
        total += ticks - previous[1] if previous is not None and previous[0] == group else ticks
    return total


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) clock ticks since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int | None
) -> float | None:
    if cpu is None or cpu not in before or cpu not in after:
        return None
    busy, total = (a - b for a, b in zip(after[cpu], before[cpu], strict=True))
    return round(100 * busy / total, 1) if total else None


def set_group_affinity(pgid: int, cpu: int) -> None:
    for pid in _pids_in_group(pgid):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), {cpu})


@dataclass(slots=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pgid(self) -> int:
        # Each child leads its own session, so its pid is its process-group id.
        return self.process.pid


class Supervisor:
    """Starts processes in their own process groups and stops every one of them, whatever happens."""

    def __init__(self, taskset: str | None) -> None:
        self.taskset = taskset
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        cpu: int | None,
        stdout: IO[bytes] | int | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> Child:
        argv = list(cmd)
        with contextlib.ExitStack() as stack:
            if cpu is not None:
                if self.taskset is not None:
                    argv = [self.taskset, "-c", str(cpu), *argv]
                else:
                    stack.enter_context(_own_affinity(cpu))  # inherited by the child
            err = stack.enter_context(log.open("ab")) if log is not None else subprocess.DEVNULL
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                stderr=err,
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name=name, process=process, log=log)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pgid, signal.SIGTERM)
            try:
                child.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop within {STOP_TIMEOUT_SECONDS:.0f}s of SIGTERM; killing it")
        # Workers may outlive their leader; the group id stays theirs while any of them exists.
        if _pids_in_group(child.pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        # Last started first: proxies before the vendor they talk to.
        for child in reversed(list(self.children)):
            self.stop(child)


@contextlib.contextmanager
def _own_affinity(cpu: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def raise_fd_limit() -> None:
    """wrk and the gateway hold one descriptor per connection; children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * MAX_CONNECTIONS if hard == resource.RLIM_INFINITY else min(hard, 4 * MAX_CONNECTIONS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(child: Child, url: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Poll ``url`` until it answers the vendor's body: proves the whole chain, not just a listener."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise BenchError(f"{child.name} exited with status {child.process.returncode}{_log_tail(child)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read().decode()
                if response.status == 200 and body == VENDOR_BODY:
                    return
                last = f"HTTP {response.status}: {body[:200]}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{child.name} not ready at {url} after {timeout:.0f}s ({last}){_log_tail(child)}")


def _log_tail(child: Child) -> str:
    if child.log is None or not child.log.exists():
        return ""
    return f"\n  {child.log}:\n{_tail(child.log.read_text(errors='replace'))}"


# --------------------------------------------------------------------------- configs


NGINX_MAIN = """\
# Generated by bench/proxy.py: {role}.
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/{name}-body;
    proxy_temp_path {work}/tmp/{name}-proxy;
    # Keep client connections open for the whole run, as wrk's are (default 1000 requests).
    keepalive_timeout 65s;
    keepalive_requests 1000000;
{body}
}}
"""

VENDOR_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}"""

PROXY_SERVER = """\
    upstream vendor {{
        server 127.0.0.1:{vendor_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://vendor;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""

GATEWAY_CONFIG = """\
# Generated by bench/proxy.py: one vendor, no routes file, so every path passes through.
[gateway]
listen = "127.0.0.1:{port}"
routes_dir = "routes"
transforms_dir = "transforms"
shutdown_timeout_seconds = 2

[vendors.{vendor}]
base_url = "http://127.0.0.1:{vendor_port}"
"""


def write_nginx_conf(work: Path, name: str, role: str, server: str) -> Path:
    (work / "tmp").mkdir(exist_ok=True)
    path = work / f"{name}.conf"
    path.write_text(NGINX_MAIN.format(role=role, work=work, name=name, body=server))
    return path


def write_gateway_conf(work: Path, port: int, vendor_port: int) -> Path:
    for folder in ("routes", "transforms"):
        (work / folder).mkdir(exist_ok=True)
    path = work / "config.toml"
    path.write_text(GATEWAY_CONFIG.format(port=port, vendor=GATEWAY_VENDOR, vendor_port=vendor_port))
    return path


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors plus non-2xx/3xx answers
    cpu_us_per_request: float | None  # CPU of the server under test per completed request
    # How busy each pinned core was: near 100% on the load core means wrk (and the vendor sharing
    # it) may be what limits the figure, not the server under test.
    load_cpu_busy_percent: float | None
    server_cpu_busy_percent: float | None
    # CPU other processes on the machine used meanwhile, in % of one core: the run's noise floor.
    others_cpu_percent: float


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


@dataclass(frozen=True, slots=True)
class WrkFigures:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def parse_wrk(text: str) -> WrkFigures:
    """req/s, p50/p99, request and error counts from ``wrk --latency`` output."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise BenchError(f"cannot read wrk output (no match for {pattern!r}):\n{_tail(text, 30)}")
        return match

    percentile = r"^\s+{}%\s+([\d.]+)(us|ms|s|m|h)\s*$"
    p50, p99 = find(percentile.format(50)), find(percentile.format(99))
    errors = 0
    if sock := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(n) for n in sock.groups())
    if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(bad.group(1))
    return WrkFigures(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_ms(*p50.groups()),
        p99_ms=_ms(*p99.groups()),
        requests=int(find(r"^\s+(\d+) requests in").group(1)),
        errors=errors,
    )


@dataclass(slots=True)
class Load:
    """How wrk is run: same for every target."""

    wrk: str
    supervisor: Supervisor
    cpu: int | None
    threads: int
    connections: int
    duration: int
    warmup: int
    work: Path
    outputs: list[str] = field(default_factory=list)

    def command(self, url: str, seconds: int) -> list[str]:
        return [self.wrk, f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds}s", "--latency", url]

    def wrk_run(self, url: str, seconds: int) -> str:
        out = self.work / "wrk.out"
        with out.open("wb") as sink:
            child = self.supervisor.start(
                "wrk", self.command(url, seconds), cpu=self.cpu, stdout=sink, log=self.work / "wrk.err"
            )
            try:
                code = child.process.wait(timeout=seconds + WRK_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                raise BenchError(f"wrk did not finish within {seconds + WRK_GRACE_SECONDS:.0f}s") from None
            finally:
                self.supervisor.stop(child)
        text = out.read_text(errors="replace")
        if code != 0:
            raise BenchError(f"wrk exited with status {code}:\n{_tail(text)}{_log_tail(child)}")
        return text

    def measure(self, round_no: int, target: str, url: str, server: Child, server_cpu: int | None) -> Run:
        if self.warmup > 0:
            self.wrk_run(url, self.warmup)
        ours = {child.pgid for child in self.supervisor.children}
        procs_before, cores_before = sample_processes(), core_ticks()
        text = self.wrk_run(url, self.duration)
        procs_after, cores_after = sample_processes(), core_ticks()
        cpu = (group_ticks(procs_after, server.pgid) - group_ticks(procs_before, server.pgid)) / CLOCK_TICKS
        others = foreign_ticks(procs_before, procs_after, ours) / CLOCK_TICKS
        self.outputs.append(f"== round {round_no} {target}: {url}\n{text}")
        figures = parse_wrk(text)
        return Run(
            round=round_no,
            target=target,
            rps=figures.rps,
            p50_ms=figures.p50_ms,
            p99_ms=figures.p99_ms,
            requests=figures.requests,
            errors=figures.errors,
            cpu_us_per_request=round(cpu / figures.requests * 1e6, 1) if figures.requests else None,
            load_cpu_busy_percent=busy_percent(cores_before, cores_after, self.cpu),
            server_cpu_busy_percent=busy_percent(cores_before, cores_after, server_cpu),
            others_cpu_percent=round(100 * others / self.duration, 1),
        )


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True, slots=True)
class TargetSummary:
    target: str
    url: str
    rounds: int
    rps_median: float
    p50_ms_median: float
    p99_ms_median: float
    cpu_us_per_request_median: float | None
    errors: int


def summarize(runs: list[Run], urls: dict[str, str]) -> list[TargetSummary]:
    out = []
    for target, url in urls.items():
        mine = [r for r in runs if r.target == target]
        if not mine:
            continue
        cpus = [r.cpu_us_per_request for r in mine if r.cpu_us_per_request is not None]
        out.append(
            TargetSummary(
                target=target,
                url=url,
                rounds=len(mine),
                rps_median=round(statistics.median(r.rps for r in mine), 1),
                p50_ms_median=round(statistics.median(r.p50_ms for r in mine), 3),
                p99_ms_median=round(statistics.median(r.p99_ms for r in mine), 3),
                cpu_us_per_request_median=round(statistics.median(cpus), 1) if cpus else None,
                errors=sum(r.errors for r in mine),
            )
        )
    return out


def _cpu_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _percent_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def rounds_table(runs: list[Run]) -> str:
    lines = [
        f"{'round':>5}  {'target':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu µs/req':>10} "
        f"{'errors':>6} {'load core':>9} {'server core':>11} {'others':>7}"
    ]
    for r in runs:
        noisy = "!" if r.others_cpu_percent > NOISY_PERCENT else " "
        lines.append(
            f"{r.round:>5}  {r.target:<12} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{_cpu_text(r.cpu_us_per_request):>10} {r.errors:>6} "
            f"{_percent_text(r.load_cpu_busy_percent):>9} {_percent_text(r.server_cpu_busy_percent):>11} "
            f"{_percent_text(r.others_cpu_percent):>6}{noisy}"
        )
    lines.append(
        "(cpu µs/req: CPU of the server under test per request; load/server core: how busy each pinned "
        "core was; others: CPU of unrelated processes, % of one core)"
    )
    if failed := [r for r in runs if r.errors]:
        lines.append(
            f"warning: {len(failed)} run(s) had socket errors or non-2xx answers; see wrk-outputs.txt "
            f"(bench/proxy.py --keep)"
        )
    if noisy_runs := [r for r in runs if r.others_cpu_percent > NOISY_PERCENT]:
        worst = max(r.others_cpu_percent for r in noisy_runs)
        lines.append(
            f"warning: other processes used up to {worst:.0f}% of a core during {len(noisy_runs)} run(s) "
            f"marked '!'; those figures are disturbed, rerun on a quiet machine"
        )
    return "\n".join(lines)


def summary_table(summaries: list[TargetSummary], ratios: dict[str, float | None]) -> str:
    lines = [
        f"{'target':<12} {'rounds':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu µs/req':>10} "
        f"{'errors':>6}   (medians over rounds)"
    ]
    for s in summaries:
        lines.append(
            f"{s.target:<12} {s.rounds:>6} {s.rps_median:>9,.0f} {s.p50_ms_median:>8.2f} "
            f"{s.p99_ms_median:>8.2f} {_cpu_text(s.cpu_us_per_request_median):>10} {s.errors:>6}"
        )
    if (rps := ratios["rps"]) is not None:
        lines.append(f"gateway / nginx proxy throughput: {rps:.3f}x")
    if (cpu := ratios["cpu"]) is not None:
        lines.append(f"gateway / nginx proxy CPU efficiency (nginx µs/req ÷ gateway µs/req): {cpu:.3f}x")
    return "\n".join(lines)


def ratios(summaries: list[TargetSummary]) -> dict[str, float | None]:
    by_target = {s.target: s for s in summaries}
    gateway, nginx = by_target.get(GATEWAY), by_target.get(NGINX)
    rps = cpu = None
    if gateway is not None and nginx is not None:
        rps = round(gateway.rps_median / nginx.rps_median, 4) if nginx.rps_median else None
        if gateway.cpu_us_per_request_median and nginx.cpu_us_per_request_median:
            cpu = round(nginx.cpu_us_per_request_median / gateway.cpu_us_per_request_median, 4)
    return {"rps": rps, "cpu": cpu}


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- profile


# Where a frame's file says a sample was spent, first match wins (py-spy prints short module paths).
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (gateway/observability/logging.py)", ("gateway/observability/logging.py",)),
    ("gateway code", ("gateway/",)),
    ("aiohttp client", ("aiohttp/client", "aiohttp/connector.py", "aiohttp/tracing.py")),
    ("aiohttp server", ("aiohttp/web", "aiohttp/http_writer.py", "aiohttp/base_protocol.py")),
    ("aiohttp shared (helpers, streams, parser)", ("aiohttp/",)),
    ("multidict / yarl", ("multidict/", "yarl/")),
    # Self time here is the loop's own C code (uvloop: epoll, socket reads, callback dispatch).
    ("event loop (uvloop C, syscalls)", ("asyncio/runners.py",)),
    ("asyncio (tasks, futures)", ("asyncio/",)),
)
# Frames below the event loop: on every stack, so they would make every category look inclusive.
ENTRY_FRAMES = ("<frozen runpy>", "gateway/__main__.py", "gateway/cli.py", "asyncio/runners.py")


def _frame_file(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    match = re.search(r"\((.*?)(?::-?\d+)?\)$", frame)
    return match.group(1) if match else frame


def _category(frame: str) -> str:
    path = _frame_file(frame)
    for name, markers in PROFILE_CATEGORIES:
        if any(marker in path for marker in markers):
            return name
    return "other"


def summarize_profile(raw: str, top: int = 20) -> dict[str, Any]:
    """Self and inclusive time per category and per function, from py-spy's collapsed stacks."""
    self_functions: Counter[str] = Counter()
    self_categories: Counter[str] = Counter()
    inclusive_functions: Counter[str] = Counter()
    inclusive_categories: Counter[str] = Counter()
    total = other_threads = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # One entry per function, not per line.
        frames = [re.sub(r":-?\d+\)$", ")", f) for f in stack.split(";") if f]
        if not frames:
            continue
        if _frame_file(frames[0]) == "threading.py":
            # Worker threads (the reload watcher, the default executor) mostly wait in native code,
            # which py-spy cannot always tell from work; the event loop thread is what serves requests.
            other_threads += count
            continue
        total += count
        self_functions[frames[-1]] += count
        self_categories[_category(frames[-1])] += count
        above_loop = [f for f in frames if not any(e in _frame_file(f) for e in ENTRY_FRAMES)]
        for function in set(above_loop):
            inclusive_functions[function] += count
        for category in {_category(f) for f in above_loop}:
            inclusive_categories[category] += count
    if total == 0:
        raise BenchError("py-spy recorded no samples")

    def share(counter: Counter[str], limit: int | None = None) -> list[dict[str, Any]]:
        return [
            {"name": k, "samples": v, "percent": round(100 * v / total, 1)}
            for k, v in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "other_thread_samples_left_out": other_threads,
        "self_by_category": share(self_categories),
        "inclusive_by_category": share(inclusive_categories),
        "self_top_functions": share(self_functions, top),
        "inclusive_top_functions": share(inclusive_functions, top),
    }


def profile_table(profile: dict[str, Any]) -> str:
    lines = [
        f"py-spy: {profile['samples']} samples of the gateway's event loop thread under load "
        f"({profile['other_thread_samples_left_out']} samples of other threads left out)"
    ]
    for title, key in (
        ("self time by category", "self_by_category"),
        ("inclusive time by category (on the stack above the event loop)", "inclusive_by_category"),
        ("top self-time functions", "self_top_functions"),
        ("top inclusive functions", "inclusive_top_functions"),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {row['percent']:>5.1f}%  {row['name']}" for row in profile[key]]
    return "\n".join(lines)


def profile_gateway(load: Load, gateway: Child, url: str, seconds: int, raw: Path) -> dict[str, Any]:
    """Sample the gateway with py-spy while wrk loads it; ``raw`` gets the collapsed stacks."""
    search = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)))
    py_spy = shutil.which("py-spy", path=search)
    if py_spy is None:
        raise BenchError(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
    say(f"profiling the gateway with py-spy for {seconds}s under the same wrk load")
    driver = load.supervisor.start("wrk (profile)", load.command(url, seconds + 3), cpu=load.cpu)
    try:
        time.sleep(1)  # let the load reach steady state before sampling
        # Blocking mode (py-spy pauses the process for each sample, ~2% cost at 200 Hz): without it
        # stacks are read while they change and come out torn.
        # fmt: off
        record = [py_spy, "record", "--pid", str(gateway.process.pid), "--duration", str(seconds),
                  "--rate", "200", "--format", "raw", "--output", str(raw)]
        # fmt: on
        spy = load.supervisor.start(
            "py-spy",
            record,
            cpu=load.cpu,
            log=load.work / "py-spy.log",
        )
        try:
            code = spy.process.wait(timeout=seconds + WRK_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            raise BenchError("py-spy did not finish in time") from None
        if code != 0:
            raise BenchError(f"py-spy exited with status {code}{_log_tail(spy)}")
    finally:
        load.supervisor.stop(driver)
    return summarize_profile(raw.read_text(errors="replace"))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load-test the gateway against nginx proxy_pass and a direct call (all on 127.0.0.1)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="gateway/nginx rounds, alternating (default 3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds measured per run (default 8)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="unmeasured seconds before each run (default 2)"
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--with-logs",
        action="store_true",
        help="keep the gateway's access log (to a file under bench/.work/) instead of /dev/null",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=10,
        default=0,
        metavar="SECONDS",
        help="also record the gateway under load with py-spy (default 10s; needs py-spy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs, wrk output)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = parser.parse_args(argv)
    limits = {
        "rounds": (1, 20),
        "duration": (1, 300),
        "warmup": (0, 60),
        "connections": (1, MAX_CONNECTIONS),
        "threads": (1, 64),
        "profile": (0, 120),
    }
    for name, (low, high) in limits.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low} and {high}")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (each wrk thread needs a connection)")
    return args


def plan_cpus(no_pin: bool) -> tuple[int | None, int | None, str]:
    """(cpu for wrk and the vendor, cpu for the proxy under test, description)."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return None, None, "not pinned (--no-pin)"
    if len(cpus) < 2:
        return None, None, f"not pinned (only {len(cpus)} cpu available)"
    load_cpu, proxy_cpu = cpus[0], cpus[1]
    return (
        load_cpu,
        proxy_cpu,
        (
            f"cpu {load_cpu}: wrk + vendor nginx; cpu {proxy_cpu}: the proxy under test alone "
            f"(the vendor moves to cpu {proxy_cpu} for the direct run)"
        ),
    )


def ensure_gateway_importable(argv: Sequence[str]) -> None:
    """The gateway runs as ``sys.executable -m gateway``; without it, switch to the project's venv."""
    if importlib.util.find_spec("gateway") is not None and importlib.util.find_spec("aiohttp") is not None:
        return
    venv_python = REPO_DIR / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != venv_python.parent.parent.resolve():
        say(f"the gateway is not installed for {sys.executable}; re-running with {venv_python}")
        os.execv(venv_python, [str(venv_python), str(Path(__file__).resolve()), *argv])
    raise BenchError(
        f"the gateway is not installed for {sys.executable}; install the project first "
        f"({sys.executable} -m pip install -e {REPO_DIR}) or run with its virtualenv's python"
    )


@dataclass(frozen=True, slots=True)
class Servers:
    vendor: Child
    proxy: Child
    gateway: Child
    urls: dict[str, str]  # target -> the URL wrk loads


def start_servers(
    supervisor: Supervisor, tools: Tools, work: Path, *, load_cpu: int | None, proxy_cpu: int | None,
    with_logs: bool,
) -> Servers:  # fmt: skip
    vendor_port, proxy_port, gateway_port = free_port(), free_port(), free_port()
    urls = {
        GATEWAY: f"http://127.0.0.1:{gateway_port}/{GATEWAY_VENDOR}{VENDOR_PATH}",
        NGINX: f"http://127.0.0.1:{proxy_port}{VENDOR_PATH}",
        DIRECT: f"http://127.0.0.1:{vendor_port}{VENDOR_PATH}",
    }

    def nginx(name: str, role: str, server: str, cpu: int | None) -> Child:
        conf = write_nginx_conf(work, name, role, server)
        log = work / f"{name}.error.log"
        argv = [tools.nginx, "-p", str(work), "-c", str(conf), "-e", str(log)]
        return supervisor.start(name, argv, cpu=cpu, log=log)

    vendor = nginx("vendor", "the vendor", VENDOR_SERVER.format(port=vendor_port, body=VENDOR_BODY), load_cpu)
    wait_ready(vendor, urls[DIRECT])
    proxy_server = PROXY_SERVER.format(port=proxy_port, vendor_port=vendor_port)
    proxy = nginx("nginx-proxy", "the reference proxy", proxy_server, proxy_cpu)
    wait_ready(proxy, urls[NGINX])

    config = write_gateway_conf(work, gateway_port, vendor_port)
    # fmt: off
    argv = [sys.executable, "-m", "gateway", "run", "--config", str(config),
            "--listen", f"127.0.0.1:{gateway_port}", "--log-format", "json"]
    # fmt: on
    access_log = work / "gateway.access.log"
    with contextlib.ExitStack() as stack:
        # Access records are written either way (the gateway formats and writes each line); /dev/null
        # only takes the disk out of the figure.
        out: IO[bytes] | int = stack.enter_context(access_log.open("wb")) if with_logs else subprocess.DEVNULL
        gateway = supervisor.start(
            "gateway", argv, cpu=proxy_cpu, stdout=out, log=work / "gateway.stderr.log", cwd=REPO_DIR
        )
    wait_ready(gateway, urls[GATEWAY])
    say(
        f"ready: vendor nginx :{vendor_port}, nginx proxy :{proxy_port}, gateway :{gateway_port} "
        f"(access log: {access_log if with_logs else '/dev/null'}); work dir {work}"
    )
    return Servers(vendor=vendor, proxy=proxy, gateway=gateway, urls=urls)


def drive(args: argparse.Namespace, load: Load, servers: Servers, proxy_cpu: int | None) -> list[Run]:
    """Gateway and nginx in turn, round after round, then the vendor directly once."""
    runs: list[Run] = []
    under_test = {GATEWAY: servers.gateway, NGINX: servers.proxy}
    for round_no in range(1, args.rounds + 1):
        for target, server in under_test.items():
            say(
                f"round {round_no}/{args.rounds}: {target} "
                f"({args.warmup}s warm-up + {args.duration}s, wrk -t{args.threads} -c{args.connections})"
            )
            runs.append(load.measure(round_no, target, servers.urls[target], server, proxy_cpu))
    say(f"direct to the vendor ({args.warmup}s warm-up + {args.duration}s)")
    # The proxies are idle now: the vendor gets their core, as each proxy had it to itself.
    load_cpu = load.cpu
    if proxy_cpu is not None:
        set_group_affinity(servers.vendor.pgid, proxy_cpu)
    try:
        runs.append(load.measure(1, DIRECT, servers.urls[DIRECT], servers.vendor, proxy_cpu))
    finally:
        if load_cpu is not None:
            set_group_affinity(servers.vendor.pgid, load_cpu)
    return runs


def run(args: argparse.Namespace, tools: Tools, work: Path) -> dict[str, Any]:
    """Start everything, measure, stop everything; the report as JSON-ready data."""
    load_cpu, proxy_cpu, pinning = plan_cpus(args.no_pin)
    say(f"pinning: {pinning}" + ("" if tools.taskset or load_cpu is None else " (sched_setaffinity)"))
    load_average = os.getloadavg()[0]
    if load_average > 0.5:
        say(f"warning: load average is {load_average:.2f} before starting; other work skews the figures")

    raise_fd_limit()
    supervisor = Supervisor(tools.taskset)
    profile: dict[str, Any] | None = None
    try:
        servers = start_servers(
            supervisor, tools, work, load_cpu=load_cpu, proxy_cpu=proxy_cpu, with_logs=args.with_logs
        )
        load = Load(
            wrk=tools.wrk,
            supervisor=supervisor,
            cpu=load_cpu,
            threads=args.threads,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            work=work,
        )
        runs = drive(args, load, servers, proxy_cpu)
        (work / "wrk-outputs.txt").write_text("\n".join(load.outputs))
        if args.profile:
            raw = work / "profile.raw"
            profile = profile_gateway(load, servers.gateway, servers.urls[GATEWAY], args.profile, raw)
    finally:
        # A second Ctrl-C must not cut the cleanup short; the children are in their own sessions.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            supervisor.stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    summaries = summarize(runs, servers.urls)
    gateway_vs_nginx = ratios(summaries)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(), "load_average_at_start": round(load_average, 2)},
        "versions": {
            "gateway": gateway_revision(),
            "nginx": _version([tools.nginx, "-v"]),
            "wrk": _version([tools.wrk, "-v"]),
        },
        "settings": {
            "rounds": args.rounds,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "gateway_access_log": "file" if args.with_logs else "/dev/null",
            "pinning": pinning,
        },
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
        "gateway_to_nginx_rps_ratio": gateway_vs_nginx["rps"],
        "gateway_to_nginx_cpu_ratio": gateway_vs_nginx["cpu"],
        "profile": profile,
    }


def report_text(result: dict[str, Any]) -> str:
    runs = [Run(**r) for r in result["runs"]]
    summaries = [TargetSummary(**s) for s in result["summary"]]
    parts = [
        rounds_table(runs),
        summary_table(summaries, ratios(summaries))
        + f"\npinning: {result['settings']['pinning']}\ngateway code: {result['versions']['gateway']}",
    ]
    if result["profile"] is not None:
        parts.append(profile_table(result["profile"]))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, _interrupt)  # run the same cleanup as Ctrl-C
    try:
        ensure_gateway_importable(argv)
        tools = ensure_tools()
    except BenchError as exc:
        say(f"error: {exc}")
        return 1
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("proxy-%Y%m%d-%H%M%S-"), dir=WORK_ROOT))
    started = time.monotonic()
    try:
        result = run(args, tools, work)
    except BenchError as exc:
        say(f"error: {exc}")
        say(f"kept the work dir for a look: {work}")
        return 1
    except KeyboardInterrupt:
        say(f"interrupted; everything started was stopped (work dir kept: {work})")
        return 130
    # With --json, stdout carries only the JSON document; the tables go to stderr.
    print("\n" + report_text(result), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, indent=2))
    if args.keep or args.with_logs or args.profile:
        say(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    say(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
