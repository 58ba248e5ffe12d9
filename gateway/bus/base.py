"""What every bus offers: one publish that returns only once the bus acknowledged the message, and
``BusUnavailable`` for every way it may not (down, slow, refused), raised within the publish timeout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class BusUnavailable(Exception):
    """The bus did not acknowledge the message; the message says why (no secrets, no payload)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One event: its subject (NATS) or stream key (Redis), its body, and its headers. ``msg_id`` is the
    id the bus deduplicates by where it can (JetStream's ``Nats-Msg-Id``)."""

    subject: str
    body: bytes
    headers: Mapping[str, str]
    msg_id: str


class StreamOps(Protocol):
    """The Redis store's streams (``redis_streams.py``)."""

    async def stream_add(self, message: Message, *, max_length: int | None) -> str:
        """XADD the message (``body`` and each header as fields); the entry id once Redis has it."""
        ...
