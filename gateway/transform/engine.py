"""Applying a compiled spec: rules in order, then drops. Pure: the input document is never modified.

The result may share subtrees that no rule touched with the input (copy-on-write, see ``pointer``), which
is what keeps `keep_unmapped = true` cheap on large documents; treat both as read-only, or copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from gateway.transform.convert import ConversionError, Converter, show, value_key
from gateway.transform.errors import TransformError
from gateway.transform.model import Runner, TransformSpec
from gateway.transform.pointer import MISSING, Tokens, WriteError, delete, resolve, type_name, write


def apply(spec: TransformSpec, document: object) -> object:
    """Build the output document from ``document``; raises TransformError naming the rule and the path."""
    owned: set[int] = set()
    out: object
    if not spec.keep_unmapped:
        out = {}
    elif isinstance(document, dict):
        out = dict(document)
    elif isinstance(document, list):
        out = list(document)
    else:
        # A scalar input stays as it is; a rule that then writes into it fails with a TransformError.
        out = document
    for run in spec.runners:
        run(document, out, owned)
    for drop in spec.drops:
        delete(out, drop.tokens, owned)
    return out


def copy_json(value: object) -> object:
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def _producer(value: object) -> Callable[[], object]:
    """A fresh copy per call for containers: the spec's own values must never be handed out to mutate."""
    if isinstance(value, dict | list):
        return lambda: copy_json(value)
    return lambda: value


def _writer(rule: str, to: str, tokens: Tokens) -> Callable[[object, object, set[int]], None]:
    if len(tokens) == 1:
        key = tokens[0][0]

        def write_top(out: object, value: object, owned: set[int]) -> None:
            # Most targets are top-level fields of an object output: one dict store, no walking.
            if type(out) is dict:
                out[key] = value
                return
            try:
                write(out, tokens, value, owned)
            except WriteError as exc:
                raise TransformError(rule, to, exc.detail, target=True) from None

        return write_top

    def write_deep(out: object, value: object, owned: set[int]) -> None:
        try:
            write(out, tokens, value, owned)
        except WriteError as exc:
            raise TransformError(rule, to, exc.detail, target=True) from None

    return write_deep


def const_runner(rule: str, to: str, to_tokens: Tokens, const: object) -> Runner:
    produce = _producer(const)
    put = _writer(rule, to, to_tokens)

    def run(_document: object, out: object, owned: set[int]) -> None:
        put(out, produce(), owned)

    return run


def values_converter(table: Mapping[str, object], default: object) -> Converter:
    """Look the source up by its string form. ``table`` values and ``default`` are already converted."""
    compiled = dict(table)
    needs_copy = any(isinstance(v, dict | list) for v in compiled.values())
    fallback = None if default is MISSING else _producer(default)

    def convert(value: object) -> object:
        key = value_key(value)
        if key is not None:
            hit = compiled.get(key, MISSING)
            if hit is not MISSING:
                return copy_json(hit) if needs_copy else hit
        if fallback is not None:
            return fallback()
        raise ConversionError(f"{show(value)} has no entry in values, and the rule has no default")

    return convert


def source_runner(
    rule: str,
    to: str,
    to_tokens: Tokens,
    source: str,
    source_tokens: Tokens,
    *,
    convert: Converter | None,
    default: object,
    optional: bool,
) -> Runner:
    put = _writer(rule, to, to_tokens)
    fallback = None if default is MISSING else _producer(default)
    # Most rules read and write one top-level field; those skip the generic walks (a function call each).
    source_key = source_tokens[0][0] if len(source_tokens) == 1 else None
    target_key = to_tokens[0][0] if len(to_tokens) == 1 else None

    def run(document: object, out: object, owned: set[int]) -> None:
        if source_key is not None and type(document) is dict:
            value = document.get(source_key, MISSING)
        else:
            value = resolve(document, source_tokens)
        if value is MISSING:
            if fallback is not None:
                value = fallback()
            elif optional:
                return
            else:
                raise TransformError(rule, source, "required value is missing (no default, not optional)")
        elif convert is not None:
            try:
                value = convert(value)
            except ConversionError as exc:
                raise TransformError(rule, source, exc.detail) from None
        if target_key is not None and type(out) is dict:
            out[target_key] = value
        else:
            put(out, value, owned)

    return run


def each_runner(
    rule: str,
    to: str,
    to_tokens: Tokens,
    source: str,
    source_tokens: Tokens,
    *,
    nested: Sequence[Runner],
    default: object,
    optional: bool,
) -> Runner:
    put = _writer(rule, to, to_tokens)
    fallback = None if default is MISSING else _producer(default)
    runners = tuple(nested)

    def run(document: object, out: object, owned: set[int]) -> None:
        value = resolve(document, source_tokens)
        if value is MISSING:
            if fallback is not None:
                put(out, fallback(), owned)
            elif not optional:
                raise TransformError(rule, source, "required value is missing (no default, not optional)")
            return
        if not isinstance(value, list):
            found = f"{show(value)} ({type_name(value)})"
            raise TransformError(rule, source, f"each needs an array, found {found}")
        items: list[object] = []
        owned.add(id(items))
        # The new element objects stay out of ``owned``: only a later rule writing into one would need
        # that, and it then copies the object instead, which is correct and cheaper than the bookkeeping.
        for index, element in enumerate(value):
            item: dict[str, object] = {}
            try:
                for nested_run in runners:
                    nested_run(element, item, owned)
            except TransformError as exc:
                raise _within(exc, source, to, index) from None
            items.append(item)
        put(out, items, owned)

    return run


def _within(exc: TransformError, source: str, to: str, index: int) -> TransformError:
    """A nested rule's error, re-addressed from the element to the whole document."""
    base = to if exc.target else source
    return TransformError(exc.rule, f"{base}/{index}{exc.path}", exc.detail, target=exc.target)
