"""A TLS vendor in a thread of its own: Python's ``http.server`` behind ``ssl``, as plain as a vendor
gets. Its handshakes are OpenSSL's, blocking, so a refusal reaches the client as the TLS alert a real
server sends (an asyncio server drops the alert when it aborts the connection) and the handshake
errors it saw are kept for the test.

``GET /hello`` answers ``{"version", "client"}``: the TLS version and the client certificate's
common name (None without one); ``sni`` lists the server names clients sent.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        conn = self.connection
        assert isinstance(conn, ssl.SSLSocket)
        peer = conn.getpeercert() or {}
        subject = {k: v for rdn in peer.get("subject", ()) for k, v in rdn}
        body = json.dumps({"version": conn.version(), "client": subject.get("commonName")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TlsVendor(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.errors: list[str] = []  # handshake failures, as OpenSSL named them
        self.sni: list[str | None] = []
        self.port: int = self.server_address[1]
        context.sni_callback = self._sni  # type: ignore[assignment]
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})

    def _sni(self, _: ssl.SSLSocket, name: str | None, __: ssl.SSLContext) -> None:
        self.sni.append(name)

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        sock.settimeout(10)
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(str(exc))
            return
        try:
            super().finish_request(tls, client_address)
        except (ssl.SSLError, OSError) as exc:  # TLS 1.3: a missing client certificate shows here
            self.errors.append(str(exc))
        finally:
            tls.close()

    def __enter__(self) -> TlsVendor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)
