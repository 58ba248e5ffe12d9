"""The idempotency stage on its own: key syntax, fingerprints, which routes get it, caller scoping."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import Route, Vendor
from gateway.errors import BadIdempotencyKey
from gateway.features.idempotency.stage import fingerprint, idempotency_stage, parse_key, storable
from gateway.messages import Answer, Request
from gateway.observability.logging import Logger
from gateway.pipeline import Exchange, compose
from gateway.services import Services
from gateway.store import MemoryStore


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ("  abc \t", "abc"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ('"with space"', "with space"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("x" * 255, "x" * 255),
        ('"' + "x" * 255 + '"', "x" * 255),
    ],
)
def test_keys_accepted(raw: str, key: str) -> None:
    assert parse_key([raw]) == key


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ('""', "empty"),
        ("x" * 256, "at most 255"),
        ('"' + "x" * 256 + '"', "at most 255"),
        ('"abc', "complete quoted string"),
        ('"a"b"', "unescaped"),
        ('"a\\nb"', "may escape only"),
        ("a\x00b", "control character"),
        ("a\tb", "control character"),
        ("a\x7fb", "control character"),
        ("caf\u00e9", "ASCII"),
    ],
)
def test_keys_refused(raw: str, reason: str) -> None:
    with pytest.raises(BadIdempotencyKey, match=reason):
        parse_key([raw])


def test_two_key_fields_are_refused() -> None:
    with pytest.raises(BadIdempotencyKey, match="one Idempotency-Key"):
        parse_key(["a", "b"])


def test_fingerprint_covers_method_path_query_and_body_unambiguously() -> None:
    base = fingerprint("POST", "/v1/a", "x=1", b"{}")
    assert base == fingerprint("POST", "/v1/a", "x=1", b"{}")
    others = {
        fingerprint("PATCH", "/v1/a", "x=1", b"{}"),
        fingerprint("POST", "/v1/b", "x=1", b"{}"),
        fingerprint("POST", "/v1/a", "x=2", b"{}"),
        fingerprint("POST", "/v1/a", "x=1", b"{ }"),
        fingerprint("POST", "/v1/a", "", b"x=1{}"),  # parts cannot slide into each other
        fingerprint("POST", "/v1/ax=1", "", b"{}"),
    }
    assert base not in others and len(others) == 6


def test_stored_statuses() -> None:
    assert [s for s in (200, 201, 204, 299, 400, 404, 422, 451) if not storable(s)] == []
    assert [s for s in (101, 302, 408, 409, 425, 429, 500, 502, 503, 504) if storable(s)] == []


VENDOR = Vendor(name="v", base_url=URL("http://127.0.0.1:1"))


def route(method: str, idempotency: Any = None) -> Route:
    return Route(method=method, path="/x", segments=("x",), source="test", idempotency=idempotency)


def test_which_routes_get_the_stage() -> None:
    services = Services(logger=Logger())
    has = {
        name: idempotency_stage(VENDOR, r, services) is not None
        for name, r in {
            "pass-through": None,
            "POST": route("POST"),
            "PATCH": route("PATCH"),
            "any method": route("*"),
            "GET": route("GET"),
            "PUT": route("PUT"),
            "DELETE": route("DELETE"),
            "POST off": route("POST", "off"),
            "GET optional": route("GET", "optional"),
            "PUT required": route("PUT", "required"),
        }.items()
    }
    assert has == {
        "pass-through": True,  # it applies to POST and PATCH only, decided per request
        "POST": True,
        "PATCH": True,
        "any method": True,
        "GET": False,  # GET pass-through stays free
        "PUT": False,
        "DELETE": False,
        "POST off": False,
        "GET optional": True,
        "PUT required": True,
    }


async def test_keys_of_two_callers_never_collide() -> None:
    """Two callers using the same key each get their own request run and their own replay: the stage
    alone, with a fake ``call_next`` and the gateway's own request type (no HTTP server)."""
    calls: Counter[str | None] = Counter()
    services = Services(logger=Logger(), store=MemoryStore())
    stage = idempotency_stage(VENDOR, route("POST"), services)
    assert stage is not None

    async def endpoint(ex: Exchange) -> Answer:
        calls[ex.client] += 1
        return Answer(status=201, body=f"for {ex.client} #{calls[ex.client]}".encode())

    handler = compose([stage], endpoint)

    async def send(caller: str | None) -> Answer:
        fields = CIMultiDictProxy(CIMultiDict({"Idempotency-Key": "same"}))
        ex = Exchange(
            request=Request(method="POST", headers=fields, body=b"{}"),
            request_id="r",
            vendor=VENDOR,
            route=None,
            method="POST",
            path="/x",
            query="",
            headers=CIMultiDict(),
            client=caller,  # what client auth would set
        )
        return await handler(ex)

    for caller in ("billing", "crm", None):
        first = await send(caller)
        assert first.status == 201 and first.body == f"for {caller} #1".encode()
        assert "Idempotent-Replayed" not in first.headers
    for caller in ("billing", "crm", None):
        again = await send(caller)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.body == f"for {caller} #1".encode()
    assert calls == {"billing": 1, "crm": 1, None: 1}
