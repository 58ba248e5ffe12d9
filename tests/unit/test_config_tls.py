"""Vendor ``tls`` and ``allow_plaintext`` at load: every bad certificate file or setting is a problem
naming its file and key, and ``gateway check`` refuses plain http to a remote vendor."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from gateway.config import ConfigError, load_config
from tests.tls_certs import issue, write_ca


@pytest.fixture(autouse=True)
def _in_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages name files relative to the working directory


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_a_vendor_tls_block_loads_with_absolute_paths(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    ca = trustme.CA()
    write_ca(ca, tmp_path / "certs" / "ca.pem")
    issue(ca, tmp_path / "certs", "client")
    config = load_config(
        write_config(
            '[vendors.a]\nbase_url = "https://x.com"\n'
            'tls = { ca_file = "certs/ca.pem", cert_file = "certs/client.pem", key_file = "certs/client.key", '
            'min_version = "1.3" }\n'
        )
    )
    tls = config.vendors["a"].tls
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        tmp_path / "certs" / "ca.pem",
        tmp_path / "certs" / "client.pem",
        tmp_path / "certs" / "client.key",
    )
    assert tls.min_version == "1.3" and tls.verify
    assert (
        load_config(write_config('[vendors.a]\nbase_url = "https://x.com"\n')).vendors["a"].tls.min_version
        == "1.2"
    )


def test_bad_tls_settings_are_problems_naming_the_key(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    ca = trustme.CA()
    one = issue(ca, tmp_path, "one")
    other = issue(ca, tmp_path, "other")
    key = serialization.load_pem_private_key(one.key.read_bytes(), None)
    (tmp_path / "encrypted.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    found = problems(
        write_config(
            f"""
            [vendors.a]
            base_url = "https://a.com"
            tls = {{ cert_file = "one.pem", key_file = "other.key", min_version = "1.1" }}
            [vendors.b]
            base_url = "https://b.com"
            tls = {{ cert_file = "one.pem" }}
            [vendors.c]
            base_url = "https://c.com"
            tls = {{ cert_file = "one.pem", key_file = "encrypted.key", ca_file = "junk.pem" }}
            [vendors.d]
            base_url = "https://d.com"
            tls = {{ cert_file = "missing.pem", key_file = "{other.key}", verify = "yes" }}
            """
        )
    )
    base = str(tmp_path)
    assert found == [
        f"config.toml: vendors.a.tls.cert_file: cannot use {base}/one.pem with {base}/other.key: "
        "the key does not belong to the certificate",
        "config.toml: vendors.a.tls.min_version: must be one of '1.2', '1.3', not '1.1'",
        "config.toml: vendors.b.tls.key_file: is required with cert_file (the client certificate and its key)",
        f"config.toml: vendors.c.tls.ca_file: {base}/junk.pem holds no usable PEM certificate: "
        "no certificate or crl found",
        f"config.toml: vendors.c.tls.cert_file: {base}/encrypted.key is encrypted; the gateway needs the key "
        "unencrypted (mount it as a secret file)",
        "config.toml: vendors.d.tls.verify: must be true or false, not a string",
        f"config.toml: vendors.d.tls.cert_file: file not found: {base}/missing.pem",
    ]
    assert "PRIVATE KEY" not in "\n".join(found)


def test_gateway_check_refuses_plain_http_to_a_remote_vendor_and_warns_when_allowed(
    write_config: Callable[..., Path],
) -> None:
    path = write_config('[vendors.crm]\nbase_url = "http://crm.internal.example:8080/api"\n')

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check", "--config", str(path)], capture_output=True, text=True
        )

    refused = check()
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "config.toml: vendors.crm.base_url: is plain http:// to crm.internal.example, which is not this "
        "machine: requests, answers and credentials would cross the network unencrypted; use https://, or "
        "set allow_plaintext = true"
    ]
    path.write_text(path.read_text() + "allow_plaintext = true\n")
    allowed = check()
    assert allowed.returncode == 0, allowed.stderr
    assert (
        "config.toml: warning: vendors.crm.base_url: is plain http (allow_plaintext = true)" in allowed.stderr
    )


def test_the_listener_tls_and_client_subjects_load(write_config: Callable[..., Path], tmp_path: Path) -> None:
    ca = trustme.CA()
    server = issue(ca, tmp_path, "server", "127.0.0.1")
    write_ca(ca, tmp_path / "callers.pem")
    config = load_config(
        write_config(
            '[gateway]\ntls = { cert_file = "server.pem", key_file = "server.key", client_ca_file = "callers.pem" }\n'
            '[clients.billing]\ncert_subject = "CN=billing, O=Acme"\nallow = ["a"]\n'
            '[clients.ops]\nkey = "env:HOME"\ncert_subject = "CN=ops"\nallow = ["a"]\n'
            '[vendors.a]\nbase_url = "https://a.com"\n'
        )
    )
    tls = config.gateway.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        server.cert,
        server.key,
        tmp_path / "callers.pem",
    )
    billing = config.clients["billing"]
    assert billing.key is None and billing.cert_subject is not None
    assert billing.cert_subject.attributes == {("commonName", "billing"), ("organizationName", "Acme")}
    assert billing.cert_subject.matches(
        frozenset({("commonName", "billing"), ("organizationName", "Acme"), ("countryName", "DE")})
    )
    assert not billing.cert_subject.matches(frozenset({("commonName", "billing")}))
    assert config.clients["ops"].key is not None


def test_bad_listener_tls_and_subjects_are_problems(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    ca = trustme.CA()
    issue(ca, tmp_path, "one", "127.0.0.1")
    issue(ca, tmp_path, "two", "127.0.0.1")
    found = problems(
        write_config(
            '[gateway]\ntls = { cert_file = "one.pem", key_file = "two.key", client_ca_file = "none.pem", port = 1 }\n'
            '[clients.billing]\ncert_subject = "CN=billing"\nallow = ["a"]\n'
            '[vendors.a]\nbase_url = "https://a.com"\n'
        )
    )
    base = str(tmp_path)
    assert found == [
        f"config.toml: gateway.tls.client_ca_file: file not found: {base}/none.pem",
        "config.toml: gateway.tls.port: unknown key; expected one of cert_file, client_ca_file, key_file",
        f"config.toml: gateway.tls.cert_file: cannot use {base}/one.pem with {base}/two.key: the key does not "
        "belong to the certificate",
        "config.toml: clients.billing.cert_subject: needs [gateway] tls with client_ca_file: only then do "
        "callers present certificates",
    ]
    write_ca(ca, tmp_path / "callers.pem")
    found = problems(
        write_config(
            '[gateway]\ntls = { cert_file = "one.pem", key_file = "one.key", client_ca_file = "callers.pem" }\n'
            '[clients.a]\ncert_subject = "CN=billing"\nallow = ["v"]\n'
            '[clients.b]\ncert_subject = "CN=billing,O=Acme"\nallow = ["v"]\n'
            '[clients.c]\ncert_subject = "CN=x, Org=Acme"\nallow = ["v"]\n'
            '[clients.d]\nallow = ["v"]\n'
            "[gateway.x]\n"
            '[vendors.v]\nbase_url = "https://a.com"\n'
        )
    )
    assert found == [
        "config.toml: gateway.x: unknown key; expected one of admin_key, body_timeout_seconds, "
        "header_timeout_seconds, keepalive_timeout_seconds, listen, max_body_bytes, max_connections, "
        "max_header_bytes, max_url_bytes, routes_dir, shutdown_timeout_seconds, store, tls, transforms_dir",
        "config.toml: clients.b.cert_subject: cannot be told apart from clients.a.cert_subject ('CN=billing'): "
        "a certificate could match both",
        "config.toml: clients.c.cert_subject: must be ATTRIBUTE=value pairs separated by commas, like "
        "\"CN=billing,O=Acme\" (CN, O, OU, C, ST, L, DC, UID, emailAddress, serialNumber); 'Org=Acme' is not one",
        'config.toml: clients.d.key: is required: a gateway key ("env:NAME" or "file:/path"), or a cert_subject '
        "when callers present certificates ([gateway] tls.client_ca_file)",
    ]
