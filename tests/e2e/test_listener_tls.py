"""HTTPS toward callers (``[gateway] tls``): the gateway's own server behind TLS, callers' certificates
required with ``client_ca_file`` and clients known by ``cert_subject``, and certificates re-read on
reload and on file change while open connections go on. Certificates come from throwaway ``trustme``
CAs; callers are plain ``ssl`` streams, so each test sees exactly what went over the wire."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from gateway.config import load_config
from gateway.http.app import Gateway, listener_context, reload
from gateway.http.server import Limits, Server
from gateway.observability.logging import Logger
from tests.conftest import CapturedLogs
from tests.gateway_proc import free_port
from tests.tls_certs import Pem, issue, write_ca


class Caller:
    """One caller connection: HTTP/1.1 requests over one TLS stream, kept alive between them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext) -> Caller:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        return cls(reader, writer)

    @property
    def server_cert(self) -> dict[str, Any]:
        cert: dict[str, Any] = self.writer.get_extra_info("peercert")
        return cert

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        fields = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n{fields}\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return status, orjson.loads(body) if body else {}

    def close(self) -> None:
        self.writer.close()


def common_name(cert: dict[str, Any]) -> str:
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")


def trusting(ca_file: Path, client: Pem | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    """A server CA and certificate (files the config names), and a CA for callers."""
    server_ca, callers_ca = trustme.CA(), trustme.CA()
    certs = tmp_path / "certs"
    return {
        "server_ca": server_ca,
        "server_ca_file": write_ca(server_ca, tmp_path / "trust" / "server-ca.pem"),
        "server": issue(server_ca, certs, "server", "127.0.0.1", common_name="gateway-one"),
        "callers_ca": callers_ca,
        "callers_ca_file": write_ca(callers_ca, certs / "callers-ca.pem"),
        "folder": tmp_path / "callers",
    }


@pytest.fixture
async def vendor_port(aiohttp_server: Any) -> int:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {"vendor": request.path, "authorization": request.headers.get("Authorization")}
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    server = await aiohttp_server(app)
    port: int = server.port
    return port


@pytest.fixture
async def https_gateway(
    write_config: Callable[..., Path], logs: CapturedLogs
) -> AsyncIterator[Callable[[str], Awaitable[tuple[Gateway, int]]]]:
    started: list[Gateway] = []

    async def start(text: str) -> tuple[Gateway, int]:
        config = load_config(write_config(text))
        gateway = Gateway(config, logger=Logger(stream=logs))
        await gateway.start()
        server = gateway.server = Server(gateway, Limits.of(config.gateway), gateway.logger)
        port = await server.listen("127.0.0.1", 0, ssl=listener_context(config))
        started.append(gateway)
        return gateway, port

    yield start
    for gateway in started:
        assert gateway.server is not None
        await gateway.server.shutdown(asyncio.get_running_loop().time() + 1)
        await gateway.close()


async def test_the_listener_serves_https_and_refuses_plain_http_and_old_tls(
    https_gateway: Any, pki: dict[str, Any], vendor_port: int, logs: CapturedLogs
) -> None:
    server: Pem = pki["server"]
    _, port = await https_gateway(
        f"""
        [gateway]
        tls = {{ cert_file = "{server.cert}", key_file = "{server.key}" }}
        [vendors.v]
        base_url = "http://127.0.0.1:{vendor_port}"
        """
    )
    caller = await Caller.connect(port, trusting(pki["server_ca_file"]))
    assert common_name(caller.server_cert) == "gateway-one"
    assert caller.writer.get_extra_info("ssl_object").selected_alpn_protocol() in (None, "http/1.1")
    assert await caller.get("/v/x") == (200, {"vendor": "/x", "authorization": None})
    assert (await caller.get("/_gateway/health"))[0] == 200  # the same connection, kept alive
    caller.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain HTTP to the TLS port
    writer.write(b"GET /_gateway/health HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert not (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
    writer.close()

    old = trusting(pki["server_ca_file"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # asyncio drops the alert as it closes
        await Caller.connect(port, old)
    for _ in range(100):
        failures = [r["error"] for r in logs.records() if r["event"] == "tls_handshake_failed"]
        if len(failures) == 2:
            break
        await asyncio.sleep(0.02)
    assert failures == ["HTTP_REQUEST", "UNSUPPORTED_PROTOCOL"]


async def test_callers_must_present_a_certificate_and_clients_are_known_by_its_subject(
    https_gateway: Any,
    pki: dict[str, Any],
    vendor_port: int,
    logs: CapturedLogs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_TLS_OPS_KEY", "ops-key-0123456789")
    server: Pem = pki["server"]
    callers_ca: trustme.CA = pki["callers_ca"]
    folder: Path = pki["folder"]
    billing = issue(callers_ca, folder, "billing", common_name="billing", organization_name="Acme")
    reports = issue(callers_ca, folder, "reports", common_name="reports")
    stranger = issue(callers_ca, folder, "stranger", common_name="stranger")
    foreign = issue(trustme.CA(), folder, "foreign", common_name="billing", organization_name="Acme")
    _, port = await https_gateway(
        f"""
        [gateway]
        tls = {{ cert_file = "{server.cert}", key_file = "{server.key}", client_ca_file = "{pki["callers_ca_file"]}" }}
        [clients.billing]
        cert_subject = "CN=billing, O=Acme"
        allow = ["a"]
        [clients.reports]
        cert_subject = "CN=reports"
        allow = ["b"]
        [clients.ops]
        key = "env:GW_TLS_OPS_KEY"
        allow = ["b"]
        [vendors.a]
        base_url = "http://127.0.0.1:{vendor_port}"
        [vendors.b]
        base_url = "http://127.0.0.1:{vendor_port}"
        """
    )
    trust = pki["server_ca_file"]

    async def call(pem: Pem, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        caller = await Caller.connect(port, trusting(trust, pem))
        try:
            return await caller.get(path, headers)
        finally:
            caller.close()

    assert (await call(billing, "/a/x"))[0] == 200
    status, problem = await call(billing, "/b/x")
    assert status == 403 and "client 'billing' may not call GET /x on vendor 'b'" in problem["detail"]
    assert (await call(reports, "/b/x"))[0] == 200
    assert (await call(reports, "/a/x"))[0] == 403
    status, problem = await call(stranger, "/a/x")
    assert status == 401
    assert problem["detail"].startswith("the client certificate's subject (CN=stranger,O=trustme")
    assert "is no client's cert_subject" in problem["detail"]
    # A key, when sent, identifies the request; it is never forwarded.
    assert await call(stranger, "/b/x", {"Authorization": "Bearer ops-key-0123456789"}) == (
        200,
        {"vendor": "/x", "authorization": None},
    )
    assert [r["client"] for r in logs.access()] == ["billing", "billing", "reports", "reports", None, "ops"]

    for pem in (None, foreign):  # no certificate, or one another CA signed: no request gets through
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await call(pem, "/a/x")  # type: ignore[arg-type]
    for _ in range(100):
        failures = [r["error"] for r in logs.records() if r["event"] == "tls_handshake_failed"]
        if len(failures) == 2:
            break
        await asyncio.sleep(0.02)
    assert failures == ["PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"]
    assert len(logs.access()) == 6


async def test_a_reload_serves_rotated_certificates_to_new_connections_and_keeps_open_ones(
    https_gateway: Any, pki: dict[str, Any], vendor_port: int, tmp_path: Path
) -> None:
    server: Pem = pki["server"]
    gateway, port = await https_gateway(
        f"""
        [gateway]
        tls = {{ cert_file = "{server.cert}", key_file = "{server.key}" }}
        [vendors.v]
        base_url = "http://127.0.0.1:{vendor_port}"
        """
    )
    old_trust = trusting(pki["server_ca_file"])
    kept = await Caller.connect(port, old_trust)
    assert (await kept.get("/v/before"))[0] == 200
    context = gateway.server.ssl if gateway.server else None
    assert await reload(gateway)
    assert gateway.server is not None and gateway.server.ssl is context  # nothing changed, nothing rebuilt

    new_ca = trustme.CA()
    rotated = issue(new_ca, tmp_path / "rotated", "server", "127.0.0.1", common_name="gateway-two")
    server.cert.write_bytes(rotated.cert.read_bytes())
    server.key.write_bytes(rotated.key.read_bytes())
    assert await reload(gateway)
    assert gateway.server.ssl is not context

    assert (await kept.get("/v/after"))[0] == 200  # the connection from before goes on
    assert common_name(kept.server_cert) == "gateway-one"
    fresh = await Caller.connect(port, trusting(write_ca(new_ca, tmp_path / "new-ca.pem")))
    assert common_name(fresh.server_cert) == "gateway-two"
    assert (await fresh.get("/v/new"))[0] == 200
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        await Caller.connect(port, old_trust)
    kept.close()
    fresh.close()


async def test_a_rotated_certificate_file_is_served_without_a_signal_and_nothing_is_dropped(
    pki: dict[str, Any], vendor_port: int, tmp_path: Path
) -> None:
    """The real ``gateway run``: its config watcher sees the certificate files change (replaced the way
    a Secret volume is: new files, then one rename) and reloads; a connection open since before keeps
    working, and the next connection gets the new certificate."""
    server: Pem = pki["server"]
    live = tmp_path / "live"
    live.mkdir()
    for pem, name in ((server.cert, "tls.crt"), (server.key, "tls.key")):
        (live / name).write_bytes(pem.read_bytes())
    config = tmp_path / "run" / "config.toml"
    config.parent.mkdir()
    config.write_text(
        textwrap.dedent(
            f"""
            [gateway]
            tls = {{ cert_file = "{live}/tls.crt", key_file = "{live}/tls.key" }}
            [vendors.v]
            base_url = "http://127.0.0.1:{vendor_port}"
            """
        )
    )
    # Its own process, logging outside the config's folder: log lines written there would wake the
    # config watcher too, and this test is about the certificates' folder being watched.
    port = free_port()
    log_path = tmp_path / "gateway.log"
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        kept: Caller | None = None
        while kept is None:
            try:
                kept = await Caller.connect(port, trusting(pki["server_ca_file"]))
            except OSError:
                assert proc.returncode is None and time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.05)
        assert (await kept.get("/v/before"))[0] == 200

        new_ca = trustme.CA()
        rotated = issue(new_ca, tmp_path / "staging", "server", "127.0.0.1", common_name="gateway-two")
        staged = tmp_path / "live.new"
        staged.mkdir()
        (staged / "tls.crt").write_bytes(rotated.cert.read_bytes())
        (staged / "tls.key").write_bytes(rotated.key.read_bytes())
        for name in ("tls.crt", "tls.key"):  # both at once: never a certificate without its key
            os.replace(staged / name, live / name)
        new_trust = trusting(write_ca(new_ca, tmp_path / "new-ca.pem"))
        deadline = time.monotonic() + 15
        while True:
            try:
                fresh = await Caller.connect(port, new_trust)
                break
            except ssl.SSLError:
                assert time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.1)
        assert common_name(fresh.server_cert) == "gateway-two"
        assert (await fresh.get("/v/new"))[0] == 200
        assert (await kept.get("/v/after"))[0] == 200
        assert common_name(kept.server_cert) == "gateway-one"
        kept.close()
        fresh.close()
        os.killpg(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.close()
    output = log_path.read_text()
    assert '"event":"config_reloaded"' in output and "file change: tls.crt" in output, output
    assert rotated.key.read_text().splitlines()[1] not in output
