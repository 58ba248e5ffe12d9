"""Who may use the gateway's own endpoints (``/_gateway/*``, docs/http.md).

``health`` and ``ready`` answer everyone (probes), and so does ``problems/`` (what each problem
type means: every caller's problem points there). Every other endpoint, and any added later, is
closed as soon as callers are authenticated or an admin key exists:

- with ``[gateway] admin_key``, it needs that key (``Authorization: Bearer KEY`` or ``X-Gateway-Key``,
  or as the password of HTTP Basic, so a browser asks for it once and the dashboard's own requests to
  ``status`` carry it), compared in constant time; a client's own key gets 403, no key or a wrong one
  401;
- with ``[clients]`` and no ``admin_key``, it answers 403 naming ``admin_key`` (nobody can be let in);
- without either (a sidecar on loopback), it stays open, as before.

``deliveries/ID`` is the exception for clients: a client reads the status of its own deliveries with
its own key or certificate (``Gateway.delivery`` looks the record's client up), the admin key reads any.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from multidict import CIMultiDictProxy

from ...config import Secret
from ...errors import Forbidden, Unauthorized
from .identity import Authenticator, presented_key

OPEN_ENDPOINTS = frozenset({"health", "ready", "problems/"})
# Basic too: a browser opening the dashboard prompts for it (any user name, the admin key as password).
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="gateway admin", Bearer realm="gateway admin"'}


class AdminKey:
    def __init__(self, key: Secret | None) -> None:
        self._digest = hashlib.sha256(key.reveal().encode()).digest() if key is not None else None

    @property
    def configured(self) -> bool:
        return self._digest is not None

    def admits(self, headers: CIMultiDictProxy[str]) -> bool:
        presented = presented_key(headers)[0] or _basic_password(headers)
        if self._digest is None or presented is None:
            return False
        return hmac.compare_digest(self._digest, hashlib.sha256(presented.encode()).digest())


def _basic_password(headers: CIMultiDictProxy[str]) -> str | None:
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def authorize(
    endpoint: str,
    admin: AdminKey,
    authenticator: Authenticator | None,
    headers: CIMultiDictProxy[str],
    *,
    own_records: bool = False,
) -> None:
    """Raises ``Unauthorized`` or ``Forbidden`` unless the caller may use ``/_gateway/{endpoint}``.
    ``own_records``: the endpoint shows a client its own records (deliveries), its handler decides."""
    if endpoint in OPEN_ENDPOINTS or admin.admits(headers):
        return
    if own_records and authenticator is not None:
        return
    where = f"/_gateway/{endpoint}"
    if not admin.configured:
        if authenticator is None:
            return  # no [clients], no admin key: a loopback sidecar, open as before
        raise Forbidden(
            f"{where} is closed: callers are authenticated ([clients]) and no [gateway] admin_key is set; "
            "set admin_key and send it as 'Authorization: Bearer KEY' or 'X-Gateway-Key: KEY'"
        )
    presented = presented_key(headers)[0] or _basic_password(headers)
    if presented is None:
        raise Unauthorized(
            f"{where} needs the admin key ([gateway] admin_key): 'Authorization: Bearer KEY' or "
            "'X-Gateway-Key: KEY'",
            headers=_CHALLENGE,
        )
    client = authenticator.known(presented) if authenticator is not None else None
    if client is not None:
        raise Forbidden(
            f"client {client!r} may not use {where}: it needs the admin key ([gateway] admin_key)"
        )
    raise Unauthorized(
        "the admin key is not known", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )
