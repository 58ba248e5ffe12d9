"""A private ``nats-server -js`` for tests: own port, own temp dir (JetStream's storage too); stop and
start again at will, on the same port and storage, as a bus that went away and came back.

Tests never touch a NATS they did not start (a developer's 127.0.0.1:4222 is left alone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def nats_server_binary() -> str | None:
    return shutil.which("nats-server")


def nats_required() -> bool:
    """In CI (or when asked) a missing nats-server fails the tests instead of skipping them."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("GATEWAY_REQUIRE_NATS") == "1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """One nats-server process with JetStream on 127.0.0.1; ``token``: clients must send it."""

    def __init__(self, binary: str, directory: Path, *, token: str | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.token = token
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats.log"

    def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            self.binary,
            "-js",
            "-sd",
            str(self.directory / "jetstream"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-l",
            str(self.log_path),
        ]
        if self.token is not None:
            args += ["--auth", self.token]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        # "Server is ready" is logged once the client port listens and JetStream is up.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}:\n{self.log()}")
            if "Server is ready" in self.log()[offset:]:
                return
            time.sleep(0.02)
        raise TimeoutError(f"nats-server not ready on port {self.port}:\n{self.log()}")

    def stop(self) -> None:
        """Stop it hard (SIGKILL): the bus is gone, as after a crash; its storage stays for ``start``."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung bus)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
