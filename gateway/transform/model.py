"""The compiled, immutable form of a transform spec. Build one with ``load_spec`` or ``parse_spec``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.transform.pointer import MISSING, Tokens

# (input, output root, owned container ids) -> None; writes the rule's result into the output root.
Runner = Callable[[object, object, set[int]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class DateConversion:
    """`date = { from, to }`: each side a strftime pattern, ``"iso8601"`` or ``"unix"``."""

    source: str
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MapRule:
    """One `[[map]]` rule (or a rule inside `each`). ``const`` and ``default`` are MISSING when unset."""

    rule: str  # as problems and errors name it: "map[3]", "map[3].each[2]"
    to: str
    source: str | None  # the `from` pointer, as written
    const: object = MISSING
    type: str | None = None
    date: DateConversion | None = None
    values: Mapping[str, object] | None = None  # as written (the compiled table is in the runner)
    default: object = MISSING
    optional: bool = False
    each: tuple[MapRule, ...] = ()
    run: Runner = field(repr=False, compare=False)

    @property
    def has_const(self) -> bool:
        return self.const is not MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING


@dataclass(frozen=True, slots=True, kw_only=True)
class Drop:
    """One `[[drop]]`: ``path`` is removed from the output after every map rule has run."""

    rule: str
    path: str
    tokens: Tokens = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformSpec:
    """A loaded spec, validated and precompiled: applying it parses nothing."""

    source: str  # the file, as problems and `explain` name it
    keep_unmapped: bool
    rules: tuple[MapRule, ...]
    drops: tuple[Drop, ...]
    # The rules' runners, gathered once so that apply() loops over plain callables.
    runners: tuple[Runner, ...] = field(repr=False, compare=False)
