"""A local vendor that fails on demand and records every call, for the retry, breaker and delivery tests.

- ``/fail/{n}/{name}``: the first ``n`` calls for ``name`` answer ``?status=`` (default 503, with
  ``?retry_after=`` if given), later ones 200 ``{"attempt": k, "body": ...}``.
- ``/status/{code}``: always that status.
- ``/slow/{seconds}``: sleeps, then ``?status=`` (default 200).
- ``/effects``: Stripe-like idempotent writes: an ``Idempotency-Key`` seen before gets its first answer
  back without a second effect; ``fail_every`` makes every n-th call a 503 before anything happens.
- anything else: 200 with the request echoed.

``calls`` lists every call in arrival order; ``effects`` counts effects per key; ``down`` makes every
call a 503 (``healthy()`` ends that).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Call:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)
    answers: dict[str, bytes] = field(default_factory=dict)
    fail_every: int = 0  # /effects: every n-th call is a 503 (0: none)
    down: bool = False  # every call is a 503
    hold: asyncio.Event | None = None  # when set to an Event, /effects waits for it before acting
    held: asyncio.Event = field(default_factory=asyncio.Event)  # a held call arrived

    def count(self, prefix: str) -> int:
        return sum(1 for c in self.calls if c.path.startswith(prefix))

    def times(self, prefix: str) -> list[float]:
        return [c.at for c in self.calls if c.path.startswith(prefix)]


RECORDER = web.AppKey("recorder", Recorder)


def resilience_vendor() -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        rec = request.app[RECORDER]
        body = await request.read()
        rec.calls.append(
            Call(request.method, request.path, CIMultiDict(request.headers), body, time.monotonic())
        )
        if rec.down:
            return web.json_response({"error": "down"}, status=503)
        parts = request.path.strip("/").split("/")
        status = int(request.query.get("status", "0")) or None
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        if parts[0] == "fail" and len(parts) == 3:
            name, limit = parts[2], int(parts[1])
            rec.failed[name] += 1
            attempt = rec.failed[name]
            if attempt <= limit:
                return web.json_response(
                    {"error": "flaky", "attempt": attempt}, status=status or 503, headers=headers
                )
            return web.json_response({"attempt": attempt, "body": body.decode(errors="replace")})
        if parts[0] == "status" and len(parts) == 2:
            return web.json_response({"status": int(parts[1])}, status=int(parts[1]), headers=headers)
        if parts[0] == "slow" and len(parts) == 2:
            await asyncio.sleep(float(parts[1]))
            return web.json_response({"slept": float(parts[1])}, status=status or 200, headers=headers)
        if parts[0] == "effects":
            if rec.fail_every and len(rec.calls) % rec.fail_every == 0:
                return web.json_response({"error": "try again"}, status=503)
            if rec.hold is not None:
                rec.held.set()
                await rec.hold.wait()
            key = request.headers.get("Idempotency-Key", "")
            if key and key in rec.answers:
                return web.Response(body=rec.answers[key], status=201, content_type="application/json")
            rec.effects[key] += 1
            answer = b'{"created": "' + key.encode() + b'", "body": ' + (body or b"null") + b"}"
            if key:
                rec.answers[key] = answer
            response = web.Response(body=answer, status=201, content_type="application/json")
            response.set_cookie("vendor_session", "s1")  # never to be stored with a delivery's answer
            return response
        return web.json_response(
            {"method": request.method, "path": request.path, "body": body.decode(errors="replace")},
            status=status or 200,
            headers=headers,
        )

    app = web.Application()
    app[RECORDER] = Recorder()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
