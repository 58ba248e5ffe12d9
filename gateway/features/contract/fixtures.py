"""Recorded answers: ``gateway contract check --record DIR`` keeps each vendor answer, and ``gateway
contract verify --fixtures DIR`` judges them again, offline, against the schemas and transforms as they
are now (for CI: a schema change that the vendor's real answers would break fails there, without
calling the vendor).

One file per example, ``DIR/VENDOR/EXAMPLE`` (the example's name under transforms/), pretty-printed
JSON so a change shows in a diff::

    {"vendor": "billing", "route": {"method": "GET", "path": "/v1/customers/*"},
     "example": "billing/examples/customer.json",
     "request": {"method": "GET", "target": "/v1/customers/cus_0001"},
     "status": 200, "content_type": "application/json", "body": {...}, "recorded_at": "..."}

``body`` holds a JSON answer as JSON; any other answer is kept as ``body_text`` (UTF-8, undecodable
bytes replaced). An example whose request changed since it was recorded fails until it is recorded
again; one with no recording is skipped.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from ...config import Config, Route, Vendor
from .check import Answered, Verdict, examples_of, judge
from .examples import Example


def fixture_path(root: Path, vendor: str, example: str) -> Path:
    """Where ``example``'s answer from ``vendor`` is kept under ``root`` (never outside it: a name that
    climbs out of a folder and back into the transforms folder loses its leading ``..``)."""
    parts = [part for part in PurePosixPath(os.path.normpath(example)).parts if part not in ("..", "/")]
    return root.joinpath(vendor, *parts)


def _request(example: Example) -> dict[str, str]:
    return {"method": example.method, "target": example.target}


def record(root: Path, vendor: Vendor, route: Route, example: Example, answered: Answered) -> Path:
    """Keep one answer (``run_check``'s ``keep``); returns the file written."""
    path = fixture_path(root, vendor.name, example.name)
    document: dict[str, Any] = {
        "vendor": vendor.name,
        "route": {"method": route.method, "path": route.path},
        "example": example.name,
        "request": _request(example),
        "status": answered.status,
        "content_type": answered.content_type,
    }
    try:
        document["body"] = orjson.loads(answered.body)
    except orjson.JSONDecodeError:
        document["body_text"] = answered.body.decode("utf-8", "replace")
    document["recorded_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def _recorded(path: Path) -> tuple[Answered, dict[str, Any]] | str:
    """The answer kept in ``path`` and the request it answered, or why it cannot be read as one."""
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except orjson.JSONDecodeError as exc:
        return f"{path} is not valid JSON: {exc}"
    status = document.get("status") if isinstance(document, dict) else None
    if not isinstance(status, int) or not ("body" in document or isinstance(document.get("body_text"), str)):
        return f"{path} is not a recorded answer (no status and body)"
    body = orjson.dumps(document["body"]) if "body" in document else document["body_text"].encode()
    content_type = document.get("content_type")
    request = document.get("request")
    answered = Answered(
        status=status, content_type=content_type if isinstance(content_type, str) else "", body=body
    )
    return answered, request if isinstance(request, dict) else {}


def verify(
    config: Config, root: Path, *, vendor: str | None = None, emit: Callable[[Verdict], None]
) -> list[Verdict]:
    """Judge every recorded answer of the config's examples (of ``vendor``) again; no vendor is called."""
    verdicts: list[Verdict] = []
    for v, _, route, example in examples_of(config, vendor):
        head = (v.name, route.path, example.name)
        path = fixture_path(root, v.name, example.name)
        if not path.is_file():
            why = f"no recorded answer in {root} (gateway contract check --record {root} records one)"
            verdict = Verdict(*head, "SKIP", ((None, why),))
        else:
            recorded = _recorded(path)
            if isinstance(recorded, str):
                verdict = Verdict(*head, "FAIL", ((None, recorded),))
            elif (sent := recorded[1]) != _request(example):
                why = (
                    f"recorded for {sent.get('method')} {sent.get('target')}, but the example now sends "
                    f"{example.method} {example.target}: record it again"
                )
                verdict = Verdict(*head, "FAIL", ((None, why),))
            else:
                problems = judge(route, recorded[0])
                verdict = Verdict(*head, "FAIL" if problems else "PASS", problems)
        verdicts.append(verdict)
        emit(verdict)
    return verdicts
