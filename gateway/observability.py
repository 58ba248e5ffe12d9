"""Structured logs: one JSON object per line on stdout (or readable text for a person).

Access records carry the SPEC section 12 fields; event records name what happened. Log lines are
built from fields the gateway chose, never from config objects, so secrets cannot leak into them
(``Secret`` also hides its value from ``repr``).

Access records are written once per event-loop iteration (every record the iteration made goes out in
one write), not one write per record, whatever buffering the stream has (PYTHONUNBUFFERED is common in
containers). Every other record is written at once, after anything still held; what is held at exit is
written by an atexit hook, so a clean shutdown loses no line.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
import time
import traceback
import weakref
from collections.abc import Iterable
from typing import IO, Any, Literal

import orjson

LogFormat = Literal["json", "text"]


class Logger:
    def __init__(self, stream: IO[bytes] | None = None, fmt: LogFormat = "json") -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.format: LogFormat = fmt
        self._redacted: tuple[bytes, ...] = ()
        self._held: list[bytes] = []  # access lines not written yet
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # a flush is scheduled on this loop
        _LOGGERS.add(self)

    def redact(self, values: Iterable[str]) -> None:
        """Never write these strings (configured secrets): a net under the rule that nobody logs them."""
        known = set(self._redacted) | {v.encode() for v in values if v}
        self._redacted = tuple(sorted(known, key=len, reverse=True))  # longest first: no partial leftovers

    def _write(self, record: dict[str, Any], *, batch: bool = False) -> None:
        if self.format == "json":
            line = orjson.dumps(record, default=str) + b"\n"
        else:
            head = f"{record.pop('ts')} {record.pop('level').upper():5} {record.pop('event')}"
            rest = " ".join(f"{k}={v}" for k, v in record.items() if v is not None and k != "traceback")
            line = f"{head} {rest}\n".encode()
            if "traceback" in record:
                line += str(record["traceback"]).encode()
        for secret in self._redacted:
            if secret in line:
                line = line.replace(secret, b"[redacted]")
        self._held.append(line)
        if batch:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                if self._flush_loop is not loop:
                    self._flush_loop = loop
                    loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        """Write every line held so far."""
        self._flush_loop = None
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        with contextlib.suppress(OSError, ValueError):  # a closed or full stdout must never fail a request
            self._stream.write(data)
            self._stream.flush()

    def access(self, **fields: Any) -> None:
        self._write({"ts": _now(), "level": "info", "event": "access", **fields}, batch=True)

    def event(self, event: str, *, level: str = "info", **fields: Any) -> None:
        self._write({"ts": _now(), "level": level, "event": event, **fields})

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        tb = "".join(traceback.format_exception(exc))
        self.event(event, level="error", error=f"{type(exc).__name__}: {exc}", traceback=tb, **fields)


_LOGGERS: weakref.WeakSet[Logger] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for logger in list(_LOGGERS):
        logger.flush()


_second: list[Any] = [-1, ""]  # the last whole second _now() formatted, and its text


def _now() -> str:
    t = time.time()
    second = int(t)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))]
    return f"{_second[1]}.{int(t % 1 * 1000):03d}Z"


class _RandomHex:
    """Random hex strings from one ``os.urandom`` call per 128 of them, not one system call each."""

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0
        os.register_at_fork(after_in_child=self._reset)  # a child must never repeat its parent's ids

    def _reset(self) -> None:
        self._hex, self._at = "", 0

    def take(self, length: int) -> str:
        at = self._at
        if at + length > len(self._hex):
            self._hex, at = os.urandom(2048).hex(), 0
        self._at = at + length
        return self._hex[at : at + length]


_random_hex = _RandomHex()


def new_request_id() -> str:
    """32 random hex digits (128 bits), as ``os.urandom(16).hex()`` would give."""
    return _random_hex.take(32)
