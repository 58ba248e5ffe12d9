"""JSON Schema files under transforms/: checked at load with ``jsonschema``, validated with ``jsonschema-rs``.

``jsonschema`` gives precise messages about a broken schema file (against its draft's metaschema);
``jsonschema-rs`` validates payloads about 150x faster, so it runs per request. ``$ref``s may point
at other schema files below the transforms folder (relative to the referring file), never elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import orjson

from ...observability.metrics import Counts

MAX_ERRORS = 50  # a caller needs the failing paths, not ten thousand copies of one mistake


def schema_failure_counts() -> Counts:
    """(vendor, route) -> vendor answers that failed their response schema in report mode."""
    return Counts(
        "gateway_response_schema_failures",
        "Vendor answers that failed their response schema in report mode.",
        ("vendor", "route"),
    )


class SchemaFileError(Exception):
    """A schema file cannot be used; the message says where and why (no FILE prefix)."""


@dataclass(frozen=True, slots=True, eq=False)
class CompiledSchema:
    name: str  # path relative to the transforms folder, as routes name it
    validator: jsonschema_rs.Validator

    def errors(self, instance: Any) -> list[dict[str, str]]:
        """Every failing JSON Pointer path with its message, in document order; [] when valid."""
        found: list[dict[str, str]] = []
        for error in self.validator.iter_errors(instance):
            found.append({"path": _pointer(error.instance_path), "message": error.message})
            if len(found) >= MAX_ERRORS:
                break
        return found

    def __repr__(self) -> str:
        return f"CompiledSchema({self.name!r})"


def _pointer(parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _load_json(path: Path) -> Any:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SchemaFileError(f"file not found: {path}") from None
    except OSError as exc:
        raise SchemaFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SchemaFileError(f"{path.name} is not valid JSON: {exc}") from None


class SchemaRegistry:
    """Loads and compiles schema files once each; shared by every route of one config load."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._compiled: dict[str, CompiledSchema] = {}

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise SchemaFileError(f"{path} is outside the transforms folder {self.root}")
        return resolved

    def _retrieve(self, uri: str) -> Any:
        if not uri.startswith("file://"):
            raise SchemaFileError(
                f"$ref to {uri!r}: only schema files below the transforms folder may be referenced"
            )
        path = self._inside(Path(uri[len("file://") :].split("#", 1)[0]))
        document = _load_json(path)
        self._check_metaschema(document, path)
        return document

    def _check_metaschema(self, document: Any, path: Path) -> None:
        if not isinstance(document, dict | bool):
            raise SchemaFileError(f"{path.name}: a schema must be a JSON object or boolean")
        if isinstance(document, bool):
            return
        cls = jsonschema.validators.validator_for(document, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(document)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise SchemaFileError(f"{path.name}: at {where}: {exc.message}") from None

    def load(self, name: str) -> CompiledSchema:
        """Compile ``name`` (relative to the transforms folder); SchemaFileError if unusable."""
        if name in self._compiled:
            return self._compiled[name]
        path = self._inside(self.root / name)
        document = _load_json(path)
        self._check_metaschema(document, path)
        try:
            validator = jsonschema_rs.validator_for(
                document,
                base_uri=path.as_uri(),
                retriever=self._retrieve,
                validate_formats=True,
            )
        except SchemaFileError:
            raise
        except (jsonschema_rs.ReferencingError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SchemaFileError(f"{path.name}: {first_line}") from None
        compiled = CompiledSchema(name=name, validator=validator)
        self._compiled[name] = compiled
        return compiled
