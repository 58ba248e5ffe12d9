"""TLS toward vendors: one ``ssl.SSLContext`` per distinct vendor ``tls = {...}`` and file contents.

- TLS 1.2 is the oldest version ever spoken (``min_version = "1.3"`` raises it); certificates are
  verified against the system's CAs, or ``ca_file`` instead, with the vendor's host name checked and
  sent as SNI (the pool passes ``server_hostname``); ``cert_file``/``key_file`` is the client
  certificate for vendors that demand one (mTLS).
- A vendor with none of that set uses the pool's shared contexts (``True``/``False``: verified or not),
  which are made with the same floor.
- Contexts are cached by the settings and the files' contents: a reload that changes nothing gets the
  same context, so the vendor's ``pool.Endpoint`` (which compares contexts by identity) and its idle
  keep-alive connections are kept; a reload after a certificate was rotated gets a new context, whose
  connections use the new files, while connections already open finish on the old one.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable
from pathlib import Path

from ..config.model import Tls

TLS_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
ALPN = ("http/1.1",)

_contexts: dict[Tls, tuple[bytes, ssl.SSLContext]] = {}


def files_digest(paths: Iterable[Path | None]) -> bytes:
    """What the files hold now (a missing or unreadable one counts as such): compares contents, so a
    Kubernetes Secret's symlink swap or a copy with the same mtime both count as a change."""
    h = hashlib.sha256()
    for path in paths:
        if path is None:
            h.update(b"-\0")
            continue
        h.update(str(path).encode() + b"\0")
        try:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as exc:
            h.update(f"unreadable: {exc.errno}".encode())
    return h.digest()


def _no_passphrase() -> bytes:
    # OpenSSL would ask on the terminal: a key encrypted since the config was checked is an error.
    raise ValueError("the private key is encrypted; the gateway needs it unencrypted")


def client_context(tls: Tls) -> ssl.SSLContext | bool:
    """The ``ssl`` a vendor's ``pool.Endpoint`` carries (only used for https:// URLs). Raises
    ``ssl.SSLError``, ``OSError`` or ``ValueError`` when a file changed since the config was checked
    and is unusable now."""
    if tls.ca_file is None and tls.cert_file is None and tls.min_version == "1.2":
        return tls.verify
    digest = files_digest((tls.ca_file, tls.cert_file, tls.key_file))
    cached = _contexts.get(tls)
    if cached is not None and cached[0] == digest:
        return cached[1]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    context.minimum_version = TLS_VERSION[tls.min_version]
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca_file is not None:
        context.load_verify_locations(cafile=str(tls.ca_file))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=_no_passphrase)
    context.set_alpn_protocols(ALPN)
    _contexts[tls] = (digest, context)  # one entry per distinct settings: rotated files replace theirs
    return context
