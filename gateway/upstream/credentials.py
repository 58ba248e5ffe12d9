"""OAuth2 client-credentials tokens: fetched once, shared by every request, refreshed before expiry.

One ``TokenManager`` lives on ``Services`` (app-wide, so tokens survive a config reload); its cache is
keyed by ``TokenSource`` (vendor + auth config), so a rotated client secret gets a fresh token.

Invariants:
- At most one fetch per source is in flight; every request that needs a token meanwhile awaits that
  same fetch (``asyncio.shield``: a caller that goes away does not cancel it for the others).
- A token is used until shortly before it expires. Inside the refresh margin (10% of its lifetime, at
  most 60 s) the current token still serves while one background fetch replaces it.
- ``discard`` drops a token only if it is still the cached one: after a vendor 401, many requests may
  report the same stale token, and none of them may throw away the fresh token another one fetched.
- Token values never leave this module except as the ``Authorization`` header the forwarder sends:
  ``Token`` hides its value from ``repr`` and no message here carries a secret or a token.

Token calls go through the same transport as vendor calls (``pool.Transport``); its failures become
``BadGateway`` here.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote_plus, urlencode

import orjson
from multidict import CIMultiDict

from ..config import OAuth2ClientCredentials
from ..errors import BadGateway
from ..observability.logging import Logger
from .pool import Endpoint, PoolError, Timeout, Timeouts, Transport, VendorRequest

# Without ``expires_in`` the token's lifetime is unknown: assume a short one and let 401s catch the rest.
DEFAULT_LIFETIME_SECONDS = 300.0
MAX_REFRESH_MARGIN_SECONDS = 60.0
REFRESH_MARGIN_RATIO = 0.1
# The last moment a token is sent is this share of its lifetime (at most 5 s) before it expires, so
# it does not run out on its way to the vendor.
SAFETY_RATIO = 0.02
MAX_SAFETY_SECONDS = 5.0
# After a failed background refresh, wait this long before trying again while the old token serves.
REFRESH_RETRY_SECONDS = 5.0
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
# RFC 6750 section 2.1 b64token, which is also always a safe header value.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True, slots=True, eq=False)
class Token:
    value: str = field(repr=False)
    lifetime: float  # seconds, as the token endpoint said (or the default)
    refresh_at: float  # monotonic clock: from here on a background fetch replaces it
    expires_at: float  # monotonic clock: not sent any more from here on

    @property
    def header(self) -> str:
        return f"Bearer {self.value}"


@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where a vendor's tokens come from; built once per vendor at load (``upstream.vendor_transport``)."""

    vendor: str
    auth: OAuth2ClientCredentials
    endpoint: Endpoint = field(compare=False)  # the token_url's scheme, host, port and TLS
    target: str = field(compare=False)  # the token_url's path and query
    timeout: Timeouts = field(compare=False)


@dataclass(slots=True, eq=False)
class _Slot:
    token: Token | None = None
    fetch: asyncio.Task[Token] | None = None
    retry_at: float = 0.0


class TokenManager:
    def __init__(
        self,
        transport: Transport,
        logger: Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.logger = logger
        self.clock = clock
        self._slots: dict[TokenSource, _Slot] = {}
        self.fetches: Counter[str] = Counter()  # per vendor, for /_gateway pages and tests

    async def get(self, source: TokenSource) -> Token:
        """A token that is valid now; raises ``BadGateway`` when the token endpoint fails."""
        slot = self._slots.get(source)
        if slot is None:
            slot = self._slots[source] = _Slot()
        now = self.clock()
        token = slot.token
        if token is not None and now < token.expires_at:
            if now >= token.refresh_at and slot.fetch is None and now >= slot.retry_at:
                self._start(source, slot)  # ahead of expiry; this request still uses the current one
            return token
        fetch = slot.fetch or self._start(source, slot)
        return await asyncio.shield(fetch)

    def discard(self, source: TokenSource, token: Token) -> None:
        """The vendor refused ``token``: forget it, unless a newer one has replaced it already."""
        slot = self._slots.get(source)
        if slot is not None and slot.token is token:
            slot.token = None

    async def close(self) -> None:
        fetches = [slot.fetch for slot in self._slots.values() if slot.fetch is not None]
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)

    def _start(self, source: TokenSource, slot: _Slot) -> asyncio.Task[Token]:
        fetch = asyncio.get_running_loop().create_task(self._fetch(source, slot))
        slot.fetch = fetch
        fetch.add_done_callback(lambda done: self._finished(source, slot, done))
        return fetch

    def _finished(self, source: TokenSource, slot: _Slot, fetch: asyncio.Task[Token]) -> None:
        if slot.fetch is fetch:
            slot.fetch = None
        if fetch.cancelled():
            return
        error = fetch.exception()  # retrieved here, so a background failure is never "unretrieved"
        if error is not None:
            slot.retry_at = self.clock() + REFRESH_RETRY_SECONDS
            self.logger.event(
                "oauth2_token_failed",
                level="warning",
                vendor=source.vendor,
                error=error.detail if isinstance(error, BadGateway) else type(error).__name__,
            )

    async def _fetch(self, source: TokenSource, slot: _Slot) -> Token:
        auth = source.auth
        form = {"grant_type": "client_credentials"}
        if auth.scope:
            form["scope"] = auth.scope
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        client_id, client_secret = auth.client_id.reveal(), auth.client_secret.reveal()
        if auth.client_auth == "basic":
            # RFC 6749 section 2.3.1: both parts are form-encoded before they are joined.
            pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form["client_id"], form["client_secret"] = client_id, client_secret
        vendor = source.vendor
        self.fetches[vendor] += 1
        started = self.clock()
        request = VendorRequest(
            source.endpoint, "POST", source.target, CIMultiDict(headers), urlencode(form).encode("ascii")
        )
        try:
            response = await self.transport.send(request, source.timeout)  # redirects are not followed
            try:
                status = response.status
                body = b""
                async for chunk in response.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                        break
            finally:
                response.release()
        except Timeout:
            raise BadGateway(f"vendor {vendor}: the OAuth2 token endpoint did not answer in time") from None
        except PoolError as exc:
            raise BadGateway(
                f"vendor {vendor}: the OAuth2 token endpoint is unreachable ({type(exc).__name__})"
            ) from None
        token = self._parse(vendor, status, body, started)
        slot.token = token
        slot.retry_at = 0.0
        self.logger.event(
            "oauth2_token_fetched",
            vendor=vendor,
            expires_in_seconds=token.lifetime,
            fetch_ms=round((self.clock() - started) * 1000, 3),
        )
        return token

    def _parse(self, vendor: str, status: int, body: bytes, started: float) -> Token:
        def fail(why: str) -> BadGateway:
            return BadGateway(f"vendor {vendor}: the OAuth2 token endpoint {why}")

        try:
            data = orjson.loads(body) if len(body) <= MAX_TOKEN_RESPONSE_BYTES else None
        except orjson.JSONDecodeError:
            data = None
        if not 200 <= status < 300:
            # RFC 6749 section 5.2: only the error code is repeated; descriptions may echo client data.
            code = data.get("error") if isinstance(data, dict) else None
            suffix = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
            raise fail(f"answered {status}{suffix}")
        if not isinstance(data, dict):
            raise fail("did not answer with a JSON object")
        value = data.get("access_token")
        if not isinstance(value, str) or not _B64TOKEN.match(value):
            raise fail("answered without a usable access_token")
        token_type = data.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise fail("issued a token that is not a bearer token")
        lifetime = _lifetime(data.get("expires_in"))
        if lifetime is None:
            raise fail("answered with an invalid expires_in")
        margin = min(MAX_REFRESH_MARGIN_SECONDS, lifetime * REFRESH_MARGIN_RATIO)
        safety = min(MAX_SAFETY_SECONDS, lifetime * SAFETY_RATIO)
        return Token(
            value=value,
            lifetime=lifetime,
            refresh_at=started + lifetime - margin,
            expires_at=started + lifetime - safety,
        )


def _lifetime(expires_in: object) -> float | None:
    if expires_in is None:
        return DEFAULT_LIFETIME_SECONDS
    if isinstance(expires_in, str):  # some servers send "3600"
        try:
            expires_in = float(expires_in)
        except ValueError:
            return None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return None
    if not 0 < expires_in < 10 * 365 * 86400:
        return None
    return float(expires_in)
