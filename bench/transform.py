"""Time ``gateway.transform.apply``: a 10-rule spec on a ~2 KB CRM contact.

Run ``.venv/bin/python bench/transform.py``. It prints microseconds per document, the best of several
timed rounds so that the figure is the cost of the code rather than of whatever else the machine was
doing, with orjson loads+dumps of the same document as a yardstick. The run takes a few seconds.
"""

from __future__ import annotations

import sys
import timeit
import tomllib
from pathlib import Path

import orjson

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.transform import TransformSpec, apply, parse_spec

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
    spec: TransformSpec = parse_spec(tomllib.loads(SPEC), source="bench/transform.py")
    doc = document()
    raw = orjson.dumps(doc)
    apply(spec, doc)  # fail fast on a spec/document mismatch, before timing
    rules = len(spec.rules)

    per_doc, iterations = best_microseconds(timeit.Timer(lambda: apply(spec, doc)), 2.0)
    baseline, _ = best_microseconds(timeit.Timer(lambda: orjson.dumps(orjson.loads(raw))), 0.8)
    print(
        f"transform.apply: {rules} rules, {len(raw)}-byte document: {per_doc:.2f} µs per document "
        f"(best round, {iterations} iterations)"
    )
    print(f"orjson loads+dumps of the same document: {baseline:.2f} µs (for scale)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
