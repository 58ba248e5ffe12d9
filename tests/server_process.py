"""What the private servers tests start (tests/redis_server.py, tests/nats_server.py) have in common:
a free port on 127.0.0.1, a folder of their own, a log, and a process to kill, pause and resume."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.gateway_proc import free_port


class ServerProcess:
    """One server process started by a test; ``name`` names it in errors, ``log_path`` is its log."""

    name = "server"

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def _wait_ready(self, timeout: float, ready: Callable[[], bool]) -> None:
        """Until ``ready()``; RuntimeError with the log if the process exits first, TimeoutError after
        ``timeout``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if ready():
                return
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} not ready on port {self.port}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL (after SIGCONT, should it be paused), and wait for it: gone, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
