"""A private ``nats-server -js`` for tests: own port, own temp dir (JetStream's storage too); stop and
start again at will, on the same port and storage, as a bus that went away and came back.

Tests never touch a NATS they did not start (a developer's 127.0.0.1:4222 is left alone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.server_process import ServerProcess


def nats_server_binary() -> str | None:
    return shutil.which("nats-server")


def nats_required() -> bool:
    """In CI (or when asked) a missing nats-server fails the tests instead of skipping them."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("GATEWAY_REQUIRE_NATS") == "1"


class NatsServer(ServerProcess):
    """One nats-server process with JetStream on 127.0.0.1; ``token``: clients must send it."""

    name = "nats-server"

    def __init__(self, binary: str, directory: Path, *, token: str | None = None) -> None:
        super().__init__(binary, directory)
        self.token = token

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
        self._wait_ready(timeout, lambda: "Server is ready" in self.log()[offset:])

    def stop(self) -> None:
        """Stop it hard (SIGKILL): the bus is gone, as after a crash; its storage stays for ``start``."""
        self.kill()
