"""Golden cases: ``tests/golden/transform/<case>/{spec.toml,input.json,expected.json}``.

A case with ``expected_error.txt`` instead of ``expected.json`` must fail with exactly that TransformError
message. ``UPDATE_GOLDEN=1 pytest tests/unit/transform/test_golden.py`` rewrites the expected files from
the current engine; review the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from gateway.transform import TransformError, apply, explain, load_spec

CASES_DIR = Path(__file__).resolve().parents[2] / "golden" / "transform"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "spec.toml").is_file())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    folder = CASES_DIR / case
    spec = load_spec(folder / "spec.toml", display_name=f"{case}/spec.toml")
    document = orjson.loads((folder / "input.json").read_bytes())
    before = orjson.dumps(document)
    error_file = folder / "expected_error.txt"

    if error_file.exists():
        with pytest.raises(TransformError) as info:
            apply(spec, document)
        if UPDATE:
            error_file.write_text(str(info.value) + "\n")
        assert str(info.value) == error_file.read_text().strip()
    else:
        result = apply(spec, document)
        expected_file = folder / "expected.json"
        if UPDATE:
            expected_file.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        assert result == orjson.loads(expected_file.read_bytes())
        # The result must survive the trip to the wire unchanged.
        assert orjson.loads(orjson.dumps(result)) == result

    assert orjson.dumps(document) == before, "apply() modified its input"
    assert explain(spec).strip()


def test_round_trip_crm_to_billing_and_back() -> None:
    """CRM -> billing -> CRM keeps every field both sides know about."""
    to_billing = load_spec(CASES_DIR / "crm-contact-to-billing-customer" / "spec.toml")
    to_crm = load_spec(CASES_DIR / "billing-customer-to-crm-contact" / "spec.toml")
    contact = orjson.loads((CASES_DIR / "crm-contact-to-billing-customer" / "input.json").read_bytes())
    billing = apply(to_billing, contact)
    assert isinstance(billing, dict)
    # What the vendor adds to the customer it stores.
    billing.update({"id": "cus_1", "created": 1680893993, "delinquent": False, "balance": 0})
    billing["tax_ids"] = {"object": "list", "data": billing["tax_ids"]}
    back = apply(to_crm, billing)
    assert isinstance(back, dict)
    assert back["id"] == contact["id"]
    assert back["fullName"] == contact["fullName"]
    assert back["email"] == contact["emails"][0]["address"]
    assert back["createdAt"] == contact["createdAt"]
    assert back["lifecycle"] == contact["lifecycle"]
    assert back["preferredCurrency"] == contact["preferredCurrency"]
    assert back["marketingOptIn"] == contact["marketingOptIn"]
    assert back["company"]["taxIds"] == contact["company"]["taxIds"]
    assert back["address"]["postcode"] == str(contact["address"]["postcode"])
