"""The declarative transform engine (docs/transforms.md): TOML specs mapping one JSON document to another.

``load_spec`` / ``parse_spec`` validate a spec once, reporting every problem as ``FILE: key.path: message``,
and compile it into a frozen ``TransformSpec``; ``apply`` is a pure function of that spec and a document,
failing only with ``TransformError``; ``explain`` renders the mapping as a table. The semantics the
language leaves open are settled in ``gateway.transform.spec``'s docstring.
"""

from __future__ import annotations

from gateway.transform.engine import apply
from gateway.transform.errors import TransformError, TransformSpecError
from gateway.transform.explain import explain
from gateway.transform.model import DateConversion, Drop, MapRule, TransformSpec
from gateway.transform.spec import load_spec, parse_spec

__all__ = [
    "DateConversion",
    "Drop",
    "MapRule",
    "TransformError",
    "TransformSpec",
    "TransformSpecError",
    "apply",
    "explain",
    "load_spec",
    "parse_spec",
]
