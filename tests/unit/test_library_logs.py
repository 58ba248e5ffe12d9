"""Python ``logging`` records of third-party libraries, written as the gateway's own JSON events."""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from gateway.observability.logging import LibraryLogHandler, Logger
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
