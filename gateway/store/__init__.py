"""Shared state behind one protocol: ``open_store("memory://")`` or ``open_store("redis://host:6379/0")``."""

from __future__ import annotations

from .base import Store, StoreUnavailable, redact_url
from .memory import MemoryStore

__all__ = ["MemoryStore", "Store", "StoreUnavailable", "open_store", "redact_url"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(url: str) -> Store:
    """A store for ``url``; nothing connects yet (a Redis that is down makes ``ready`` fail, not startup)."""
    if url == "memory://":
        return MemoryStore(url)
    if url.startswith(REDIS_SCHEMES):
        # Imported here so a memory-only gateway never loads the Redis client.
        from .redis import RedisStore

        return RedisStore(url)
    raise ValueError(f"unsupported store URL {redact_url(url)!r} (use 'memory://' or a redis:// URL)")
