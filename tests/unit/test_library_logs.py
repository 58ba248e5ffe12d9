"""Python ``logging`` records of third-party libraries, written as the gateway's own JSON events."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from typing import Any

import orjson

from gateway.observability.logging import ACCESS_WRITE_SECONDS, LibraryLogHandler, Logger
from tests.conftest import CapturedLogs


def library_logger(logger: Logger) -> logging.Logger:
    # A logger of its own (not the root one), so the test touches no process-wide logging state.
    log = logging.getLogger(f"tests.library.{id(logger)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(LibraryLogHandler(logger))
    return log


def test_a_record_is_one_json_event_with_logger_level_and_message() -> None:
    stream = CapturedLogs()
    log = library_logger(Logger(stream=stream))
    log.warning("Transient error %s encountered, retrying in %.2fs.", "refused", 1.0)
    try:
        raise ConnectionRefusedError("nope")
    except ConnectionRefusedError:
        log.exception("Failed to export spans batch")
    log.error("a %d format gone wrong", "not a number")
    first, second, third = stream.records()
    assert first["event"] == "library_log" and first["level"] == "warning"
    assert first["logger"] == log.name
    assert first["message"] == "Transient error refused encountered, retrying in 1.00s."
    assert second["level"] == "error" and second["message"] == "Failed to export spans batch"
    assert second["error"] == "ConnectionRefusedError: nope" and "Traceback" in second["traceback"]
    assert third["level"] == "error" and "a %d format gone wrong" in third["message"]
    assert all(line.startswith(b"{") for line in stream.getvalue().splitlines())


ACCESS: dict[str, Any] = dict.fromkeys(
    ("client", "vendor", "route", "method", "path", "request_id"), None
) | dict.fromkeys(("status", "duration_ms", "upstream_ms", "attempts", "bytes_in", "bytes_out"), 0)


def test_records_from_other_threads_keep_every_line_whole() -> None:
    stream = CapturedLogs()
    logger = Logger(stream=stream)
    log = library_logger(logger)  # the exporter's thread and the event loop share one Logger

    def spam(n: int) -> None:
        for i in range(500):
            log.warning("thread %d line %d", n, i)

    threads = [threading.Thread(target=spam, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for i in range(500):
        # held for the loop's next flush, or written at once without a loop
        logger.access(**{**ACCESS, "request_id": str(i)})
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 * 500 + 500
    assert all(isinstance(orjson.loads(line), dict) for line in lines)


async def test_access_lines_of_a_busy_gateway_go_out_once_per_interval() -> None:
    stream = io.BytesIO()
    logger = Logger(stream=stream)
    clock = [100.0]
    logger.clock = lambda: clock[0]
    line = {"event": "access", "request_id": "first"}
    logger.write_access([line])
    assert stream.getvalue().count(b'"first"') == 1  # nothing written lately: at once
    logger.write_access([{**line, "request_id": "second"}])
    logger.write_access([{**line, "request_id": "third"}])
    assert b'"second"' not in stream.getvalue()  # the clock has not moved: held for the next write
    logger.event("reloaded")  # an event record goes out at once, after what is held
    written = [orjson.loads(text) for text in stream.getvalue().splitlines()]
    assert [r.get("request_id", r["event"]) for r in written] == ["first", "second", "third", "reloaded"]
    logger.write_access([{**line, "request_id": "fourth"}])
    assert b'"fourth"' not in stream.getvalue()
    await asyncio.sleep(ACCESS_WRITE_SECONDS * 2)  # its timer is due before this sleep's
    assert stream.getvalue().splitlines()[-1] == b'{"event":"access","request_id":"fourth"}'
    clock[0] += ACCESS_WRITE_SECONDS
    logger.write_access([{**line, "request_id": "fifth"}])
    assert stream.getvalue().splitlines()[-1] == b'{"event":"access","request_id":"fifth"}'  # at once
