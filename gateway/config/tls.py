"""Certificate files checked at load, so a bad one is a config error naming its key, not a failed start
or a handshake that fails later for every caller.

OpenSSL does the checking (``ssl.SSLContext.load_cert_chain`` / ``load_verify_locations``): what it
accepts here is what the gateway will serve or present. An encrypted key is refused (nothing would be
there to type its passphrase): OpenSSL's prompt is answered by a callback that says so.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _Encrypted


def key_pair_problem(cert_file: Path, key_file: Path) -> str | None:
    """Why ``cert_file`` and ``key_file`` cannot be served together, or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)
    except _Encrypted:
        return f"{key_file} is encrypted; the gateway needs the key unencrypted (mount it as a secret file)"
    except ssl.SSLError as exc:
        return f"cannot use {cert_file} with {key_file}: {_reason(exc)}"
    except OSError as exc:
        return f"cannot read {cert_file} or {key_file}: {exc.strerror or exc}"
    return None


def ca_file_problem(ca_file: Path) -> str | None:
    """Why ``ca_file`` holds no usable CA certificate, or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        return f"{ca_file} holds no usable PEM certificate: {_reason(exc)}"
    except OSError as exc:
        return f"cannot read {ca_file}: {exc.strerror or exc}"
    if not context.cert_store_stats()["x509"]:
        return f"{ca_file} holds no CA certificate"
    return None


def _reason(exc: ssl.SSLError) -> str:
    # "[X509: KEY_VALUES_MISMATCH] key values mismatch (_ssl.c:3926)" -> "key values mismatch"
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    if exc.reason in (None, "PEM_LIB"):
        return "not a PEM certificate and private key"
    text = str(exc.args[1] if len(exc.args) > 1 else exc)
    return text.split(" (_ssl.c", 1)[0].split("] ", 1)[-1]
