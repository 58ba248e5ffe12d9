"""Subject templates: ``vendors.stripe.{type}`` checked once at load, rendered per event.

A placeholder's value comes from the event (a vendor's signed data, but still data): it is made safe
for a NATS subject, so an event can never publish outside the template's fixed first tokens. ``.``
and ``/`` in a value become token separators (``customer.subscription.created``, Shopify's
``orders/create``), so subscribers can use wildcards on them; any other character outside
``A-Z a-z 0-9 _ - :`` becomes ``_``, and an empty token ``_``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-:.]")
_LITERAL_NATS = re.compile(r"^[A-Za-z0-9_\-:.]*$")
MAX_VALUE_CHARS = 128  # a longer placeholder value is cut: subjects stay short


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[tuple[bool, str], ...]  # (is placeholder, literal text or placeholder name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for is_name, name in self.parts if is_name)

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(safe_value(values[text]) if is_name else text for is_name, text in self.parts)

    def subject_filter(self) -> str:
        """The NATS subjects this template can render: its fixed leading tokens, then ``>``."""
        if not self.names:
            return self.text
        head = self.text[: self.text.index("{")]
        fixed = head.rpartition(".")[0]
        return f"{fixed}.>"


def safe_value(value: str) -> str:
    cleaned = _UNSAFE.sub("_", value[:MAX_VALUE_CHARS].replace("/", "."))
    return ".".join(token or "_" for token in cleaned.split("."))


def parse_template(text: str, allowed: Collection[str], *, nats: bool) -> Template | str:
    """The template, or a message saying what is wrong with it. ``nats``: it names a NATS subject."""
    parts: list[tuple[bool, str]] = []
    at = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > at:
            parts.append((False, text[at : match.start()]))
        name = match.group(1)
        if name not in allowed:
            names = ", ".join("{" + n + "}" for n in sorted(allowed))
            return f"unknown placeholder {{{name}}} in {text!r} (there are: {names})"
        parts.append((True, name))
        at = match.end()
    if at < len(text):
        parts.append((False, text[at:]))
    literal = "".join(part for is_name, part in parts if not is_name)
    if "{" in literal or "}" in literal:
        return f"unbalanced braces in {text!r}"
    if nats:
        if not all(_LITERAL_NATS.match(part) for is_name, part in parts if not is_name):
            return f"{text!r} is not a NATS subject: use letters, digits, '_', '-' and ':' in tokens"
        skeleton = "".join("x" if is_name else part for is_name, part in parts)
        if any(not token for token in skeleton.split(".")):
            return f"{text!r} has an empty token (a leading, trailing or doubled '.')"
        if "{" in text.split(".", 1)[0]:
            return f"{text!r} must start with a fixed token before any placeholder (vendors.{{type}})"
    return Template(text, tuple(parts))
