"""``gateway run --workers N`` (docs/operations.md): N worker processes on one port, under a supervisor.

The supervisor forks the workers; each serves the whole gateway on the same port with SO_REUSEPORT
(``serve(..., reuse_port=True, worker=...)``; the kernel spreads new connections over them) and does
what ``gateway.http.worker`` describes besides (readiness, metrics for all of them). The supervisor
itself serves nothing and runs no event loop: it waits for signals and for its children, so it can be
a container's PID 1 (it reaps every child, orphans included).

- A worker that dies is restarted, after ``RESTART_MIN_SECONDS`` if it had served for
  ``STABLE_SECONDS``, else after a delay doubling from ``RESTART_FIRST_SECONDS`` to
  ``RESTART_MAX_SECONDS`` (so a crash loop does not spin); each exit is a ``worker_exited`` event. A
  restarted worker reads the config files as they are then (as a reload would, and a config that would
  not load is refused the same way: it starts with the last one that did), on the same store.
  A worker that fails before it ever served (the port, a file it needs) stops the whole gateway with
  exit 1, as a single process that cannot start does.
- SIGHUP is sent on to every worker (each reloads and logs ``config_reloaded``); a worker still
  starting gets it once it serves.
- SIGTERM or SIGINT: every worker drains (stops accepting, lets requests in flight finish within
  ``shutdown_timeout_seconds``); one still running ``KILL_GRACE_SECONDS`` after that is killed. The
  supervisor then exits 0, or 1 if a worker did not drain cleanly (killed, or a non-zero exit).
- A worker dies with its supervisor (PR_SET_PDEATHSIG: it gets SIGTERM and drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from ..config import Config, ConfigError
from ..config.model import Listen
from ..observability.logging import Logger
from ..reload import read_config
from .app import serve
from .worker import RunDir, Worker, per_process_warnings, shared_state_problems

STABLE_SECONDS = 10.0
RESTART_MIN_SECONDS = 0.1
RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
KILL_GRACE_SECONDS = 5.0
SANDBOX_STOP_SECONDS = 5.0
POLL_SECONDS = 1.0  # children are reaped at least this often, whatever the signals say
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
PR_SET_PDEATHSIG = 1
RUN_DIR_PREFIX = "gateway-workers-"
RUN_DIR_LOCK = "supervisor.lock"


class StartupError(Exception):
    """The supervisor cannot start (the port, the run directory): one line for stderr."""


@dataclass(slots=True, eq=False)
class Slot:
    """Worker ``index`` (1..N) and its current process, if any."""

    index: int
    pid: int | None = None
    incarnation: int = 0
    ready_fd: int | None = None  # the read end of the pipe the worker writes one byte to once it serves
    ready: bool = False
    ready_at: float = 0.0
    ever_ready: bool = False
    failures: int = 0  # exits in a row that came soon after starting (the backoff's exponent)
    restart_at: float | None = None
    reload_pending: bool = False


def _status(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the supervisor dies, so no worker outlives it unsupervised."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _probe_port(host: str, port: int) -> None:
    """Fail early, and plainly, when the port is taken: the workers bind it with SO_REUSEPORT, which
    would otherwise share it with another process that also set it (another gateway, say)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("gateway: --workers needs SO_REUSEPORT, which this system does not have")
    where = f"{Listen(host=host, port=port)}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        raise StartupError(f"gateway: cannot listen on {where}: {exc.strerror or exc}") from None


def _remove_stale_run_dirs(place: Path) -> None:
    """Remove the run directories that supervisors killed outright (kill -9) left in ``place``: those
    whose lock nobody holds any more (the supervisor and its workers hold it while they live)."""
    for old in place.glob(RUN_DIR_PREFIX + "*"):
        try:
            fd = os.open(old / RUN_DIR_LOCK, os.O_RDWR)
        except OSError:
            continue  # another user's, or one being made (its lock file appears already locked)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its supervisor or a worker of it still runs
        finally:
            os.close(fd)
        shutil.rmtree(old, ignore_errors=True)


def _make_run_dir() -> tuple[Path, int]:
    """A private folder for the workers' metric snapshots: in $TMPDIR if set, else in memory (/dev/shm,
    writable in containers with a read-only root), else /tmp. Returned with the descriptor of its
    lock, held (and inherited by every worker) for as long as any of them runs."""
    places = [place for place in (os.environ.get("TMPDIR"), "/dev/shm", "/tmp", "/var/tmp") if place]
    for place in places:
        try:
            _remove_stale_run_dirs(Path(place))
            path = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=place))
        except OSError:
            continue
        try:
            # Locked before it has its name, so that nobody finds it unlocked.
            fd = os.open(path / (RUN_DIR_LOCK + ".new"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(path / (RUN_DIR_LOCK + ".new"), path / RUN_DIR_LOCK)
            return path, fd
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
    raise StartupError(
        f"gateway: no writable folder for the workers' metric snapshots (tried {', '.join(places)}): "
        "set TMPDIR to one"
    )


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        workers: int,
        logger: Logger,
        listen_host: str,
        listen_port: int,
        sandbox: Listen | None = None,
    ) -> None:
        self.config = config  # the last config that loaded: what a restarted worker falls back to
        self.store = config.gateway.store  # every worker's, for the supervisor's whole life
        self.workers = workers
        self.logger = logger
        self.host, self.port = listen_host, listen_port
        self.sandbox = sandbox
        self.sandbox_pid: int | None = None
        self.slots = [Slot(index) for index in range(1, workers + 1)]
        self.by_pid: dict[int, Slot] = {}
        self.incarnations = 0
        self.drain_seconds = config.gateway.shutdown_timeout_seconds
        self.draining = False
        self.kill_at = 0.0
        self.failed = False
        self.pid = os.getpid()
        self._wake_r = self._wake_w = -1
        self._lock_fd = -1
        self.run_dir: RunDir | None = None

    # -- the supervisor's life
    def run(self) -> int:
        """Start the workers, supervise them until a drain ends; the exit code."""
        try:
            _probe_port(self.host, self.port)
            path, self._lock_fd = _make_run_dir()
            self.run_dir = RunDir(path)
        except StartupError as exc:
            print(exc, file=sys.stderr)
            return 1
        try:
            self._install_signals()
            self.logger.event(
                "supervisor_started",
                listen=str(Listen(host=self.host, port=self.port)),
                config=str(self.config.path),
                workers=self.workers,
                pid=self.pid,
                run_dir=str(self.run_dir.path),
            )
            for warning in per_process_warnings(self.config, self.workers):
                self.logger.event("config_warning", level="warning", **warning.fields())
            if self.sandbox is not None:
                self._start_sandbox(self.sandbox)
            for slot in self.slots:
                self._spawn(slot, self.config)
            self._supervise()
            self._stop_sandbox()
        finally:
            shutil.rmtree(self.run_dir.path, ignore_errors=True)
            os.close(self._lock_fd)
        code = 1 if self.failed else 0
        self.logger.event("stopped", level="error" if code else "info", workers=self.workers, code=code)
        return code

    def _install_signals(self) -> None:
        # The handlers do nothing: the wakeup fd carries each signal's number to the loop in _supervise.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, lambda *_: None)

    def _supervise(self) -> None:
        while True:
            now = time.monotonic()
            due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
            if self.draining:
                due.append(self.kill_at)
            timeout = max(0.0, min([now + POLL_SECONDS, *due]) - now)
            fds = [self._wake_r, *(slot.ready_fd for slot in self.slots if slot.ready_fd is not None)]
            readable, _, _ = select.select(fds, [], [], timeout)
            for fd in readable:
                if fd == self._wake_r:
                    for number in os.read(fd, 1024):
                        self._signal(number)
                elif (slot := next((s for s in self.slots if s.ready_fd == fd), None)) is not None:
                    self._ready(slot)
            self._reap()
            now = time.monotonic()
            if self.draining:
                if not self.by_pid:
                    return
                if now >= self.kill_at:
                    self._kill_stragglers()
            else:
                for slot in self.slots:
                    if slot.restart_at is not None and slot.restart_at <= now:
                        self._spawn(slot, self._config_for_restart())

    def _signal(self, number: int) -> None:
        if number in (signal.SIGTERM, signal.SIGINT):
            self._drain(signal.Signals(number).name)
        elif number == signal.SIGHUP and not self.draining:
            self.logger.event("reload_forwarded", reason="SIGHUP", workers=len(self.by_pid))
            for slot in self.slots:
                if slot.pid is None:
                    continue  # its restart reads the files anyway
                if slot.ready:
                    self._send(slot, signal.SIGHUP)
                else:
                    slot.reload_pending = True  # not handling SIGHUP yet: sent once it serves
        # SIGCHLD: _reap runs after every wakeup.

    def _drain(self, reason: str) -> None:
        if not self.draining:
            self.draining = True
            self.kill_at = time.monotonic() + self.drain_seconds + KILL_GRACE_SECONDS
            self.logger.event(
                "stopping", reason=reason, workers=len(self.by_pid), drain_seconds=self.drain_seconds
            )
            for slot in self.slots:
                slot.restart_at = None
        for slot in self.slots:  # again on a second signal: harmless to a worker already draining
            self._send(slot, signal.SIGTERM)

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                self.logger.event(
                    "worker_killed",
                    level="error",
                    worker=slot.index,
                    pid=slot.pid,
                    reason=f"still running {self.drain_seconds + KILL_GRACE_SECONDS:g} s after the signal",
                )
                self._send(slot, signal.SIGKILL)
                self.failed = True
        self.kill_at = time.monotonic() + POLL_SECONDS  # a killed process is reaped in the next rounds

    def _send(self, slot: Slot, sig: signal.Signals) -> None:
        if slot.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, sig)

    # -- workers
    def _config_for_restart(self) -> Config:
        """The files as they are now, if they load and suit the workers; else the last config that did."""
        try:
            config = read_config(self.config)
            if problems := shared_state_problems(config, self.workers, store=self.store):
                raise ConfigError(problems)
        except ConfigError as exc:
            self.logger.event(
                "worker_config_refused",
                level="error",
                config=str(self.config.path),
                problems=[str(problem) for problem in exc.problems],
                detail="the worker starts with the last config that loaded",
            )
            return self.config
        if config.gateway.store != self.store:
            self.logger.event(
                "worker_config_needs_restart",
                level="warning",
                needs_restart=["gateway.store"],
                detail=f"a restarted worker stays on the store every worker uses, {self.store!r}",
            )
            config = replace(config, gateway=replace(config.gateway, store=self.store))
        self.config = config
        return config

    def _flush(self) -> None:
        self.logger.flush()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()

    def _spawn(self, slot: Slot, config: Config) -> None:
        assert self.run_dir is not None
        self.incarnations += 1
        incarnation = self.incarnations
        self.drain_seconds = max(self.drain_seconds, config.gateway.shutdown_timeout_seconds)
        self._flush()
        try:
            ready_r, ready_w = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(ready_r)
                os.close(ready_w)
                raise
        except OSError as exc:  # out of processes or memory: try again later, as after a crash
            slot.failures += 1
            delay = self._backoff(slot.failures)
            slot.restart_at = time.monotonic() + delay
            self.logger.event(
                "worker_start_failed",
                level="error",
                worker=slot.index,
                error=exc.strerror or str(exc),
                restart_in_seconds=delay,
            )
            return
        if pid == 0:
            os.close(ready_r)
            self._worker(slot.index, incarnation, config, ready_w)
        os.close(ready_w)
        slot.pid, slot.incarnation, slot.ready_fd = pid, incarnation, ready_r
        slot.ready = slot.reload_pending = False
        slot.restart_at = None
        self.by_pid[pid] = slot

    def _child_setup(self) -> None:
        """In a new child: the supervisor's signal plumbing undone, its descriptors closed."""
        signal.set_wakeup_fd(-1)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w, *(s.ready_fd for s in self.slots if s.ready_fd is not None)):
            with contextlib.suppress(OSError):
                os.close(fd)
        _die_with_parent()
        if os.getppid() != self.pid:  # the supervisor died before the line above took effect
            os._exit(1)

    def _worker(self, index: int, incarnation: int, config: Config, ready_fd: int) -> NoReturn:
        assert self.run_dir is not None
        code = 1
        try:
            self._child_setup()
            # Until serve() handles SIGHUP (the supervisor only sends it afterwards, but a person may).
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            worker = Worker(
                index=index,
                workers=self.workers,
                run_dir=self.run_dir,
                incarnation=incarnation,
                ready_fd=ready_fd,
            )
            asyncio.run(
                serve(
                    config,
                    logger=self.logger,
                    listen_host=self.host,
                    listen_port=self.port,
                    reuse_port=True,
                    worker=worker,
                )
            )
            code = 0
        except SystemExit as exc:  # serve()'s "cannot listen" and the like: the message is the reason
            if isinstance(exc.code, int):
                code = exc.code
            elif exc.code is not None:
                print(exc.code, file=sys.stderr)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                self.logger.exception("worker_failed", exc, worker=index, pid=os.getpid())
        finally:
            self._flush()
            os._exit(code)

    def _ready(self, slot: Slot) -> None:
        assert slot.ready_fd is not None
        try:
            data = os.read(slot.ready_fd, 16)
        except OSError:
            data = b""
        os.close(slot.ready_fd)
        slot.ready_fd = None
        if not data:
            return  # it exited before it served: _reap tells why
        slot.ready = slot.ever_ready = True
        slot.ready_at = time.monotonic()
        if slot.reload_pending and not self.draining:
            slot.reload_pending = False
            self._send(slot, signal.SIGHUP)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child at all: none of those we count on can still be running
                self.sandbox_pid = None
                lost, self.by_pid = list(self.by_pid.values()), {}
                for gone in lost:
                    self._exited(gone, 1)
                return
            if pid == 0:
                return
            slot = self.by_pid.pop(pid, None)
            if slot is not None:
                self._exited(slot, os.waitstatus_to_exitcode(status))
            elif pid == self.sandbox_pid:
                self.sandbox_pid = None
                if not self.draining:
                    code = os.waitstatus_to_exitcode(status)
                    self.logger.event("sandbox_exited", level="warning", pid=pid, status=_status(code))
            # Anything else was an orphan handed to us as PID 1: reaped, nothing more to do.

    def _exited(self, slot: Slot, code: int) -> None:
        assert self.run_dir is not None
        if slot.ready_fd is not None:
            self._ready(slot)  # the byte it may have written just before it died
        pid, slot.pid = slot.pid, None
        served = time.monotonic() - slot.ready_at if slot.ready else None
        try:
            self.run_dir.retire(slot.incarnation)
        except OSError as exc:
            self.logger.event(
                "metrics_snapshot_failed", level="error", worker=slot.index, error=exc.strerror or str(exc)
            )
        fields = {"worker": slot.index, "pid": pid, "status": _status(code)}
        if self.draining:
            # One that had not begun to serve had nothing to drain, however it ended.
            clean = code == 0 or not slot.ready
            self.failed = self.failed or not clean
            self.logger.event("worker_exited", level="info" if clean else "error", **fields)
            return
        if not slot.ever_ready:
            self.logger.event("worker_exited", level="error", **fields, detail="it never served: stopping")
            self.failed = True
            self._drain("worker_failed")
            return
        if served is not None and served >= STABLE_SECONDS:
            slot.failures = 0
            delay = RESTART_MIN_SECONDS
        else:
            slot.failures += 1
            delay = self._backoff(slot.failures)
        slot.restart_at = time.monotonic() + delay
        self.logger.event(
            "worker_exited",
            level="error",
            **fields,
            served_seconds=round(served, 3) if served is not None else None,
            restart_in_seconds=delay,
        )

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(RESTART_MAX_SECONDS, RESTART_FIRST_SECONDS * 2.0 ** min(failures - 1, 16))

    # -- the sandbox vendor (gateway run --sandbox): one process beside the workers
    def _start_sandbox(self, listen: Listen) -> None:
        self._flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._child_setup()
                from ..sandbox import run

                run(listen.host, listen.port)
                code = 0
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    self.logger.exception("sandbox_failed", exc, pid=os.getpid())
            finally:
                self._flush()
                os._exit(code)
        self.sandbox_pid = pid
        self.logger.event("sandbox_started", listen=str(listen), pid=pid)

    def _stop_sandbox(self) -> None:
        pid = self.sandbox_pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + SANDBOX_STOP_SECONDS
        while self.sandbox_pid is not None:
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + SANDBOX_STOP_SECONDS
            time.sleep(0.02)
            self._reap()
