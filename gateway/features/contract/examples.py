"""Example requests: the JSON files a route lists under ``examples`` (below the transforms folder).

Each file is one request as a caller would send it to the vendor, written as routes are (the vendor path
without the gateway's ``/VENDOR`` and without a pinned ``path_prefix`` version)::

    {"method": "GET", "path": "/v1/customers/cus_0001", "query": {"expand": "address"},
     "headers": {"Accept": "application/json"}, "body": null}

``query`` is a raw query string (``"limit=2"``) or an object (values: strings, numbers, booleans or
lists of them); ``body`` is any JSON value, sent as JSON (absent or null: no body). Loaded and checked
with the config, so ``gateway check`` names a broken example's file and key. Imports nothing of the
config (the config model holds these).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from ...errors import BadRequest
from ...target import parse_target

KEYS = ("method", "path", "query", "headers", "body")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MAX_EXAMPLE_BYTES = 1_048_576


@dataclass(frozen=True, slots=True)
class Example:
    name: str  # the file, relative to the transforms folder, as the route lists it
    method: str
    path: str  # raw vendor path, starting with "/"
    query: str  # encoded, without "?"
    headers: tuple[tuple[str, str], ...]
    body: bytes | None  # the JSON body as sent; None: no body
    segments: tuple[str, ...]  # decoded path segments, as routes match them

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((value for key, value in self.headers if key.lower() == lower), None)


class ExampleError(Exception):
    """The file cannot be used: ``problems`` are (key in the file, or "", message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {message}" if key else message for key, message in problems))
        self.problems = problems


def _type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )


def load_example(root: Path, name: str, methods: Collection[str]) -> Example:
    """Read ``name`` (relative to ``root``, the transforms folder) as an example request; ExampleError
    naming each problem's key otherwise."""
    path = root / name
    try:
        resolved, top = path.resolve(), root.resolve()
    except OSError as exc:
        raise ExampleError([("", f"cannot read {path}: {exc.strerror or exc}")]) from None
    if top not in resolved.parents:
        raise ExampleError([("", f"{name} is outside the transforms folder {top}")])
    try:
        data = resolved.read_bytes()
    except FileNotFoundError:
        raise ExampleError([("", f"file not found: {path}")]) from None
    except OSError as exc:
        raise ExampleError([("", f"cannot read {path}: {exc.strerror or exc}")]) from None
    if len(data) > MAX_EXAMPLE_BYTES:
        raise ExampleError([("", f"{name} is larger than {MAX_EXAMPLE_BYTES} bytes")])
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ExampleError([("", f"{name} is not valid JSON: {exc}")]) from None
    if not isinstance(document, dict):
        raise ExampleError([("", f"{name} must hold a JSON object with {', '.join(KEYS)}")])
    return _parse(name, document, methods)


def _parse(name: str, document: dict[str, Any], methods: Collection[str]) -> Example:
    problems: list[tuple[str, str]] = [(key, "unknown key") for key in document if key not in KEYS]
    method = document.get("method")
    if not isinstance(method, str):
        problems.append(("method", "is required: an HTTP method" if method is None else "must be a string"))
    elif method.upper() not in methods:
        problems.append(("method", f"must be one of {', '.join(sorted(methods))}, not {method!r}"))
    path = document.get("path")
    segments: tuple[str, ...] = ()
    if not isinstance(path, str):
        problems.append(
            (
                "path",
                "is required: the vendor path, like /v1/customers"
                if path is None
                else f"must be a string, not {_type(path)}",
            )
        )
    elif not path.startswith("/") or "?" in path or "#" in path:
        problems.append(
            ("path", f"must start with '/' and hold no query or fragment (use query), not {path!r}")
        )
    else:
        try:
            segments = parse_target("/_" + path).segments
        except BadRequest as exc:
            problems.append(("path", exc.detail))
    query = _query(document.get("query"), problems)
    headers = _headers(document.get("headers"), problems)
    body: bytes | None = None
    if document.get("body") is not None:
        body = orjson.dumps(document["body"])
        if not any(key.lower() == "content-type" for key, _ in headers):
            headers += (("Content-Type", "application/json"),)
    if problems:
        raise ExampleError(problems)
    assert isinstance(method, str) and isinstance(path, str)
    return Example(
        name=name,
        method=method.upper(),
        path=path,
        query=query,
        headers=headers,
        body=body,
        segments=segments,
    )


def _query(value: Any, problems: list[tuple[str, str]]) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        if "#" in value or any(c in value for c in " \r\n"):
            problems.append(("query", "must be an encoded query string (no spaces, line breaks or '#')"))
        return value.removeprefix("?")
    if not isinstance(value, dict):
        problems.append(("query", f"must be a string or an object, not {_type(value)}"))
        return ""
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        for one in item if isinstance(item, list) else [item]:
            if isinstance(one, bool):
                pairs.append((key, "true" if one else "false"))
            elif isinstance(one, str | int | float):
                pairs.append((key, str(one)))
            else:
                problems.append(
                    (
                        f"query.{key}",
                        f"must be a string, number or boolean (or a list of them), not {_type(one)}",
                    )
                )
    return urlencode(pairs)


def _headers(value: Any, problems: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        problems.append(
            ("headers", f"must be an object of header names and string values, not {_type(value)}")
        )
        return ()
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        if not _HEADER_NAME.match(key):
            problems.append((f"headers.{key}", "is not a valid header name"))
        elif not isinstance(item, str):
            problems.append((f"headers.{key}", f"must be a string, not {_type(item)}"))
        elif not (item.isascii() and item.isprintable()):
            problems.append((f"headers.{key}", "must be printable ASCII"))
        else:
            out.append((key, item))
    return tuple(out)
