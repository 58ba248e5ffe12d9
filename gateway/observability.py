"""Structured logs: one JSON object per line on stdout (or readable text for a person).

Access records carry the SPEC section 12 fields; event records name what happened. Log lines are
built from fields the gateway chose, never from config objects, so secrets cannot leak into them
(``Secret`` also hides its value from ``repr``).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterable
from typing import IO, Any, Literal

import orjson

LogFormat = Literal["json", "text"]

ACCESS_FIELDS = (
    "request_id",
    "client",
    "vendor",
    "route",
    "method",
    "path",
    "status",
    "duration_ms",
    "upstream_ms",
    "attempts",
    "bytes_in",
    "bytes_out",
)


class Logger:
    def __init__(self, stream: IO[bytes] | None = None, fmt: LogFormat = "json") -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.format: LogFormat = fmt
        self._redacted: tuple[bytes, ...] = ()

    def redact(self, values: Iterable[str]) -> None:
        """Never write these strings (configured secrets): a net under the rule that nobody logs them."""
        known = set(self._redacted) | {v.encode() for v in values if v}
        self._redacted = tuple(sorted(known, key=len, reverse=True))  # longest first: no partial leftovers

    def _write(self, record: dict[str, Any]) -> None:
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
        try:
            self._stream.write(line)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full stdout must never fail a request

    def access(self, **fields: Any) -> None:
        self._write({"ts": _now(), "level": "info", "event": "access", **fields})

    def event(self, event: str, *, level: str = "info", **fields: Any) -> None:
        self._write({"ts": _now(), "level": level, "event": event, **fields})

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        tb = "".join(traceback.format_exception(exc))
        self.event(event, level="error", error=f"{type(exc).__name__}: {exc}", traceback=tb, **fields)


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
