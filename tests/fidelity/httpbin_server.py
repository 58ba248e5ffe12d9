"""The PyPI ``httpbin`` app under ``gunicorn`` on 127.0.0.1: a vendor nobody here wrote.

One process group per test session, on a free port, its access log naming each request's
``X-Request-Id`` and the raw request line, so a test can see the exact target bytes that arrived.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.gateway_proc import free_port

REQUIRED_ENV = ("CI", "GATEWAY_REQUIRE_HTTPBIN")


def httpbin_required() -> bool:
    """In CI (or when asked) an httpbin that cannot start fails the fidelity suite instead of skipping it."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("GATEWAY_REQUIRE_HTTPBIN") == "1"


def missing_modules() -> list[str]:
    return [name for name in ("httpbin", "gunicorn") if importlib.util.find_spec(name) is None]


class HttpbinServer:
    """``python -m gunicorn httpbin:app``: threaded workers (keep-alive, /drip does not hold a whole
    worker), no control socket (gunicorn >= 25.1 would otherwise share one under $HOME)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = directory / "access.log"
        self.log_path = directory / "gunicorn.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--no-control-socket",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "--worker-class",
                "gthread",
                "--threads",
                "16",
                # Longer than any pause in the suite: a pooled connection is never closed under a request.
                "--keep-alive",
                "60",
                "--timeout",
                "120",
                "--graceful-timeout",
                "2",
                "--access-logfile",
                str(self.access_log),
                "--access-logformat",
                "%({x-request-id}i)s %(r)s",
                "httpbin:app",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.directory,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/get", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"httpbin not answering on port {self.port} after {timeout}s:\n{self.log()}")

    def request_lines(self, request_id: str, count: int, timeout: float = 10.0) -> list[str]:
        """The raw request lines (``GET /path?query HTTP/1.1``) httpbin logged for ``request_id``, once
        there are ``count`` of them (gunicorn logs a request after its answer, so this waits a little)."""
        prefix = f"{request_id} "
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            text = self.access_log.read_text(errors="replace") if self.access_log.exists() else ""
            lines = [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]
            if len(lines) >= count or time.monotonic() >= deadline:
                return lines
            time.sleep(0.005)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
