"""``explain``: a spec as a table a person can check against the vendor's documentation."""

from __future__ import annotations

import orjson

from gateway.transform.convert import key_text
from gateway.transform.model import MapRule, TransformSpec

_ARROW = "  <-  "
_GAP = "  "
_MAX_SHOWN = 60


def _json(value: object, limit: int = _MAX_SHOWN) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _values(rule: MapRule) -> str:
    assert rule.values is not None
    entries = [f"{key_text(key)}={_json(item, 30)}" for key, item in rule.values.items()]
    text = ", ".join(entries)
    if len(text) > _MAX_SHOWN:
        shown: list[str] = []
        for entry in entries:
            if len(", ".join([*shown, entry])) > _MAX_SHOWN:
                break
            shown.append(entry)
        text = ", ".join(shown) + f", ... ({len(entries) - len(shown)} more)"
    return "values " + text


def _conversion(rule: MapRule) -> str:
    parts: list[str] = []
    if rule.values is not None:
        parts.append(_values(rule))
    if rule.has_default:
        parts.append("default " + _json(rule.default))
    if rule.date is not None:
        parts.append(f"date {rule.date.source} -> {rule.date.target}")
    if rule.type is not None:
        parts.append("type " + rule.type)
    if rule.optional:
        parts.append("optional")
    if rule.each:
        count = len(rule.each)
        parts.append(f"each element -> new object ({count} rule{'s' if count != 1 else ''})")
    return "; ".join(parts)


def _rows(
    rules: tuple[MapRule, ...],
    target_base: str,
    source_base: str | None,
    depth: int,
    rows: list[tuple[str, str, str]],
) -> None:
    indent = "  " * depth
    for rule in rules:
        target = target_base + rule.to
        if rule.has_const:
            source = "const " + _json(rule.const)
        elif source_base is None:
            source = rule.source or "(whole input)"
        else:
            source = source_base + (rule.source or "")
        rows.append((indent + target, source, _conversion(rule)))
        if rule.each:
            _rows(rule.each, target + "[]", source + "[]", depth + 1, rows)


def explain(spec: TransformSpec) -> str:
    """Columns target, source, conversion (``/created  <-  /createdAt  date %d/%m/%Y -> unix``), then
    drops and what ``keep_unmapped`` means for this spec. Rules inside `each` are indented under their
    parent, their pointers joined to it with ``[]`` (``/items[]/sku  <-  /lines[]/code``)."""
    rows: list[tuple[str, str, str]] = []
    _rows(spec.rules, "", None, 0, rows)
    lines: list[str] = []
    if rows:
        header = ("target", "source", "conversion")
        target_width = max(len(header[0]), *(len(row[0]) for row in rows))
        source_width = max(len(header[1]), *(len(row[1]) for row in rows))
        lines.append(
            f"{header[0]:<{target_width}}{' ' * len(_ARROW)}{header[1]:<{source_width}}{_GAP}{header[2]}"
        )
        for target, source, conversion in rows:
            lines.append(
                f"{target:<{target_width}}{_ARROW}{source:<{source_width}}{_GAP}{conversion}".rstrip()
            )
    else:
        lines.append("(no map rules)")
    for drop in spec.drops:
        lines.append(f"drop {drop.path}")
    if spec.keep_unmapped:
        lines.append(
            "keep_unmapped = true: the output starts as a copy of the input; unmapped fields pass through"
        )
    else:
        lines.append("keep_unmapped = false: the output starts empty; only the targets above appear")
    return "\n".join(lines) + "\n"
