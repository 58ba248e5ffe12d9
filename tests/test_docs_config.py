"""docs/configuration.md against the config model, so the reference cannot drift from the code.

Each table in the reference follows a marker naming the model class it documents
(``<!-- model: Timeout -->``), one row per TOML key: key | type | default | reload | what it does.
The test walks the model from ``Config`` (every dataclass of ``gateway.config`` reachable through
fields, ``X | None``, ``Mapping[str, X]`` and ``tuple[X, ...]``) and checks, for every class with keys:

- every key has a row, and every row is a key (a new field in the model fails here, naming the class,
  the TOML path and the missing keys: add rows for them);
- a default written as a TOML literal (`` `30.0` ``, `` `"local"` ``, `` `[429, 502]` ``) equals the
  default a minimal config loads to (or the dataclass default where no minimal config builds the
  class); a field with a plain default needs a literal, except those in PROSE_DEFAULTS;
- a string key with fixed choices (``Literal``) lists every choice in its row;
- the type column names the field's type (integer, number, boolean, string, ...);
- the reload column says "restart" exactly for the keys in ``gateway.http.app.RESTART_KEYS`` (below
  a key of ``RESTART_PART``, where only part of a change needs a restart, "reload": the page says
  which part).

Field names are TOML keys except where KEYS maps them; NOT_KEYS are fields no file spells.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from yarl import URL

from gateway.config import Secret, load_config
from gateway.config import model as config_model
from gateway.config.model import AllowRule, CertSubject, Config, EventField, Listen
from gateway.http.app import RESTART_KEYS, RESTART_PART

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"

# Model fields whose TOML key has another name (or several).
KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("Auth", "secret"): ("token", "value", "password"),  # by auth type
    ("VersionPin", "kind"): ("header", "query", "path_prefix"),  # the key given is the kind
    ("Vendor", "name"): ("vendor",),  # [vendors.NAME] is named by the routes file's `vendor`
    ("Faults", "abort_percent"): ("abort.percent",),  # faults = { abort = { percent, status }, ... }
    ("Faults", "abort_status"): ("abort.status",),
    ("Faults", "delay_percent"): ("delay.percent",),
    ("Faults", "delay_seconds"): ("delay.seconds",),
    ("Faults", "reset_percent"): ("reset.percent",),
    ("WebhookVerify", "secrets"): ("secret",),  # one reference, or a list of them
    ("Publish", "subject"): ("subject", "stream"),  # by bus: a NATS subject or a Redis stream
    ("Vault", "role_id"): ("approle.role_id",),  # approle = { role_id, secret_id }
    ("Vault", "secret_id"): ("approle.secret_id",),
}
# Model fields that are not keys: derived at load, or the name of the table itself.
NOT_KEYS = {
    ("Config", "path"),
    ("Config", "warnings"),
    ("Client", "name"),  # [clients.NAME]
    ("Route", "segments"),  # compiled from path
    ("Route", "source"),  # the file and [[route]] index, for messages
    ("VersionPin", "name"),  # the value of `header` or `query`
    ("VersionPin", "segments"),  # compiled from path_prefix
    ("Webhook", "name"),  # [webhooks.NAME]
    ("SecretsSettings", "managed"),  # every aws-sm: and vault: reference the config uses
}
# Model classes whose TOML form is one string, not a table.
SCALARS: set[type] = {Listen, AllowRule, EventField, CertSubject}
# Fields with a plain dataclass default that the reference rightly gives in words.
PROSE_DEFAULTS = {
    ("Vendor", "max_body_bytes"): "[gateway] max_body_bytes",
    ("Vendor", "expose"): '"declared" in a routes file, "all" without one',
    ("Auth", "name"): "required by the types that use it",
    ("Auth", "username"): "required by the type that uses it",
    ("OAuth2ClientCredentials", "type"): "documented with Auth.type",
    ("Client", "allow"): "required by the loader",
    ("WebhookVerify", "header"): "required by the scheme that uses it",
}
RELOAD_VALUES = {"reload", "restart", "new connections"}

# A config that builds every class it can with nothing but required keys, so the defaults the
# reference states are checked against what loading really gives, not only the dataclass.
MINIMAL_CONFIG = """
[vendors.v]
base_url = "http://127.0.0.1:1"
rate_limit = { requests = 1 }
version = { header = "X-Version", value = "1" }
auth = { type = "oauth2_client_credentials", token_url = "http://127.0.0.1:1/t", client_id = "file:s", client_secret = "file:s" }

[clients.c]
key = "file:s"
allow = ["v"]
"""
MINIMAL_ROUTES = 'vendor = "v"\n[[route]]\npath = "/x"\n'


@dataclasses.dataclass
class ModelClass:
    cls: type
    paths: list[str]  # where it sits in the files: "gateway", "vendors.NAME.timeout", "route[]" ...


@dataclasses.dataclass
class Row:
    key: str
    type: str
    default: str
    reload: str
    text: str
    line: int


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(config_model))


def unwrap(hint: Any) -> list[Any]:
    """The types a field holds: X | None -> [X]; A | B -> [A, B]; anything else as it is."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        return [arg for arg in get_args(hint) if arg is not type(None)]
    return [hint]


def is_model(hint: Any) -> bool:
    return (
        isinstance(hint, type)
        and dataclasses.is_dataclass(hint)
        and hint.__module__.startswith("gateway.config")
        and hint not in SCALARS
    )


def tables_below(hint: Any) -> Iterator[tuple[type, str]]:
    """(model class, path suffix) for a field that is a table, a table per name, or an array of tables."""
    for arg in unwrap(hint):
        origin = get_origin(arg)
        if is_model(arg):
            yield arg, ""
        elif isinstance(origin, type) and issubclass(origin, Mapping) and is_model(get_args(arg)[1]):
            yield get_args(arg)[1], ".NAME"
        elif origin is tuple and is_model(get_args(arg)[0]):
            yield get_args(arg)[0], "[]"


def walk() -> dict[str, ModelClass]:
    found: dict[str, ModelClass] = {}
    pending: list[tuple[type, str]] = [(Config, "")]
    while pending:
        cls, path = pending.pop(0)
        entry = found.setdefault(cls.__name__, ModelClass(cls, []))
        if path in entry.paths:
            continue
        entry.paths.append(path)
        for name, hint in hints(cls).items():
            if (cls.__name__, name) in NOT_KEYS:
                continue
            for child, suffix in tables_below(hint):
                # Routes live in their own files: their keys sit at the top of those, under route[].
                where = "route" if child.__name__ == "Route" else (f"{path}.{name}" if path else name)
                pending.append((child, where + suffix))
    return found


def keys_of(cls: type) -> dict[str, str]:
    """TOML key -> model field, for the fields that are keys (not sub-tables)."""
    result: dict[str, str] = {}
    field_hints = hints(cls)
    for f in dataclasses.fields(cls):
        if (cls.__name__, f.name) in NOT_KEYS or any(True for _ in tables_below(field_hints[f.name])):
            continue
        for key in KEYS.get((cls.__name__, f.name), (f.name,)):
            result[key] = f.name
    return result


def documented() -> list[tuple[tuple[str, ...], list[Row]]]:
    """Each marked table: (the classes it documents, its rows). A class may have tables in several
    places (a vendor's keys in config.toml and in its routes file); a table may document several
    classes together (the auth types)."""
    lines = REFERENCE.read_text().splitlines()
    result: list[tuple[tuple[str, ...], list[Row]]] = []
    for number, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- model: ([\w ]+) -->", line.strip())
        if marker is None:
            continue
        rows: list[Row] = []
        table = lines[number + 1 :]
        assert table and table[0].startswith("| key | type | default | reload |"), (
            f"docs/configuration.md:{number + 1}: a model marker must be followed by its table"
        )
        for offset, text in enumerate(table[2:], start=number + 4):
            if not text.startswith("|"):
                break
            cells = [cell.strip() for cell in text.strip().strip("|").split(" | ")]
            assert len(cells) == 5, f"docs/configuration.md:{offset}: five cells, not {len(cells)}"
            key = cells[0].strip("`")
            rows.append(Row(key, cells[1], cells[2], cells[3], text, offset))
        result.append((tuple(marker.group(1).split()), rows))
    return result


def literal(cell: str) -> tuple[bool, Any]:
    """(True, value) when a default cell is one TOML literal in backticks."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    if match is None:
        return False, None
    try:
        return True, tomllib.loads(f"value = {match.group(1)}")["value"]
    except tomllib.TOMLDecodeError:
        return False, None


def as_toml(value: Any, base: Path) -> Any:
    """A model value as it would be written in TOML, to compare with a literal default."""
    if isinstance(value, Path):
        return str(value.relative_to(base)) if value.is_relative_to(base) else str(value)
    if isinstance(value, URL | Listen):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One instance of each class a minimal config builds, from a real load_config."""
    folder = tmp_path_factory.mktemp("minimal")
    (folder / "config.toml").write_text(MINIMAL_CONFIG)
    (folder / "s").write_text("a-secret-value")
    (folder / "routes").mkdir()
    (folder / "transforms").mkdir()
    (folder / "routes" / "v.toml").write_text(MINIMAL_ROUTES)
    config = load_config(folder / "config.toml")
    instances: dict[str, Any] = {}
    pending: list[Any] = [config]
    while pending:
        obj = pending.pop()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            instances.setdefault(type(obj).__name__, obj)
            pending.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif isinstance(obj, Mapping):
            pending.extend(obj.values())
        elif isinstance(obj, tuple):
            pending.extend(obj)
    return instances, folder


MODEL = walk()
TABLES = documented()
DOCS: dict[str, list[Row]] = {}  # class name -> every row of the tables marked for it
for _names, _rows in TABLES:
    for _name in _names:
        DOCS.setdefault(_name, []).extend(_rows)
WITH_KEYS = sorted(name for name, entry in MODEL.items() if keys_of(entry.cls))


def test_every_documented_table_is_a_model_class() -> None:
    named = {name for names, _ in TABLES for name in names}
    assert sorted(named - set(MODEL)) == [], "docs/configuration.md documents classes the model lacks"


@pytest.mark.parametrize("name", WITH_KEYS)
def test_every_key_is_documented_and_every_documented_key_exists(name: str) -> None:
    entry = MODEL[name]
    expected = set(keys_of(entry.cls))
    rows = DOCS.get(name)
    where = ", ".join(entry.paths)
    assert rows is not None, (
        f"docs/configuration.md has no table for {name} (at {where}); add one after "
        f"<!-- model: {name} --> with rows for: {', '.join(sorted(expected))}"
    )
    for names, _ in TABLES:  # a table marked for several classes documents their keys together
        if name in names:
            for other in names:
                expected |= set(keys_of(MODEL[other].cls))
    have = [row.key for row in rows]
    assert len(have) == len(set(have)), f"{name}: a key is documented twice: {sorted(have)}"
    assert sorted(expected - set(have)) == [], f"{name} ({where}): keys with no row in docs/configuration.md"
    assert sorted(set(have) - expected) == [], f"{name} ({where}): rows in docs/configuration.md for no key"


@pytest.mark.parametrize("name", WITH_KEYS)
def test_documented_defaults_choices_types_and_reload(name: str, loaded: tuple[dict[str, Any], Path]) -> None:
    instances, base = loaded
    entry = MODEL[name]
    keys = keys_of(entry.cls)
    field_hints = hints(entry.cls)
    fields = {f.name: f for f in dataclasses.fields(entry.cls)}
    for row in DOCS.get(name, []):
        if row.key not in keys:
            continue  # another class of a shared table
        where = f"docs/configuration.md:{row.line} ({name}.{keys[row.key]})"
        field = fields[keys[row.key]]
        hint = field_hints[field.name]
        aliased = (name, field.name) in KEYS

        # Default.
        is_literal, value = literal(row.default)
        model_default: Any = dataclasses.MISSING
        if field.default is not dataclasses.MISSING:
            model_default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            model_default = field.default_factory()
        if is_literal:
            if name in instances:
                actual = as_toml(getattr(instances[name], field.name), base)
            else:
                assert model_default is not dataclasses.MISSING, f"{where}: the model has no default"
                actual = as_toml(model_default, base)
            assert actual == value, f"{where}: the reference says {row.default}, loading gives {actual!r}"
        elif row.default.startswith("none"):
            assert model_default is None, f"{where}: 'none', but the default is {model_default!r}"
        elif model_default not in (dataclasses.MISSING, None) and not aliased:
            assert (name, field.name) in PROSE_DEFAULTS, (
                f"{where}: the default is {as_toml(model_default, base)!r}: write it as a TOML literal"
            )

        # Choices of a string key.
        for arg in unwrap(hint):
            if get_origin(arg) is Literal and not aliased:
                missing = [c for c in get_args(arg) if f'"{c}"' not in row.text]
                assert not missing, f"{where}: choices not listed: {missing}"

        # Type.
        if not aliased:
            words = {int: "integer", float: "number", bool: "boolean", str: "string", Path: "path"}
            words |= {Secret: "secret", URL: "URL", Listen: "HOST:PORT"}
            for arg in unwrap(hint):
                base_type = get_origin(arg) or arg
                if base_type is Literal:
                    word = "string"
                elif base_type in (tuple, frozenset):
                    word = "array"
                else:
                    word = words.get(base_type, "")
                if word == "" and arg.__name__ in ("CompiledSchema", "TransformSpec"):
                    word = "path"
                assert word in row.type, f"{where}: type {row.type!r} should say {word!r}"

        # Reload.
        assert row.reload in RELOAD_VALUES, f"{where}: reload is one of {sorted(RELOAD_VALUES)}"
        paths = [f"{path}.{field.name}" if path else field.name for path in entry.paths]
        restart = any(
            p == k or p.startswith(k + ".") for p in paths for k in RESTART_KEYS if k not in RESTART_PART
        )
        assert (row.reload == "restart") == restart, (
            f"{where}: reload says {row.reload!r}, but RESTART_KEYS {'has' if restart else 'lacks'} it"
        )


def test_the_walk_sees_the_whole_model() -> None:
    """The test's own footing: it reaches the classes it must, and a model change is seen."""
    assert {"GatewaySettings", "Vendor", "Timeout", "RateLimit", "Route", "Client", "Auth"} <= set(MODEL)
    assert MODEL["RateLimit"].paths == [
        "vendors.NAME.rate_limit",
        "clients.NAME.rate_limit",
        "route[].rate_limit",
    ]
    assert keys_of(MODEL["Auth"].cls) == {
        "type": "type",
        "name": "name",
        "username": "username",
        "token": "secret",
        "value": "secret",
        "password": "secret",
    }
