"""The alert webhook (``[alerts] webhook_url``): each firing and resolved notice POSTed as JSON.

Requests never wait on it: ``post`` only puts the notice in a bounded queue (``MAX_QUEUE``; when full,
the oldest notice is dropped and counted) and one task sends them in order. Each try is bounded by
``webhook_timeout_seconds`` (connecting, the answer, its body); a connection error, a timeout, a 429 or
a 5xx is tried again after an exponential backoff with full jitter, up to ``webhook_attempts`` tries,
then the notice is given up with one ``alert_webhook_failed`` event. The URL is never logged (it may
carry a token): events name its host only. Sent through the gateway's own transport (``Pool``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Awaitable, Callable

import orjson
from multidict import CIMultiDict
from yarl import URL

from ..config.model import AlertSettings
from ..upstream.pool import Endpoint, PoolError, Timeouts, Transport, VendorRequest
from .alerts import Notice
from .logging import Logger

MAX_QUEUE = 1000
MAX_ANSWER_BYTES = 65536
BASE_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 30.0


class WebhookNotifier:
    def __init__(
        self,
        transport: Transport,
        settings: Callable[[], AlertSettings],
        logger: Logger,
        *,
        max_queue: int = MAX_QUEUE,
        base_delay_seconds: float = BASE_DELAY_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.transport = transport
        self.settings = settings  # read at every send: a reload's new URL or timeout applies at once
        self.logger = logger
        self.base_delay_seconds = base_delay_seconds
        self.sleep = sleep
        self._queue: deque[Notice] = deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0  # notices given up after every try
        self.dropped = 0  # notices pushed out of a full queue

    @property
    def queued(self) -> int:
        return len(self._queue)

    def post(self, notice: Notice) -> None:
        """Queue ``notice`` (never waits); without a webhook_url it goes nowhere."""
        if self.settings().webhook_url is None:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                self.logger.event("alert_webhook_dropped", level="warning", dropped=self.dropped)
        self._queue.append(notice)
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            notice = self._queue.popleft()
            try:
                await self._deliver(notice)
            except Exception as exc:  # never let one notice stop the ones after it
                self.logger.exception("alert_webhook_failed", exc, alert=notice.get("alert"))

    async def _deliver(self, notice: Notice) -> None:
        body = orjson.dumps(notice)
        attempt = 0
        while True:
            settings = self.settings()
            url = settings.webhook_url
            if url is None:  # removed by a reload
                return
            attempt += 1
            error = await self._try(url, body, settings.webhook_timeout_seconds)
            if error is None:
                self.sent += 1
                return
            retry, why = error
            if not retry or attempt >= settings.webhook_attempts:
                self.failed += 1
                self.logger.event(
                    "alert_webhook_failed",
                    level="error",
                    host=url.host,
                    alert=notice["alert"],
                    vendor=notice["vendor"],
                    status=notice["status"],
                    attempts=attempt,
                    error=why,
                )
                return
            cap = min(MAX_DELAY_SECONDS, self.base_delay_seconds * 2 ** (attempt - 1))
            await self.sleep(random.uniform(0, cap))

    async def _try(self, url: URL, body: bytes, seconds: float) -> tuple[bool, str] | None:
        """One POST: None when the webhook took it (2xx), else (worth another try, why not)."""
        endpoint = Endpoint(
            scheme=url.scheme,
            host=url.raw_host or "",
            port=url.port or (443 if url.scheme == "https" else 80),
            host_header=url.host_port_subcomponent or "",
        )
        headers = CIMultiDict({"Content-Type": "application/json", "Accept": "*/*"})
        request = VendorRequest(endpoint, "POST", url.raw_path_qs or "/", headers, body)
        try:
            async with asyncio.timeout(seconds):
                response = await self.transport.send(
                    request, Timeouts(total=seconds, connect=seconds, read_idle=seconds)
                )
                try:
                    status = response.status
                    read = 0
                    async for chunk in response.iter_chunked(MAX_ANSWER_BYTES):
                        read += len(chunk)
                        if read >= MAX_ANSWER_BYTES:
                            break
                finally:
                    response.release()
        except TimeoutError:
            return True, f"no answer within {seconds:g}s"
        except PoolError as exc:
            return True, f"unreachable ({type(exc).__name__})"
        if 200 <= status < 300:
            return None
        return status == 429 or status >= 500, f"answered {status}"
