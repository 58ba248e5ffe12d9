"""Properties over generated documents and specs: apply() fails only with TransformError, never changes
its input and returns plain JSON; specs load or fail only with TransformSpecError; explain() always works."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.transform import TransformError, TransformSpec, TransformSpecError, apply, explain, parse_spec
from gateway.transform.pointer import compile_pointer, escape, render

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A small alphabet of keys so that generated pointers often hit generated documents.
KEYS = st.sampled_from(["a", "b", "id", "0", "1", "-", "~", "/", "", "x~1y", "é"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        ["12", "12.5", "true", "false", "1", "0", "31/01/2024", "2024-01-31T10:00:00Z", "1706659200"]
    )
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(KEYS | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=25,
)
POINTERS = st.lists(KEYS, max_size=4).map(lambda keys: "".join("/" + escape(k) for k in keys))
TARGETS = st.lists(KEYS, min_size=1, max_size=3).map(lambda keys: "".join("/" + escape(k) for k in keys))
TOML_SCALARS = st.booleans() | st.integers(min_value=-(2**40), max_value=2**40) | st.text(max_size=8)
DATE_FORMATS = st.sampled_from(["iso8601", "unix", "%d/%m/%Y", "%Y-%m-%dT%H:%M:%S%z", "%Y%m%d", "%H:%M"])
TYPES = st.sampled_from(["string", "integer", "number", "boolean"])


@st.composite
def rules(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": draw(TARGETS)}
    if draw(st.booleans()) and depth < 2 and draw(st.integers(0, 3)) == 0:
        rule["from"] = draw(POINTERS)
        rule["each"] = draw(st.lists(rules(depth + 1), min_size=1, max_size=3))
        if draw(st.booleans()):
            rule["optional"] = True
        return rule
    if draw(st.integers(0, 4)) == 0:
        rule["const"] = draw(
            TOML_SCALARS | st.lists(TOML_SCALARS, max_size=3) | st.dictionaries(KEYS, TOML_SCALARS)
        )
        return rule
    rule["from"] = draw(POINTERS)
    converted = False
    if draw(st.booleans()):
        rule["type"] = draw(TYPES)
        converted = True
    if draw(st.integers(0, 3)) == 0:
        rule["date"] = {"from": draw(DATE_FORMATS), "to": draw(DATE_FORMATS)}
        converted = True
    # Table entries and defaults pass through date and type at load; leave them out where they might
    # not convert, so that generated specs stay valid.
    if not converted and draw(st.booleans()):
        rule["values"] = draw(
            st.dictionaries(
                st.text(max_size=4) | st.sampled_from(["1", "true", "null"]),
                TOML_SCALARS,
                min_size=1,
                max_size=4,
            )
        )
    choice = draw(st.integers(0, 2))
    if choice == 1:
        rule["optional"] = True
    elif choice == 2 and not converted:
        rule["default"] = draw(TOML_SCALARS)
    return rule


@st.composite
def specs(draw: st.DrawFn) -> TransformSpec:
    data: dict[str, Any] = {"map": draw(st.lists(rules(), max_size=6))}
    if draw(st.booleans()):
        data["keep_unmapped"] = draw(st.booleans())
    drops = draw(st.lists(TARGETS, max_size=3))
    if drops:
        data["drop"] = [{"path": p} for p in drops]
    return parse_spec(data, source="generated.toml")


def assert_plain_json(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)


@SETTINGS
@given(spec=specs(), document=JSON)
def test_apply_fails_only_with_transform_error_and_never_changes_its_input(
    spec: TransformSpec, document: Any
) -> None:
    before = copy.deepcopy(document)
    try:
        result = apply(spec, document)
    except TransformError as exc:
        assert exc.rule.startswith(("map[", "drop["))
        assert exc.rule in str(exc)
    else:
        assert_plain_json(result)
        # Deterministic, and no state carried over from one call to the next.
        assert apply(spec, document) == result
    assert document == before


@SETTINGS
@given(spec=specs())
def test_explain_never_raises(spec: TransformSpec) -> None:
    text = explain(spec)
    assert text.endswith("\n")
    assert "keep_unmapped" in text


@SETTINGS
@given(document=JSON)
def test_keep_unmapped_alone_is_the_identity(document: Any) -> None:
    spec = parse_spec({"keep_unmapped": True}, source="identity.toml")
    assert apply(spec, document) == document


@SETTINGS
@given(keys=st.lists(st.text(max_size=6), max_size=5))
def test_pointer_escaping_round_trips(keys: list[str]) -> None:
    pointer = "".join("/" + escape(k) for k in keys)
    tokens = compile_pointer(pointer)
    assert [k for k, _ in tokens] == keys
    assert render(tokens) == pointer


ANY_TOML = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "to",
                    "from",
                    "const",
                    "type",
                    "date",
                    "values",
                    "default",
                    "optional",
                    "each",
                    "path",
                    "map",
                    "drop",
                    "keep_unmapped",
                    "junk",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@SETTINGS
@given(data=st.dictionaries(st.sampled_from(["keep_unmapped", "map", "drop", "junk"]), ANY_TOML))
def test_parse_spec_fails_only_with_spec_error(data: dict[str, Any]) -> None:
    try:
        parse_spec(data, source="fuzz.toml")
    except TransformSpecError as exc:
        assert exc.problems
        assert all(p.startswith("fuzz.toml: ") for p in exc.problems)
