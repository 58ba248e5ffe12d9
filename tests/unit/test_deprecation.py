"""Deprecation / Sunset header parsing and the once-per-(vendor, route) notice log."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import orjson
import pytest
from multidict import CIMultiDict

from gateway.config import Route
from gateway.features.deprecation.tracker import DeprecationTracker, parse_deprecation, parse_http_date
from gateway.observability.logging import Logger


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("@1735689600", datetime(2025, 1, 1, tzinfo=UTC)),  # RFC 9745
        (" @0 ", datetime(1970, 1, 1, tzinfo=UTC)),
        ("Wed, 01 Jan 2025 00:00:00 GMT", datetime(2025, 1, 1, tzinfo=UTC)),  # earlier drafts
        ("true", None),  # draft form without a date
        ("@soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_deprecation(value: str | None, expected: datetime | None) -> None:
    assert parse_deprecation(value) == expected


def test_parse_sunset() -> None:
    assert parse_http_date("Wed, 31 Dec 2025 23:59:59 GMT") == datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_http_date("next year") is None


def test_tracker_logs_once_per_key_and_again_when_the_dates_change() -> None:
    stream = io.BytesIO()
    tracker = DeprecationTracker(Logger(stream=stream))
    route = Route(method="GET", path="/v1/old/*", segments=("v1", "old", "*"), source="t")
    first = CIMultiDict({"Deprecation": "@1735689600"})
    for _ in range(3):
        tracker.observe("acme", route, "GET", "/v1/old/1", first)
    tracker.observe("acme", None, "GET", "/v1/x", CIMultiDict({"Sunset": "Wed, 31 Dec 2025 23:59:59 GMT"}))
    later = CIMultiDict({"Deprecation": "@1735689600", "Sunset": "Thu, 01 Jan 2026 00:00:00 GMT"})
    tracker.observe("acme", route, "GET", "/v1/old/2", later)
    events = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["route"], e["path"], e["sunset_at"]) for e in events] == [
        ("/v1/old/*", "/v1/old/1", None),
        ("*", "/v1/x", "2025-12-31T23:59:59Z"),
        ("/v1/old/*", "/v1/old/2", "2026-01-01T00:00:00Z"),
    ]
    assert tracker.counts() == {("acme", "/v1/old/*"): 4, ("acme", "*"): 1}


def test_hostile_header_values_are_clipped_and_made_printable() -> None:
    stream = io.BytesIO()
    tracker = DeprecationTracker(Logger(stream=stream, fmt="text"))
    tracker.observe("acme", None, "GET", "/x", CIMultiDict({"Deprecation": "true\x1b[31m" + "x" * 1000}))
    line = stream.getvalue().decode()
    assert "\x1b" not in line and len(line) < 600
