"""The servers ``bench/servers.py`` compares: minimal pass-through proxies, each forwarding every request
through the gateway's own vendor pool (``gateway.upstream.pool.Pool``) to the vendor, and the same servers
answering a fixed body without the vendor call.

    python bench/server_apps.py {aiohttp-app,aiohttp-lowlevel,gateway} {proxy,fixed} PORT VENDOR_PORT

serves one of the asyncio servers (on uvloop) until SIGTERM. granian loads this module itself
(``granian --interface rsgi server_apps:rsgi_app``, ``--interface asgi server_apps:asgi_app``) and reads
the mode and the vendor's port from ``BENCH_MODE`` and ``BENCH_VENDOR_PORT``.

Every proxy does the same work: the caller's headers minus hop-by-hop ones to the vendor, the request
body read whole when there is one, the vendor's answer read whole and passed back with its status,
reason and headers (minus hop-by-hop ones and its framing, which each server sets itself). What differs
is only the server around it and what it costs to get a request out of it and an answer into it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from multidict import CIMultiDict

from gateway.errors import GatewayError
from gateway.http.server import Limits, Server, ServerRequest
from gateway.messages import Answer
from gateway.observability.logging import Logger
from gateway.upstream.pool import Endpoint, Pool, PoolError, Timeouts, VendorRequest

FIXED_BODY = b'{"id":"obj_0001","object":"customer","email":"bench@example.com","balance":1999,"live":false}'
FIXED_HEADERS = (("Content-Type", "application/json"),)
TIMEOUTS = Timeouts(total=10.0, connect=2.0, read_idle=30.0)
# Not forwarded either way: hop-by-hop fields, and the framing each side sets for itself.
DROP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    )
)
BAD_GATEWAY = (502, "Bad Gateway", [("Content-Type", "text/plain")], b"vendor call failed\n")

Fields = list[tuple[str, str]]
Forwarded = tuple[int, str, Fields, bytes]

_pool = Pool()  # makes no connection and needs no loop until the first request
_vendor: Endpoint | None = None


def configure(vendor_port: int) -> None:
    global _vendor
    _vendor = Endpoint("http", "127.0.0.1", vendor_port, f"127.0.0.1:{vendor_port}")


def _endpoint() -> Endpoint:
    if _vendor is None:
        configure(int(os.environ["BENCH_VENDOR_PORT"]))
    assert _vendor is not None
    return _vendor


async def forward(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None
) -> Forwarded:
    """One request through the pool; the vendor's status, reason, headers and whole body."""
    fields: CIMultiDict[str] = CIMultiDict([(n, v) for n, v in headers if n.lower() not in DROP])
    try:
        response = await _pool.send(
            VendorRequest(_endpoint(), method, target, fields, body or None), TIMEOUTS
        )
        try:
            data = await response.read()
        finally:
            response.release()
    except PoolError:
        return BAD_GATEWAY
    out = [(n, v) for n, v in response.headers.items() if n.lower() not in DROP]
    return response.status, response.reason, out, data


def _mode() -> str:
    mode = os.environ.get("BENCH_MODE", "proxy")
    if mode not in ("proxy", "fixed"):
        raise SystemExit(f"server_apps: BENCH_MODE must be proxy or fixed, not {mode!r}")
    return mode


# --------------------------------------------------------------------------- granian RSGI


class RsgiApp:
    """RSGI (granian's own interface). Its ``scope.path`` is already percent-decoded: a real proxy
    could not forward ``/a%2Fb`` as sent, which the bench's path does not need."""

    def __init__(self) -> None:
        self.proxy = _mode() == "proxy"

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if not self.proxy:
            protocol.response_bytes(200, list(FIXED_HEADERS), FIXED_BODY)
            return
        headers = scope.headers
        body = await protocol() if "content-length" in headers or "transfer-encoding" in headers else None
        query = scope.query_string
        target = f"{scope.path}?{query}" if query else scope.path
        status, _, fields, data = await forward(scope.method, target, headers.items(), body)
        protocol.response_bytes(status, fields, data)


# --------------------------------------------------------------------------- granian ASGI


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_FIXED_ASGI_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(FIXED_BODY))]


class AsgiApp:
    def __init__(self) -> None:
        self.proxy = _mode() == "proxy"

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if not self.proxy:
            await send({"type": "http.response.start", "status": 200, "headers": _FIXED_ASGI_HEADERS})
            await send({"type": "http.response.body", "body": FIXED_BODY})
            return
        raw = scope["headers"]
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        body = None
        if any(n in (b"content-length", b"transfer-encoding") for n, _ in raw):
            parts = []
            while True:
                message = await receive()
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = b"".join(parts)
        query = scope["query_string"]
        target = scope["raw_path"] + (b"?" + query if query else b"")
        status, _, fields, data = await forward(scope["method"], target.decode("latin-1"), headers, body)
        out = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]
        out.append((b"content-length", b"%d" % len(data)))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})


# --------------------------------------------------------------------------- aiohttp


def _aiohttp_handler(proxy: bool) -> Callable[[Any], Awaitable[Any]]:
    from aiohttp import web

    if not proxy:

        async def fixed(request: web.BaseRequest) -> web.Response:
            return web.Response(body=FIXED_BODY, headers=dict(FIXED_HEADERS))

        return fixed

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read() if request.body_exists else None
        status, reason, fields, data = await forward(
            request.method, request.raw_path, request.headers.items(), body
        )
        return web.Response(status=status, reason=reason, headers=CIMultiDict(fields), body=data)

    return handle


async def serve_aiohttp_app(port: int, proxy: bool, stop: asyncio.Event) -> None:
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _aiohttp_handler(proxy))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def serve_aiohttp_lowlevel(port: int, proxy: bool, stop: asyncio.Event) -> None:
    from aiohttp import web_server

    server = web_server.Server(_aiohttp_handler(proxy), access_log=None)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, backlog=1024)
    try:
        await stop.wait()
    finally:
        listener.close()
        await server.shutdown(1.0)


# --------------------------------------------------------------------------- the gateway's own server


class GatewayServerApp:
    """``gateway.http.server.App``: answers through ``request.respond`` and never raises."""

    def __init__(self, proxy: bool) -> None:
        self.proxy = proxy

    async def __call__(self, request: ServerRequest) -> None:
        if not self.proxy:
            await request.respond(Answer(status=200, headers=CIMultiDict(FIXED_HEADERS), body=FIXED_BODY))
            return
        body = await request.body.read() if request.body is not None else None
        status, reason, fields, data = await forward(
            request.method, request.target, request.headers.items(), body
        )
        await request.respond(Answer(status=status, headers=CIMultiDict(fields), body=data, reason=reason))

    def refused(self, error: GatewayError, request_id: str, method: str, target: str) -> None:
        pass  # the server answered it itself; nothing to record here


async def serve_gateway(port: int, proxy: bool, stop: asyncio.Event) -> None:
    # The server logs only what went wrong (an app that raised, no descriptors left): to stderr, the log.
    server = Server(GatewayServerApp(proxy), Limits(), Logger(stream=sys.stderr.buffer))
    await server.listen("127.0.0.1", port)
    try:
        await stop.wait()
    finally:
        await server.shutdown(asyncio.get_running_loop().time() + 1.0)


USAGE = (
    "usage: python bench/server_apps.py {aiohttp-app,aiohttp-lowlevel,gateway} {proxy,fixed} PORT VENDOR_PORT"
)
SERVERS = {
    "aiohttp-app": serve_aiohttp_app,
    "aiohttp-lowlevel": serve_aiohttp_lowlevel,
    "gateway": serve_gateway,
}


async def _serve(kind: str, mode: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await SERVERS[kind](port, mode == "proxy", stop)
    finally:
        await _pool.close()


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in SERVERS or argv[1] not in ("proxy", "fixed"):
        print(USAGE, file=sys.stderr)
        return 2
    kind, mode, port, vendor_port = argv[0], argv[1], int(argv[2]), int(argv[3])
    configure(vendor_port)
    import uvloop

    uvloop.run(_serve(kind, mode, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
else:
    # What granian loads (``server_apps:rsgi_app`` / ``server_apps:asgi_app``): built on import, in the
    # worker, from BENCH_MODE and BENCH_VENDOR_PORT.
    rsgi_app = RsgiApp() if "BENCH_VENDOR_PORT" in os.environ else None
    asgi_app = AsgiApp() if "BENCH_VENDOR_PORT" in os.environ else None
