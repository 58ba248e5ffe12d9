"""The transform engine, one rule kind at a time, and how spec problems are reported."""

from __future__ import annotations

import copy
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.transform import (
    TransformError,
    TransformSpec,
    TransformSpecError,
    apply,
    explain,
    load_spec,
    parse_spec,
)

SOURCE = "transforms/crm.toml"


def make(toml: str) -> TransformSpec:
    return parse_spec(tomllib.loads(textwrap.dedent(toml)), source=SOURCE)


def problems(toml: str) -> list[str]:
    with pytest.raises(TransformSpecError) as info:
        make(toml)
    return info.value.problems


def run(toml: str, document: Any) -> Any:
    return apply(make(toml), document)


def failure(toml: str, document: Any) -> TransformError:
    with pytest.raises(TransformError) as info:
        run(toml, document)
    return info.value


def one_rule(body: str) -> str:
    return "[[map]]\n" + textwrap.dedent(body) + "\n"


# --- from / to ----------------------------------------------------------------------------------------


def test_from_to_copies_a_value() -> None:
    assert run(one_rule('to = "/name"\nfrom = "/fullName"'), {"fullName": "Ada", "x": 1}) == {"name": "Ada"}


def test_intermediate_objects_are_created() -> None:
    spec = one_rule('to = "/address/line1"\nfrom = "/addr/street"')
    assert run(spec, {"addr": {"street": "1 Main St"}}) == {"address": {"line1": "1 Main St"}}


def test_two_rules_share_an_intermediate_object() -> None:
    spec = """
        [[map]]
        to = "/a/b"
        const = 1
        [[map]]
        to = "/a/c"
        const = 2
    """
    assert run(spec, {}) == {"a": {"b": 1, "c": 2}}


def test_from_reads_array_indexes() -> None:
    spec = one_rule('to = "/email"\nfrom = "/emails/1/address"')
    assert run(spec, {"emails": [{"address": "a@x"}, {"address": "b@x"}]}) == {"email": "b@x"}


def test_pointer_escapes_follow_rfc_6901() -> None:
    spec = one_rule('to = "/a~1b/c~0d"\nfrom = "/x~1y/~01"')
    assert run(spec, {"x/y": {"~1": 5}}) == {"a/b": {"c~d": 5}}


def test_from_empty_pointer_is_the_whole_input() -> None:
    assert run(one_rule('to = "/raw"\nfrom = ""'), [1, 2]) == {"raw": [1, 2]}


def test_later_rules_win_on_the_same_target() -> None:
    spec = """
        [[map]]
        to = "/phone"
        from = "/home"
        optional = true
        [[map]]
        to = "/phone"
        from = "/mobile"
        optional = true
    """
    assert run(spec, {"home": "1", "mobile": "2"}) == {"phone": "2"}
    assert run(spec, {"home": "1"}) == {"phone": "1"}


def test_missing_from_fails_naming_rule_and_path() -> None:
    spec = one_rule('to = "/a"\nconst = 1') + "\n" + one_rule('to = "/name"\nfrom = "/person/fullName"')
    error = failure(spec, {"person": {}})
    assert error.rule == "map[2]"
    assert error.path == "/person/fullName"
    assert "map[2]" in str(error) and "/person/fullName" in str(error) and "missing" in str(error)


def test_from_through_a_scalar_counts_as_missing() -> None:
    spec = one_rule('to = "/p"\nfrom = "/contact/phone"\noptional = true')
    assert run(spec, {"contact": "none"}) == {}


def test_out_of_range_index_counts_as_missing() -> None:
    spec = one_rule('to = "/e"\nfrom = "/emails/3"\noptional = true')
    assert run(spec, {"emails": ["a"]}) == {}


def test_writing_through_a_scalar_fails_with_the_target_path() -> None:
    spec = """
        [[map]]
        to = "/a"
        const = "text"
        [[map]]
        to = "/a/b"
        const = 1
    """
    error = failure(spec, {})
    assert error.rule == "map[2]"
    assert error.path == "/a/b"
    assert "a string" in error.detail


def test_writing_into_arrays_by_index_and_append() -> None:
    spec = """
        keep_unmapped = true
        [[map]]
        to = "/tags/0"
        const = "first"
        [[map]]
        to = "/tags/-"
        const = "last"
        [[map]]
        to = "/lines/1/sku"
        const = "B"
    """
    document = {"tags": ["x", "y"], "lines": [{"sku": "a"}, {"sku": "b", "n": 1}]}
    before = copy.deepcopy(document)
    assert apply(make(spec), document) == {
        "tags": ["first", "y", "last"],
        "lines": [{"sku": "a"}, {"sku": "B", "n": 1}],
    }
    assert document == before


def test_writing_past_the_end_of_an_array_fails() -> None:
    spec = 'keep_unmapped = true\n[[map]]\nto = "/tags/5"\nconst = 1'
    error = failure(spec, {"tags": []})
    assert error.path == "/tags/5"
    assert "not an index" in error.detail


# --- keep_unmapped and drop ------------------------------------------------------------------------------


def test_keep_unmapped_starts_from_the_input_and_never_changes_it() -> None:
    spec = """
        keep_unmapped = true
        [[map]]
        to = "/meta/source"
        const = "crm"
        [[map]]
        to = "/nested/deep/x"
        const = 1
        [[drop]]
        path = "/internal_notes"
        [[drop]]
        path = "/nested/deep/secret"
    """
    document = {
        "id": 1,
        "meta": {"v": 2},
        "nested": {"deep": {"secret": "s", "keep": True}, "other": [1, 2]},
        "internal_notes": "x",
    }
    before = copy.deepcopy(document)
    result = apply(make(spec), document)
    assert result == {
        "id": 1,
        "meta": {"v": 2, "source": "crm"},
        "nested": {"deep": {"keep": True, "x": 1}, "other": [1, 2]},
    }
    assert document == before


def test_keep_unmapped_false_starts_empty() -> None:
    assert run('keep_unmapped = false\n[[map]]\nto = "/a"\nconst = 1', {"b": 2}) == {"a": 1}


def test_drop_of_a_missing_path_is_fine() -> None:
    spec = 'keep_unmapped = true\n[[drop]]\npath = "/nope/deeper"\n[[drop]]\npath = "/list/9"'
    assert run(spec, {"a": 1, "list": [1]}) == {"a": 1, "list": [1]}


def test_drop_runs_after_all_maps_and_removes_array_elements() -> None:
    spec = """
        keep_unmapped = true
        [[drop]]
        path = "/copy"
        [[drop]]
        path = "/list/0"
        [[map]]
        to = "/copy"
        from = "/a"
    """
    document = {"a": 1, "list": [1, 2]}
    assert apply(make(spec), document) == {"a": 1, "list": [2]}
    assert document == {"a": 1, "list": [1, 2]}


def test_mapped_containers_are_copied_before_they_change() -> None:
    spec = """
        [[map]]
        to = "/owner"
        from = "/person"
        [[map]]
        to = "/owner/extra"
        const = true
    """
    document = {"person": {"name": "Ada"}}
    assert apply(make(spec), document) == {"owner": {"name": "Ada", "extra": True}}
    assert document == {"person": {"name": "Ada"}}


def test_const_containers_are_not_shared_between_results() -> None:
    spec = make('[[map]]\nto = "/tags"\nconst = ["a"]')
    first = apply(spec, {})
    assert isinstance(first, dict)
    first["tags"].append("changed")
    assert apply(spec, {}) == {"tags": ["a"]}


# --- type ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("string", 12, "12"),
        ("string", 12.5, "12.5"),
        ("string", 12.0, "12"),
        ("string", True, "true"),
        ("string", "x", "x"),
        ("integer", "12", 12),
        ("integer", "-12", -12),
        ("integer", 12.0, 12),
        ("integer", 7, 7),
        ("number", "12.5", 12.5),
        ("number", "12", 12),
        ("number", "-1e3", -1000.0),
        ("number", 3, 3),
        ("boolean", "true", True),
        ("boolean", "false", False),
        ("boolean", 1, True),
        ("boolean", 0, False),
        ("boolean", False, False),
        ("integer", None, None),
        ("boolean", None, None),
    ],
)
def test_type_converts(kind: str, value: Any, expected: Any) -> None:
    result = run(one_rule(f'to = "/v"\nfrom = "/v"\ntype = "{kind}"'), {"v": value})
    assert result == {"v": expected}
    assert type(result["v"]) is type(expected)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("integer", "12.5"),
        ("integer", 12.5),
        ("integer", "12abc"),
        ("integer", ""),
        ("integer", " 12"),
        ("integer", "1_000"),
        ("integer", True),
        ("integer", [1]),
        ("integer", "١٢"),
        ("integer", 1e30),
        ("number", "nan"),
        ("number", "inf"),
        ("number", "1e999"),
        ("number", "twelve"),
        ("number", False),
        ("boolean", "yes"),
        ("boolean", "True"),
        ("boolean", 2),
        ("boolean", "1"),
        ("string", {"a": 1}),
        ("string", [1]),
    ],
)
def test_type_refuses_what_does_not_convert(kind: str, value: Any) -> None:
    error = failure(one_rule(f'to = "/v"\nfrom = "/src"\ntype = "{kind}"'), {"src": value})
    assert error.rule == "map[1]"
    assert error.path == "/src"
    assert kind in error.detail


# --- date ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target", "value", "expected"),
    [
        ("%d/%m/%Y", "unix", "31/01/2024", 1706659200),
        ("%d/%m/%Y", "iso8601", "31/01/2024", "2024-01-31T00:00:00Z"),
        ("unix", "iso8601", 1706659200, "2024-01-31T00:00:00Z"),
        ("unix", "iso8601", "1706659200", "2024-01-31T00:00:00Z"),
        ("unix", "iso8601", -1, "1969-12-31T23:59:59Z"),
        ("unix", "%Y-%m-%d %H:%M", 1706700000, "2024-01-31 11:20"),
        ("iso8601", "unix", "2024-01-31T02:00:00+02:00", 1706659200),
        ("iso8601", "unix", "2024-01-31", 1706659200),
        ("iso8601", "iso8601", "2024-01-31T01:00:00+01:00", "2024-01-31T00:00:00Z"),
        ("iso8601", "%d.%m.%Y", "2024-01-31T10:00:00Z", "31.01.2024"),
        ("%Y-%m-%dT%H:%M:%S%z", "unix", "2024-01-31T01:00:00+0100", 1706659200),
        ("unix", "unix", 1706659200.9, 1706659200),
    ],
)
def test_date_converts(source: str, target: str, value: Any, expected: Any) -> None:
    spec = one_rule(f'to = "/d"\nfrom = "/d"\ndate = {{ from = "{source}", to = "{target}" }}')
    assert run(spec, {"d": value}) == {"d": expected}


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("%d/%m/%Y", "2024-01-31"),
        ("%d/%m/%Y", 1706659200),
        ("iso8601", "31/01/2024"),
        ("iso8601", 5),
        ("unix", "yesterday"),
        ("unix", True),
        ("unix", 1e20),
    ],
)
def test_date_refuses_what_does_not_parse(source: str, value: Any) -> None:
    spec = one_rule(f'to = "/d"\nfrom = "/when"\ndate = {{ from = "{source}", to = "unix" }}')
    error = failure(spec, {"when": value})
    assert (error.rule, error.path) == ("map[1]", "/when")


def test_date_then_type() -> None:
    spec = one_rule('to = "/d"\nfrom = "/d"\ndate = { from = "iso8601", to = "unix" }\ntype = "string"')
    assert run(spec, {"d": "1970-01-02T00:00:00Z"}) == {"d": "86400"}


# --- values / default / const / optional ----------------------------------------------------------------


VALUES = one_rule('to = "/status"\nfrom = "/state"\nvalues = { A = "active", I = "inactive" }')


def test_values_map_source_values() -> None:
    assert run(VALUES, {"state": "I"}) == {"status": "inactive"}


def test_values_without_default_fail_on_unmapped_values() -> None:
    error = failure(VALUES, {"state": "X"})
    assert (error.rule, error.path) == ("map[1]", "/state")
    assert '"X"' in error.detail


def test_values_default_covers_unmapped_and_missing_values() -> None:
    spec = VALUES + 'default = "active"\n'
    assert run(spec, {"state": "X"}) == {"status": "active"}
    assert run(spec, {}) == {"status": "active"}


def test_values_keys_are_string_forms() -> None:
    spec = one_rule(
        'to = "/v"\nfrom = "/v"\nvalues = { 1 = "one", "1.5" = "one and a half", true = "yes", null = "none" }'
    )
    assert run(spec, {"v": 1}) == {"v": "one"}
    assert run(spec, {"v": 1.0}) == {"v": "one"}
    assert run(spec, {"v": 1.5}) == {"v": "one and a half"}
    assert run(spec, {"v": True}) == {"v": "yes"}
    assert run(spec, {"v": None}) == {"v": "none"}


def test_values_then_type_are_converted_at_load() -> None:
    spec = one_rule('to = "/b"\nfrom = "/flag"\nvalues = { Y = "true", N = "false" }\ntype = "boolean"')
    assert run(spec, {"flag": "N"}) == {"b": False}


def test_default_alone_covers_a_missing_source_only() -> None:
    spec = one_rule('to = "/n"\nfrom = "/count"\ndefault = 0\ntype = "integer"')
    assert run(spec, {}) == {"n": 0}
    assert run(spec, {"count": "4"}) == {"n": 4}
    assert failure(spec, {"count": "four"}).path == "/count"


def test_const_takes_any_toml_value() -> None:
    spec = """
        [[map]]
        to = "/s"
        const = "crm"
        [[map]]
        to = "/t"
        const = { a = [1, 2.5, true], b = {} }
        [[map]]
        to = "/when"
        const = 2024-01-31T00:00:00Z
        [[map]]
        to = "/day"
        const = 2024-01-31
    """
    assert run(spec, None) == {
        "s": "crm",
        "t": {"a": [1, 2.5, True], "b": {}},
        "when": "2024-01-31T00:00:00Z",
        "day": "2024-01-31",
    }


def test_optional_leaves_the_target_out() -> None:
    spec = one_rule('to = "/phone"\nfrom = "/contact/phone"\noptional = true')
    assert run(spec, {"contact": {}}) == {}
    assert run(spec, {"contact": {"phone": "1"}}) == {"phone": "1"}


def test_optional_still_fails_on_a_value_that_does_not_convert() -> None:
    spec = one_rule('to = "/n"\nfrom = "/n"\noptional = true\ntype = "integer"')
    assert failure(spec, {"n": "x"}).rule == "map[1]"


def test_null_is_a_value_not_a_missing_source() -> None:
    spec = one_rule(
        'to = "/phone"\nfrom = "/phone"\ntype = "string"\ndate = { from = "unix", to = "iso8601" }'
    )
    assert run(spec, {"phone": None}) == {"phone": None}


# --- each ------------------------------------------------------------------------------------------------


EACH = one_rule(
    'to = "/items"\nfrom = "/lines"\n'
    'each = [ { to = "/sku", from = "/code" }, { to = "/qty", from = "/count", type = "integer" } ]'
)


def test_each_maps_every_element_into_a_new_object() -> None:
    document = {"lines": [{"code": "A", "count": "2", "x": 1}, {"code": "B", "count": 3}]}
    assert run(EACH, document) == {"items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 3}]}
    assert run(EACH, {"lines": []}) == {"items": []}


def test_each_errors_name_the_nested_rule_and_the_element() -> None:
    error = failure(EACH, {"lines": [{"code": "A", "count": 1}, {"code": "B", "count": "lots"}]})
    assert error.rule == "map[1].each[2]"
    assert error.path == "/lines/1/count"
    assert "map[1].each[2]" in str(error) and "/lines/1/count" in str(error)


def test_each_missing_nested_source() -> None:
    error = failure(EACH, {"lines": [{"count": 1}]})
    assert (error.rule, error.path) == ("map[1].each[1]", "/lines/0/code")


def test_each_needs_an_array() -> None:
    error = failure(EACH, {"lines": {"code": "A"}})
    assert (error.rule, error.path) == ("map[1]", "/lines")
    assert "array" in error.detail


def test_each_with_optional_and_default() -> None:
    optional = EACH + "optional = true\n"
    assert run(optional, {}) == {}
    defaulted = EACH + "default = []\n"
    assert run(defaulted, {}) == {"items": []}


def test_each_nests_recursively_with_every_rule_kind() -> None:
    spec = """
        [[map]]
        to = "/orders"
        from = "/data/orders"
        [[map.each]]
        to = "/id"
        from = "/orderId"
        type = "string"
        [[map.each]]
        to = "/placed"
        from = "/date"
        date = { from = "%d/%m/%Y", to = "iso8601" }
        [[map.each]]
        to = "/kind"
        const = "order"
        [[map.each]]
        to = "/lines"
        from = "/items"
        [[map.each.each]]
        to = "/product/sku"
        from = "/code"
        [[map.each.each]]
        to = "/gift"
        from = "/flags/gift"
        values = { Y = true, N = false }
        default = false
    """
    document: dict[str, Any] = {
        "data": {
            "orders": [
                {
                    "orderId": 7,
                    "date": "01/02/2024",
                    "items": [{"code": "A", "flags": {"gift": "Y"}}, {"code": "B"}],
                },
            ]
        }
    }
    assert run(spec, document) == {
        "orders": [
            {
                "id": "7",
                "placed": "2024-02-01T00:00:00Z",
                "kind": "order",
                "lines": [{"product": {"sku": "A"}, "gift": True}, {"product": {"sku": "B"}, "gift": False}],
            }
        ]
    }
    bad = copy.deepcopy(document)
    del bad["data"]["orders"][0]["items"][1]["code"]
    error = failure(spec, bad)
    assert (error.rule, error.path) == ("map[1].each[4].each[1]", "/data/orders/0/items/1/code")


def test_each_nested_target_errors_point_into_the_output() -> None:
    spec = """
        [[map]]
        to = "/items"
        from = "/lines"
        [[map.each]]
        to = "/a"
        const = 1
        [[map.each]]
        to = "/a/b"
        from = "/x"
    """
    error = failure(spec, {"lines": [{"x": 1}]})
    assert (error.rule, error.path) == ("map[1].each[2]", "/items/0/a/b")


# --- spec problems ---------------------------------------------------------------------------------------


def test_problem_format_names_file_rule_and_key() -> None:
    found = problems(one_rule('to = "/d"\nfrom = "/d"\ndate = { from = "%Q", to = "unix" }'))
    assert found == [f'{SOURCE}: map[1].date.from: unknown date format "%Q"']


def test_rule_numbers_are_one_based_and_nested() -> None:
    spec = """
        [[map]]
        to = "/a"
        const = 1
        [[map]]
        to = "/b"
        from = "/b"
        [[map]]
        to = "/items"
        from = "/lines"
        each = [ { to = "/x", from = "/x" }, { to = "/y", from = "/y", type = "int" } ]
    """
    assert problems(spec) == [
        f'{SOURCE}: map[3].each[2].type: unknown type "int"; '
        'expected one of "string", "integer", "number", "boolean"'
    ]


def test_all_problems_are_reported_at_once() -> None:
    spec = """
        keep_unmapped = "yes"
        colour = "blue"
        [[map]]
        to = "name"
        from = "/fullName"
        [[map]]
        to = "/x"
        [[map]]
        to = "/y"
        from = "/y"
        const = 1
        [[map]]
        to = "/d"
        from = "/d"
        date = { from = "%d/%m/%Y", to = "%Q", zone = "UTC" }
        [[map]]
        to = "/s"
        from = "/s"
        values = { A = "a" }
        default = "b"
        optional = true
        form = "/z"
        [[map]]
        to = ""
        from = "/bad~2escape"
        [[drop]]
        path = 5
    """
    found = problems(spec)
    expected = [
        "keep_unmapped: must be true or false",
        "colour: unknown key",
        'map[1].to: "name" is not a JSON Pointer: it must start with "/", as in "/name"',
        'map[2]: needs "from"',
        'map[3]: has both "from" and "const"',
        'map[4].date.to: unknown date format "%Q"',
        "map[4].date.zone: unknown key",
        'map[5].optional: cannot be used with "default"',
        'map[5].form: unknown key; did you mean "from"?',
        "map[6].to: must name a field",
        'map[6].from: invalid escape "~2"',
        "drop[1].path: must be a JSON Pointer string",
    ]
    for fragment in expected:
        assert any(p.startswith(f"{SOURCE}: {fragment}") for p in found), (fragment, found)
    assert len(found) == len(expected), found


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ('to = "/a"\nconst = 1\ntype = "string"', "map[1].type", 'cannot be used with "const"'),
        ('to = "/a"\nconst = nan', "map[1].const", "nan has no JSON form"),
        ('to = "/a"\nfrom = "/a"\nvalues = {}', "map[1].values", "must not be empty"),
        (
            'to = "/a"\nfrom = "/a"\nvalues = { A = "x" }\ntype = "integer"',
            "map[1].values.A",
            "cannot convert",
        ),
        ('to = "/a"\nfrom = "/a"\ndefault = "x"\ntype = "integer"', "map[1].default", "cannot convert"),
        (
            'to = "/a"\nfrom = "/a"\nvalues = { "a.b" = 1, A = inf }',
            "map[1].values.A",
            "inf has no JSON form",
        ),
        (
            'to = "/a"\nfrom = "/a"\ndate = { from = "%G", to = "unix" }',
            "map[1].date.from",
            "cannot be used to read",
        ),
        (
            'to = "/a"\nfrom = "/a"\ndate = { from = "dd/mm/yyyy", to = "unix" }',
            "map[1].date.from",
            "no % directives",
        ),
        ('to = "/a"\nfrom = "/a"\ndate = { from = "%Y%", to = "unix" }', "map[1].date.from", "lone %"),
        ('to = "/a"\nfrom = "/a"\ndate = { from = "unix" }', "map[1].date.to", "required key is missing"),
        ('to = "/a"\nfrom = "/a"\ndate = "unix"', "map[1].date", "must be a table"),
        ('to = "/a"\nfrom = "/a"\noptional = "yes"', "map[1].optional", "must be true or false"),
        ('to = "/a"\nfrom = "/a"\neach = []', "map[1].each", "at least one rule"),
        ('to = "/a"\nfrom = "/a"\neach = [1]', "map[1].each[1]", "must be a table"),
        (
            'to = "/a"\nfrom = "/a"\neach = [{ to = "/b", from = "/b" }]\ntype = "string"',
            "map[1].type",
            "each",
        ),
        ('from = "/a"', "map[1].to", "required key is missing"),
        ('to = "/a"\nfrom = 3', "map[1].from", "must be a JSON Pointer"),
    ],
)
def test_rule_problems(body: str, key: str, fragment: str) -> None:
    found = problems(one_rule(body))
    assert any(p.startswith(f"{SOURCE}: {key}: ") and fragment in p for p in found), found


def test_top_level_shapes() -> None:
    assert problems("map = 1") == [f"{SOURCE}: map: must be an array of tables ([[map]]), not an integer"]
    assert problems("[map]\nto = '/a'") == [
        f"{SOURCE}: map: must be an array of tables ([[map]]), not a table"
    ]
    assert problems("[[drop]]\npath = ''") == [
        f'{SOURCE}: drop[1].path: must name a field, such as "/name"; "" would be the whole document'
    ]


def test_parse_spec_refuses_non_tables() -> None:
    with pytest.raises(TransformSpecError) as info:
        parse_spec([], source=SOURCE)  # type: ignore[arg-type]
    assert info.value.problems == [f"{SOURCE}: a transform spec must be a TOML table, not an array"]


def test_empty_spec_is_valid() -> None:
    assert apply(make(""), {"a": 1}) == {}
    assert apply(make("keep_unmapped = true"), {"a": 1}) == {"a": 1}


# --- load_spec -------------------------------------------------------------------------------------------


def test_load_spec_names_the_file_as_displayed(tmp_path: Path) -> None:
    path = tmp_path / "crm.toml"
    path.write_text('[[map]]\nto = "/a"\nfrom = "/a"\ntype = "float"\n')
    with pytest.raises(TransformSpecError) as info:
        load_spec(path, display_name="transforms/crm.toml")
    assert info.value.problems[0].startswith("transforms/crm.toml: map[1].type: ")
    with pytest.raises(TransformSpecError) as info:
        load_spec(path)
    assert info.value.problems[0].startswith(f"{path}: map[1].type: ")


def test_load_spec_reports_bad_toml_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[map]\nto = 1\n")
    with pytest.raises(TransformSpecError) as info:
        load_spec(path, display_name="bad.toml")
    assert info.value.problems[0].startswith("bad.toml: invalid TOML: ")
    with pytest.raises(TransformSpecError) as info:
        load_spec(tmp_path / "absent.toml", display_name="absent.toml")
    assert info.value.problems == ["absent.toml: cannot read: No such file or directory"]


def test_spec_is_frozen() -> None:
    spec = make('[[map]]\nto = "/a"\nconst = 1')
    with pytest.raises(AttributeError):
        spec.keep_unmapped = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        spec.rules[0].to = "/b"  # type: ignore[misc]


# --- explain ---------------------------------------------------------------------------------------------


def test_explain_table() -> None:
    spec = make(
        """
        keep_unmapped = true
        [[map]]
        to = "/created"
        from = "/createdAt"
        date = { from = "%d/%m/%Y", to = "unix" }
        [[map]]
        to = "/source"
        const = "crm"
        [[map]]
        to = "/status"
        from = "/state"
        values = { A = "active", I = "inactive" }
        default = "active"
        [[map]]
        to = "/items"
        from = "/lines"
        optional = true
        each = [ { to = "/sku", from = "/code" }, { to = "/qty", from = "/count", type = "integer" } ]
        [[drop]]
        path = "/internal_notes"
        """
    )
    assert explain(spec).splitlines() == [
        "target              source          conversion",
        "/created        <-  /createdAt      date %d/%m/%Y -> unix",
        '/source         <-  const "crm"',
        '/status         <-  /state          values A="active", I="inactive"; default "active"',
        "/items          <-  /lines          optional; each element -> new object (2 rules)",
        "  /items[]/sku  <-  /lines[]/code",
        "  /items[]/qty  <-  /lines[]/count  type integer",
        "drop /internal_notes",
        "keep_unmapped = true: the output starts as a copy of the input; unmapped fields pass through",
    ]


def test_explain_without_rules() -> None:
    assert explain(make("")) == (
        "(no map rules)\nkeep_unmapped = false: the output starts empty; only the targets above appear\n"
    )


# --- edges -----------------------------------------------------------------------------------------------


def test_created_intermediates_are_objects_even_for_numeric_steps() -> None:
    # docs/transforms.md: "intermediate objects are created"; an array is only ever written into, never invented.
    assert run('[[map]]\nto = "/locales/0"\nconst = "en"', {}) == {"locales": {"0": "en"}}


def test_keep_unmapped_with_an_array_or_scalar_input() -> None:
    assert run('keep_unmapped = true\n[[drop]]\npath = "/0"', [1, 2]) == [2]
    assert run("keep_unmapped = true", "text") == "text"
    error = failure('keep_unmapped = true\n[[map]]\nto = "/a"\nconst = 1', "text")
    assert (error.rule, error.path) == ("map[1]", "/a")
    assert "(whole document)" in error.detail


def test_parse_spec_accepts_hand_built_dicts() -> None:
    spec = parse_spec({"map": [{"to": "/a", "from": "/b"}]}, source="inline")
    assert apply(spec, {"b": 1}) == {"a": 1}
    with pytest.raises(TransformSpecError) as info:
        parse_spec({"map": [{"to": "/a", "from": "/b", 3: "x"}]}, source="inline")
    assert info.value.problems[0].startswith('inline: map[1]."3": unknown key')


def test_explain_nested_each_and_whole_input_sources() -> None:
    spec = make(
        """
        [[map]]
        to = "/raw"
        from = ""
        [[map]]
        to = "/orders"
        from = "/orders"
        [[map.each]]
        to = "/self"
        from = ""
        [[map.each]]
        to = "/lines"
        from = "/items"
        [[map.each.each]]
        to = "/sku"
        from = "/code"
        """
    )
    lines = explain(spec).splitlines()
    assert lines[1].split() == ["/raw", "<-", "(whole", "input)"]
    assert lines[3].split() == ["/orders[]/self", "<-", "/orders[]"]
    assert lines[5].startswith("    /orders[]/lines[]/sku  <-  /orders[]/items[]/code")
