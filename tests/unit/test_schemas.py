"""Schema files: drafts by $schema, local $refs only, precise load errors, validation that never crashes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.features.payload.schemas import SchemaFileError, SchemaRegistry

ROOT = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, schema: object) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(schema))


def test_draft_7_and_2020_12_are_chosen_by_schema_keyword(tmp_path: Path) -> None:
    # `prefixItems` is a 2020-12 keyword; draft 7 ignores it and uses `items` as an array instead.
    write(
        tmp_path,
        "new.json",
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "prefixItems": [{"type": "string"}]},
    )
    write(
        tmp_path,
        "old.json",
        {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]},
    )
    registry = SchemaRegistry(tmp_path)
    assert registry.load("new.json").errors([1]) == [{"path": "/0", "message": '1 is not of type "string"'}]
    assert registry.load("old.json").errors([1]) == [{"path": "/0", "message": '1 is not of type "string"'}]
    assert registry.load("new.json").errors(["a", 2]) == []


def test_refs_between_local_files_resolve_relative_to_the_referrer(tmp_path: Path) -> None:
    write(tmp_path, "a/order.json", {"type": "object", "properties": {"to": {"$ref": "../common/addr.json"}}})
    write(tmp_path, "common/addr.json", {"type": "object", "required": ["city"]})
    errors = SchemaRegistry(tmp_path).load("a/order.json").errors({"to": {}})
    assert errors == [{"path": "/to", "message": '"city" is a required property'}]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (
            {"type": "object", "properties": {"a": {"$ref": "../../outside.json"}}},
            "outside the transforms folder",
        ),
        (
            {"properties": {"a": {"$ref": "https://example.com/s.json"}}},
            "only schema files below the transforms folder",
        ),
        ({"type": "strng"}, "s.json: at type: 'strng' is not a JSON Schema type"),
        ({"minimum": "3"}, "s.json: at minimum: '3' is not of type 'number'"),
        ([1, 2], "a schema must be a JSON object or boolean"),
    ],
)
def test_unusable_schema_files_say_why(tmp_path: Path, schema: object, expected: str) -> None:
    write(tmp_path, "s.json", schema)
    with pytest.raises(SchemaFileError) as info:
        SchemaRegistry(tmp_path).load("s.json")
    assert expected in str(info.value)


def test_invalid_json_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"type": ')
    registry = SchemaRegistry(tmp_path)
    with pytest.raises(SchemaFileError, match=r"broken\.json is not valid JSON"):
        registry.load("broken.json")
    with pytest.raises(SchemaFileError, match="file not found"):
        registry.load("absent.json")
    with pytest.raises(SchemaFileError, match="outside the transforms folder"):
        registry.load("../etc/passwd")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


SHIPPED = [
    SchemaRegistry(ROOT / "transforms").load(name)
    for name in ("billing/crm-customer.schema.json", "billing/customer.schema.json")
]


@settings(max_examples=300, deadline=None)
@given(document=JSON)
def test_validation_never_crashes_on_any_json(document: object) -> None:
    for schema in SHIPPED:
        errors = schema.errors(document)
        assert all(
            set(e) == {"path", "message"} and (e["path"] == "" or e["path"].startswith("/")) for e in errors
        )
