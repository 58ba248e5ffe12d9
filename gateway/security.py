"""The gateway's security posture at start, and the values its logs must never show.

``startup_notes`` says whether callers are authenticated (by key, by certificate), whether the listener
speaks TLS (a warning when it listens off loopback without), and repeats every risky setting the config
accepted (``tls.verify = false``, ``allow_plaintext``) as warning events. ``secret_values``
lists every configured secret, in the forms it could take on the wire, for ``Logger.redact``: the code
never logs a secret on purpose, and the redaction is the net under that rule (an exception message
that quoted a URL with an API key in its query, say).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

from .config import Auth, Config, OAuth2ClientCredentials, Secret, is_loopback

# Shorter values are not redacted: replacing every "abc" in every log line would mangle the logs,
# and a secret that short is no secret (``gateway check`` keeps working with it, for tests).
MIN_REDACTED_LENGTH = 6

Note = tuple[str, str, dict[str, Any]]  # (event, level, fields)


def startup_notes(config: Config, listen_host: str) -> list[Note]:
    notes: list[Note] = []
    if config.clients:
        modes = [
            mode
            for mode, used in (
                ("key", any(c.key is not None for c in config.clients.values())),
                ("certificate", any(c.cert_subject is not None for c in config.clients.values())),
            )
            if used
        ]
        notes.append(("client_auth", "info", {"mode": ",".join(modes), "clients": sorted(config.clients)}))
    else:
        loopback = is_loopback(listen_host)
        notes.append(
            (
                "client_auth",
                "info" if loopback else "warning",
                {
                    "mode": "off",
                    "detail": "no [clients] in the config: callers are not authenticated and every caller "
                    "that can reach the gateway may use every vendor"
                    + ("" if loopback else f"; it listens on {listen_host}, not loopback"),
                },
            )
        )
    tls = config.gateway.tls
    if tls is not None:
        notes.append(
            ("listener", "info", {"tls": True, "client_certificates": tls.client_ca_file is not None})
        )
    elif not is_loopback(listen_host):
        detail = (
            f"it listens on {listen_host} without [gateway] tls: requests, answers and gateway keys cross "
            "the network unencrypted"
        )
        notes.append(("listener", "warning", {"tls": False, "detail": detail}))
    notes += [("config_warning", "warning", warning.fields()) for warning in config.warnings]
    return notes


def secret_values(config: Config) -> set[str]:
    """Every configured secret, raw and as it appears in headers, query strings and JSON."""
    secrets: list[Secret] = [client.key for client in config.clients.values() if client.key is not None]
    extra: set[str] = set()
    for vendor in config.vendors.values():
        auth = vendor.auth
        if isinstance(auth, Auth):
            secrets.append(auth.secret)
            if auth.type == "basic":
                basic = f"{auth.username}:{auth.secret.reveal()}"
                extra.add(base64.b64encode(basic.encode()).decode("ascii"))
        elif isinstance(auth, OAuth2ClientCredentials):
            secrets += [auth.client_id, auth.client_secret]
            basic = f"{quote_plus(auth.client_id.reveal())}:{quote_plus(auth.client_secret.reveal())}"
            extra.add(base64.b64encode(basic.encode()).decode("ascii"))
    for webhook in config.webhooks.values():
        secrets += webhook.verify.secrets
    if config.bus.nats_token is not None:
        secrets.append(config.bus.nats_token)
    if config.gateway.admin_key is not None:
        secrets.append(config.gateway.admin_key)
    vault = config.secrets.vault
    if vault is not None:
        secrets += [s for s in (vault.token, vault.role_id, vault.secret_id) if s is not None]
    values: set[str] = set(extra)
    for secret in secrets:
        raw = secret.reveal()
        values |= {raw, quote(raw, safe=""), quote_plus(raw), orjson.dumps(raw).decode()[1:-1]}
    return {v for v in values if len(v) >= MIN_REDACTED_LENGTH}
