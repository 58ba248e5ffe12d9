"""The gateway under test in this process, on a real socket served by its own server, and a caller.

``GatewayClient`` keeps the shape of aiohttp's test client the tests were written against (``get``,
``post``, ... return what ``ClientSession.request`` returns; ``make_url``, ``host``, ``port``), and
``app`` is the ``Gateway`` itself, so a test can look at its services and runtime.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp.client import _RequestContextManager
from yarl import URL

from gateway.config import Config
from gateway.http.app import Gateway
from gateway.http.server import Limits, Server
from gateway.observability.logging import Logger


class GatewayClient:
    host = "127.0.0.1"

    def __init__(self, gateway: Gateway, server: Server, port: int) -> None:
        self.app = gateway
        self.server = server
        self.port = port
        self.root = URL.build(scheme="http", host=self.host, port=port)
        self.session = aiohttp.ClientSession()

    @classmethod
    async def start(cls, config: Config, logger: Logger) -> GatewayClient:
        gateway = Gateway(config, logger=logger)
        await gateway.start()
        server = gateway.server = Server(gateway, Limits.of(config.gateway), logger)
        port = await server.listen(cls.host, 0)
        return cls(gateway, server, port)

    def make_url(self, path: str) -> URL:
        url = URL(path)
        assert not url.absolute
        return self.root.join(url)

    def request(self, method: str, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.session.request(method, self.make_url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.request("DELETE", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.request("HEAD", path, **kwargs)

    def options(self, path: str, **kwargs: Any) -> _RequestContextManager:
        return self.request("OPTIONS", path, **kwargs)

    async def close(self) -> None:
        await self.session.close()
        deadline = asyncio.get_running_loop().time() + 1.0
        await self.server.shutdown(deadline)
        await self.app.close()
