"""Who a caller is (``Authenticator.identify``): a key when one is sent, else the subject of the
certificate its connection presented; never a guess between two clients."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import Client, Secret
from gateway.config.model import CertSubject
from gateway.errors import Unauthorized
from gateway.features.client_auth.identity import Authenticator


def subject(text: str, **attributes: str) -> CertSubject:
    return CertSubject(text=text, attributes=frozenset(attributes.items()))


def fields(**headers: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))


AUTH = Authenticator(
    {
        "billing": Client(name="billing", cert_subject=subject("CN=billing", commonName="billing")),
        "acme": Client(name="acme", cert_subject=subject("O=Acme", organizationName="Acme")),
        "ops": Client(name="ops", key=Secret("env:K", "ops-key-123456")),
    }
)


def test_a_certificate_names_its_client_and_a_key_wins_over_it() -> None:
    cert = frozenset({("commonName", "billing"), ("organizationName", "Other")})
    assert AUTH.identify(fields(), cert) == ("billing", False)
    assert AUTH.identify(fields(X_Gateway_Key="ops-key-123456"), cert) == ("ops", False)
    assert AUTH.identify(fields(Authorization="Bearer ops-key-123456"), cert) == ("ops", True)
    with pytest.raises(Unauthorized, match="not known"):
        AUTH.identify(fields(Authorization="Bearer billing"), cert)  # a wrong key is not excused by a cert


def test_a_certificate_of_no_client_or_of_two_is_refused() -> None:
    with pytest.raises(Unauthorized, match=r"\(CN=nobody\) is no client's cert_subject"):
        AUTH.identify(fields(), frozenset({("commonName", "nobody")}))
    both = frozenset({("commonName", "billing"), ("organizationName", "Acme")})
    with pytest.raises(Unauthorized, match="that of several clients: billing, acme"):
        AUTH.identify(fields(), both)
    with pytest.raises(Unauthorized, match="send your gateway key"):
        AUTH.identify(fields(), None)  # no certificate (plain HTTP) and no key


def test_a_remembered_key_names_its_client_and_nothing_else_is_let_in() -> None:
    auth = Authenticator(
        {
            "ops": Client(name="ops", key=Secret("env:K", "ops-key-123456")),
            "web": Client(name="web", key=Secret("env:W", "web-key-654321")),
        }
    )
    for _ in range(3):  # the first time by digest, then remembered: the same answer each time
        assert auth.identify(fields(Authorization="Bearer ops-key-123456")) == ("ops", True)
        assert auth.identify(fields(X_Gateway_Key="web-key-654321")) == ("web", False)
    for wrong in ("ops-key-12345", "ops-key-1234567", "web-key-654321 ", "OPS-KEY-123456"):
        with pytest.raises(Unauthorized, match="not known"):
            auth.identify(fields(X_Gateway_Key=wrong))
    # Unknown keys are never remembered: a caller guessing keys cannot make the gateway hold more.
    for n in range(100):
        with pytest.raises(Unauthorized):
            auth.identify(fields(X_Gateway_Key=f"guess-{n}"))
    assert len(auth._known) == 2
