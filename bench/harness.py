"""What the load benchmarks share (``bench/proxy.py``, ``bench/servers.py``): the tools, the processes,
the nginx vendor and reference proxy, wrk runs and how they are measured, reported and profiled.

The method: one nginx worker plays the vendor (a fixed ~100-byte JSON body). A second single-worker
nginx with an upstream keep-alive pool is the reference proxy, measured in the same run as whatever is
compared with it. ``wrk`` drives each target in turn, round after round. Each process is pinned: wrk
and the vendor share one core, the server under test has the other to itself. The figure to compare is
the CPU (user + system, every thread and every process of the server) per request, read from ``/proc``.
Everything listens on 127.0.0.1, is written under ``bench/.work/`` and every process started here is
stopped on exit, Ctrl-C or failure. Missing ``nginx`` or ``wrk`` are installed with apt-get (Debian).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, NamedTuple, NoReturn

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_ROOT = BENCH_DIR / ".work"

# What the vendor answers: small, fixed, JSON, like a typical "get one object" API response.
VENDOR_BODY = '{"id":"obj_0001","object":"customer","email":"bench@example.com","balance":1999,"live":false}'
VENDOR_PATH = "/anything?x=1"
# The vendor answers this path with the headers it received that the gateway sets (see VENDOR_SERVER).
ECHO_PATH = "/_echo"

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


def loud(message: str) -> None:
    """A scenario or server left out, or a result to distrust: hard to miss in the output."""
    bar = "!" * 78
    print(f"{bar}\nbench: {message}\n{bar}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True)
class Tools:
    nginx: str
    wrk: str
    taskset: str | None


def which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", os.defpath), EXTRA_PATH)))


def ensure_tools() -> Tools:
    missing = {exe: pkg for exe, pkg in APT_PACKAGES.items() if which(exe) is None}
    if missing:
        _apt_install(sorted(missing.values()), missing_exes=sorted(missing))
    nginx, wrk = which("nginx"), which("wrk")
    if nginx is None or wrk is None:
        raise BenchError("nginx and wrk are still not on PATH after installing them; install them by hand")
    return Tools(nginx=nginx, wrk=wrk, taskset=which("taskset"))


def _apt_install(packages: list[str], *, missing_exes: list[str]) -> None:
    manual = f"apt-get install -y {' '.join(packages)}"
    if which("apt-get") is None:
        raise BenchError(
            f"{', '.join(missing_exes)} not found and this is not Debian (no apt-get); install "
            f"them yourself ({' and '.join(packages)} or your system's equivalent)"
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = which("sudo")
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
            raise BenchError(f"apt-get update failed:\n{tail(update.stdout)}\ninstall by hand: {manual}")
        result = _apt(install)
        if result.returncode != 0:
            raise BenchError(f"apt-get install failed:\n{tail(result.stdout)}\ninstall by hand: {manual}")
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


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def version(cmd: list[str]) -> str:
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


def ensure_importable(modules: Sequence[str], argv: Sequence[str], script: Path) -> None:
    """The servers run as ``sys.executable -m ...``; without ``modules``, switch to the project's venv."""
    if all(importlib.util.find_spec(name) is not None for name in modules):
        return
    venv_python = REPO_DIR / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != venv_python.parent.parent.resolve():
        say(f"{', '.join(modules)} not all installed for {sys.executable}; re-running with {venv_python}")
        os.execv(venv_python, [str(venv_python), str(script.resolve()), *argv])
    raise BenchError(
        f"{', '.join(modules)} not all installed for {sys.executable}; install the project first "
        f"({sys.executable} -m pip install -e '{REPO_DIR}[dev]') or run with its virtualenv's python"
    )


def prepare(modules: Sequence[str], argv: Sequence[str], script: Path) -> Tools | None:
    """``ensure_importable`` then ``ensure_tools``: the tools, or None once the reason is said."""
    try:
        ensure_importable(modules, argv, script)
        return ensure_tools()
    except BenchError as exc:
        say(f"error: {exc}")
        return None


# --------------------------------------------------------------------------- processes


PF_KTHREAD = 0x00200000  # /proc/PID/stat flags bit of kernel threads
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Proc(NamedTuple):
    pgid: int
    ppid: int
    ticks: int  # user + system CPU clock ticks, threads included


def sample_processes() -> dict[int, Proc]:
    """pid -> Proc of every user-space process."""
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
        out[int(entry)] = Proc(
            pgid=int(fields[2]), ppid=int(fields[1]), ticks=int(fields[11]) + int(fields[12])
        )
    return out


def tree_pids(sample: Mapping[int, Proc], root: int) -> set[int]:
    """``root``, its process group and everything descended from either (a server's workers, even one
    that left the group)."""
    pids = {pid for pid, proc in sample.items() if pid == root or proc.pgid == root}
    children: dict[int, list[int]] = {}
    for pid, proc in sample.items():
        children.setdefault(proc.ppid, []).append(pid)
    stack = list(pids)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in pids:
                pids.add(child)
                stack.append(child)
    return pids


def tree_ticks(sample: Mapping[int, Proc], root: int) -> int:
    return sum(sample[pid].ticks for pid in tree_pids(sample, root))


def foreign_ticks(before: Mapping[int, Proc], after: Mapping[int, Proc]) -> int:
    """CPU used between two samples by processes that are neither this script nor its descendants.

    Processes that came and went in between are missed; kernel threads (softirq work for the loopback
    traffic itself) are left out on purpose.
    """
    ours = tree_pids(after, os.getpid()) | tree_pids(before, os.getpid())
    total = 0
    for pid, proc in after.items():
        if pid in ours:
            continue
        previous = before.get(pid)
        total += (
            proc.ticks - previous.ticks if previous is not None and previous.pgid == proc.pgid else proc.ticks
        )
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


def set_tree_affinity(root: int, cpus: set[int]) -> None:
    for pid in tree_pids(sample_processes(), root):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), cpus)


@dataclass(slots=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        # Each child leads its own session, so its pid is also its process-group id.
        return self.process.pid


class Supervisor:
    """Starts processes in their own sessions and stops every one of them, whatever happens."""

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
        env: Mapping[str, str] | None = None,
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
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
            )
        child = Child(name=name, process=process, log=log)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        # Its workers too, even one that made a session of its own: collected before they are orphaned.
        tree = tree_pids(sample_processes(), child.pid) - {child.pid}
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop within {STOP_TIMEOUT_SECONDS:.0f}s of SIGTERM; killing it")
        # Workers may outlive their leader; the group id stays theirs while any of them exists.
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while (left := self._left(child, tree)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        if child in self.children:
            self.children.remove(child)

    @staticmethod
    def _left(child: Child, tree: set[int]) -> set[int]:
        return {pid for pid, proc in sample_processes().items() if proc.pgid == child.pid or pid in tree}

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
    """wrk and the servers hold one descriptor per connection; children inherit the raised limit."""
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


class Reply(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: str


def http(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> Reply:
    """One request; an HTTP error status is an answer like any other."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}), data=body)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return Reply(
                response.status, dict(response.headers.items()), response.read().decode(errors="replace")
            )
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers.items()), exc.read().decode(errors="replace"))


Probe = Callable[[], str | None]  # None: ready; else what is wrong, for the error message


def vendor_probe(url: str, headers: Mapping[str, str] | None = None) -> Probe:
    """Ready once ``url`` answers the vendor's body: proves the whole chain, not just a listener."""

    def probe() -> str | None:
        reply = http(url, headers=headers)
        if reply.status == 200 and reply.body == VENDOR_BODY:
            return None
        return f"HTTP {reply.status}: {reply.body[:200]}"

    return probe


def wait_ready(
    child: Child, url: str, probe: Probe | None = None, timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Poll until ``probe`` (by default: ``url`` answers the vendor's body) says ready."""
    check = probe or vendor_probe(url)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise BenchError(f"{child.name} exited with status {child.process.returncode}{log_tail(child)}")
        try:
            problem = check()
        except (OSError, ValueError) as exc:
            problem = str(exc)
        if problem is None:
            return
        last = problem
        time.sleep(0.1)
    raise BenchError(f"{child.name} not ready at {url} after {timeout:.0f}s ({last}){log_tail(child)}")


def log_tail(child: Child) -> str:
    if child.log is None or not child.log.exists():
        return ""
    return f"\n  {child.log}:\n{tail(child.log.read_text(errors='replace'))}"


# --------------------------------------------------------------------------- nginx


NGINX_MAIN = """\
# Generated by bench/harness.py: {role}.
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

# ``return`` answers any method, POST included (its body is read and dropped).
VENDOR_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
        location = {echo} {{
            default_type text/plain;
            return 200 'authorization=$http_authorization version=$http_bench_version';
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


def write_nginx_conf(work: Path, name: str, role: str, server: str) -> Path:
    (work / "tmp").mkdir(exist_ok=True)
    path = work / f"{name}.conf"
    path.write_text(NGINX_MAIN.format(role=role, work=work, name=name, body=server))
    return path


def start_nginx(
    supervisor: Supervisor, tools: Tools, work: Path, name: str, role: str, server: str, cpu: int | None
) -> Child:
    conf = write_nginx_conf(work, name, role, server)
    log = work / f"{name}.error.log"
    argv = [tools.nginx, "-p", str(work), "-c", str(conf), "-e", str(log)]
    return supervisor.start(name, argv, cpu=cpu, log=log)


def start_vendor(supervisor: Supervisor, tools: Tools, work: Path, cpu: int | None) -> tuple[Child, int]:
    port = free_port()
    server = VENDOR_SERVER.format(port=port, body=VENDOR_BODY, echo=ECHO_PATH)
    vendor = start_nginx(supervisor, tools, work, "vendor", "the vendor", server, cpu)
    wait_ready(vendor, f"http://127.0.0.1:{port}{VENDOR_PATH}")
    return vendor, port


def start_reference(
    supervisor: Supervisor, tools: Tools, work: Path, vendor_port: int, cpu: int | None
) -> tuple[Child, int]:
    port = free_port()
    server = PROXY_SERVER.format(port=port, vendor_port=vendor_port)
    proxy = start_nginx(supervisor, tools, work, "nginx-proxy", "the reference proxy", server, cpu)
    wait_ready(proxy, f"http://127.0.0.1:{port}{VENDOR_PATH}")
    return proxy, port


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True)
class Target:
    """One thing wrk loads: the URL, the process (tree) whose CPU is the figure, how wrk is run."""

    name: str
    url: str
    server: Child
    cpu: int | None  # the core it is pinned to (whose busy share is reported); None: not pinned
    wrk_args: tuple[str, ...] = ()  # before the URL: -H ..., -s script.lua
    script_args: tuple[str, ...] = ()  # after the URL, for the Lua script's init(args)
    # The Lua script gets a token of its own wrk run as its first argument (fresh keys on every run).
    fresh_token: bool = False
    helpers: tuple[Child, ...] = ()  # processes it needs whose CPU is reported apart (Redis)
    note: str = ""


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors plus non-2xx/3xx answers
    cpu_us_per_request: float | None  # CPU of the server under test (all its processes) per request
    helper_cpu_us_per_request: float | None  # CPU of its helper processes (Redis) per request
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
            raise BenchError(f"cannot read wrk output (no match for {pattern!r}):\n{tail(text, 30)}")
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
    answered: Counter[str] = field(default_factory=Counter)  # target -> requests answered, warm-ups too

    @classmethod
    def of(
        cls, args: argparse.Namespace, wrk: str, supervisor: Supervisor, cpu: int | None, work: Path
    ) -> Load:
        """As the command line's --threads, --connections, --duration and --warmup say."""
        return cls(
            wrk=wrk,
            supervisor=supervisor,
            cpu=cpu,
            threads=args.threads,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            work=work,
        )

    def command(self, target: Target, seconds: int) -> list[str]:
        head = [self.wrk, f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds}s", "--latency"]
        token = [f"{os.getpid()}.{time.time_ns()}"] if target.fresh_token else []
        rest = ["--", *token, *target.script_args] if token or target.script_args else []
        return [*head, *target.wrk_args, target.url, *rest]

    def wrk_runs(self, targets: Sequence[Target], seconds: int) -> list[tuple[list[str], str]]:
        """wrk on every target at once, started in the order given: each one's command line and output."""
        started = []
        for index, target in enumerate(targets):
            out = self.work / f"wrk{index}.out"
            command = self.command(target, seconds)
            with out.open("wb") as sink:
                child = self.supervisor.start(
                    "wrk", command, cpu=self.cpu, stdout=sink, log=self.work / "wrk.err"
                )
            started.append((child, command, out))
        results = []
        for child, command, out in started:
            try:
                code = child.process.wait(timeout=seconds + WRK_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                raise BenchError(f"wrk did not finish within {seconds + WRK_GRACE_SECONDS:.0f}s") from None
            finally:
                self.supervisor.stop(child)
            text = out.read_text(errors="replace")
            if code != 0:
                raise BenchError(f"wrk exited with status {code}:\n{tail(text)}{log_tail(child)}")
            results.append((command, text))
        return results

    def measure(self, round_no: int, target: Target) -> Run:
        return self.measure_together(round_no, [target])[0]

    def measure_together(self, round_no: int, targets: Sequence[Target]) -> list[Run]:
        """One run of each target, all loaded at once (each by its own wrk) over the same seconds."""
        if self.warmup > 0:
            for target, (_, text) in zip(targets, self.wrk_runs(targets, self.warmup), strict=True):
                self.answered[target.name] += parse_wrk(text).requests
        procs_before, cores_before = sample_processes(), core_ticks()
        outputs = self.wrk_runs(targets, self.duration)
        procs_after, cores_after = sample_processes(), core_ticks()

        def used(child: Child) -> float:
            return (tree_ticks(procs_after, child.pid) - tree_ticks(procs_before, child.pid)) / CLOCK_TICKS

        others = foreign_ticks(procs_before, procs_after) / CLOCK_TICKS
        runs = []
        for target, (command, text) in zip(targets, outputs, strict=True):
            cpu = used(target.server)
            helpers = sum(used(h) for h in target.helpers)
            # The caller key wrk sends is a secret of the run: the kept record shows where it went, not it.
            shown = ("Authorization: ***" if arg.startswith("Authorization:") else arg for arg in command)
            self.outputs.append(f"== round {round_no} {target.name}: {' '.join(shown)}\n{text}")
            figures = parse_wrk(text)
            self.answered[target.name] += figures.requests
            runs.append(
                Run(
                    round=round_no,
                    target=target.name,
                    rps=figures.rps,
                    p50_ms=figures.p50_ms,
                    p99_ms=figures.p99_ms,
                    requests=figures.requests,
                    errors=figures.errors,
                    cpu_us_per_request=_per_request(cpu, figures.requests),
                    helper_cpu_us_per_request=_per_request(helpers, figures.requests)
                    if target.helpers
                    else None,
                    load_cpu_busy_percent=busy_percent(cores_before, cores_after, self.cpu),
                    server_cpu_busy_percent=busy_percent(cores_before, cores_after, target.cpu),
                    others_cpu_percent=round(100 * others / self.duration, 1),
                )
            )
        return runs


def _per_request(seconds: float, requests: int) -> float | None:
    """Seconds of CPU over ``requests`` as µs each (None without a request)."""
    return round(seconds / requests * 1e6, 1) if requests else None


def drive(load: Load, targets: Sequence[Target], rounds: int) -> list[Run]:
    """Every target in turn, round after round (so a disturbance spreads over all of them)."""
    runs: list[Run] = []
    for round_no in range(1, rounds + 1):
        for target in targets:
            say(
                f"round {round_no}/{rounds}: {target.name} ({load.warmup}s warm-up + {load.duration}s, "
                f"wrk -t{load.threads} -c{load.connections})"
            )
            runs.append(load.measure(round_no, target))
    return runs


def measure_direct(load: Load, vendor: Child, vendor_port: int, proxy_cpu: int | None) -> Run:
    """The vendor loaded directly; the proxies are idle now, so it gets their core, as each had it."""
    say(f"direct to the vendor ({load.warmup}s warm-up + {load.duration}s)")
    target = Target(DIRECT, f"http://127.0.0.1:{vendor_port}{VENDOR_PATH}", vendor, proxy_cpu)
    if proxy_cpu is not None:
        set_tree_affinity(vendor.pid, {proxy_cpu})
    try:
        return load.measure(1, target)
    finally:
        if load.cpu is not None:
            set_tree_affinity(vendor.pid, {load.cpu})


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
    helper_cpu_us_per_request_median: float | None
    errors: int
    # Against the reference proxy measured in the same run: req/s ratio, and CPU efficiency (nginx µs
    # per request ÷ this target's µs per request).
    rps_vs_nginx: float | None = None
    cpu_efficiency_vs_nginx: float | None = None
    # Against the baseline target of the run (the gateway's pass-through), req/s ratio.
    rps_vs_baseline: float | None = None
    note: str = ""


def _median(values: Sequence[float | None], digits: int) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 4) if top and bottom else None


def summarize(
    runs: Sequence[Run], targets: Sequence[Target], *, baseline: str | None = None
) -> list[TargetSummary]:
    out: list[TargetSummary] = []
    for target in targets:
        mine = [r for r in runs if r.target == target.name]
        if not mine:
            continue
        out.append(
            TargetSummary(
                target=target.name,
                url=target.url,
                rounds=len(mine),
                rps_median=round(statistics.median(r.rps for r in mine), 1),
                p50_ms_median=round(statistics.median(r.p50_ms for r in mine), 3),
                p99_ms_median=round(statistics.median(r.p99_ms for r in mine), 3),
                cpu_us_per_request_median=_median([r.cpu_us_per_request for r in mine], 1),
                helper_cpu_us_per_request_median=_median([r.helper_cpu_us_per_request for r in mine], 1),
                errors=sum(r.errors for r in mine),
                note=target.note,
            )
        )
    by_name = {s.target: s for s in out}
    nginx, base = by_name.get(NGINX), by_name.get(baseline) if baseline else None
    return [
        dataclasses.replace(
            s,
            rps_vs_nginx=_ratio(s.rps_median, nginx.rps_median) if nginx else None,
            cpu_efficiency_vs_nginx=(
                _ratio(nginx.cpu_us_per_request_median, s.cpu_us_per_request_median) if nginx else None
            ),
            rps_vs_baseline=_ratio(s.rps_median, base.rps_median) if base else None,
        )
        for s in out
    ]


def _num(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def rounds_table(runs: Sequence[Run], width: int = 16) -> str:
    helpers = any(r.helper_cpu_us_per_request is not None for r in runs)
    extra = f" {'+helper':>7}" if helpers else ""
    lines = [
        f"{'round':>5}  {'target':<{width}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu µs/req':>10}{extra} "
        f"{'errors':>6} {'load core':>9} {'server core':>11} {'others':>7}"
    ]
    for r in runs:
        noisy = "!" if r.others_cpu_percent > NOISY_PERCENT else " "
        helper = f" {_num(r.helper_cpu_us_per_request):>7}" if helpers else ""
        lines.append(
            f"{r.round:>5}  {r.target:<{width}} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{_num(r.cpu_us_per_request):>10}{helper} {r.errors:>6} "
            f"{_num(r.load_cpu_busy_percent, '.0f', '%'):>9} "
            f"{_num(r.server_cpu_busy_percent, '.0f', '%'):>11} "
            f"{_num(r.others_cpu_percent, '.0f', '%'):>6}{noisy}"
        )
    lines.append(
        "(cpu µs/req: CPU of the server under test, all its processes, per request"
        + ("; +helper: CPU of its helper (redis-server) per request" if helpers else "")
        + "; load/server core: how busy each pinned core was; others: CPU of unrelated processes, "
        "% of one core)"
    )
    if failed := [r for r in runs if r.errors]:
        lines.append(
            f"warning: {len(failed)} run(s) had socket errors or non-2xx answers; "
            "see wrk-outputs.txt (--keep)"
        )
    if noisy_runs := [r for r in runs if r.others_cpu_percent > NOISY_PERCENT]:
        worst = max(r.others_cpu_percent for r in noisy_runs)
        lines.append(
            f"warning: other processes used up to {worst:.0f}% of a core during {len(noisy_runs)} run(s) "
            f"marked '!'; those figures are disturbed, rerun on a quiet machine"
        )
    return "\n".join(lines)


def summary_table(summaries: Sequence[TargetSummary], *, baseline: str | None = None, width: int = 16) -> str:
    helpers = any(s.helper_cpu_us_per_request_median is not None for s in summaries)
    extra = f" {'+helper':>7}" if helpers else ""
    base = f" {'rps vs ' + baseline:>{len(baseline) + 7}}" if baseline else ""
    lines = [
        f"{'target':<{width}} {'rounds':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu µs/req':>10}{extra} "
        f"{'rps vs nginx':>12} {'cpu vs nginx':>12}{base} {'errors':>6}"
    ]
    for s in summaries:
        helper = f" {_num(s.helper_cpu_us_per_request_median):>7}" if helpers else ""
        vs_base = f" {_num(s.rps_vs_baseline, '.3f', 'x'):>{len(baseline) + 7}}" if baseline else ""
        lines.append(
            f"{s.target:<{width}} {s.rounds:>6} {s.rps_median:>9,.0f} {s.p50_ms_median:>8.2f} "
            f"{s.p99_ms_median:>8.2f} {_num(s.cpu_us_per_request_median):>10}{helper} "
            f"{_num(s.rps_vs_nginx, '.3f', 'x'):>12} "
            f"{_num(s.cpu_efficiency_vs_nginx, '.3f', 'x'):>12}{vs_base} "
            f"{s.errors:>6}"
        )
    lines.append(
        "(medians over rounds; rps vs nginx: req/s ÷ the nginx proxy's; cpu vs nginx: CPU efficiency, "
        "nginx µs/req ÷ the target's µs/req"
        + (f"; rps vs {baseline}: req/s ÷ {baseline}'s" if baseline else "")
        + ")"
    )
    for s in summaries:
        if s.note:
            lines.append(f"  {s.target}: {s.note}")
    return "\n".join(lines)


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


def plan_cpus(no_pin: bool) -> tuple[int | None, int | None, str]:
    """(cpu for wrk and the vendor, cpu for the server under test, description)."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return None, None, "not pinned (--no-pin)"
    if len(cpus) < 2:
        return None, None, f"not pinned (only {len(cpus)} cpu available)"
    load_cpu, proxy_cpu = cpus[0], cpus[1]
    return load_cpu, proxy_cpu, f"cpu {load_cpu}: wrk + vendor nginx; cpu {proxy_cpu}: the server under test"


def load_averages() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --------------------------------------------------------------------------- profile


# Where a frame's file says a sample was spent, first match wins (py-spy prints short module paths).
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (gateway/observability/logging.py)", ("gateway/observability/logging.py",)),
    ("gateway server (gateway/http/server.py)", ("gateway/http/server.py",)),
    ("gateway pool (gateway/upstream/pool.py)", ("gateway/upstream/pool.py",)),
    ("gateway code", ("gateway/",)),
    ("bench app (bench/server_apps.py)", ("server_apps.py",)),
    ("aiohttp client", ("aiohttp/client", "aiohttp/connector.py", "aiohttp/tracing.py")),
    ("aiohttp server", ("aiohttp/web", "aiohttp/http_writer.py", "aiohttp/base_protocol.py")),
    ("aiohttp shared (helpers, streams, parser)", ("aiohttp/",)),
    # Self time in granian's worker frame is its native code: the Rust server and the event loop's C.
    ("event loop + granian native (Rust, uvloop C)", ("granian/server/",)),
    ("granian (Python side)", ("granian/",)),
    ("multidict / yarl", ("multidict/", "yarl/")),
    ("redis-py client", ("redis/",)),
    # Self time here is the loop's own C code (uvloop: epoll, socket reads, callback dispatch).
    ("event loop (uvloop C, syscalls)", ("asyncio/runners.py", "uvloop/")),
    ("asyncio (tasks, futures)", ("asyncio/",)),
)
# Frames below the event loop: on every stack, so they would make every category look inclusive.
ENTRY_FRAMES = (
    "<frozen runpy>",
    "gateway/__main__.py",
    "gateway/cli.py",
    "asyncio/runners.py",
    "uvloop/__init__.py",
    "granian/_internal.py",
    "granian/server/",
    "granian/cli.py",
    "granian/__main__.py",
    "click/",
    "multiprocessing/",
)
# Entry frames of bench/server_apps.py (its other frames are the app's work).
ENTRY_FUNCTIONS = ("<module> (", "main (server_apps.py)")


def _entry(frame: str) -> bool:
    return frame.startswith(ENTRY_FUNCTIONS) or any(e in _frame_file(frame) for e in ENTRY_FRAMES)


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
    """Self and inclusive time per category and per function, from py-spy's collapsed stacks.

    Only the busiest thread is counted (the one running the event loop): the others (a reload watcher,
    an executor, granian's runtime threads) mostly wait in native code, which py-spy cannot always tell
    from work.
    """
    per_thread: dict[str, list[tuple[list[str], int]]] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [re.sub(r":-?\d+\)$", ")", f) for f in stack.split(";") if f]  # one entry per function
        thread = frames[0] if frames and frames[0].startswith(("thread ", "process ")) else ""
        if thread:
            frames = frames[1:]
        if frames:
            per_thread.setdefault(thread, []).append((frames, int(count_text)))
    if not per_thread:
        raise BenchError("py-spy recorded no samples")
    busiest = max(per_thread, key=lambda t: sum(c for _, c in per_thread[t]))
    self_functions: Counter[str] = Counter()
    self_categories: Counter[str] = Counter()
    inclusive_functions: Counter[str] = Counter()
    inclusive_categories: Counter[str] = Counter()
    total = 0
    for frames, count in per_thread[busiest]:
        total += count
        self_functions[frames[-1]] += count
        self_categories[_category(frames[-1])] += count
        above_loop = [f for f in frames if not _entry(f)]
        for function in set(above_loop):
            inclusive_functions[function] += count
        for category in {_category(f) for f in above_loop}:
            inclusive_categories[category] += count
    other_threads = sum(c for t, rows in per_thread.items() if t != busiest for _, c in rows)

    def share(counter: Counter[str], limit: int | None = None) -> list[dict[str, Any]]:
        return [
            {"name": k, "samples": v, "percent": round(100 * v / total, 1)}
            for k, v in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "thread": busiest or "(one thread)",
        "other_thread_samples_left_out": other_threads,
        "self_by_category": share(self_categories),
        "inclusive_by_category": share(inclusive_categories),
        "self_top_functions": share(self_functions, top),
        "inclusive_top_functions": share(inclusive_functions, top),
    }


def profile_table(name: str, profile: dict[str, Any], top: int = 20) -> str:
    lines = [
        f"py-spy, {name}: {profile['samples']} samples of its busiest thread under load "
        f"({profile['other_thread_samples_left_out']} samples of other threads left out)"
    ]
    if profile.get("threads_cpu"):
        split = ", ".join(f"{t['name']} {t['cpu_percent']:.0f}%" for t in profile["threads_cpu"][:6])
        lines.append(f"  CPU by thread of pid {profile['pid']} (% of one core, py-spy included): {split}")
    for title, key in (
        ("self time by category", "self_by_category"),
        ("inclusive time by category (on the stack above the event loop)", "inclusive_by_category"),
        ("top self-time functions", "self_top_functions"),
        ("top inclusive functions", "inclusive_top_functions"),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {row['percent']:>5.1f}%  {row['name']}" for row in profile[key][:top]]
    return "\n".join(lines)


def check_ranges(
    parser: argparse.ArgumentParser, args: argparse.Namespace, limits: dict[str, tuple[int, int]]
) -> None:
    """Refuse (``parser.error``) an option outside its (low, high) or more wrk threads than connections."""
    for name, (low, high) in limits.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low} and {high}")
    if getattr(args, "threads", 1) > args.connections:
        parser.error("--threads must not exceed --connections (each wrk thread needs a connection)")


def find_py_spy() -> str:
    search = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)))
    py_spy = shutil.which("py-spy", path=search)
    if py_spy is None:
        raise BenchError(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
    return py_spy


def busiest_pid(root: int, seconds: float = 1.0) -> int:
    """The process of ``root``'s tree that used the most CPU over ``seconds`` (a server's worker)."""
    before = sample_processes()
    time.sleep(seconds)
    after = sample_processes()
    pids = tree_pids(after, root)
    return max(pids, key=lambda pid: after[pid].ticks - (before[pid].ticks if pid in before else 0))


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (thread name, user + system clock ticks) of one process's threads."""
    out = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{pid}/task/{entry}/comm").read_text().strip()
                fields = Path(f"/proc/{pid}/task/{entry}/stat").read_text().rpartition(")")[2].split()
                out[int(entry)] = (name, int(fields[11]) + int(fields[12]))
    return out


def thread_split(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], seconds: float
) -> list[dict[str, Any]]:
    """Each thread's CPU between two samples, in % of one core: py-spy sees Python threads only, so
    what native threads (granian's Rust runtime) do shows here and nowhere else."""
    rows = []
    for tid, (name, ticks) in after.items():
        used = (ticks - before.get(tid, (name, 0))[1]) / CLOCK_TICKS
        rows.append({"tid": tid, "name": name, "cpu_percent": round(100 * used / seconds, 1)})
    return sorted((r for r in rows if r["cpu_percent"] > 0), key=lambda r: -r["cpu_percent"])


def profile_target(load: Load, target: Target, seconds: int, raw: Path) -> dict[str, Any]:
    """Sample the target's busiest process with py-spy while wrk loads it; ``raw`` gets the stacks."""
    py_spy = find_py_spy()
    say(f"profiling {target.name} with py-spy for {seconds}s under the same wrk load")
    driver = load.supervisor.start("wrk (profile)", load.command(target, seconds + 4), cpu=load.cpu)
    try:
        pid = busiest_pid(target.server.pid)  # also lets the load reach steady state before sampling
        # Blocking mode (py-spy pauses the process for each sample, ~2% cost at 200 Hz): without it
        # stacks are read while they change and come out torn.
        # fmt: off
        record = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--threads",
                  "--rate", "200", "--format", "raw", "--output", str(raw)]
        # fmt: on
        threads_before, started = thread_ticks(pid), time.monotonic()
        spy = load.supervisor.start("py-spy", record, cpu=load.cpu, log=load.work / "py-spy.log")
        try:
            code = spy.process.wait(timeout=seconds + WRK_GRACE_SECONDS)
            threads = thread_split(threads_before, thread_ticks(pid), time.monotonic() - started)
        except subprocess.TimeoutExpired:
            raise BenchError("py-spy did not finish in time") from None
        if code != 0:
            raise BenchError(f"py-spy exited with status {code}{log_tail(spy)}")
    finally:
        load.supervisor.stop(driver)
    return {**summarize_profile(raw.read_text(errors="replace")), "pid": pid, "threads_cpu": threads}


# --------------------------------------------------------------------------- main


def stop_everything(supervisor: Supervisor) -> None:
    """A second Ctrl-C must not cut the cleanup short; the children are in their own sessions."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        supervisor.stop_all()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main_frame(
    prefix: str,
    run: Callable[[Path], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    *,
    as_json: bool,
    keep: bool,
) -> int:
    """The work dir, signals, errors and output around one benchmark run."""
    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, _interrupt)  # run the same cleanup as Ctrl-C
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime(f"{prefix}-%Y%m%d-%H%M%S-"), dir=WORK_ROOT))
    started = time.monotonic()
    try:
        result = run(work)
    except BenchError as exc:
        say(f"error: {exc}")
        say(f"kept the work dir for a look: {work}")
        return 1
    except KeyboardInterrupt:
        say(f"interrupted; everything started was stopped (work dir kept: {work})")
        return 130
    # With --json, stdout carries only the JSON document; the tables go to stderr.
    print("\n" + report(result), file=sys.stderr if as_json else sys.stdout, flush=True)
    if as_json:
        print(json.dumps(result, indent=2))
    if keep:
        say(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    say(f"done in {time.monotonic() - started:.0f}s")
    return 0
