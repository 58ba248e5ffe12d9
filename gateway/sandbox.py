"""A local stand-in vendor: a small fake billing/CRM SaaS with Stripe-like shapes.

The shipped config, the README quickstart and the test-suite point the gateway at it. Besides plain
customer CRUD it has endpoints that misbehave on purpose (rate limits, 503s, slow and huge answers,
deprecation headers, OAuth2 tokens that can be revoked) so every gateway feature has something real to
talk to; ``POST /_sandbox/drift`` changes the shape of its customers, as a vendor changing its API
under its callers would (for contract checks), and it sends Stripe-signed webhooks on demand
(``POST /_sandbox/webhooks/stripe``); its credentials (the OAuth2 client's secret, the webhook signing
secret) are made at start. Every call to a vendor endpoint is counted in
`app[SANDBOX_STATE].calls`, keyed "METHOD /route/template" (e.g. "GET /v1/customers/{id}");
`/_sandbox/*` calls are not counted.

Run it with `gateway sandbox --listen HOST:PORT`, `python -m gateway.sandbox [HOST:PORT]`, or in-process
with `runner = await start(host, port)` / `await runner.cleanup()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import math
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import BasicAuth, hdrs, web

JSON = dict[str, Any]

SEED_CUSTOMERS = 25
MAX_SLOW_SECONDS = 30.0
MAX_BIG_BYTES = 200 * 1024 * 1024
CHUNK = bytes(range(256)) * 256  # 64 KiB; byte i of every /v1/big body is i % 256
ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")
DEPRECATION = "@1735689600"  # RFC 9745: 2025-01-01T00:00:00Z
SUNSET = "Wed, 31 Dec 2025 23:59:59 GMT"  # RFC 8594
INVALID_TOKEN = 'Bearer error="invalid_token"'


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    client_id: str = "sandbox-client"
    # The OAuth2 client's secret: made at start, as the webhook secret is (POST /_sandbox/oauth/secret
    # makes a new one and answers it), so no credential is written down anywhere.
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    token_ttl_seconds: int = 3600
    rate_limit_requests: int = 5
    rate_limit_window_seconds: float = 1.0
    # What POST /_sandbox/webhooks/stripe signs with, unless the request names the gateway's secret:
    # made at start, so no signing secret is written down anywhere (and none works but by intent).
    webhook_secret: str = field(default_factory=lambda: f"whsec_{secrets.token_hex(24)}")


@dataclass
class SandboxState:
    """Everything the sandbox remembers; tests read it through `app[SANDBOX_STATE]`."""

    config: SandboxConfig = field(default_factory=SandboxConfig)
    calls: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    customers: dict[str, JSON] = field(default_factory=dict)  # insertion order = creation order
    next_customer: int = 1
    # Idempotency-Key -> (body fingerprint, status, response body), like Stripe's 24 h cache but forever.
    idempotency: dict[str, tuple[bytes, int, bytes]] = field(default_factory=dict)
    flaky: Counter[str] = field(default_factory=Counter)
    window_start: float = 0.0
    window_count: int = 0
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)  # token -> (expires, scope)
    # How customers are shown from now on (POST /_sandbox/drift): {"rename": {old: new}, "drop": [...],
    # "set": {field: value}}; empty: as stored.
    drift: JSON = field(default_factory=dict)
    client_secret: str = ""  # the OAuth2 client's now: the config's until POST /_sandbox/oauth/secret

    def __post_init__(self) -> None:
        self.client_secret = self.client_secret or self.config.client_secret

    def reset(self) -> None:
        """Forget counters, flaky attempts, the rate-limit window and any drift; customers and tokens
        stay."""
        self.drift = {}
        self.calls.clear()
        self.tokens_issued = 0
        self.flaky.clear()
        self.window_start, self.window_count = 0.0, 0

    def add_customer(self, fields: JSON, created: int) -> JSON:
        customer_id = f"cus_{self.next_customer:04d}"
        self.next_customer += 1
        customer = {"id": customer_id, "object": "customer", **fields, "created": created}
        self.customers[customer_id] = customer
        return customer

    def shown(self, customer: JSON) -> JSON:
        """A customer as the sandbox answers with it: drifted, if it was asked to drift."""
        if not self.drift:
            return customer
        renamed: dict[str, str] = self.drift.get("rename", {})
        set_values: JSON = self.drift.get("set", {})
        out = {renamed.get(key, key): value for key, value in customer.items()}
        for key in self.drift.get("drop", []):
            out.pop(key, None)
        return out | set_values


SANDBOX_STATE = web.AppKey("sandbox_state", SandboxState)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return _raw_json(orjson.dumps(data), status, headers)


def _raw_json(body: bytes, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _error(status: int, message: str, type_: str = "invalid_request_error", **headers: str) -> web.Response:
    return _json({"error": {"type": type_, "message": message}}, status, headers or None)


class _BadRequest(Exception):
    """Raised by parsers; turned into a 400 invalid_request_error by the handler that called them."""


def _number(request: web.Request, name: str, default: float, kind: type[int] | type[float]) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise _BadRequest(f"Invalid {name}: {raw!r} is not a valid {kind.__name__}") from None
    if value < 0 or math.isnan(value):
        raise _BadRequest(f"Invalid {name}: must be non-negative")
    return value


# --- customers ---------------------------------------------------------------------------------


def _customer_fields(body: bytes) -> JSON:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _BadRequest("Request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise _BadRequest("Request body must be a JSON object")
    name, email = data.get("name"), data.get("email")
    if not isinstance(name, str) or not name.strip():
        raise _BadRequest("Missing required param: name (a non-empty string)")
    if email is not None and not isinstance(email, str):
        raise _BadRequest("Invalid email: must be a string")
    address = data.get("address")
    if address is not None:
        if not isinstance(address, dict) or not all(
            v is None or isinstance(v, str) for v in address.values()
        ):
            raise _BadRequest("Invalid address: must be an object of strings")
        address = {key: address.get(key) for key in ADDRESS_FIELDS}
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in metadata.values()
    ):
        raise _BadRequest("Invalid metadata: must be an object of strings or numbers")
    # Unknown top-level params are ignored (Stripe rejects them) so example transforms stay usable.
    metadata = {key: str(value) for key, value in metadata.items()}
    return {"name": name, "email": email, "address": address, "metadata": metadata}


async def create_customer(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    body = await request.read()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        return _error(400, "Idempotency-Key must be 1 to 255 characters")
    fingerprint = hashlib.sha256(body).digest()
    if key is not None and (stored := state.idempotency.get(key)) is not None:
        if stored[0] != fingerprint:
            return _error(
                400,
                f"Keys for idempotent requests can only be used with the same parameters they were first "
                f"used with. Try using a key other than {key!r} if you meant to execute a different request.",
                "idempotency_error",
            )
        return _raw_json(stored[2], stored[1], {"Idempotency-Key": key, "Idempotent-Replayed": "true"})
    try:
        fields = _customer_fields(body)
    except _BadRequest as exc:  # validation failures are not stored, as with Stripe
        return _error(400, str(exc))
    payload = orjson.dumps(state.shown(state.add_customer(fields, int(time.time()))))
    if key is None:
        return _raw_json(payload, 201)
    state.idempotency[key] = (fingerprint, 201, payload)
    return _raw_json(payload, 201, {"Idempotency-Key": key})


def _customer_page(request: web.Request, url: str, headers: dict[str, str] | None = None) -> web.Response:
    state = request.app[SANDBOX_STATE]
    try:
        limit = int(_number(request, "limit", 10, int))
    except _BadRequest as exc:
        return _error(400, str(exc))
    if not 1 <= limit <= 100:
        return _error(400, "Invalid limit: must be between 1 and 100")
    customers = list(reversed(state.customers.values()))  # newest first, like Stripe
    start = 0
    if (after := request.query.get("starting_after")) is not None:
        if after not in state.customers:
            return _error(400, f"Invalid starting_after: no such customer: {after!r}")
        start = next(i for i, c in enumerate(customers) if c["id"] == after) + 1
    page = [state.shown(customer) for customer in customers[start : start + limit]]
    body = {"object": "list", "data": page, "has_more": start + limit < len(customers), "url": url}
    return _json(body, headers=headers)


async def list_customers(request: web.Request) -> web.Response:
    return _customer_page(request, "/v1/customers")


async def legacy_list_customers(request: web.Request) -> web.Response:
    return _customer_page(request, "/v1/legacy/customers", {"Deprecation": DEPRECATION, "Sunset": SUNSET})


async def get_customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["id"]
    state = request.app[SANDBOX_STATE]
    customer = state.customers.get(customer_id)
    if customer is None:
        return _error(404, f"No such customer: {customer_id!r}")
    return _json(state.shown(customer))


async def delete_customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["id"]
    if request.app[SANDBOX_STATE].customers.pop(customer_id, None) is None:
        return _error(404, f"No such customer: {customer_id!r}")
    return _json({"id": customer_id, "object": "customer", "deleted": True})


# --- endpoints that misbehave on purpose --------------------------------------------------------


async def limited(request: web.Request) -> web.Response:
    state, config = request.app[SANDBOX_STATE], request.app[SANDBOX_STATE].config
    now = time.monotonic()
    if state.window_count == 0 or now - state.window_start >= config.rate_limit_window_seconds:
        state.window_start, state.window_count = now, 0
    if state.window_count >= config.rate_limit_requests:
        wait = state.window_start + config.rate_limit_window_seconds - now
        message = f"Too many requests: {config.rate_limit_requests} per {config.rate_limit_window_seconds}s"
        return _error(429, message, "rate_limit_error", **{"Retry-After": str(max(1, math.ceil(wait)))})
    state.window_count += 1
    return _json({"ok": True, "remaining": config.rate_limit_requests - state.window_count})


async def flaky(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    try:
        fail = None if "fail" not in request.query else int(_number(request, "fail", 0, int))
    except _BadRequest as exc:
        return _error(400, str(exc))
    key = request.query.get("key", "")
    state.flaky[key] += 1
    attempt = state.flaky[key]
    failing = attempt <= fail if fail is not None else attempt % 3 == 0
    if failing:
        return _error(503, f"Sandbox flaky failure on attempt {attempt}", "api_error", **{"Retry-After": "0"})
    return _json({"attempt": attempt})


async def slow(request: web.Request) -> web.Response:
    try:
        seconds = min(_number(request, "seconds", 1.0, float), MAX_SLOW_SECONDS)
    except _BadRequest as exc:
        return _error(400, str(exc))
    # Sleep in steps and stop once the caller hangs up, so a timed-out gateway does not leave handlers
    # sleeping for 30 s that would hold up the sandbox's graceful shutdown.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if request.transport is None or request.transport.is_closing():
            break
        await asyncio.sleep(min(left, 0.05))
    return _json({"slept": seconds})


async def big(request: web.Request) -> web.StreamResponse:
    try:
        size = int(min(_number(request, "bytes", 1024 * 1024, int), MAX_BIG_BYTES))
    except _BadRequest as exc:
        return _error(400, str(exc))
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    view = memoryview(CHUNK)
    # StreamResponse.write() would send a body even for HEAD; only the headers may go out then.
    try:
        for offset in range(0, 0 if request.method == hdrs.METH_HEAD else size, len(CHUNK)):
            await response.write(view[: min(len(CHUNK), size - offset)])
    except ConnectionError:  # the caller hung up mid-stream: not an error worth a traceback
        return response
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.Response:
    headers: dict[str, str] = {}
    names: dict[str, str] = {}  # lower-case name -> the spelling first received
    for raw_name, raw_value in request.raw_headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        name = names.setdefault(name.lower(), name)
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    path, _, query = request.raw_path.partition("?")
    body = await request.read()
    try:
        text, is_base64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode("ascii"), True
    return _json(
        {
            "method": request.method,
            "path": path,
            "query": query,
            "headers": headers,
            "body": text,
            "body_base64": is_base64,
        }
    )


# --- OAuth2 client credentials ------------------------------------------------------------------


def _oauth_error(status: int, error: str, description: str, **headers: str) -> web.Response:
    body = {"error": error, "error_description": description}
    return _json(body, status, {"Cache-Control": "no-store", **headers})


async def oauth_token(request: web.Request) -> web.Response:
    state, config = request.app[SANDBOX_STATE], request.app[SANDBOX_STATE].config
    form = await request.post()  # empty unless the body is form-encoded
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    basic = hdrs.AUTHORIZATION in request.headers
    if basic:
        try:
            auth = BasicAuth.decode(request.headers[hdrs.AUTHORIZATION])
        except ValueError:
            return _oauth_error(401, "invalid_client", "Malformed Basic credentials")
        client_id, client_secret = auth.login, auth.password
    if not (
        isinstance(client_id, str)
        and isinstance(client_secret, str)
        and secrets.compare_digest(client_id.encode(), config.client_id.encode())
        and secrets.compare_digest(client_secret.encode(), state.client_secret.encode())
    ):
        extra = {"WWW-Authenticate": 'Basic realm="sandbox"'} if basic else {}
        return _oauth_error(401, "invalid_client", "Client authentication failed", **extra)
    if (grant := form.get("grant_type")) != "client_credentials":
        error = "invalid_request" if grant is None else "unsupported_grant_type"
        return _oauth_error(400, error, "grant_type must be client_credentials")
    scope = form.get("scope")
    scope = scope if isinstance(scope, str) and scope else "sandbox"
    token = secrets.token_urlsafe(24)
    state.tokens[token] = (time.monotonic() + config.token_ttl_seconds, scope)
    state.tokens_issued += 1
    body = {"access_token": token, "token_type": "Bearer", "expires_in": config.token_ttl_seconds}
    return _json(body | {"scope": scope}, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def protected(request: web.Request) -> web.Response:
    tokens = request.app[SANDBOX_STATE].tokens
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    entry = tokens.get(token.strip()) if scheme.lower() == "bearer" else None
    if entry is None or entry[0] <= time.monotonic():
        tokens.pop(token.strip(), None)
        message = "Missing, unknown, expired or revoked access token"
        return _error(401, message, "authentication_error", **{"WWW-Authenticate": INVALID_TOKEN})
    return _json({"object": "protected_resource", "ok": True, "scope": entry[1]})


# --- sandbox controls ---------------------------------------------------------------------------


async def stats(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    return _json(
        {"calls": dict(state.calls), "tokens_issued": state.tokens_issued, "customers": len(state.customers)}
    )


async def new_client_secret(request: web.Request) -> web.Response:
    """A new secret for the OAuth2 client (the old one stops working), answered as plain text: what a
    vendor's dashboard shows once when you ask for one."""
    state = request.app[SANDBOX_STATE]
    state.client_secret = secrets.token_urlsafe(24)
    return web.Response(text=state.client_secret + "\n", headers={"Cache-Control": "no-store"})


async def reset(request: web.Request) -> web.Response:
    request.app[SANDBOX_STATE].reset()
    return _json({"reset": True})


async def drift(request: web.Request) -> web.Response:
    """``{"rename": {"email": "email_address"}, "drop": ["address"], "set": {"created": "today"}}``:
    every customer answered from now on has that shape (``{}`` or /_sandbox/reset: as stored again)."""
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        return _error(400, "Request body must be a JSON object")
    if not isinstance(body, dict):
        body = {"": body}  # refused below
    rename, drop, values = body.get("rename", {}), body.get("drop", []), body.get("set", {})
    if (
        set(body) - {"rename", "drop", "set"}
        or not isinstance(rename, dict)
        or not all(isinstance(v, str) for v in rename.values())
        or not isinstance(drop, list)
        or not all(isinstance(v, str) for v in drop)
        or not isinstance(values, dict)
    ):
        return _error(400, 'Drift is {"rename": {"old": "new"}, "drop": ["field"], "set": {"field": value}}')
    request.app[SANDBOX_STATE].drift = body
    return _json({"drift": body})


async def revoke(request: web.Request) -> web.Response:
    tokens = request.app[SANDBOX_STATE].tokens
    revoked = len(tokens)
    tokens.clear()
    return _json({"revoked": revoked})


# --- signed webhooks, sent on demand -------------------------------------------------------------

WEBHOOK_TARGET = "http://127.0.0.1:8080/_webhooks/stripe"
MAX_WEBHOOK_SENDS = 10


def stripe_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """A ``Stripe-Signature`` value as Stripe makes it: HMAC-SHA256 of ``TIMESTAMP.PAYLOAD``, hex."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def send_stripe_webhook(request: web.Request) -> web.Response:
    """Send a Stripe-shaped, Stripe-signed event to ``url`` (the gateway's /_webhooks/NAME), ``times``
    times with the same id (as Stripe retrying); answer what each send got back.

    Body (JSON, every field optional): ``url``, ``type`` ("customer.created"), ``id`` (a new
    ``evt_...``), ``times`` (1, at most 10), ``secret`` (by default the sandbox's own, made at start),
    ``age_seconds`` (sign a timestamp that old: a replay), ``tamper`` (change the body after signing).
    """
    config = request.app[SANDBOX_STATE].config
    raw = await request.read()
    try:
        options = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        return _error(400, "Request body must be a JSON object")
    if not isinstance(options, dict):
        return _error(400, "Request body must be a JSON object")
    url = options.get("url", WEBHOOK_TARGET)
    kind = options.get("type", "customer.created")
    event_id = options.get("id", f"evt_{secrets.token_hex(12)}")
    secret = options.get("secret", config.webhook_secret)
    times, age = options.get("times", 1), options.get("age_seconds", 0)
    strings = (url, kind, event_id, secret)
    if not all(isinstance(v, str) and v for v in strings) or not str(url).startswith(("http://", "https://")):
        return _error(400, "url (http:// or https://), type, id and secret must be non-empty strings")
    if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= MAX_WEBHOOK_SENDS:
        return _error(400, f"times must be an integer from 1 to {MAX_WEBHOOK_SENDS}")
    if not isinstance(age, int) or isinstance(age, bool) or age < 0:
        return _error(400, "age_seconds must be a non-negative integer")
    created = int(time.time())
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "type": kind,
        "livemode": False,
        "data": {"object": next(iter(request.app[SANDBOX_STATE].customers.values()), {})},
    }
    payload = orjson.dumps(event)
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+sandbox)"}
    headers["Stripe-Signature"] = stripe_signature(payload, secret, created - age)
    if options.get("tamper") is True:
        payload = payload.replace(b'"livemode":false', b'"livemode":true')
    sent: list[JSON] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(times):
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    text = await resp.text()
                    try:
                        answer: Any = orjson.loads(text)
                    except orjson.JSONDecodeError:
                        answer = text
                    sent.append({"status": resp.status, "body": answer})
            except (aiohttp.ClientError, TimeoutError) as exc:
                sent.append({"status": None, "error": str(exc) or type(exc).__name__})
    return _json({"id": event_id, "type": kind, "url": url, "sent": sent})


@web.middleware
async def _count_and_render_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    resource = request.match_info.route.resource
    if resource is not None and not resource.canonical.startswith("/_sandbox/"):
        request.app[SANDBOX_STATE].calls[f"{request.method} {resource.canonical}"] += 1
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason
        if exc.status == 404:
            message = f"Unrecognized request URL ({request.method}: {request.path})"
        headers = {
            k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
        }
        return _json({"error": {"type": "invalid_request_error", "message": message}}, exc.status, headers)
    return response


def create_app(
    *,
    client_id: str = "sandbox-client",
    client_secret: str | None = None,  # None: made at start
    token_ttl_seconds: int = 3600,
    rate_limit_requests: int = 5,
    rate_limit_window_seconds: float = 1.0,
) -> web.Application:
    config = SandboxConfig(
        client_id=client_id,
        token_ttl_seconds=token_ttl_seconds,
        rate_limit_requests=rate_limit_requests,
        rate_limit_window_seconds=rate_limit_window_seconds,
    )
    if client_secret is not None:
        config = dataclasses.replace(config, client_secret=client_secret)
    state = SandboxState(config=config)
    for n in range(1, SEED_CUSTOMERS + 1):  # deterministic, so the quickstart's list is never empty
        address = dict.fromkeys(ADDRESS_FIELDS) | {"line1": f"{n} Sandbox Street", "city": "Springfield"}
        address |= {"postal_code": f"{10000 + n}", "country": "US"}
        fields = {
            "name": f"Customer {n:02d}",
            "email": f"customer{n:02d}@example.com",
            "address": address,
            "metadata": {"seed": "true"},
        }
        state.add_customer(fields, 1_700_000_000 + n * 3600)
    app = web.Application(middlewares=[_count_and_render_errors], client_max_size=64 * 1024 * 1024)
    app[SANDBOX_STATE] = state
    app.router.add_post("/v1/customers", create_customer)
    app.router.add_get("/v1/customers", list_customers)
    app.router.add_get("/v1/customers/{id}", get_customer)
    app.router.add_delete("/v1/customers/{id}", delete_customer)
    app.router.add_get("/v1/legacy/customers", legacy_list_customers)
    app.router.add_get("/v1/limited", limited)
    app.router.add_get("/v1/flaky", flaky)
    app.router.add_post("/v1/flaky", flaky)
    app.router.add_get("/v1/slow", slow)
    app.router.add_get("/v1/big", big)
    app.router.add_route("*", "/v1/echo/{tail:.*}", echo)
    app.router.add_post("/oauth/token", oauth_token)
    app.router.add_get("/v1/protected", protected)
    app.router.add_get("/_sandbox/stats", stats)
    app.router.add_post("/_sandbox/reset", reset)
    app.router.add_post("/_sandbox/revoke", revoke)
    app.router.add_post("/_sandbox/drift", drift)
    app.router.add_post("/_sandbox/webhooks/stripe", send_stripe_webhook)
    app.router.add_post("/_sandbox/oauth/secret", new_client_secret)
    return app


async def start(host: str, port: int, **kwargs: Any) -> web.AppRunner:
    """Serve `create_app(**kwargs)` on host:port (0 picks a free port, see `runner.addresses`)."""
    runner = web.AppRunner(create_app(**kwargs), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(sig, stop.set)
    runner = await start(host, port)
    try:
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"sandbox vendor listening on http://{bound_host}:{bound_port}", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (blocking), on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(_serve(host, port))


if __name__ == "__main__":
    listen = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8081"
    host, _, port = listen.rpartition(":")
    run(host.strip("[]") or "127.0.0.1", int(port))
