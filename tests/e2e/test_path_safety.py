"""Hostile request-targets, sent byte-for-byte over a raw socket, never leave the vendor's base path.

A client library would normalise these targets before sending; a raw socket sends what an attacker
would. Two servers watch: the vendor (which must only ever see paths under its base path) and a
decoy "other host" (which must see nothing at all).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.errors import BadRequest
from gateway.target import parse_target


def recorder() -> tuple[web.Application, list[str]]:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, seen


async def raw_status(host: str, port: int, target: bytes, method: bytes = b"GET") -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(method + b" " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1])
    finally:
        writer.close()


HOSTILE = [
    b"/v/../secret",
    b"/v/a/../../secret",
    b"/v/%2e%2e/secret",
    b"/v/%2E%2E/secret",
    b"/v/.%2e/secret",
    b"/v/%2e./secret",
    b"/v/a/%2e%2e%2f%2e%2e/secret",
    b"/v/..%2fsecret",
    b"/v/a%2f..%2f..%2fsecret",
    b"/v/%2fsecret",
    b"/v/..\\secret",
    b"/v/a\\..\\..\\secret",
    b"/v/%5c..%5csecret",
    b"/v/..;/secret",
    b"/v/%2e%2e;x=1/secret",
    b"/v/.",
    b"/v/..",
    b"/v/./secret",
    b"/v/%c0%ae%c0%ae/secret",
    b"/v/%ef%bc%8e%ef%bc%8e/secret",  # full-width dots, NFKC-folded to ".." by some servers
    b"/v/\xef\xbc\x8e\xef\xbc\x8e/secret",
    b"/v//evil.example/secret",
    b"//evil.example/v/x",
    b"//DECOY/x",
    b"http://DECOY/x",
    b"http://DECOY/v/x",
    b"https://DECOY/v/x",
    b"DECOY/v/x",
    b"*",
    b"/v/%00/secret",
    b"/v/%0d%0aX-Injected:%20yes",
    b"/v/%/secret",
    b"/v/%2/secret",
    b"/v/%zz/secret",
    b"/v/x#../../secret",
    b"/../v/x",
    b"/%2e%2e/v/x",
    b"/v%2f..%2fsecret",
]


@pytest.mark.parametrize("target", HOSTILE, ids=[t.decode("latin-1") for t in HOSTILE])
async def test_hostile_target_cannot_escape(gateway: Any, vendor: Any, target: bytes) -> None:
    vendor_app, vendor_seen = recorder()
    decoy_app, decoy_seen = recorder()
    vendor_server: TestServer = await vendor(vendor_app)
    decoy_server: TestServer = await vendor(decoy_app)
    client = await gateway(f'[vendors.v]\nbase_url = "{vendor_server.make_url("/api/")}"\n')
    target = target.replace(b"DECOY", f"127.0.0.1:{decoy_server.port}".encode())

    status = await raw_status(client.host, client.port, target)

    assert status in (400, 404), status
    assert decoy_seen == []
    assert all(p.startswith("/api/") for p in vendor_seen), vendor_seen
    assert vendor_seen == []


@pytest.mark.parametrize(
    ("target", "vendor_path"),
    [
        (b"/v/x", "/api/x"),
        (b"/v/x/", "/api/x/"),
        (b"/v/a%20b/c?q=%2e%2e&r=../x", "/api/a%20b/c?q=%2e%2e&r=../x"),
        (b"/v/%252e%252e/x", "/api/%252e%252e/x"),  # a literal "%2e%2e": not a dot segment
        (b"/v/.well-known/x", "/api/.well-known/x"),
        (b"/v/...", "/api/..."),
        (b"/v/caf%C3%A9", "/api/caf%C3%A9"),
        (b"/v/x?", "/api/x?"),  # a bare "?" is kept, as nginx keeps it
        (b"/v?", "/api?"),
    ],
)
async def test_safe_targets_pass_byte_for_byte(
    gateway: Any, vendor: Any, target: bytes, vendor_path: str
) -> None:
    vendor_app, vendor_seen = recorder()
    vendor_server = await vendor(vendor_app)
    client = await gateway(f'[vendors.v]\nbase_url = "{vendor_server.make_url("/api")}"\n')
    status = await raw_status(client.host, client.port, target)
    assert status == 200
    assert vendor_seen == [vendor_path]


def test_parse_target_segments_are_decoded_for_route_matching() -> None:
    target = parse_target("/stripe/v1/customers/cus%5F1/?expand=a")
    assert (target.vendor, target.path, target.query) == ("stripe", "/v1/customers/cus%5F1/", "expand=a")
    assert target.segments == ("v1", "customers", "cus_1", "")
    with pytest.raises(BadRequest):
        parse_target("/stripe/v1/%2e%2e")
