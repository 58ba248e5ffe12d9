"""Webhooks in, events out (docs/http.md), end to end: signed vendor requests over real sockets to
the gateway, a private nats-server with JetStream (and a private redis-server) as the bus, and
subscribers with nats-py proving what arrived and how often.

Signatures are made as the vendors make them and checked against the vendors' own libraries
(``stripe.Webhook.construct_event``, ``standardwebhooks``), so the gateway agrees with them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import nats
import orjson
import pytest
import redis.asyncio as aioredis
import standardwebhooks
import stripe
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.conftest import CapturedLogs
from tests.nats_server import NatsServer
from tests.redis_server import RedisServer

STRIPE_SECRET = "whsec_test_stripe_7c1d"
OLD_STRIPE_SECRET = "whsec_test_stripe_old_99"
GITHUB_SECRET = "github-hook-secret-4411"
SHOPIFY_SECRET = "shopify-hook-secret-7781"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-0001").decode()
GENERIC_SECRET = "generic-hook-secret-5521"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("OLD_STRIPE_WEBHOOK_SECRET", OLD_STRIPE_SECRET)
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET)
    monkeypatch.setenv("SHOPIFY_WEBHOOK_SECRET", SHOPIFY_SECRET)
    monkeypatch.setenv("STANDARD_WEBHOOK_SECRET", STANDARD_SECRET)
    monkeypatch.setenv("GENERIC_WEBHOOK_SECRET", GENERIC_SECRET)


def config(nats_url: str | None, store: str = "memory://", timeout: float = 2.0, extra: str = "") -> str:
    bus = f'[bus]\nnats_url = "{nats_url}"\npublish_timeout_seconds = {timeout}\n' if nats_url else ""
    return f"""
[gateway]
store = "{store}"
max_body_bytes = 65536

{bus}

[vendors.sandbox]
base_url = "http://127.0.0.1:9"

[webhooks.stripe]
verify = {{ scheme = "stripe", secret = ["env:STRIPE_WEBHOOK_SECRET", "env:OLD_STRIPE_WEBHOOK_SECRET"] }}
publish = {{ bus = "nats", subject = "vendors.stripe.{{type}}" }}

[webhooks.github]
verify = {{ scheme = "github", secret = "env:GITHUB_WEBHOOK_SECRET" }}
publish = {{ bus = "nats", subject = "vendors.github.{{type}}" }}

[webhooks.shopify]
verify = {{ scheme = "shopify", secret = "env:SHOPIFY_WEBHOOK_SECRET" }}
publish = {{ bus = "nats", subject = "vendors.shopify.{{type}}" }}

[webhooks.standard]
verify = {{ scheme = "standard", secret = "env:STANDARD_WEBHOOK_SECRET" }}
publish = {{ bus = "nats", subject = "vendors.standard.{{type}}" }}

[webhooks.crm]
verify = {{ scheme = "hmac-sha256", secret = "env:GENERIC_WEBHOOK_SECRET", header = "X-Crm-Signature", prefix = "sha256=" }}
event_id = "/event/uid"
event_type = "header:X-Crm-Event"
request_schema = "crm/event.schema.json"
request_transform = "crm/event-to-internal.toml"
publish = {{ bus = "nats", subject = "vendors.crm.{{type}}" }}
{extra}
"""


FILES = {
    "transforms/crm/event.schema.json": """
{"type": "object", "required": ["event"], "properties": {"event": {"type": "object", "required": ["uid"]}}}
""",
    "transforms/crm/event-to-internal.toml": """
[[map]]
to = "/id"
from = "/event/uid"

[[map]]
to = "/customer"
from = "/event/customer/name"
""",
}


def stripe_event(event_id: str = "evt_1", kind: str = "customer.created") -> bytes:
    return orjson.dumps(
        {"id": event_id, "object": "event", "type": kind, "data": {"object": {"id": "cus_1"}}}
    )


def stripe_headers(body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> dict[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={signature}", "Content-Type": "application/json"}


class Subscriber:
    """A nats-py client with a core subscription on ``vendors.>`` and ``gateway.>``: every message the
    gateway publishes, as published (JetStream's storage is read separately)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.messages: list[Msg] = []

    async def handle(self, msg: Msg) -> None:
        self.messages.append(msg)

    async def settled(self) -> list[Msg]:
        # A PING round trip: the server writes to this connection in order, and it queued each message
        # for us before the gateway's PubAck went out, so everything acknowledged so far is in.
        await self.nc.flush(timeout=5)
        return self.messages

    async def stored(self, stream: str = "GATEWAY") -> list[Any]:
        """Every message the JetStream stream holds, in order."""
        js = self.nc.jetstream()
        info = await js.stream_info(stream)
        if not info.state.messages:
            return []
        return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


@pytest.fixture
async def subscriber(nats_server: NatsServer) -> AsyncIterator[Subscriber]:
    nc = await nats.connect(nats_server.url)
    sub = Subscriber(nc)
    await nc.subscribe("vendors.>", cb=sub.handle)
    await nc.subscribe("gateway.>", cb=sub.handle)
    await nc.flush()
    yield sub
    await nc.close()


async def bus_connected(client: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        resp = await client.get("/_gateway/ready")
        if (await resp.json()).get("bus", {}).get("nats") == "connected":
            return
        assert time.monotonic() < deadline, "the gateway did not connect to NATS"
        await asyncio.sleep(0.05)


async def post(client: Any, name: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"/_webhooks/{name}", data=body, headers=headers)
    return resp.status, orjson.loads(await resp.read())


def outcomes(client: Any) -> dict[tuple[str, ...], int]:
    return dict(client.app.services.webhook_outcomes)


async def test_a_stripe_event_sent_three_times_reaches_the_subscriber_once(
    gateway: Any, nats_server: NatsServer, subscriber: Subscriber, logs: CapturedLogs
) -> None:
    client = await gateway(config(nats_server.url), files=FILES)
    await bus_connected(client)
    body = stripe_event("evt_1PaZ", "customer.subscription.created")
    headers = stripe_headers(body)
    # The request is what Stripe itself would accept.
    assert (
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], STRIPE_SECRET)["id"] == "evt_1PaZ"
    )
    answers = [await post(client, "stripe", body, headers) for _ in range(3)]  # the vendor retrying
    assert [(status, doc["status"]) for status, doc in answers] == [
        (200, "published"),
        (200, "duplicate"),
        (200, "duplicate"),
    ]
    published = await subscriber.settled()
    assert len(published) == 1
    msg = published[0]
    assert msg.subject == "vendors.stripe.customer.subscription.created"
    assert msg.data == body
    assert msg.headers is not None
    assert {k: msg.headers[k] for k in ("Gateway-Webhook", "Gateway-Event-Id", "Nats-Msg-Id")} == {
        "Gateway-Webhook": "stripe",
        "Gateway-Event-Id": "evt_1PaZ",
        "Nats-Msg-Id": "evt_1PaZ",
    }
    stored = await subscriber.stored()
    assert [(m.subject, m.data) for m in stored] == [("vendors.stripe.customer.subscription.created", body)]
    assert outcomes(client) == {("stripe", "published"): 1, ("stripe", "duplicate"): 2}
    access = [r for r in logs.access() if r.get("webhook") == "stripe"]
    assert [(r["status"], r["outcome"], r["event_id"], r["path"]) for r in access] == [
        (200, "published", "evt_1PaZ", "/_webhooks/stripe"),
        (200, "duplicate", "evt_1PaZ", "/_webhooks/stripe"),
        (200, "duplicate", "evt_1PaZ", "/_webhooks/stripe"),
    ]
    metrics = await (await client.get("/_gateway/metrics")).text()
    assert 'gateway_webhooks_total{outcome="published",webhook="stripe"} 1.0' in metrics
    assert 'gateway_webhooks_total{outcome="duplicate",webhook="stripe"} 2.0' in metrics
    assert 'gateway_bus_publish_duration_seconds_count{bus="nats"} 1.0' in metrics
    # The old secret of a rotation still signs: a new event under it is published too.
    other = stripe_event("evt_2", "invoice.paid")
    assert (await post(client, "stripe", other, stripe_headers(other, OLD_STRIPE_SECRET)))[0] == 200


async def test_tampered_wrong_secret_and_stale_are_refused_and_nothing_is_published(
    gateway: Any, nats_server: NatsServer, subscriber: Subscriber, logs: CapturedLogs
) -> None:
    client = await gateway(config(nats_server.url), files=FILES)
    await bus_connected(client)
    body = stripe_event("evt_bad")
    good = stripe_headers(body)
    tampered = body.replace(b"cus_1", b"cus_666")
    cases = {
        "tampered": (tampered, good),
        "wrong secret": (body, stripe_headers(body, "whsec_not_the_secret")),
        "stale": (body, stripe_headers(body, timestamp=int(time.time()) - 600)),
        "unsigned": (body, {"Content-Type": "application/json"}),
    }
    for name, (payload, headers) in cases.items():
        with pytest.raises(stripe.SignatureVerificationError):  # Stripe's library refuses them too
            stripe.Webhook.construct_event(payload, headers.get("Stripe-Signature", ""), STRIPE_SECRET)
        resp = await client.post("/_webhooks/stripe", data=payload, headers=headers)
        assert resp.status == 401, name
        assert resp.headers["Content-Type"] == "application/problem+json"
        problem = await resp.json()
        assert problem["type"].endswith("/webhook-signature") and problem["request_id"], name
    assert await subscriber.settled() == []
    assert outcomes(client) == {("stripe", "rejected"): 4}
    rejected = [r for r in logs.records() if r["event"] == "webhook_rejected"]
    assert [r["status"] for r in rejected] == [401] * 4
    assert "past the tolerance" in rejected[2]["reason"]
    output = logs.getvalue()
    assert b"cus_666" not in output and b"cus_1" not in output  # logged without the body
    assert STRIPE_SECRET.encode() not in output
    # The genuine event still goes through afterwards: refusals claimed nothing.
    assert (await post(client, "stripe", body, good))[0] == 200


async def test_with_the_bus_stopped_the_vendor_gets_503_and_its_retry_is_published(
    gateway: Any, nats_server: NatsServer
) -> None:
    client = await gateway(config(nats_server.url), files=FILES)
    await bus_connected(client)
    body = stripe_event("evt_outage", "charge.succeeded")
    nats_server.stop()
    started = time.monotonic()
    resp = await client.post("/_webhooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 503
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.headers["Retry-After"] == "1"
    assert "not published" in (await resp.json())["detail"]
    assert time.monotonic() - started < 4.0  # at most the publish timeout (2 s), never a hang
    nats_server.start()  # the same port and storage: the bus came back
    await bus_connected(client)
    status, doc = await post(client, "stripe", body, stripe_headers(body))  # the vendor's retry
    assert (status, doc["status"]) == (200, "published")
    assert (await post(client, "stripe", body, stripe_headers(body)))[1]["status"] == "duplicate"
    nc = await nats.connect(nats_server.url)
    try:
        stored = await Subscriber(nc).stored()
        assert [(m.subject, m.data) for m in stored] == [("vendors.stripe.charge.succeeded", body)]
    finally:
        await nc.close()
    assert outcomes(client) == {
        ("stripe", "unavailable"): 1,
        ("stripe", "published"): 1,
        ("stripe", "duplicate"): 1,
    }


async def test_a_hung_bus_is_503_within_the_publish_timeout(
    gateway: Any, nats_server: NatsServer, subscriber: Subscriber
) -> None:
    client = await gateway(config(nats_server.url, timeout=0.5), files=FILES)
    await bus_connected(client)
    body = stripe_event("evt_slow")
    nats_server.pause()
    try:
        started = time.monotonic()
        resp = await client.post("/_webhooks/stripe", data=body, headers=stripe_headers(body))
        waited = time.monotonic() - started
    finally:
        nats_server.resume()
    assert resp.status == 503
    assert waited < 5.0  # bounded by the publish timeout (0.5 s) plus a loaded machine's slack
    await bus_connected(client)
    deadline = time.monotonic() + 20
    while (status := (await post(client, "stripe", body, stripe_headers(body)))[0]) != 200:
        assert status == 503 and time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # Published once however the timed-out attempt ended: JetStream dropped a late copy by its Nats-Msg-Id.
    stored = await subscriber.stored()
    assert [m.data for m in stored] == [body]


async def test_nats_down_at_start_does_not_stop_the_gateway(
    gateway: Any, nats_server: NatsServer, subscriber: Subscriber
) -> None:
    url = nats_server.url
    nats_server.stop()
    client = await gateway(config(url), files=FILES)
    assert (await client.get("/_gateway/ready")).status == 200
    body = stripe_event("evt_early")
    assert (await client.post("/_webhooks/stripe", data=body, headers=stripe_headers(body))).status == 503
    nats_server.start()
    await bus_connected(client)
    assert (await post(client, "stripe", body, stripe_headers(body)))[0] == 200


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


async def test_concurrent_duplicates_publish_once(
    gateway: Any, nats_server: NatsServer, subscriber: Subscriber, store_url: str
) -> None:
    client = await gateway(config(nats_server.url, store=store_url), files=FILES)
    await bus_connected(client)
    body = stripe_event("evt_burst")
    headers = stripe_headers(body)
    answers = await asyncio.gather(*(post(client, "stripe", body, headers) for _ in range(20)))
    assert sorted(doc["status"] for _, doc in answers) == ["duplicate"] * 19 + ["published"]
    assert {status for status, _ in answers} == {200}
    assert len(await subscriber.settled()) == 1
    assert len(await subscriber.stored()) == 1


async def test_github_shopify_standard_and_generic_schemes(
    gateway: Any, nats_server: NatsServer, subscriber: Subscriber
) -> None:
    client = await gateway(config(nats_server.url), files=FILES)
    await bus_connected(client)
    push = orjson.dumps({"ref": "refs/heads/main"})
    gh = {
        "X-Hub-Signature-256": "sha256=" + hmac.new(GITHUB_SECRET.encode(), push, hashlib.sha256).hexdigest(),
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }
    assert (await post(client, "github", push, gh))[0] == 200
    order = orjson.dumps({"id": 820982911946154500})
    shop = {
        "X-Shopify-Hmac-Sha256": base64.b64encode(
            hmac.new(SHOPIFY_SECRET.encode(), order, hashlib.sha256).digest()
        ).decode(),
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    }
    assert (await post(client, "shopify", order, shop))[0] == 200
    std_lib = standardwebhooks.Webhook(STANDARD_SECRET)
    now = datetime.now(tz=UTC)
    std_body = orjson.dumps({"type": "user.created", "data": {"id": 1}})
    std = {
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": std_lib.sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now, std_body.decode()),
    }
    std_lib.verify(std_body, std)  # the library accepts what the test sends
    assert (await post(client, "standard", std_body, std))[0] == 200
    crm_body = orjson.dumps({"event": {"uid": "c-77", "customer": {"name": "Ada"}, "internal": "x"}})
    crm = {
        "X-Crm-Signature": "sha256="
        + hmac.new(GENERIC_SECRET.encode(), crm_body, hashlib.sha256).hexdigest(),
        "X-Crm-Event": "customer.updated",
    }
    assert (await post(client, "crm", crm_body, crm))[0] == 200
    published = {m.subject: m for m in await subscriber.settled()}
    assert sorted(published) == [
        "vendors.crm.customer.updated",
        "vendors.github.push",
        "vendors.shopify.orders.create",
        "vendors.standard.user.created",
    ]
    assert published["vendors.github.push"].headers["Gateway-Event-Id"] == gh["X-GitHub-Delivery"]
    assert (
        published["vendors.shopify.orders.create"].headers["Gateway-Event-Id"] == shop["X-Shopify-Webhook-Id"]
    )
    assert published["vendors.standard.user.created"].headers["Nats-Msg-Id"] == std["webhook-id"]
    # The transform's output is what is published; the event id was read before it.
    assert orjson.loads(published["vendors.crm.customer.updated"].data) == {"id": "c-77", "customer": "Ada"}
    assert published["vendors.crm.customer.updated"].headers["Gateway-Event-Id"] == "c-77"


async def test_bad_input_gets_a_clear_problem_and_nothing_is_published(
    gateway: Any, nats_server: NatsServer, subscriber: Subscriber
) -> None:
    client = await gateway(config(nats_server.url), files=FILES)
    await bus_connected(client)

    def crm(body: bytes) -> dict[str, str]:
        digest = hmac.new(GENERIC_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Crm-Signature": "sha256=" + digest, "X-Crm-Event": "x"}

    not_json = b"{not json"
    no_id = orjson.dumps({"event": {"name": "no uid"}})
    no_type = orjson.dumps({"id": "evt_x", "object": "event"})
    cases = [
        ("POST", "/_webhooks/nope", b"{}", {}, 404, "no webhook named 'nope'"),
        ("GET", "/_webhooks/stripe", b"", {}, 405, "answers POST"),
        ("POST", "/_webhooks/crm", not_json, crm(not_json), 400, "not valid JSON"),
        ("POST", "/_webhooks/crm", no_id, crm(no_id), 400, "fails crm/event.schema.json"),
        (
            "POST",
            "/_webhooks/stripe",
            no_type,
            stripe_headers(no_type),
            400,
            "the event has no type at /type",
        ),
        ("POST", "/_webhooks/stripe", b"x" * 70000, stripe_headers(b"x" * 70000), 413, "larger than 65536"),
    ]
    for method, path, body, headers, status, detail in cases:
        resp = await client.request(method, path, data=body, headers=headers)
        assert resp.status == status, (path, await resp.text())
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert detail in (await resp.json())["detail"], path
    assert (await client.request("GET", "/_webhooks/stripe")).headers["Allow"] == "POST"
    assert await subscriber.settled() == []


async def test_redis_streams_as_the_bus(gateway: Any, redis_server: RedisServer) -> None:
    text = f"""
[gateway]
store = "{redis_server.url}"

[vendors.sandbox]
base_url = "http://127.0.0.1:9"

[webhooks.billing]
verify = {{ scheme = "stripe", secret = "env:STRIPE_WEBHOOK_SECRET" }}
publish = {{ bus = "redis", stream = "vendors.billing.{{type}}" }}
"""
    client = await gateway(text)
    body = stripe_event("evt_r1", "invoice.paid")
    for _ in range(3):
        assert (await post(client, "billing", body, stripe_headers(body)))[0] == 200
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        entries = await raw.xrange("vendors.billing.invoice.paid")
        assert [fields for _, fields in entries] == [
            {b"body": body, b"Gateway-Webhook": b"billing", b"Gateway-Event-Id": b"evt_r1"}
        ]
    finally:
        await raw.aclose()
    redis_server.kill()  # the store is the bus: down, it is a 503 for the vendor
    other = stripe_event("evt_r2")
    assert (await client.post("/_webhooks/billing", data=other, headers=stripe_headers(other))).status == 503


async def test_delivered_and_dead_lettered_deliveries_appear_on_the_bus(
    gateway: Any, vendor: Any, nats_server: NatsServer, subscriber: Subscriber
) -> None:
    from tests.resilience_vendor import resilience_vendor

    server = await vendor(resilience_vendor())
    text = f"""
[bus]
nats_url = "{nats_server.url}"

[delivery]
publish = {{ bus = "nats", subject = "gateway.deliveries.{{state}}" }}

[vendors.v]
base_url = "{server.make_url("/")}"
retry = {{ base_delay_seconds = 0.01, max_delay_seconds = 0.02 }}
"""
    routes = {
        "v": 'vendor = "v"\nexpose = "all"\n\n[[route]]\nmethod = "*"\npath = "/status/**"\ndelivery = "async"\n'
    }
    client = await gateway(text, routes=routes)
    await bus_connected(client)
    locations = {}
    for name, path in (("delivered", "/v/status/200"), ("dead", "/v/status/404")):
        resp = await client.put(path, data=b'{"amount": 1}')
        assert resp.status == 202, await resp.text()
        locations[name] = resp.headers["Location"]
    deadline = time.monotonic() + 20
    while len(await subscriber.settled()) < 2:
        assert time.monotonic() < deadline, "no delivery events"
        await asyncio.sleep(0.05)
    events = {m.subject: m for m in await subscriber.settled()}
    assert sorted(events) == ["gateway.deliveries.dead", "gateway.deliveries.delivered"]
    for state, location in locations.items():
        event = orjson.loads(events[f"gateway.deliveries.{state}"].data)
        # The event is the delivery's status JSON, as GET /_gateway/deliveries/ID shows it then.
        shown = await (await client.get(location)).json()
        assert event["state"] == shown["state"] == state
        assert {k: event[k] for k in ("id", "vendor", "path", "attempts", "last_error")} == {
            k: shown[k] for k in ("id", "vendor", "path", "attempts", "last_error")
        }
        assert event["response"]["status"] == shown["response"]["status"]
        headers = events[f"gateway.deliveries.{state}"].headers
        assert headers["Gateway-Delivery-Id"] == event["id"]
        assert headers["Nats-Msg-Id"] == f"{event['id']}:{state}"
    assert "not retried" in orjson.loads(events["gateway.deliveries.dead"].data)["last_error"]
    stored = await subscriber.stored()
    assert sorted(m.subject for m in stored) == ["gateway.deliveries.dead", "gateway.deliveries.delivered"]
    counts = dict(client.app.services.deliveries.events)
    assert counts == {("delivered", "published"): 1, ("dead", "published"): 1}


async def test_a_delivery_event_waits_out_a_short_bus_outage(
    gateway: Any, vendor: Any, nats_server: NatsServer
) -> None:
    from tests.resilience_vendor import resilience_vendor

    server = await vendor(resilience_vendor())
    text = f"""
[bus]
nats_url = "{nats_server.url}"
publish_timeout_seconds = 0.5

[delivery]
publish = {{ bus = "nats", subject = "gateway.deliveries.{{state}}" }}

[vendors.v]
base_url = "{server.make_url("/")}"
"""
    routes = {
        "v": 'vendor = "v"\nexpose = "all"\n\n[[route]]\nmethod = "*"\npath = "/status/**"\ndelivery = "async"\n'
    }
    client = await gateway(text, routes=routes)
    await bus_connected(client)
    nats_server.stop()
    resp = await client.put("/v/status/200", data=b"{}")
    assert resp.status == 202
    location = resp.headers["Location"]
    deadline = time.monotonic() + 20
    while (await (await client.get(location)).json())["state"] != "delivered":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    nats_server.start()
    nc = await nats.connect(nats_server.url)
    try:
        reader = Subscriber(nc)
        while True:
            try:
                stored = await reader.stored()
            except nats.js.errors.NotFoundError:  # the stream is made once the gateway is back
                stored = []
            if stored:
                break
            assert time.monotonic() < deadline, "the delivery event was never published"
            await asyncio.sleep(0.1)
        assert [orjson.loads(m.data)["id"] for m in stored] == [location.rsplit("/", 1)[1]]
    finally:
        await nc.close()


async def test_the_sandbox_sends_signed_stripe_webhooks_on_demand(
    gateway: Any,
    vendor: Any,
    nats_server: NatsServer,
    subscriber: Subscriber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.sandbox import SANDBOX_STATE, create_app

    app = create_app()
    own = app[SANDBOX_STATE].config.webhook_secret  # the sandbox's default secret, made at start
    assert own.startswith("whsec_") and own != create_app()[SANDBOX_STATE].config.webhook_secret
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", own)
    sandbox = await vendor(app)
    client = await gateway(config(nats_server.url), files=FILES)
    await bus_connected(client)
    target = str(client.make_url("/_webhooks/stripe"))

    async def send(**options: Any) -> dict[str, Any]:
        async with client.session.post(
            sandbox.make_url("/_sandbox/webhooks/stripe"), json={"url": target, **options}
        ) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    sent = await send(times=3, type="payment_intent.succeeded")
    assert [(s["status"], s["body"]["status"]) for s in sent["sent"]] == [
        (200, "published"),
        (200, "duplicate"),
        (200, "duplicate"),
    ]
    published = await subscriber.settled()
    assert [m.subject for m in published] == ["vendors.stripe.payment_intent.succeeded"]
    # What the sandbox signs, Stripe's own library accepts.
    header = stripe_headers(published[0].data, own)["Stripe-Signature"]
    assert stripe.Webhook.construct_event(published[0].data, header, own)["id"] == sent["id"]
    assert [s["status"] for s in (await send(tamper=True))["sent"]] == [401]
    assert [s["status"] for s in (await send(age_seconds=600))["sent"]] == [401]
    assert [s["status"] for s in (await send(secret="whsec_other"))["sent"]] == [401]
    assert len(await subscriber.settled()) == 1
    async with client.session.post(sandbox.make_url("/_sandbox/webhooks/stripe"), json={"times": 99}) as resp:
        assert resp.status == 400
