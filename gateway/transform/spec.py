"""Loading a transform spec: TOML -> validated, precompiled TransformSpec, with every problem at once.

Semantics of the language (docs/transforms.md), settled here:

- A rule's stages run in the order values -> date -> type. A `values` entry and the `default` stand for
  the value after the `values` stage, so they too pass through `date` and `type`; that happens once, at
  load, and an entry or default that does not convert is a spec problem rather than a failed request.
- `default` covers a missing source and, with `values`, a value the table has no entry for. It makes
  `optional` meaningless, so the two together are a problem. `optional` covers only a missing source: a
  source that is present but does not convert still fails.
- `const` takes no other keys but `to`. `each` takes `from`, `optional` and `default` (used as is, for
  example `default = []`); its elements must be arrays of rules, and each element of the source array
  becomes a new object built by those rules, whose pointers are relative to the element and to that
  object. `keep_unmapped` applies to the top level only.
- `from = ""` names the whole input (or, inside `each`, the whole element). `to` must name a field.
- Values keys are the source's string form: strings as they are, numbers as JSON writes them (``1``,
  ``1.5``; ``1.0`` is ``1``), ``true``/``false`` and ``null``.
- TOML dates and times in `const`, `default` and `values` become ISO 8601 strings; nan and inf are
  problems, as JSON cannot carry them.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gateway.transform import engine
from gateway.transform.convert import (
    TYPE_CONVERTERS,
    TYPES,
    ConversionError,
    Converter,
    chain,
    date_converter,
    date_format_problem,
    key_text,
    show,
    toml_to_json,
)
from gateway.transform.errors import TransformSpecError
from gateway.transform.model import DateConversion, Drop, MapRule, Runner, TransformSpec
from gateway.transform.pointer import MISSING, PointerSyntaxError, Tokens, compile_pointer, quote

TOP_KEYS: Final = ("keep_unmapped", "map", "drop")
RULE_KEYS: Final = ("to", "from", "const", "type", "date", "values", "default", "optional", "each")
DATE_KEYS: Final = ("from", "to")
DROP_KEYS: Final = ("path",)
# Keys that only make sense for a value read through `from`.
_NOT_WITH_CONST: Final = ("type", "date", "values", "default", "optional", "each")
_NOT_WITH_EACH: Final = ("type", "date", "values")


def load_spec(path: Path, *, display_name: str | None = None) -> TransformSpec:
    """Read and compile the spec at ``path``; problems name the file as ``display_name`` (default: path)."""
    name = display_name if display_name is not None else str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TransformSpecError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise TransformSpecError([f"{name}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TransformSpecError([f"{name}: invalid TOML: {exc}"]) from None
    return parse_spec(data, source=name)


def parse_spec(data: Mapping[str, object], *, source: str) -> TransformSpec:
    """Validate and compile already-parsed TOML; raises TransformSpecError listing every problem."""
    parser = _Parser(source)
    spec = parser.spec(data)
    if parser.problems or spec is None:
        raise TransformSpecError(parser.problems)
    return spec


def toml_type(value: object) -> str:
    """A TOML value's type for messages: "an integer", "a table", ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")

    def unknown_keys(self, data: Mapping[str, object], allowed: tuple[str, ...], prefix: str) -> None:
        for key in data:
            if key in allowed:
                continue
            where = f"{prefix}.{key_text(key)}" if prefix else key_text(key)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; expected one of {', '.join(allowed)}"
            self.problem(where, f"unknown key{hint}")

    def table_array(self, value: object, where: str, example: str) -> list[tuple[str, Mapping[str, object]]]:
        """The tables of an array of tables, each with its 1-based key path; problems for anything else."""
        if not isinstance(value, list):
            self.problem(where, f"must be an array of tables ({example}), not {toml_type(value)}")
            return []
        tables: list[tuple[str, Mapping[str, object]]] = []
        for number, item in enumerate(value, start=1):
            if isinstance(item, dict):
                tables.append((f"{where}[{number}]", item))
            else:
                self.problem(f"{where}[{number}]", f"must be a table, not {toml_type(item)}")
        return tables

    def pointer(self, value: object, where: str, *, allow_root: bool) -> tuple[str, Tokens] | None:
        if not isinstance(value, str):
            self.problem(where, f'must be a JSON Pointer string such as "/name", not {toml_type(value)}')
            return None
        if value == "" and not allow_root:
            self.problem(where, 'must name a field, such as "/name"; "" would be the whole document')
            return None
        if value and not value.startswith("/"):
            # Forgetting the leading slash is the usual slip; say what was probably meant.
            self.problem(
                where,
                f'{quote(value)} is not a JSON Pointer: it must start with "/", as in {quote("/" + value)}',
            )
            return None
        try:
            return value, compile_pointer(value)
        except PointerSyntaxError as exc:
            self.problem(where, str(exc))
            return None

    def json_value(self, value: object, where: str) -> object:
        before = len(self.problems)
        local: list[str] = []
        converted = toml_to_json(value, where, local)
        for entry in local:
            # toml_to_json reports "where: message"; the file goes in front like every other problem.
            self.problems.append(f"{self.source}: {entry}")
        return MISSING if len(self.problems) > before else converted

    # --- the document ----------------------------------------------------------------------------------

    def spec(self, data: object) -> TransformSpec | None:
        # Callers outside mypy's reach (tests, other tools) may pass anything parsed from anywhere.
        if not isinstance(data, Mapping):
            self.problem("", f"a transform spec must be a TOML table, not {toml_type(data)}")
            return None
        self.unknown_keys(data, TOP_KEYS, "")
        keep_unmapped = data.get("keep_unmapped", False)
        if not isinstance(keep_unmapped, bool):
            self.problem("keep_unmapped", f"must be true or false, not {toml_type(keep_unmapped)}")
            keep_unmapped = False
        rules: list[MapRule] = []
        if "map" in data:
            for where, table in self.table_array(data["map"], "map", "[[map]]"):
                rule = self.rule(table, where)
                if rule is not None:
                    rules.append(rule)
        drops: list[Drop] = []
        if "drop" in data:
            for where, table in self.table_array(data["drop"], "drop", "[[drop]]"):
                drop = self.drop(table, where)
                if drop is not None:
                    drops.append(drop)
        if self.problems:
            return None
        return TransformSpec(
            source=self.source,
            keep_unmapped=keep_unmapped,
            rules=tuple(rules),
            drops=tuple(drops),
            runners=tuple(rule.run for rule in rules),
        )

    def drop(self, data: Mapping[str, object], where: str) -> Drop | None:
        self.unknown_keys(data, DROP_KEYS, where)
        if "path" not in data:
            self.problem(f"{where}.path", "required key is missing")
            return None
        parsed = self.pointer(data["path"], f"{where}.path", allow_root=False)
        if parsed is None:
            return None
        return Drop(rule=where, path=parsed[0], tokens=parsed[1])

    # --- one rule ----------------------------------------------------------------------------------------

    def rule(self, data: Mapping[str, object], where: str) -> MapRule | None:
        before = len(self.problems)
        self.unknown_keys(data, RULE_KEYS, where)

        target: tuple[str, Tokens] | None = None
        if "to" in data:
            target = self.pointer(data["to"], f"{where}.to", allow_root=False)
        else:
            self.problem(f"{where}.to", "required key is missing")

        has_from, has_const = "from" in data, "const" in data
        if has_from and has_const:
            self.problem(where, 'has both "from" and "const"; a rule takes one')
        elif not has_from and not has_const:
            self.problem(where, 'needs "from" (a JSON Pointer into the input) or "const" (a fixed value)')
        if has_const:
            for key in _NOT_WITH_CONST:
                if key in data:
                    self.problem(f"{where}.{key}", 'cannot be used with "const"')
        if "each" in data:
            for key in _NOT_WITH_EACH:
                if key in data:
                    self.problem(f"{where}.{key}", 'cannot be used with "each"; give it to the rules inside')
        if "optional" in data and "default" in data:
            self.problem(
                f"{where}.optional", 'cannot be used with "default", which already covers a missing source'
            )

        source = self.pointer(data["from"], f"{where}.from", allow_root=True) if has_from else None
        const = self.json_value(data["const"], f"{where}.const") if has_const else MISSING

        type_name = data.get("type")
        type_converter: Converter | None = None
        if type_name is not None:
            if isinstance(type_name, str) and type_name in TYPES:
                type_converter = TYPE_CONVERTERS[type_name]
            else:
                expected = ", ".join(quote(t) for t in TYPES)
                self.problem(f"{where}.type", f"unknown type {show(type_name)}; expected one of {expected}")
                type_name = None

        date = self.date(data["date"], f"{where}.date") if "date" in data else None

        optional = data.get("optional", False)
        if not isinstance(optional, bool):
            self.problem(f"{where}.optional", f"must be true or false, not {toml_type(optional)}")
            optional = False

        values: dict[str, object] | None = None
        if "values" in data:
            raw_values = data["values"]
            if not isinstance(raw_values, dict):
                self.problem(
                    f"{where}.values",
                    f"must be a table of source value = target value, not {toml_type(raw_values)}",
                )
            elif not raw_values:
                self.problem(f"{where}.values", "must not be empty")
            else:
                values = {
                    key: self.json_value(item, f"{where}.values.{key_text(key)}")
                    for key, item in raw_values.items()
                }

        default = self.json_value(data["default"], f"{where}.default") if "default" in data else MISSING

        nested: list[MapRule] = []
        if "each" in data:
            tables = self.table_array(data["each"], f"{where}.each", "each = [{ to = ..., from = ... }]")
            if isinstance(data["each"], list) and not data["each"]:
                self.problem(f"{where}.each", "must hold at least one rule")
            for nested_where, table in tables:
                rule = self.rule(table, nested_where)
                if rule is not None:
                    nested.append(rule)

        if len(self.problems) > before or target is None:
            return None
        # From here on every part parsed; only conversions of values and default can still fail.

        to_text, to_tokens = target
        if has_const:
            return MapRule(
                rule=where,
                to=to_text,
                source=None,
                const=const,
                run=engine.const_runner(where, to_text, to_tokens, const),
            )
        assert source is not None
        source_text, source_tokens = source

        after_values = chain([c for c in (self.date_converter(date), type_converter) if c is not None])
        compiled_values: dict[str, object] | None = None
        if values is not None:
            compiled_values = {
                key: self.convert_at_load(after_values, item, f"{where}.values.{key_text(key)}")
                for key, item in values.items()
            }
        compiled_default = default
        if default is not MISSING:
            compiled_default = self.convert_at_load(after_values, default, f"{where}.default")
        if len(self.problems) > before:
            return None

        run: Runner
        if "each" in data:
            run = engine.each_runner(
                where,
                to_text,
                to_tokens,
                source_text,
                source_tokens,
                nested=[rule.run for rule in nested],
                default=default,
                optional=optional,
            )
        else:
            convert = (
                engine.values_converter(compiled_values, compiled_default)
                if compiled_values is not None
                else after_values
            )
            run = engine.source_runner(
                where,
                to_text,
                to_tokens,
                source_text,
                source_tokens,
                convert=convert,
                default=compiled_default,
                optional=optional,
            )
        return MapRule(
            rule=where,
            to=to_text,
            source=source_text,
            type=type_name if isinstance(type_name, str) else None,
            date=date,
            values=values,
            default=default,
            optional=optional,
            each=tuple(nested),
            run=run,
        )

    def date(self, value: object, where: str) -> DateConversion | None:
        if not isinstance(value, dict):
            self.problem(
                where,
                f'must be a table such as {{ from = "%d/%m/%Y", to = "unix" }}, not {toml_type(value)}',
            )
            return None
        self.unknown_keys(value, DATE_KEYS, where)
        formats: list[str] = []
        for side in DATE_KEYS:
            pattern = value.get(side)
            if pattern is None:
                self.problem(f"{where}.{side}", "required key is missing")
                continue
            if not isinstance(pattern, str):
                self.problem(
                    f"{where}.{side}",
                    f'must be a strftime pattern, "iso8601" or "unix", not {toml_type(pattern)}',
                )
                continue
            reason = date_format_problem(pattern, parsing=side == "from")
            if reason is not None:
                self.problem(f"{where}.{side}", reason)
                continue
            formats.append(pattern)
        if len(formats) != 2:
            return None
        return DateConversion(source=formats[0], target=formats[1])

    @staticmethod
    def date_converter(date: DateConversion | None) -> Converter | None:
        return None if date is None else date_converter(date.source, date.target)

    def convert_at_load(self, convert: Converter | None, value: object, where: str) -> object:
        if convert is None:
            return value
        try:
            return convert(value)
        except ConversionError as exc:
            self.problem(where, exc.detail)
            return value
