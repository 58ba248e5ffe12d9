"""NATS JetStream as a bus (``[bus] nats_url``), through nats-py.

- The connection is made in the background and kept: a NATS that is down at start does not stop the
  gateway (webhooks answer 503 until it is up), and a lost connection is re-made every
  ``RECONNECT_SECONDS``. Nothing is buffered while disconnected (``pending_size=0``): a publish then
  fails at once instead of going out later, after the vendor was told 503.
- A publish waits for the stream's PubAck. The event id travels as ``Nats-Msg-Id``, so JetStream's own
  duplicate window also drops a second copy (a publish whose ack was lost, then retried).
- The stream (``[bus] nats_stream``) is made on each connect if missing, capturing every configured
  subject (``vendors.stripe.>``); an existing stream of that name gets the subjects it lacks. If another
  stream already captures them, that one acknowledges and the gateway says so in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from ..config.model import BusSettings
from ..observability.logging import Logger
from .base import BusUnavailable, Message

RECONNECT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 2


def covering(filters: Iterable[str]) -> list[str]:
    """The filters, without those another one already captures (``a.>`` captures ``a.b.>`` and
    ``a.b``): one stream may not list overlapping subjects."""
    unique = sorted(set(filters))

    def captured(subject: str, by: str) -> bool:
        return by != subject and by.endswith(".>") and subject.startswith(by[:-1])

    return [f for f in unique if not any(captured(f, other) for other in unique)]


class JetStreamBus:
    def __init__(self, settings: BusSettings, logger: Logger) -> None:
        assert settings.nats_url is not None
        self.settings = settings
        self.url = settings.nats_url
        self.logger = logger
        self.filters: list[str] = []
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._ensuring: asyncio.Task[None] | None = None
        self._stream_ready = False
        self._down_logged = False

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected and self._js is not None

    def start(self, filters: Iterable[str]) -> None:
        self.filters = covering(filters)
        self._task = asyncio.get_running_loop().create_task(self._connect())

    def subjects(self, filters: Iterable[str]) -> None:
        """A reload named these subjects: the stream is brought up to date before the next publish."""
        wanted = covering(filters)
        if wanted != self.filters:
            self.filters = wanted
            self._stream_ready = False

    async def _connect(self) -> None:
        nc = Client()
        self._nc = nc
        token = self.settings.nats_token.reveal() if self.settings.nats_token is not None else None
        # max_reconnect_attempts=-1: connect() itself keeps trying until the server answers.
        await nc.connect(
            servers=[self.url],
            token=token,
            name="egress-gateway",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_SECONDS,  # type: ignore[arg-type]
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            pending_size=0,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = nc.jetstream(timeout=self.settings.publish_timeout_seconds)
        self._connected_again()

    async def _on_error(self, exc: Exception) -> None:
        if not self._down_logged:
            self._down_logged = True
            self.logger.event("bus_unavailable", level="error", bus="nats", url=self.url, error=_text(exc))

    async def _on_disconnected(self) -> None:
        if self._js is not None and not self._down_logged:
            self._down_logged = True
            self.logger.event("bus_disconnected", level="warning", bus="nats", url=self.url)

    async def _on_reconnected(self) -> None:
        self._connected_again()

    def _connected_again(self) -> None:
        self._down_logged = False
        self._stream_ready = False
        self.logger.event("bus_connected", bus="nats", url=self.url, stream=self.settings.nats_stream)
        self._ensuring = asyncio.get_running_loop().create_task(self._ensure_quietly())

    async def _ensure_quietly(self) -> None:
        with contextlib.suppress(BusUnavailable):
            await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        js = self._js
        if js is None or self._stream_ready or not self.filters:
            return
        name = self.settings.nats_stream
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(StreamConfig(name=name, subjects=list(self.filters)))
                self.logger.event("bus_stream_created", bus="nats", stream=name, subjects=self.filters)
            else:
                have = list(info.config.subjects or [])
                merged = covering([*have, *self.filters])
                if set(merged) != set(have):
                    config = info.config
                    config.subjects = merged
                    await js.update_stream(config)
                    self.logger.event("bus_stream_updated", bus="nats", stream=name, subjects=merged)
        except nats.js.errors.BadRequestError as exc:
            # Most likely another stream already captures these subjects: it acknowledges instead.
            self.logger.event(
                "bus_stream_not_changed", level="warning", bus="nats", stream=name, error=_text(exc)
            )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise BusUnavailable(f"NATS at {self.url} failed to set up stream {name}: {_text(exc)}") from None
        self._stream_ready = True

    async def publish(self, message: Message) -> None:
        js, nc = self._js, self._nc
        if js is None or nc is None or not nc.is_connected:
            raise BusUnavailable(f"NATS at {self.url} is not connected")
        headers = {**message.headers, "Nats-Msg-Id": message.msg_id}
        await self._ensure_stream()
        for attempt in (1, 2):
            try:
                await js.publish(message.subject, message.body, headers=headers)
                return
            except nats.js.errors.NoStreamResponseError:
                # No stream captures the subject (a NATS restarted without its storage): make it, once.
                if attempt == 2:
                    raise BusUnavailable(
                        f"NATS at {self.url} has no stream for {message.subject} (stream "
                        f"{self.settings.nats_stream} could not be made)"
                    ) from None
                self._stream_ready = False
                await self._ensure_stream()
            except TimeoutError:
                raise BusUnavailable(f"NATS at {self.url} did not acknowledge in time") from None
            except (nats.errors.Error, OSError) as exc:
                raise BusUnavailable(f"NATS at {self.url} refused the publish: {_text(exc)}") from None

    async def close(self) -> None:
        for task in (self._task, self._ensuring):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=2.0)


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
