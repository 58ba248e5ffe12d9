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


def test_another_workers_notices_merge_per_vendor_and_route() -> None:
    mine, theirs = (DeprecationTracker(Logger(io.BytesIO())) for _ in range(2))
    old = CIMultiDict({"Sunset": "Wed, 01 Dec 2027 00:00:00 GMT"})
    new = CIMultiDict({"Sunset": "Thu, 01 Jun 2028 00:00:00 GMT"})
    for _ in range(2):
        mine.observe("v", None, "GET", "/a", old)
    theirs.observe("v", None, "GET", "/b", old)
    theirs.observe("w", None, "GET", "/c", old)
    for _ in range(3):
        theirs.observe("v", None, "GET", "/b", new)  # the latest, seen by the other worker
    # What crosses between workers is JSON (a snapshot file); a broken record is left out.
    records = [*orjson.loads(orjson.dumps(theirs.export())), {"vendor": "v"}]
    mine.peers = lambda: records
    merged = {(n.vendor, n.route): n for n in mine.notices()}
    v = merged[("v", "*")]
    assert (v.count, v.sunset_at, v.path) == (6, datetime(2028, 6, 1, tzinfo=UTC), "/b")
    assert v.first_seen == min(n.first_seen for n in (*mine._notices.values(), v))
    assert merged[("w", "*")].count == 1
    assert [n.count for n in mine.notices()] == [6, 1] and mine.export()[0]["count"] == 2  # own only
