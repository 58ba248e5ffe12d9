"""HTTPS on the listener (``[gateway] tls``, docs/configuration.md): the server's ``ssl.SSLContext`` and the
subject of the certificate a caller presented.

- TLS 1.2 or later, ALPN ``http/1.1`` (the server speaks HTTP/1.1 only); with ``client_ca_file``
  every caller must present a certificate that CA signed, or the handshake fails.
- The context is cached by the settings and the files' contents, like the vendors' (``upstream.tls``):
  a reload (SIGHUP, or a change to one of the files, which the config watcher follows) that changed no
  file keeps it; one after a rotation makes a new one, which ``Server.ssl`` hands to new connections
  only. Connections already open keep the context they were accepted with, so none is dropped.
"""

from __future__ import annotations

import ssl
from typing import Any

from ..config.model import ListenerTls
from ..upstream.tls import ALPN, files_digest

_contexts: dict[ListenerTls, tuple[bytes, ssl.SSLContext]] = {}


def _no_passphrase() -> bytes:
    raise ValueError("the private key is encrypted; the gateway needs it unencrypted")


def server_context(tls: ListenerTls) -> ssl.SSLContext:
    """The listener's context for ``tls``; raises ``ssl.SSLError``, ``OSError`` or ``ValueError`` when
    a file changed since the config was checked and is unusable now."""
    digest = files_digest((tls.cert_file, tls.key_file, tls.client_ca_file))
    cached = _contexts.get(tls)
    if cached is not None and cached[0] == digest:
        return cached[1]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=_no_passphrase)
    if tls.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(tls.client_ca_file))
    context.set_alpn_protocols(ALPN)
    _contexts[tls] = (digest, context)
    return context


def client_subject(peercert: Any) -> frozenset[tuple[str, str]] | None:
    """A verified peer certificate's subject (``SSLObject.getpeercert()``) as (name, value) pairs."""
    if not peercert:
        return None
    return frozenset((name, value) for rdn in peercert.get("subject", ()) for name, value in rdn)
