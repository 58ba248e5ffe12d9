"""A stand-in for HashiCorp Vault, because no Vault server can be installed here (it is in none of the
package registries this project reaches). It is a real HTTP server (``http.server`` in a thread of its
own) answering the three endpoints of Vault's documented HTTP API the gateway uses, with Vault's
shapes and status codes:

- ``POST /v1/auth/approle/login`` with ``{"role_id", "secret_id"}``: ``{"auth": {"client_token",
  "lease_duration", "renewable", "policies"}}``, or 400 ``{"errors": ["invalid role or secret ID"]}``;
- ``GET /v1/MOUNT/data/PATH`` (KV version 2) with ``X-Vault-Token``: ``{"data": {"data": {...},
  "metadata": {"version": N}}}``, 403 ``{"errors": ["permission denied"]}`` for an unknown token,
  404 ``{"errors": []}`` for no secret;

(https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle and
https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#read-secret-version). Tokens from a
login are random and kept in ``issued``; ``put`` writes a new version of a secret.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class VaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *, root_token: str, role_id: str, secret_id: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port: int = self.server_address[1]
        self.address = f"http://127.0.0.1:{self.port}"
        self.tokens = {root_token}
        self.approle = (role_id, secret_id)
        self.issued: list[str] = []
        self.reads: list[str] = []  # paths read, in order
        self.data: dict[str, tuple[int, dict[str, Any]]] = {}  # "mount/path" -> (version, fields)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def put(self, path: str, fields: dict[str, Any]) -> None:
        with self._lock:
            version = self.data.get(path, (0, {}))[0] + 1
            self.data[path] = (version, fields)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    server: VaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/auth/approle/login":
            return self.answer(404, {"errors": []})
        if (body.get("role_id"), body.get("secret_id")) != self.server.approle:
            return self.answer(400, {"errors": ["invalid role or secret ID"]})
        token = "hvs." + secrets.token_urlsafe(24)
        with self.server._lock:
            self.server.tokens.add(token)
            self.server.issued.append(token)
        self.answer(
            200,
            {
                "auth": {
                    "client_token": token,
                    "accessor": secrets.token_hex(8),
                    "policies": ["default", "gateway"],
                    "lease_duration": 60,
                    "renewable": True,
                }
            },
        )

    def do_GET(self) -> None:
        if self.headers.get("X-Vault-Token") not in self.server.tokens:
            return self.answer(403, {"errors": ["permission denied"]})
        mount, sep, rest = self.path.removeprefix("/v1/").partition("/data/")
        path = f"{mount}/{rest}"
        with self.server._lock:
            self.server.reads.append(path)
            found = self.server.data.get(path) if sep else None
        if found is None:
            return self.answer(404, {"errors": []})
        version, fields = found
        self.answer(200, {"data": {"data": fields, "metadata": {"version": version, "destroyed": False}}})
