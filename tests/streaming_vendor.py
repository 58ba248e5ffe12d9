"""A vendor that proves streaming: it holds a download after its first block until told to go on, and
marks when the first KiB of an upload arrived, so a test can show bytes pass before the whole is there."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field

from aiohttp import web

SIZE = 20 * 1024 * 1024


@dataclass
class StreamingVendor:
    size: int = SIZE
    block: bytes = field(default_factory=lambda: os.urandom(64 * 1024))
    release: asyncio.Event = field(default_factory=asyncio.Event)  # set: send the rest of /big
    received_first: asyncio.Event = field(default_factory=asyncio.Event)  # set: /up got its first KiB

    def app(self) -> web.Application:
        """GET /big: ``size`` bytes, the first ``block`` then the rest once released. POST /up: sha256."""

        async def download(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = self.size
            await response.prepare(request)
            await response.write(self.block)
            await asyncio.wait_for(self.release.wait(), 10)
            for _ in range(self.size // len(self.block) - 1):
                await response.write(self.block)
            return response

        async def upload(request: web.Request) -> web.Response:
            digest = hashlib.sha256()
            digest.update(await request.content.readexactly(1024))
            self.received_first.set()
            async for data in request.content.iter_chunked(65536):
                digest.update(data)
            return web.json_response({"sha256": digest.hexdigest()})

        app = web.Application(client_max_size=self.size * 2)
        app.router.add_get("/big", download)
        app.router.add_post("/up", upload)
        return app
