"""Vendor deprecation notices: ``Deprecation`` (RFC 9745) and ``Sunset`` (RFC 8594) response headers.

Every vendor answer carrying either header is counted per (vendor, route); the first one for a key,
and any later one whose dates differ, is logged as a ``vendor_deprecation`` event. The counts live on
``Services`` (app-wide) and are exported as ``gateway_vendor_deprecations_total{vendor,route}``; with
several workers each one's snapshot carries its notices (``export``) and every worker shows them all.
The route label is the route's path glob, or ``*`` for a request no route matched (pass-through):
raw paths would give a metric one series per customer id.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from multidict import istr

from ...config import Route
from ...observability.logging import Logger
from ...observability.metrics import Family

DEPRECATION = istr("Deprecation")  # looked up in every vendor answer
SUNSET = istr("Sunset")
UNROUTED = "*"
_MAX_VALUE = 200  # vendor header values are cut to this length before they reach a log line
_LINK = re.compile(r"<([^>]*)>([^,<]*)")
_REL = re.compile(r"""(?i);\s*rel\s*=\s*"?([^";]+)"?""")


def route_label(route: Route | None) -> str:
    return route.path if route is not None else UNROUTED


@dataclass(slots=True, eq=False)
class Notice:
    """What one vendor said about one route, and how often."""

    vendor: str
    route: str
    deprecation: str | None  # the raw header values, cut to _MAX_VALUE
    sunset: str | None
    deprecated_at: datetime | None
    sunset_at: datetime | None
    link: str | None  # a Link with rel="deprecation" or rel="sunset", if the vendor sent one
    method: str
    path: str  # the first request that showed this notice
    count: int = 0
    first_seen: float = 0.0  # unix time
    last_seen: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "route": self.route,
            "count": self.count,
            "deprecation": self.deprecation,
            "deprecated_at": _iso(self.deprecated_at),
            "sunset": self.sunset,
            "sunset_at": _iso(self.sunset_at),
            "link": self.link,
            "example": f"{self.method} {self.path}",
            "first_seen": _iso(datetime.fromtimestamp(self.first_seen, UTC)),
            "last_seen": _iso(datetime.fromtimestamp(self.last_seen, UTC)),
        }


class DeprecationTracker:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self._notices: dict[tuple[str, str], Notice] = {}
        # One of several workers: the other workers' notices (``export``'s records) to show with its own.
        self.peers: Callable[[], Iterable[dict[str, Any]]] | None = None

    def observe(
        self, vendor: str, route: Route | None, method: str, path: str, headers: Mapping[str, str]
    ) -> None:
        """Record one vendor answer; call it only when it has a Deprecation or Sunset header."""
        key = (vendor, route_label(route))
        deprecation = _clip(headers.get(DEPRECATION))
        sunset = _clip(headers.get(SUNSET))
        notice = self._notices.get(key)
        now = time.time()
        if notice is None or (notice.deprecation, notice.sunset) != (deprecation, sunset):
            notice = Notice(
                vendor=vendor,
                route=key[1],
                deprecation=deprecation,
                sunset=sunset,
                deprecated_at=parse_deprecation(deprecation),
                sunset_at=parse_http_date(sunset),
                link=_clip(_notice_link(headers)),
                method=method,
                path=_clip(path) or "/",
                count=notice.count if notice is not None else 0,
                first_seen=notice.first_seen if notice is not None else now,
            )
            self._notices[key] = notice
            self.logger.event(
                "vendor_deprecation",
                level="warning",
                vendor=vendor,
                route=notice.route,
                method=method,
                path=notice.path,
                deprecation=deprecation,
                deprecated_at=_iso(notice.deprecated_at),
                sunset=sunset,
                sunset_at=_iso(notice.sunset_at),
                link=notice.link,
            )
        notice.count += 1
        notice.last_seen = now

    def counts(self) -> dict[tuple[str, str], int]:
        """(vendor, route) -> answers seen with a notice: ``gateway_vendor_deprecations_total``."""
        return {key: notice.count for key, notice in self._notices.items()}

    def families(self) -> Iterator[Family]:
        yield Family(
            "gateway_vendor_deprecations",
            "Vendor answers carrying Deprecation or Sunset, by vendor and route.",
            "counter",
            ("vendor", "route"),
            self.counts(),
        )

    def notices(self) -> list[Notice]:
        """Every notice, this process's and (with ``peers``) the other workers': per vendor and route,
        counts summed, first and last seen over all, the headers of the latest."""
        peers = self.peers() if self.peers is not None else ()
        imported = (notice for notice in map(_imported, peers) if notice is not None)
        merged = _merged([*self._notices.values(), *imported])
        return sorted(merged, key=lambda n: (n.vendor, n.route))

    def export(self) -> list[dict[str, Any]]:
        """This process's notices as JSON-able records, for the other workers (``peers``)."""
        return [_exported(n) for n in self._notices.values()]


def merge_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``export``'s records of several processes as one per vendor and route (broken ones dropped)."""
    return [_exported(n) for n in _merged(n for n in map(_imported, records) if n is not None)]


def _merged(notices: Iterable[Notice]) -> list[Notice]:
    """One notice per vendor and route: counts summed, first and last seen over all, the headers of
    the latest."""
    out: dict[tuple[str, str], Notice] = {}
    for notice in notices:
        key = (notice.vendor, notice.route)
        seen = out.get(key)
        if seen is not None:
            latest = notice if notice.last_seen > seen.last_seen else seen
            notice = replace(
                latest,
                count=seen.count + notice.count,
                first_seen=min(seen.first_seen, notice.first_seen),
                last_seen=max(seen.last_seen, notice.last_seen),
            )
        out[key] = notice
    return list(out.values())


def _exported(notice: Notice) -> dict[str, Any]:
    return {name: getattr(notice, name) for name in _EXPORTED}


_EXPORTED = (
    "vendor",
    "route",
    "deprecation",
    "sunset",
    "link",
    "method",
    "path",
    "count",
    "first_seen",
    "last_seen",
)


def _imported(record: dict[str, Any]) -> Notice | None:
    """``export``'s record back as a Notice (the dates parsed again from the headers); None if broken."""
    try:
        fields = {name: record[name] for name in _EXPORTED}
        return Notice(
            **fields,
            deprecated_at=parse_deprecation(fields["deprecation"]),
            sunset_at=parse_http_date(fields["sunset"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def parse_deprecation(value: str | None) -> datetime | None:
    """RFC 9745 ``@<unix seconds>``; also the HTTP-date of earlier drafts. ``true`` has no date."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("@"):
        try:
            return datetime.fromtimestamp(int(value[1:]), UTC)
        except (ValueError, OverflowError, OSError):
            return None
    return parse_http_date(value)


def parse_http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _notice_link(headers: Mapping[str, str]) -> str | None:
    for value in _all(headers, "Link"):
        for target, params in _LINK.findall(value):
            for rel in _REL.findall(params):
                if {"deprecation", "sunset"} & set(rel.lower().split()):
                    return str(target)
    return None


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values: list[str] = getall(name, [])
        return values
    value = headers.get(name)
    return [value] if value is not None else []


def _clip(value: str | None) -> str | None:
    if value is None:
        return None
    value = "".join(c if c.isprintable() else "?" for c in value[:_MAX_VALUE])
    return value


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None
