"""Webhook signatures, one function per scheme (docs/configuration.md), each as its vendor documents it.

- ``stripe``: ``Stripe-Signature: t=TIMESTAMP,v1=HEX[,v1=HEX...]``, HMAC-SHA256 of ``TIMESTAMP.BODY``
  with the endpoint secret as given (``whsec_...``); any ``v1`` may match (Stripe sends one per active
  secret while one is rolled).
- ``github``: ``X-Hub-Signature-256: sha256=HEX``, HMAC-SHA256 of the body.
- ``shopify``: ``X-Shopify-Hmac-Sha256: BASE64``, HMAC-SHA256 of the body.
- ``standard`` (Standard Webhooks): ``webhook-signature: v1,BASE64 [v1,BASE64...]``, HMAC-SHA256 of
  ``ID.TIMESTAMP.BODY`` with the base64 key after ``whsec_``.
- ``hmac-sha256``: the configured header, its prefix, hex or base64.

Every configured secret is tried (rotation: old and new both pass), every comparison is
``hmac.compare_digest`` on bytes, and the signature is checked before the timestamp, so a caller
without the secret learns nothing but "no". A signed timestamp (stripe, standard) must be within
``tolerance_seconds`` of now, either way: a replayed old delivery is refused even with a good signature.
Nothing here logs or echoes the body, a signature or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping

from ...config.loader import standard_webhook_key
from ...config.model import Secret, WebhookVerify
from ...errors import SignatureRejected

__all__ = ["SignatureRejected", "verify"]


def _digest(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def _ascii(value: str) -> bytes:
    # Header values may hold any bytes (kept as surrogate escapes): compared as bytes, never decoded.
    return value.encode("utf-8", "surrogateescape")


def _any_match(expected: Iterable[bytes], given: Iterable[bytes]) -> bool:
    matched = False
    wanted = list(expected)
    for candidate in given:
        for want in wanted:
            # No early exit: the time taken does not say which secret or which signature matched.
            matched |= hmac.compare_digest(want, candidate)
    return matched


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise SignatureRejected(f"the request has no {name} header")
    return value


def _timestamp(text: str, what: str, now: float, tolerance: float) -> None:
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise SignatureRejected(f"the {what} timestamp is not a number of seconds")
    skew = now - int(text)
    if abs(skew) > tolerance:
        when = "old" if skew > 0 else "in the future"
        raise SignatureRejected(
            f"the {what} timestamp is {abs(skew):.0f} s {when}, past the tolerance of {tolerance:g} s"
        )


def _keys(secrets: tuple[Secret, ...]) -> list[bytes]:
    return [secret.reveal().encode() for secret in secrets]


def _stripe(settings: WebhookVerify, headers: Mapping[str, str], body: bytes, now: float) -> None:
    field = _header(headers, "Stripe-Signature")
    timestamp = ""
    signatures: list[bytes] = []
    for item in field.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(_ascii(value))
    if not timestamp or not signatures:
        raise SignatureRejected("Stripe-Signature has no t= timestamp or no v1= signature")
    signed = _ascii(timestamp)
    expected = [_digest(key, signed, b".", body).hex().encode() for key in _keys(settings.secrets)]
    if not _any_match(expected, signatures):
        raise SignatureRejected("no v1 signature in Stripe-Signature matches the payload")
    _timestamp(timestamp, "Stripe-Signature", now, settings.tolerance_seconds)


def _github(settings: WebhookVerify, headers: Mapping[str, str], body: bytes, now: float) -> None:
    given = _ascii(_header(headers, "X-Hub-Signature-256"))
    expected = [b"sha256=" + _digest(key, body).hex().encode() for key in _keys(settings.secrets)]
    if not _any_match(expected, [given]):
        raise SignatureRejected("X-Hub-Signature-256 does not match the payload")


def _shopify(settings: WebhookVerify, headers: Mapping[str, str], body: bytes, now: float) -> None:
    given = _ascii(_header(headers, "X-Shopify-Hmac-Sha256").strip())
    expected = [base64.b64encode(_digest(key, body)) for key in _keys(settings.secrets)]
    if not _any_match(expected, [given]):
        raise SignatureRejected("X-Shopify-Hmac-Sha256 does not match the payload")


def _standard(settings: WebhookVerify, headers: Mapping[str, str], body: bytes, now: float) -> None:
    msg_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    field = _header(headers, "webhook-signature")
    given = [
        _ascii(signature)
        for version, _, signature in (item.partition(",") for item in field.split())
        if version == "v1"
    ]
    if not given:
        raise SignatureRejected("webhook-signature has no v1 signature")
    keys = [key for secret in settings.secrets if (key := standard_webhook_key(secret.reveal()))]
    signed = _ascii(f"{msg_id}.{timestamp}.")
    expected = [base64.b64encode(_digest(key, signed, body)) for key in keys]
    if not _any_match(expected, given):
        raise SignatureRejected("no v1 signature in webhook-signature matches the payload")
    _timestamp(timestamp, "webhook-timestamp", now, settings.tolerance_seconds)


def _generic(settings: WebhookVerify, headers: Mapping[str, str], body: bytes, now: float) -> None:
    field = _header(headers, settings.header).strip()
    if not field.startswith(settings.prefix):
        raise SignatureRejected(f"{settings.header} does not start with {settings.prefix!r}")
    given = _ascii(field[len(settings.prefix) :])
    if settings.encoding == "hex":
        given = given.lower()  # hex digits in either case
        expected = [_digest(key, body).hex().encode() for key in _keys(settings.secrets)]
    else:
        expected = [base64.b64encode(_digest(key, body)) for key in _keys(settings.secrets)]
    if not _any_match(expected, [given]):
        raise SignatureRejected(f"{settings.header} does not match the payload")


_SCHEMES = {
    "stripe": _stripe,
    "github": _github,
    "shopify": _shopify,
    "standard": _standard,
    "hmac-sha256": _generic,
}


def verify(settings: WebhookVerify, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Return when the request is signed with one of the secrets (and, where signed, recently);
    raise ``SignatureRejected`` saying why not. ``now``: epoch seconds."""
    _SCHEMES[settings.scheme](settings, headers, body, now)
