"""Webhook signature schemes, each checked against its vendor's own verifier: what Stripe's library and
the Standard Webhooks library accept, the gateway accepts; what they refuse (tampered, wrong secret,
stale), it refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
import stripe
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.model import Secret, WebhookVerify
from gateway.features.webhooks.verify import SignatureRejected, verify

STRIPE_SECRET = "whsec_stripe_test_secret_1"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-0123456789").decode()
BODY = b'{"id":"evt_1","object":"event","type":"customer.created","data":{"object":{"id":"cus_1"}}}'


def settings(scheme: str, *secrets: str, **extra: object) -> WebhookVerify:
    refs = tuple(Secret(f"env:S{i}", value) for i, value in enumerate(secrets))
    return WebhookVerify(scheme=scheme, secrets=refs, **extra)  # type: ignore[arg-type]


def headers(**fields: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in fields.items()}))


def stripe_header(body: bytes, secret: str, timestamp: int, *extra_v1: str) -> str:
    sig = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return ",".join([f"t={timestamp}", *(f"v1={s}" for s in (*extra_v1, sig)), "v0=ignored"])


def stripe_lib_accepts(body: bytes, header: str, secret: str) -> bool:
    try:
        stripe.Webhook.construct_event(body, header, secret, tolerance=300)
    except stripe.SignatureVerificationError:
        return False
    return True


def gateway_accepts(config: WebhookVerify, fields: CIMultiDictProxy[str], body: bytes) -> bool:
    try:
        verify(config, fields, body, time.time())
    except SignatureRejected:
        return False
    return True


def test_stripe_agrees_with_stripes_own_verifier() -> None:
    now = int(time.time())
    config = settings("stripe", STRIPE_SECRET)
    cases = {
        "good": (BODY, stripe_header(BODY, STRIPE_SECRET, now)),
        "good, several v1 (a secret being rolled)": (
            BODY,
            stripe_header(BODY, STRIPE_SECRET, now, "ab" * 32),
        ),
        "tampered body": (BODY.replace(b"cus_1", b"cus_2"), stripe_header(BODY, STRIPE_SECRET, now)),
        "wrong secret": (BODY, stripe_header(BODY, "whsec_someone_else", now)),
        "stale timestamp": (BODY, stripe_header(BODY, STRIPE_SECRET, now - 301)),
        "no v1": (BODY, f"t={now}"),
        "garbage": (BODY, "nonsense"),
    }
    verdicts = {
        name: (
            gateway_accepts(config, headers(Stripe_Signature=header), body),
            stripe_lib_accepts(body, header, STRIPE_SECRET),
        )
        for name, (body, header) in cases.items()
    }
    assert verdicts == {
        "good": (True, True),
        "good, several v1 (a secret being rolled)": (True, True),
        "tampered body": (False, False),
        "wrong secret": (False, False),
        "stale timestamp": (False, False),
        "no v1": (False, False),
        "garbage": (False, False),
    }


def test_stripe_messages_say_why_and_a_custom_tolerance_holds() -> None:
    now = int(time.time())
    config = settings("stripe", STRIPE_SECRET, tolerance_seconds=10)
    with pytest.raises(SignatureRejected, match=r"timestamp is 11 s old, past the tolerance of 10 s"):
        verify(config, headers(Stripe_Signature=stripe_header(BODY, STRIPE_SECRET, now - 11)), BODY, now)
    with pytest.raises(SignatureRejected, match=r"in the future"):
        verify(config, headers(Stripe_Signature=stripe_header(BODY, STRIPE_SECRET, now + 60)), BODY, now)
    with pytest.raises(SignatureRejected, match="no Stripe-Signature header"):
        verify(config, headers(), BODY, now)
    # A good signature with a stale timestamp says "stale"; a bad one never gets that far.
    with pytest.raises(SignatureRejected, match="matches"):
        verify(config, headers(Stripe_Signature=stripe_header(BODY, "whsec_x", now - 11)), BODY, now)
    verify(config, headers(Stripe_Signature=stripe_header(BODY, STRIPE_SECRET, now - 9)), BODY, now)


def test_rotation_accepts_every_configured_secret() -> None:
    now = int(time.time())
    config = settings("stripe", "whsec_old", "whsec_new")
    for secret in ("whsec_old", "whsec_new"):
        verify(config, headers(Stripe_Signature=stripe_header(BODY, secret, now)), BODY, now)
    with pytest.raises(SignatureRejected):
        verify(config, headers(Stripe_Signature=stripe_header(BODY, "whsec_retired", now)), BODY, now)


def test_standard_webhooks_agrees_with_the_standardwebhooks_library() -> None:
    lib = standardwebhooks.Webhook(STANDARD_SECRET)
    config = settings("standard", STANDARD_SECRET)
    now = datetime.now(tz=UTC)
    stamp = str(int(now.timestamp()))
    good = lib.sign("msg_1", now, BODY.decode())
    stale = datetime.fromtimestamp(now.timestamp() - 400, tz=UTC)
    other = standardwebhooks.Webhook("whsec_" + base64.b64encode(b"another-key-entirely-here").decode())
    cases = {
        "good": (BODY, {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": good}),
        "several signatures": (
            BODY,
            {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": f"v1,AAAA {good}"},
        ),
        "tampered": (
            BODY + b" ",
            {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": good},
        ),
        "other id": (BODY, {"webhook-id": "msg_2", "webhook-timestamp": stamp, "webhook-signature": good}),
        "wrong secret": (
            BODY,
            {
                "webhook-id": "msg_1",
                "webhook-timestamp": stamp,
                "webhook-signature": other.sign("msg_1", now, BODY.decode()),
            },
        ),
        "stale": (
            BODY,
            {
                "webhook-id": "msg_1",
                "webhook-timestamp": str(int(stale.timestamp())),
                "webhook-signature": lib.sign("msg_1", stale, BODY.decode()),
            },
        ),
    }

    def lib_accepts(body: bytes, fields: dict[str, str]) -> bool:
        try:
            lib.verify(body, fields)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True

    verdicts = {
        name: (
            gateway_accepts(config, CIMultiDictProxy(CIMultiDict(fields)), body),
            lib_accepts(body, fields),
        )
        for name, (body, fields) in cases.items()
    }
    assert verdicts == {
        "good": (True, True),
        "several signatures": (True, True),
        "tampered": (False, False),
        "other id": (False, False),
        "wrong secret": (False, False),
        "stale": (False, False),
    }


def test_github_shopify_and_generic_hmac() -> None:
    secret = "gh-secret-value"
    digest = hmac.new(secret.encode(), BODY, hashlib.sha256).digest()
    github = settings("github", secret)
    assert gateway_accepts(github, headers(X_Hub_Signature_256="sha256=" + digest.hex()), BODY)
    assert not gateway_accepts(github, headers(X_Hub_Signature_256="sha256=" + digest.hex()), BODY + b"x")
    assert not gateway_accepts(github, headers(X_Hub_Signature="sha1=" + digest.hex()), BODY)
    shopify = settings("shopify", secret)
    b64 = base64.b64encode(digest).decode()
    assert gateway_accepts(shopify, headers(X_Shopify_Hmac_Sha256=b64), BODY)
    assert not gateway_accepts(shopify, headers(X_Shopify_Hmac_Sha256=b64), BODY[:-1])
    generic_hex = settings("hmac-sha256", secret, header="X-Signature", prefix="sha256=", encoding="hex")
    assert gateway_accepts(generic_hex, headers(X_Signature="sha256=" + digest.hex().upper()), BODY)
    assert not gateway_accepts(generic_hex, headers(X_Signature=digest.hex()), BODY)  # prefix missing
    generic_b64 = settings("hmac-sha256", secret, header="X-Signature", encoding="base64")
    assert gateway_accepts(generic_b64, headers(X_Signature=b64), BODY)
    assert not gateway_accepts(generic_b64, headers(X_Signature=digest.hex()), BODY)


def test_non_ascii_signatures_are_refused_not_crashed_on() -> None:
    config = settings("github", "gh-secret-value")
    assert not gateway_accepts(config, headers(X_Hub_Signature_256="sha256=\udcff\u00e9"), BODY)
