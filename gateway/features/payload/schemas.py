"""JSON Schema files under transforms/: checked at load with ``jsonschema``, validated with ``jsonschema-rs``.

``jsonschema`` gives precise messages about a broken schema file (against its draft's metaschema);
``jsonschema-rs`` validates payloads about 150x faster, so it runs per request. ``$ref``s may point
at other schema files below the transforms folder (relative to the referring file), never elsewhere.
"""

from __future__ import annotations

import difflib
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


JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


class SchemaFileError(Exception):
    """A schema file cannot be used; the message says where and why (no FILE prefix).

    ``problems``: when the file is JSON but breaks its draft's metaschema, every place that does, as
    (JSON Pointer into ``file``, message), so ``gateway check`` lists them all at once.
    """

    def __init__(
        self, message: str, *, file: Path | None = None, problems: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.file = file
        self.problems = problems or []


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


def _metaschema_message(error: jsonschema.ValidationError) -> str:
    """The metaschema's message, made specific where it is vague (a misspelled type name)."""
    path = list(error.absolute_path)
    if error.validator == "anyOf" and path and path[-1] == "type" and isinstance(error.instance, str):
        close = difflib.get_close_matches(error.instance, JSON_TYPES, n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        return f"{error.instance!r} is not a JSON Schema type ({', '.join(JSON_TYPES)}){hint}"
    return str(error.message)


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
        self._ref_error: SchemaFileError | None = None  # what the retriever refused, for load() to raise

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
        try:
            path = self._inside(Path(uri[len("file://") :].split("#", 1)[0]))
            document = _load_json(path)
            self._check_metaschema(document, path)
        except SchemaFileError as exc:
            self._ref_error = exc  # jsonschema-rs wraps it; load() raises it as it was
            raise
        return document

    def _check_metaschema(self, document: Any, path: Path) -> None:
        if not isinstance(document, dict | bool):
            raise SchemaFileError(f"{path.name}: a schema must be a JSON object or boolean")
        if isinstance(document, bool):
            return
        cls = jsonschema.validators.validator_for(document, default=jsonschema.Draft202012Validator)
        errors = sorted(cls(cls.META_SCHEMA).iter_errors(document), key=lambda e: [str(p) for p in e.path])
        if not errors:
            return
        problems = [(_pointer(error.absolute_path), _metaschema_message(error)) for error in errors]
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise SchemaFileError(f"{path.name}: at {where}: {problems[0][1]}", file=path, problems=problems)

    def _take_ref_error(self) -> SchemaFileError | None:
        error, self._ref_error = self._ref_error, None
        return error

    def load(self, name: str) -> CompiledSchema:
        """Compile ``name`` (relative to the transforms folder); SchemaFileError if unusable."""
        if name in self._compiled:
            return self._compiled[name]
        path = self._inside(self.root / name)
        document = _load_json(path)
        self._check_metaschema(document, path)
        self._ref_error = None
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
            if (ref_error := self._take_ref_error()) is not None:
                raise ref_error from None
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SchemaFileError(f"{path.name}: {first_line}") from None
        compiled = CompiledSchema(name=name, validator=validator)
        self._compiled[name] = compiled
        return compiled
