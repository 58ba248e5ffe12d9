"""A private ``redis-server`` for tests: own port, own temp dir, no persistence; kill and restart at will.

Tests never touch a Redis they did not start (a developer's 127.0.0.1:6379 is left alone).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.server_process import ServerProcess

REQUIRED_ENV = ("CI", "GATEWAY_REQUIRE_REDIS")


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def redis_required() -> bool:
    """In CI (or when asked) a missing redis-server fails the tests instead of skipping them."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("GATEWAY_REQUIRE_REDIS") == "1"


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ServerProcess):
    """One redis-server process on 127.0.0.1; ``kill()`` stops it hard, ``start()`` brings it back empty."""

    name = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout, lambda: _ping(self.port))

    def stop(self) -> None:
        self.kill()
