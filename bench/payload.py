"""Time the payload stages' work on a ~2 KB CRM contact: JSON Schema validation and a 10-rule transform.

Run ``.venv/bin/python bench/payload.py``. It prints microseconds per document, the best of several
timed rounds so that the figure is the cost of the code rather than of whatever else the machine was
doing: validation with jsonschema-rs (what requests use) next to the pure-Python ``jsonschema``
(used only to check schema files at load), the transform, and orjson loads+dumps as a yardstick.
The run takes about ten seconds.
"""

from __future__ import annotations

import sys
import tempfile
import timeit
import tomllib
from pathlib import Path

import jsonschema
import orjson

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.features.payload.schemas import SchemaRegistry
from gateway.transform import TransformSpec, apply, parse_spec

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "fullName", "emails", "addr", "createdAt", "state", "lines"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "fullName": {"type": "string", "minLength": 1, "maxLength": 200},
        "emails": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["address"],
                "properties": {
                    "address": {"type": "string", "format": "email"},
                    "primary": {"type": "boolean"},
                },
            },
        },
        "addr": {
            "type": "object",
            "required": ["street", "city"],
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": ["integer", "string"]},
                "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
            },
        },
        "createdAt": {"type": "string", "format": "date-time"},
        "state": {"enum": ["A", "I"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 50},
        "notes": {"type": "string"},
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["code", "count"],
                "properties": {
                    "code": {"type": "string", "pattern": "^SKU-[0-9]{4}$"},
                    "count": {"type": "string"},
                    "price": {"type": "number", "minimum": 0},
                },
            },
        },
    },
}

SPEC = """
[[map]]
to = "/name"
from = "/fullName"

[[map]]
to = "/email"
from = "/emails/0/address"

[[map]]
to = "/address/line1"
from = "/addr/street"

[[map]]
to = "/address/postal_code"
from = "/addr/zip"
type = "string"

[[map]]
to = "/metadata/crm_id"
from = "/id"
type = "string"

[[map]]
to = "/created"
from = "/createdAt"
date = { from = "iso8601", to = "unix" }

[[map]]
to = "/status"
from = "/state"
values = { A = "active", I = "inactive" }
default = "active"

[[map]]
to = "/source"
const = "crm"

[[map]]
to = "/phone"
from = "/contact/phone"
optional = true

[[map]]
to = "/items"
from = "/lines"
each = [ { to = "/sku", from = "/code" }, { to = "/qty", from = "/count", type = "integer" } ]
"""


def document() -> dict[str, object]:
    return {
        "id": 1234567,
        "fullName": "Ada Lovelace",
        "emails": [{"address": "ada@example.com", "primary": True}, {"address": "ada@work.example"}],
        "addr": {"street": "12 Analytical Engine Way", "city": "London", "zip": 10115, "country": "GB"},
        "createdAt": "2024-01-31T09:30:00Z",
        "state": "A",
        "contact": {"phone": "+44 20 7946 0000", "fax": None},
        "owner": {"id": 77, "name": "Charles Babbage", "team": "Difference"},
        "tags": ["vip", "mathematics", "poetry", "engines"],
        "notes": "Prefers contact by letter. " * 30,
        "lines": [
            {"code": f"SKU-{n:04d}", "count": str(n % 7 + 1), "price": 19.99 + n, "description": "Gear wheel"}
            for n in range(10)
        ],
    }


def best_microseconds(statement: timeit.Timer, budget_seconds: float) -> tuple[float, int]:
    number, elapsed = statement.autorange()
    # autorange picks a loop count that takes >= 0.2 s; spend the budget on repeats of it.
    rounds = max(3, min(15, int(budget_seconds / max(elapsed, 1e-9))))
    best = min(statement.repeat(repeat=rounds, number=number))
    return best / number * 1e6, number * (rounds + 1)


def main() -> int:
    spec: TransformSpec = parse_spec(tomllib.loads(SPEC), source="bench/payload.py")
    doc = document()
    raw = orjson.dumps(doc)
    apply(spec, doc)  # fail fast on a spec/document mismatch, before timing
    rules = len(spec.rules)

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "contact.schema.json").write_bytes(orjson.dumps(SCHEMA))
        compiled = SchemaRegistry(Path(folder)).load("contact.schema.json")
    assert compiled.errors(doc) == [], compiled.errors(doc)
    reference = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    reference.validate(doc)

    fast, _ = best_microseconds(timeit.Timer(lambda: compiled.errors(doc)), 2.0)
    slow, _ = best_microseconds(timeit.Timer(lambda: list(reference.iter_errors(doc))), 2.0)
    per_doc, iterations = best_microseconds(timeit.Timer(lambda: apply(spec, doc)), 2.0)
    baseline, _ = best_microseconds(timeit.Timer(lambda: orjson.dumps(orjson.loads(raw))), 0.8)
    print(f"validation, jsonschema-rs (per request): {fast:.2f} µs per {len(raw)}-byte document")
    print(f"validation, jsonschema (Python, load-time checks only): {slow:.2f} µs")
    print(
        f"transform.apply: {rules} rules, {len(raw)}-byte document: {per_doc:.2f} µs per document "
        f"(best round, {iterations} iterations)"
    )
    print(f"orjson loads+dumps of the same document: {baseline:.2f} µs (for scale)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
