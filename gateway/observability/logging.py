"""Structured logs: one JSON object per line on stdout (or readable text for a person).

Access records carry the fields docs/operations.md lists; event records name what happened. Log lines are
built from fields the gateway chose, never from config objects, so secrets cannot leak into them
(``Secret`` also hides its value from ``repr``).

Access records are written in batches, not one write per record, whatever buffering the stream has
(PYTHONUNBUFFERED is common in containers): the proxy makes the records of an event-loop iteration
together (``access_record``, ``write_access``), and they go out at once when the last write is 10 ms
old, else with the next write at most 10 ms later, so a busy gateway writes them once per 10 ms and a
quiet one as each request ends. Every other record is written at once, after anything still held; what
is held at exit is written by an atexit hook (``flush_all``), so a clean shutdown loses no line. Records
may come from any thread (the span exporter's, ``asyncio.to_thread``'s): a lock keeps lines whole and
none is lost.

Third-party libraries log through Python's ``logging`` (opentelemetry's exporter, urllib3, asyncio,
aiohttp). While serving, ``capture_library_logs`` sends those records (warnings and worse, as
``logging`` does by default) through the same Logger, one ``library_log`` event each, so nothing on the
gateway's output is plain text.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterable
from typing import IO, Any, Literal

import orjson

LogFormat = Literal["json", "text"]
# Access lines go out at most this often under load (nginx's access_log buffer= and flush= in one).
ACCESS_WRITE_SECONDS = 0.01


class Logger:
    def __init__(self, stream: IO[bytes] | None = None, fmt: LogFormat = "json") -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.format: LogFormat = fmt
        self._redacted: tuple[bytes, ...] = ()
        self._held: list[bytes] = []  # access lines not written yet
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # a write of held lines is due on it
        self._flush_thread = 0  # the thread that loop runs in
        self.clock = time.monotonic  # for when the last write was (a test may set its own)
        self._written_at = -ACCESS_WRITE_SECONDS  # the clock at the last write
        # Over _held, _flush_loop and writes to the stream; reentrant, so a record logged from inside a
        # write can never deadlock the process.
        self._lock = threading.RLock()
        _LOGGERS.add(self)

    def redact(self, values: Iterable[str]) -> None:
        """Never write these strings (configured secrets): a net under the rule that nobody logs them."""
        known = set(self._redacted) | {v.encode() for v in values if v}
        self._redacted = tuple(sorted(known, key=len, reverse=True))  # longest first: no partial leftovers

    def _line(self, record: dict[str, Any]) -> bytes:
        return self._redact(self._encode(record))

    def _redact(self, data: bytes) -> bytes:
        # find, not "in": bytes.__contains__ first tries the operand as an int, an exception per test.
        for secret in self._redacted:
            if data.find(secret) >= 0:
                data = data.replace(secret, b"[redacted]")
        return data

    def _encode(self, record: dict[str, Any]) -> bytes:
        if self.format == "json":
            line = orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
        else:
            head = f"{record.pop('ts')} {record.pop('level').upper():5} {record.pop('event')}"
            rest = " ".join(f"{k}={v}" for k, v in record.items() if v is not None and k != "traceback")
            line = f"{head} {rest}\n".encode()
            if "traceback" in record:
                line += str(record["traceback"]).encode()
        return line

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._held.append(self._line(record))
        self.flush()

    def _hold(self, data: bytes) -> None:
        """Access lines: written after anything still held, at once when the last write is
        ``ACCESS_WRITE_SECONDS`` old, else by this thread's running loop when it will be (with whatever
        came meanwhile). A thread without a running loop writes at once."""
        thread = threading.get_ident()
        with self._lock:
            self._held.append(data)
            due = self._flush_loop
            if due is not None and self._flush_thread == thread and due.is_running():
                return  # a write is due on this thread's running loop already
            wait = self._written_at + ACCESS_WRITE_SECONDS - self.clock()
        if wait > 0:
            try:
                loop = asyncio.get_running_loop()  # a getpid() system call in Python 3.11: once per write
            except RuntimeError:
                loop = None
            if loop is not None:
                with self._lock:
                    self._flush_loop, self._flush_thread = loop, thread
                loop.call_later(wait, self.flush)
                return
        self.flush()

    def flush(self) -> None:
        """Write every line held so far."""
        with self._lock:
            self._flush_loop = None
            held = self._held
            if not held:
                return
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            self._written_at = self.clock()
            # A closed or full stdout must never fail a request.
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(data)
                self._stream.flush()

    def access(
        self,
        *,
        request_id: str,
        client: str | None,
        vendor: str | None,
        route: str | None,
        method: str | None,
        path: str | None,
        status: int,
        duration_ms: float,
        upstream_ms: float,
        attempts: int,
        bytes_in: int,
        bytes_out: int,
        fault: str | None = None,
        **extra: Any,
    ) -> None:
        """One access record: the fields docs/operations.md lists, in that order, ``fault`` when one was
        injected, then ``extra`` (a delivery's or a webhook's own fields)."""
        record = access_record(
            now(),
            request_id,
            client,
            vendor,
            route,
            method,
            path,
            status,
            duration_ms,
            upstream_ms,
            attempts,
            bytes_in,
            bytes_out,
            fault,
        )
        if extra:
            record.update(extra)
        self._hold(self._line(record))

    def write_access(self, records: Iterable[dict[str, Any]]) -> None:
        """Access records made together (``access_record``), held as one (``_hold``): a busy gateway
        makes one write per ``ACCESS_WRITE_SECONDS``, a quiet one a write per request."""
        encode = self._encode
        self._hold(self._redact(b"".join([encode(record) for record in records])))  # one search per secret

    def event(self, event: str, *, level: str = "info", **fields: Any) -> None:
        self._write({"ts": now(), "level": level, "event": event, **fields})

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        tb = "".join(traceback.format_exception(exc))
        self.event(event, level="error", error=f"{type(exc).__name__}: {exc}", traceback=tb, **fields)


def access_record(
    ts: str,
    request_id: str,
    client: str | None,
    vendor: str | None,
    route: str | None,
    method: str | None,
    path: str | None,
    status: int,
    duration_ms: float,
    upstream_ms: float,
    attempts: int,
    bytes_in: int,
    bytes_out: int,
    fault: str | None,
) -> dict[str, Any]:
    """An access record's fields, in the order docs/operations.md lists them (``fault`` only when
    a fault was injected)."""
    record = {
        "ts": ts,
        "level": "info",
        "event": "access",
        "request_id": request_id,
        "client": client,
        "vendor": vendor,
        "route": route,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "upstream_ms": upstream_ms,
        "attempts": attempts,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }
    if fault is not None:
        record["fault"] = fault
    return record


_LOGGERS: weakref.WeakSet[Logger] = weakref.WeakSet()


class LibraryLogHandler(logging.Handler):
    """A ``logging`` handler writing each record as one ``library_log`` event of a Logger: the library
    logger's name, the level, the message and, with an exception, its type and traceback as fields."""

    def __init__(self, logger: Logger) -> None:
        super().__init__()
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: still one line, with what it passed
            message = f"{record.msg!r} % {record.args!r}"
        fields: dict[str, Any] = {"logger": record.name, "message": message}
        if record.exc_info is not None and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields["error"] = f"{type(exc).__name__}: {exc}"
            fields["traceback"] = "".join(traceback.format_exception(exc))
        self.logger.event("library_log", level=record.levelname.lower(), **fields)


def capture_library_logs(logger: Logger) -> LibraryLogHandler:
    """Send Python ``logging`` (the root logger: every library's) and ``warnings`` through ``logger``
    from now on, instead of ``logging``'s plain-text last resort on stderr. Replaces a handler an
    earlier call installed; the root logger's level (WARNING unless someone changed it) is kept."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, LibraryLogHandler)]:
        root.removeHandler(old)
    handler = LibraryLogHandler(logger)
    root.addHandler(handler)
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> here
    return handler


@atexit.register
def flush_all() -> None:
    """Write what every Logger holds (at exit; a test reading the lines a gateway wrote so far)."""
    for logger in list(_LOGGERS):
        logger.flush()


def milliseconds(seconds: float) -> float:
    """Seconds as milliseconds to three decimals (``round(x, 3)`` costs several times more)."""
    return round(seconds * 1_000_000) / 1000


_second: list[Any] = [-1, ""]  # the last whole second now() formatted, and its text
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # no formatting per record: a lookup and a join


def now() -> str:
    """The time as log records give it: ISO 8601, UTC, milliseconds."""
    t = time.time()
    second = int(t)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))]
    text: str = _second[1]
    return text + _MILLIS[int((t - second) * 1000)]


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
