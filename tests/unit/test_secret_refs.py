"""Secret-manager references: how they are read, and how a field is taken out of what a manager holds."""

from __future__ import annotations

import pytest

from gateway.config.secrets import Managed, field_of


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("aws-sm:prod/stripe", Managed(("aws", "prod/stripe"), None)),
        ("aws-sm:prod/stripe#api_key", Managed(("aws", "prod/stripe"), "api_key")),
        (
            "aws-sm:arn:aws:secretsmanager:eu-west-1:123:secret:x-AbCd#k",
            Managed(("aws", "arn:aws:secretsmanager:eu-west-1:123:secret:x-AbCd"), "k"),
        ),
        ("vault:secret/stripe#api_key", Managed(("vault", "secret/stripe"), "api_key")),
        ("vault:/kv/team/hub/#key", Managed(("vault", "kv/team/hub"), "key")),
        ("aws-sm:", "names no secret (aws-sm:NAME[#field])"),
        ("aws-sm:x#", "names no field after '#'"),
        ("vault:secret/stripe", "needs a field: vault:PATH#field (a KV v2 secret holds several)"),
        ("vault:stripe#k", "must be vault:MOUNT/PATH#field, like vault:secret/stripe#api_key"),
    ],
)
def test_references_parse(reference: str, parsed: Managed | str) -> None:
    assert Managed.parse(reference) == parsed


def test_fields_are_taken_by_name_and_never_shown() -> None:
    whole = Managed(("aws", "x"), None)
    field = Managed(("aws", "x"), "api_key")
    assert field_of(whole, "plain-secret-value") == "plain-secret-value"
    assert field_of(field, '{"api_key": "sk_123", "other": 1}') == "sk_123"
    assert field_of(Managed(("vault", "s/x"), "api_key"), {"api_key": "sk_v"}) == "sk_v"
    for managed, value, why in [
        (field, "not json sk_123", "is not a JSON object, so it has no field 'api_key'"),
        (field, '{"key": "sk_123", "b": "c"}', "has no field 'api_key' (its fields: b, key)"),
        (field, '{"api_key": 12345}', "field 'api_key' is not a non-empty string"),
        (whole, None, "holds no SecretString (a binary secret cannot be used)"),
    ]:
        with pytest.raises(ValueError) as info:
            field_of(managed, value)
        assert str(info.value) == why
        assert "sk_123" not in why and "12345" not in why
