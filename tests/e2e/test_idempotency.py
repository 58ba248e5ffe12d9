"""Idempotency keys end to end (docs/http.md): a real gateway socket, a real local vendor socket,
and the store both in memory and in a private redis-server. Assertions are what a caller sees: status,
headers, body, and how many times the vendor was called.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.features.idempotency.stage import fingerprint
from gateway.features.idempotency.store import IdempotencyKey, StoredResponse
from tests.conftest import CapturedLogs
from tests.redis_server import RedisServer

ROUTES = {
    "v": """
vendor = "v"
expose = "all"

[[route]]
method = "POST"
path = "/v1/required/**"
idempotency = "required"

[[route]]
method = "POST"
path = "/v1/off"
idempotency = "off"

[[route]]
method = "GET"
path = "/v1/read"
idempotency = "optional"
"""
}


class Vendor:
    """A vendor that counts calls per path and answers in whatever way the path asks for."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seen_headers: list[dict[str, str]] = []
        self.release = asyncio.Event()
        self.release.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.calls[path] += 1
        n = self.calls[path]
        self.seen_headers.append(dict(request.headers))
        body = await request.read()
        if "delay" in request.query:
            await asyncio.sleep(float(request.query["delay"]))
        await self.release.wait()
        if path.endswith("/flaky") and n == 1:
            return web.json_response({"error": "try again"}, status=500)
        if path.endswith("/status"):
            return web.json_response({"call": n}, status=int(request.query["code"]))
        if path.endswith("/empty"):
            return web.Response(status=204, headers={"X-Call": str(n)})
        if path.endswith("/cookie"):
            response = web.json_response({"call": n}, status=201)
            response.headers.add("Set-Cookie", f"session=s{n}; Path=/; HttpOnly")
            response.headers.add("Set-Cookie", f"tracker=t{n}; Path=/")
            return response
        if path.endswith("/big") or path.endswith("/chunked"):
            size = int(request.query.get("size", "300000"))
            response = web.StreamResponse(status=201, headers={"Content-Type": "application/octet-stream"})
            if path.endswith("/big"):
                response.content_length = size
            else:
                response.enable_chunked_encoding()
            await response.prepare(request)
            chunk = bytes(range(256)) * 64
            sent = 0
            while sent < size:
                part = chunk[: size - sent]
                await response.write(part)
                sent += len(part)
            await response.write_eof()
            return response
        return web.Response(
            status=201,
            body=orjson.dumps({"call": n, "path": path, "got": body.decode("latin-1")}),
            headers={"Content-Type": "application/json; charset=utf-8", "X-Vendor-Id": f"ch_{n}"},
        )


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def config_text(
    server: Any, store: str, idempotency: str = 'forward_header = "Idempotency-Key"', total_seconds: float = 2
) -> str:
    return f"""
[gateway]
store = "{store}"

[vendors.v]
base_url = "{server.make_url("/")}"
timeout = {{ connect_seconds = 2, total_seconds = {total_seconds} }}
idempotency = {{ {idempotency} }}
retry = {{ attempts = 1 }}  # one vendor call per request here; retries: tests/e2e/test_retries.py
"""


async def start(gateway: Any, vendor: Any, store: str, **kwargs: Any) -> tuple[Any, Vendor]:
    fake = Vendor()
    server = await vendor(fake.app())
    client = await gateway(config_text(server, store, **kwargs), routes=ROUTES)
    return client, fake


def outcomes(client: Any) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = client.app.services.idempotency_outcomes
    return counts


async def post(client: Any, path: str, key: str | None, body: bytes = b'{"amount":100}', **kw: Any) -> Any:
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(path, data=body, headers=headers, **kw)


async def test_first_request_runs_and_a_retry_is_replayed_byte_for_byte(
    gateway: Any, vendor: Any, store_url: str
) -> None:
    client, fake = await start(gateway, vendor, store_url)
    first = await post(client, "/v/v1/charges?expand=x", "order-1")
    first_body = await first.read()
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers

    again = await post(client, "/v/v1/charges?expand=x", "order-1", headers={"X-Request-Id": "retry-1"})
    assert again.status == 201
    assert await again.read() == first_body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"] == "application/json; charset=utf-8"
    assert again.headers["X-Vendor-Id"] == "ch_1"
    assert again.headers["X-Request-Id"] == "retry-1"
    assert fake.calls["/v1/charges"] == 1
    assert outcomes(client)[("v", "stored")] == 1
    assert outcomes(client)[("v", "replayed")] == 1


async def test_vendor_cookies_reach_the_first_caller_but_are_never_stored_or_replayed(
    gateway: Any, vendor: Any, store_url: str
) -> None:
    client, fake = await start(gateway, vendor, store_url)
    first = await post(client, "/v/v1/cookie", "cookie-1")
    assert first.status == 201
    assert first.headers.getall("Set-Cookie") == ["session=s1; Path=/; HttpOnly", "tracker=t1; Path=/"]

    again = await post(client, "/v/v1/cookie", "cookie-1")
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Set-Cookie" not in again.headers
    assert await again.json() == {"call": 1}
    assert fake.calls["/v1/cookie"] == 1
    scope = IdempotencyKey(vendor="v", client=None, key="cookie-1")
    record = await client.app.services.store.idempotency.get(scope)
    assert record is not None and record.response is not None
    assert [name for name, _ in record.response.headers if name.lower() == "set-cookie"] == []


async def test_a_record_stored_with_a_cookie_before_the_fix_replays_without_it(
    gateway: Any, vendor: Any, store_url: str
) -> None:
    client, fake = await start(gateway, vendor, store_url)
    body = b'{"amount":100}'
    store = client.app.services.store.idempotency
    scope = IdempotencyKey(vendor="v", client=None, key="old-1")
    digest = fingerprint("POST", "/v1/charges", "", body)
    assert (await store.claim(scope, fingerprint=digest, owner="o", lease_seconds=10)).acquired
    old = StoredResponse(
        status=201,
        headers=(("Content-Type", "application/json"), ("Set-Cookie", "session=stale; Path=/")),
        body=b'{"id":"ch_old"}',
    )
    assert await store.complete(scope, owner="o", response=old, ttl_seconds=60)

    replayed = await post(client, "/v/v1/charges", "old-1", body=body)
    assert replayed.status == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert "Set-Cookie" not in replayed.headers
    assert await replayed.read() == b'{"id":"ch_old"}'
    assert fake.calls["/v1/charges"] == 0


async def test_25_concurrent_duplicates_reach_the_vendor_once(
    gateway: Any, vendor: Any, store_url: str
) -> None:
    client, fake = await start(gateway, vendor, store_url)
    fake.release.clear()
    pending = [asyncio.ensure_future(post(client, "/v/v1/charges", "dup")) for _ in range(25)]
    # Released once the other 24 were refused as in flight (the first is held at the vendor meanwhile).
    deadline = time.monotonic() + 10
    while outcomes(client)[("v", "in_flight")] < 24:
        assert time.monotonic() < deadline, outcomes(client)
        await asyncio.sleep(0.02)
    fake.release.set()
    responses = await asyncio.gather(*pending)
    statuses = Counter(r.status for r in responses)
    assert fake.calls["/v1/charges"] == 1
    assert statuses == {201: 1, 409: 24}, statuses
    conflict = next(r for r in responses if r.status == 409)
    assert conflict.headers["Content-Type"] == "application/problem+json"
    assert conflict.headers["Retry-After"] == "1"
    problem = await conflict.json()
    assert problem["status"] == 409 and "still in flight" in problem["detail"]
    # Once done, every retry is a replay, and still the vendor is not called again.
    retries = await asyncio.gather(*(post(client, "/v/v1/charges", "dup") for _ in range(10)))
    assert {r.status for r in retries} == {201}
    assert all(r.headers["Idempotent-Replayed"] == "true" for r in retries)
    assert fake.calls["/v1/charges"] == 1
    assert outcomes(client)[("v", "in_flight")] == 24


async def test_same_key_for_another_request_is_422(gateway: Any, vendor: Any, store_url: str) -> None:
    client, fake = await start(gateway, vendor, store_url)
    assert (await post(client, "/v/v1/charges?a=1", "k")).status == 201
    for path, body in (
        ("/v/v1/charges?a=1", b'{"amount":999}'),  # other body
        ("/v/v1/charges?a=2", b'{"amount":100}'),  # other query
        ("/v/v1/refunds?a=1", b'{"amount":100}'),  # other path
    ):
        resp = await post(client, path, "k", body)
        assert resp.status == 422
        assert resp.headers["Content-Type"] == "application/problem+json"
        problem = await resp.json()
        assert problem["type"].endswith("/idempotency-mismatch")
        assert "different request" in problem["detail"]
    resp = await client.patch("/v/v1/charges?a=1", data=b'{"amount":100}', headers={"Idempotency-Key": "k"})
    assert resp.status == 422
    assert sum(fake.calls.values()) == 1
    assert outcomes(client)[("v", "mismatch")] == 4


async def test_key_syntax(gateway: Any, vendor: Any) -> None:
    client, fake = await start(gateway, vendor, "memory://")
    # An RFC 8941 string and the bare token name the same key.
    assert (await post(client, "/v/v1/charges", '"abc"')).status == 201
    replay = await post(client, "/v/v1/charges", "abc")
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert (await post(client, "/v/v1/charges", '"a\\"b\\\\c"')).status == 201
    assert fake.seen_headers[-1]["Idempotency-Key"] == 'a"b\\c'
    assert (await post(client, "/v/v1/charges", "x" * 255)).status == 201
    for bad in ("x" * 256, '""', '"abc', '"a"b"', '"a\\nb"', "caf\u00e9"):
        resp = await post(client, "/v/v1/charges", bad)
        assert resp.status == 400, bad
        problem = await resp.json()
        assert problem["type"].endswith("/idempotency-key")
    # Two fields are ambiguous.
    resp = await client.post(
        "/v/v1/charges", data=b"{}", headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    )
    assert resp.status == 400
    assert fake.calls["/v1/charges"] == 3


async def test_control_characters_in_a_key_are_400(gateway: Any, vendor: Any) -> None:
    # aiohttp's client refuses to send control characters, so speak HTTP directly.
    client, fake = await start(gateway, vendor, "memory://")
    for key in (b"a\x01b", b"a\x7fb", b"a\tb"):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            b"POST /v/v1/charges HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n"
            b"Idempotency-Key: " + key + b"\r\n\r\n{}"
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
        # aiohttp's own parser already refuses most control characters in any field; what it lets
        # through (a tab inside the value) the gateway refuses.
        assert answer.split(b" ", 2)[1] == b"400", (key, answer[:200])
        if key == b"a\tb":
            assert b"application/problem+json" in answer and b"control character" in answer
    assert fake.calls["/v1/charges"] == 0


async def test_required_route_without_a_key_is_400(gateway: Any, vendor: Any) -> None:
    client, fake = await start(gateway, vendor, "memory://")
    resp = await post(client, "/v/v1/required/pay", None)
    assert resp.status == 400
    problem = await resp.json()
    assert problem["type"].endswith("/idempotency-key")
    assert "requires an Idempotency-Key" in problem["detail"]
    assert (await post(client, "/v/v1/required/pay", "k1")).status == 201
    # Optional (the default for POST): no key, no deduplication.
    assert (await post(client, "/v/v1/charges", None)).status == 201
    assert (await post(client, "/v/v1/charges", None)).status == 201
    assert fake.calls == {"/v1/required/pay": 1, "/v1/charges": 2}


async def test_routes_without_idempotency_pass_the_header_through(gateway: Any, vendor: Any) -> None:
    client, fake = await start(gateway, vendor, "memory://")
    for _ in range(2):
        assert (await post(client, "/v/v1/off", "k")).status == 201
        assert (await client.put("/v/v1/things", data=b"{}", headers={"Idempotency-Key": "k"})).status == 201
    assert fake.calls == {"/v1/off": 2, "/v1/things": 2}
    assert fake.seen_headers[0]["Idempotency-Key"] == "k"
    assert not +outcomes(client)  # unary plus: only the outcomes that happened (the rest exist at zero)
    # A GET route that opts in is deduplicated like any other.
    for _ in range(2):
        assert (await client.get("/v/v1/read", headers={"Idempotency-Key": "r"})).status == 201
    assert fake.calls["/v1/read"] == 1


async def test_the_key_is_forwarded_under_the_vendors_header(gateway: Any, vendor: Any) -> None:
    client, fake = await start(gateway, vendor, "memory://", idempotency='forward_header = "X-Idem"')
    assert (await post(client, "/v/v1/charges", '"k-1"')).status == 201
    assert fake.seen_headers[0]["X-Idem"] == "k-1"
    assert "Idempotency-Key" not in fake.seen_headers[0]
    # Without a forward_header the caller's field passes through as it came (and retries of the POST
    # are not considered safe at the vendor).
    client, fake = await start(gateway, vendor, "memory://", idempotency="")
    assert (await post(client, "/v/v1/charges", '"k-1"')).status == 201
    assert fake.seen_headers[0]["Idempotency-Key"] == '"k-1"'


@pytest.mark.parametrize(
    ("code", "stored"),
    [
        (200, True),
        (400, True),
        (404, True),
        (422, True),
        (408, False),
        (409, False),
        (425, False),
        (429, False),
        (500, False),
        (503, False),
        (302, False),
    ],
)
async def test_which_vendor_answers_are_stored(gateway: Any, vendor: Any, code: int, stored: bool) -> None:
    client, fake = await start(gateway, vendor, "memory://")
    first = await post(client, f"/v/v1/status?code={code}", "k")
    second = await post(client, f"/v/v1/status?code={code}", "k")
    assert first.status == second.status == code
    assert fake.calls["/v1/status"] == (1 if stored else 2)
    assert (second.headers.get("Idempotent-Replayed") == "true") is stored
    if stored:
        assert await second.read() == await first.read()


async def test_a_vendor_5xx_is_not_stored_so_the_retry_runs(
    gateway: Any, vendor: Any, store_url: str
) -> None:
    client, fake = await start(gateway, vendor, store_url)
    assert (await post(client, "/v/v1/flaky", "k")).status == 500
    retried = await post(client, "/v/v1/flaky", "k")
    assert retried.status == 201 and "Idempotent-Replayed" not in retried.headers
    replayed = await post(client, "/v/v1/flaky", "k")
    assert replayed.status == 201 and replayed.headers["Idempotent-Replayed"] == "true"
    assert fake.calls["/v1/flaky"] == 2
    assert outcomes(client)[("v", "not_stored")] == 1


async def test_gateway_errors_are_not_stored(gateway: Any, vendor: Any) -> None:
    client, fake = await start(gateway, vendor, "memory://", total_seconds=0.3)
    for _ in range(2):
        resp = await post(client, "/v/v1/charges?delay=1", "k")
        assert resp.status == 504
        assert resp.headers["Content-Type"] == "application/problem+json"
    assert fake.calls["/v1/charges"] == 2
    assert outcomes(client)[("v", "not_stored")] == 2


async def test_an_answer_too_large_to_keep_is_not_replayed(gateway: Any, vendor: Any, store_url: str) -> None:
    client, fake = await start(
        gateway, vendor, store_url, idempotency='forward_header = "Idempotency-Key", max_body_bytes = 100000'
    )
    for path in ("/v/v1/big", "/v/v1/chunked"):
        first = await post(client, path, path)
        assert first.status == 201
        assert await first.read() == bytes(range(256)) * (300000 // 256) + bytes(range(300000 % 256))
        again = await post(client, path, path)
        assert again.status == 409
        problem = await again.json()
        assert problem["type"].endswith("/idempotency-not-replayable")
        assert "status 201" in problem["detail"] and "100000 bytes" in problem["detail"]
    # Answers within the limit, streamed by the vendor or not, replay whole.
    for path in ("/v/v1/big?size=90000", "/v/v1/chunked?size=90000", "/v/v1/empty"):
        first = await post(client, path, "small" + path)
        again = await post(client, path, "small" + path)
        assert again.headers.get("Idempotent-Replayed") == "true", (path, again.status, await again.read())
        assert again.status == first.status
        assert await again.read() == await first.read()
    assert fake.calls == {"/v1/big": 2, "/v1/chunked": 2, "/v1/empty": 1}


async def test_request_body_over_the_limit_is_413(gateway: Any, vendor: Any) -> None:
    fake = Vendor()
    server = await vendor(fake.app())
    client = await gateway(config_text(server, "memory://") + "max_body_bytes = 1000\n", routes=ROUTES)
    resp = await post(client, "/v/v1/charges", "k", b"x" * 1001)
    assert resp.status == 413
    assert (await post(client, "/v/v1/charges", "k", b"x" * 1000)).status == 201
    assert fake.calls["/v1/charges"] == 1


async def test_redis_down_503_on_required_routes_and_no_dedup_on_optional_ones(
    gateway: Any, vendor: Any, redis_server: RedisServer
) -> None:
    client, fake = await start(gateway, vendor, redis_server.url)
    assert (await client.get("/_gateway/ready")).status == 200
    assert (await post(client, "/v/v1/required/pay", "before")).status == 201
    redis_server.kill()

    started = time.monotonic()
    resp = await post(client, "/v/v1/required/pay", "k")
    assert resp.status == 503
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "store is unavailable" in (await resp.json())["detail"]
    assert time.monotonic() - started < 3
    ready = await client.get("/_gateway/ready")
    assert ready.status == 503 and ready.headers["Content-Type"] == "application/problem+json"
    # An optional route goes on without deduplication, and says so in its counters.
    assert (await post(client, "/v/v1/charges", "k")).status == 201
    assert (await post(client, "/v/v1/charges", "k")).status == 201
    assert fake.calls == {"/v1/required/pay": 1, "/v1/charges": 2}
    assert outcomes(client)[("v", "unavailable")] == 1
    assert outcomes(client)[("v", "bypassed")] == 2

    redis_server.start()
    assert (await client.get("/_gateway/ready")).status == 200
    assert (await post(client, "/v/v1/required/pay", "after")).status == 201
    assert (await post(client, "/v/v1/required/pay", "after")).headers["Idempotent-Replayed"] == "true"


async def test_redis_dying_mid_request_still_answers(
    gateway: Any, vendor: Any, redis_server: RedisServer
) -> None:
    client, fake = await start(gateway, vendor, redis_server.url)
    fake.release.clear()
    pending = asyncio.ensure_future(post(client, "/v/v1/required/pay", "k"))
    await asyncio.sleep(0.2)
    redis_server.kill()
    fake.release.set()
    resp = await asyncio.wait_for(pending, 5)
    assert resp.status == 201  # the vendor acted: the caller learns so, though the answer was not stored
    assert outcomes(client)[("v", "store_error")] == 1


async def test_lease_is_renewed_while_a_slow_vendor_works(gateway: Any, vendor: Any, store_url: str) -> None:
    client, fake = await start(
        gateway, vendor, store_url, idempotency='forward_header = "Idempotency-Key", lease_seconds = 0.3'
    )
    pending = asyncio.ensure_future(post(client, "/v/v1/charges?delay=1", "k"))
    await asyncio.sleep(0.7)  # more than two leases
    assert (await post(client, "/v/v1/charges?delay=1", "k")).status == 409
    assert (await pending).status == 201
    assert (await post(client, "/v/v1/charges?delay=1", "k")).headers["Idempotent-Replayed"] == "true"
    assert fake.calls["/v1/charges"] == 1


async def test_a_lease_lost_while_the_vendor_works_is_logged_once_and_the_answer_still_comes(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    client, fake = await start(
        gateway, vendor, "memory://", idempotency='forward_header = "Idempotency-Key", lease_seconds = 0.3'
    )
    pending = asyncio.ensure_future(post(client, "/v/v1/charges?delay=1", "k"))
    deadline = time.monotonic() + 5
    while fake.calls["/v1/charges"] < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    client.app.services.store.idempotency.clear()  # the claim is gone, as if it had lapsed
    assert (await pending).status == 201
    lost = [r for r in logs.records() if r["event"] == "idempotency_lease_lost"]
    # The renewal that found it gone says so once (no renewal after it); then the answer is not stored.
    assert [("detail" in r, r["key"]) for r in lost] == [(False, "k"), (True, "k")]
    assert outcomes(client)[("v", "lease_lost")] == 1


async def test_two_authenticated_callers_with_the_same_key_never_collide(
    gateway: Any, vendor: Any, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = {"billing": "billing-key-0123456789", "crm": "crm-key-0123456789"}
    for name, key in keys.items():
        monkeypatch.setenv(f"GW_KEY_{name.upper()}", key)
    fake = Vendor()
    server = await vendor(fake.app())
    clients = "".join(f'[clients.{n}]\nkey = "env:GW_KEY_{n.upper()}"\nallow = ["v"]\n' for n in keys)
    client = await gateway(clients + config_text(server, store_url), routes=ROUTES)
    answers: dict[str, bytes] = {}
    for name, key in keys.items():
        resp = await post(client, "/v/v1/charges", "same-key", headers={"X-Gateway-Key": key})
        assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
        answers[name] = await resp.read()
    assert answers["billing"] != answers["crm"]  # each caller's own vendor call (#1 and #2)
    for name, key in keys.items():
        resp = await post(client, "/v/v1/charges", "same-key", headers={"X-Gateway-Key": key})
        assert resp.headers["Idempotent-Replayed"] == "true"
        assert await resp.read() == answers[name]
    assert fake.calls["/v1/charges"] == 2
