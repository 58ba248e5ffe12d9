"""TLS toward vendors against real local TLS vendors (``tests.tls_vendor``, certificates from a
throwaway ``trustme`` CA): the oldest version spoken, client certificates (mTLS), SNI and host name
verification, and rotated files picked up on reload. Each refusal comes with a control showing the
vendor works for a client allowed to reach it, so no test passes because a vendor was broken."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.http.app import reload
from gateway.upstream.forwarder import vendor_transport
from tests.tls_certs import Pem, issue, server_context, write_ca
from tests.tls_vendor import TlsVendor

TLS1_1 = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
TLS1_2 = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
TLS1_3 = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def vendor_pem(ca: trustme.CA, tmp_path: Path) -> Pem:
    return issue(ca, tmp_path / "vendor", "vendor", "127.0.0.1", "localhost")


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    return write_ca(ca, tmp_path / "ca.pem")


@pytest.fixture
def tls_vendor() -> Iterator[Callable[[ssl.SSLContext], TlsVendor]]:
    started: list[TlsVendor] = []

    def start(context: ssl.SSLContext) -> TlsVendor:
        server = TlsVendor(context).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


async def seen(vendor: TlsVendor, reason: str) -> bool:
    """Whether the vendor logged a handshake failure for ``reason``: its thread records it just after
    OpenSSL sent the alert, so it may land a moment after the gateway answered."""
    for _ in range(200):
        if vendor.errors and reason in vendor.errors[-1]:
            return True
        await asyncio.sleep(0.01)
    return False


async def handshake(port: int, context: ssl.SSLContext) -> str:
    """The control: a TLS client of the test's choosing completes a handshake; returns the version."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    version: str = writer.get_extra_info("ssl_object").version()
    writer.close()
    return version


async def test_a_vendor_that_only_speaks_tls_1_1_is_refused(
    gateway: Any, tls_vendor: Any, vendor_pem: Pem, ca_file: Path
) -> None:
    old = tls_vendor(server_context(vendor_pem, versions=TLS1_1))
    permissive = ssl.create_default_context(cafile=str(ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert await handshake(old.port, permissive) == "TLSv1.1"  # the vendor works, for an old client
    client = await gateway(
        f"""
        [vendors.old]
        base_url = "https://127.0.0.1:{old.port}"
        tls = {{ ca_file = "{ca_file}" }}
        retry = {{ attempts = 1 }}
        """
    )
    answer = await client.get("/old/hello")
    assert answer.status == 502
    detail = (await answer.json())["detail"]
    assert detail.startswith("vendor old is unreachable") and "PROTOCOL_VERSION" in detail, detail
    assert await seen(old, "UNSUPPORTED_PROTOCOL")  # the vendor saw a client it could not speak with


async def test_min_version_1_3_refuses_a_tls_1_2_vendor_that_the_default_reaches(
    gateway: Any, tls_vendor: Any, vendor_pem: Pem, ca_file: Path
) -> None:
    v12 = tls_vendor(server_context(vendor_pem, versions=TLS1_2))
    v13 = tls_vendor(server_context(vendor_pem, versions=TLS1_3))
    client = await gateway(
        f"""
        [vendors.v12]
        base_url = "https://127.0.0.1:{v12.port}"
        tls = {{ ca_file = "{ca_file}" }}
        [vendors.strict12]
        base_url = "https://127.0.0.1:{v12.port}"
        tls = {{ ca_file = "{ca_file}", min_version = "1.3" }}
        retry = {{ attempts = 1 }}
        [vendors.strict13]
        base_url = "https://127.0.0.1:{v13.port}"
        tls = {{ ca_file = "{ca_file}", min_version = "1.3" }}
        """
    )
    ok = await client.get("/v12/hello")
    assert ok.status == 200 and (await ok.json())["version"] == "TLSv1.2"
    refused = await client.get("/strict12/hello")
    assert refused.status == 502, await refused.text()
    assert "PROTOCOL_VERSION" in (await refused.json())["detail"]
    ok13 = await client.get("/strict13/hello")
    assert ok13.status == 200 and (await ok13.json())["version"] == "TLSv1.3"


async def test_a_vendor_demanding_a_client_certificate_is_reached_with_one_and_refuses_without(
    gateway: Any, tls_vendor: Any, vendor_pem: Pem, ca_file: Path, tmp_path: Path
) -> None:
    clients_ca = trustme.CA()  # the vendor's own CA for its callers
    mtls = tls_vendor(server_context(vendor_pem, client_ca=write_ca(clients_ca, tmp_path / "cca.pem")))
    ours = issue(clients_ca, tmp_path / "client", "ours", common_name="gateway-prod")
    stranger = issue(trustme.CA(), tmp_path / "client", "stranger", common_name="gateway-prod")
    client = await gateway(
        f"""
        [vendors.with_cert]
        base_url = "https://127.0.0.1:{mtls.port}"
        tls = {{ ca_file = "{ca_file}", cert_file = "{ours.cert}", key_file = "{ours.key}" }}
        [vendors.without_cert]
        base_url = "https://127.0.0.1:{mtls.port}"
        tls = {{ ca_file = "{ca_file}" }}
        retry = {{ attempts = 1 }}
        [vendors.wrong_cert]
        base_url = "https://127.0.0.1:{mtls.port}"
        tls = {{ ca_file = "{ca_file}", cert_file = "{stranger.cert}", key_file = "{stranger.key}" }}
        retry = {{ attempts = 1 }}
        """
    )
    ok = await client.get("/with_cert/hello")
    assert ok.status == 200
    assert await ok.json() == {"version": "TLSv1.3", "client": "gateway-prod"}
    for vendor, reason in (
        ("without_cert", "PEER_DID_NOT_RETURN"),
        ("wrong_cert", "CERTIFICATE_VERIFY_FAILED"),
    ):
        refused = await client.get(f"/{vendor}/hello")
        assert refused.status == 502, vendor
        assert (await refused.json())["detail"].startswith(f"vendor {vendor} "), vendor
        assert await seen(mtls, reason), mtls.errors


async def test_sni_carries_the_vendor_host_and_its_name_is_verified(
    gateway: Any, tls_vendor: Any, ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    named = tls_vendor(server_context(issue(ca, tmp_path / "named", "named", "localhost")))  # not the IP
    client = await gateway(
        f"""
        [vendors.by_name]
        base_url = "https://localhost:{named.port}"
        tls = {{ ca_file = "{ca_file}" }}
        [vendors.by_ip]
        base_url = "https://127.0.0.1:{named.port}"
        tls = {{ ca_file = "{ca_file}" }}
        retry = {{ attempts = 1 }}
        [vendors.system_cas]
        base_url = "https://localhost:{named.port}"
        retry = {{ attempts = 1 }}
        """
    )
    ok = await client.get("/by_name/hello")
    assert ok.status == 200, await ok.text()
    assert named.sni == ["localhost"]
    mismatch = await client.get("/by_ip/hello")
    assert mismatch.status == 502
    assert "IP address mismatch" in (await mismatch.json())["detail"]
    untrusted = await client.get("/system_cas/hello")  # a private CA is not trusted without ca_file
    assert untrusted.status == 502
    assert "certificate verify failed" in (await untrusted.json())["detail"]


async def test_a_rotated_client_certificate_is_presented_after_a_reload(
    gateway: Any, tls_vendor: Any, vendor_pem: Pem, ca_file: Path, tmp_path: Path
) -> None:
    clients_ca = trustme.CA()
    mtls = tls_vendor(server_context(vendor_pem, client_ca=write_ca(clients_ca, tmp_path / "cca.pem")))
    current = issue(clients_ca, tmp_path / "client", "current", common_name="first")
    client = await gateway(
        f"""
        [vendors.v]
        base_url = "https://127.0.0.1:{mtls.port}"
        tls = {{ ca_file = "{ca_file}", cert_file = "{current.cert}", key_file = "{current.key}" }}
        """
    )
    assert (await (await client.get("/v/hello")).json())["client"] == "first"
    endpoint = vendor_transport(client.app.live.runtime.config.vendors["v"]).endpoint
    assert await reload(client.app)
    # Nothing changed: the same context, so the same pool and its keep-alive connections.
    assert vendor_transport(client.app.live.runtime.config.vendors["v"]).endpoint == endpoint
    rotated = issue(clients_ca, tmp_path / "rotated", "current", common_name="second")
    current.cert.write_bytes(rotated.cert.read_bytes())
    current.key.write_bytes(rotated.key.read_bytes())
    assert await reload(client.app)
    assert vendor_transport(client.app.live.runtime.config.vendors["v"]).endpoint != endpoint
    assert (await (await client.get("/v/hello")).json())["client"] == "second"
