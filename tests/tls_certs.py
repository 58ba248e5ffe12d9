"""Certificates for TLS tests, made with ``trustme`` (a throwaway CA per test), written as PEM files."""

from __future__ import annotations

import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pem:
    """A certificate (with its chain) and its key, as files."""

    cert: Path
    key: Path


def issue(ca: trustme.CA, folder: Path, name: str, *identities: str, **subject: str | None) -> Pem:
    """A leaf certificate from ``ca`` for ``identities`` (host names, IPs; none for a client cert);
    ``subject``: trustme's ``common_name``, ``organization_name``, ``organization_unit_name``."""
    leaf = ca.issue_cert(*(identities or (f"{name}.client.test",)), **subject)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    pem = Pem(cert=folder / f"{name}.pem", key=folder / f"{name}.key")
    pem.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    pem.key.write_bytes(leaf.private_key_pem.bytes())
    return pem


def write_ca(ca: trustme.CA, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(
    pem: Pem,
    *,
    client_ca: Path | None = None,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None,
) -> ssl.SSLContext:
    """A server side: ``versions`` (oldest, newest) bounds what it speaks, ``client_ca`` makes it
    demand a client certificate signed by that CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem.cert, pem.key)
    if versions is not None:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is what is tested
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version, context.maximum_version = versions
        if versions[0] < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 speaks TLS 1.1 only at level 0
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    return context
