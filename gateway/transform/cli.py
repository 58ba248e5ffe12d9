"""``gateway transform SPEC_FILE [INPUT.json] [--explain]``: try a transform spec from a terminal.

Exit status 0 on success; 1 when the spec has problems (one ``FILE: key.path: message`` line each on
stderr), the input is not JSON, or the document cannot be transformed; 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from gateway.transform.engine import apply
from gateway.transform.errors import TransformError, TransformSpecError
from gateway.transform.explain import explain
from gateway.transform.spec import load_spec

PROG = "gateway transform"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Apply a transform spec to a JSON document and print the result.",
    )
    parser.add_argument("spec", metavar="SPEC_FILE", type=Path, help="transform spec (TOML)")
    parser.add_argument(
        "input", metavar="INPUT.json", nargs="?", type=Path, help="JSON document (default: standard input)"
    )
    parser.add_argument(
        "--explain", action="store_true", help="print the mapping as a table instead of applying it"
    )
    return parser


def _read_input(path: Path | None) -> tuple[str, bytes]:
    if path is None:
        stream = sys.stdin
        data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode()
        return "standard input", data
    return str(path), path.read_bytes()


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help and on usage errors; a caller of main() wants the status instead.
        return exc.code if isinstance(exc.code, int) else 2

    try:
        spec = load_spec(args.spec, display_name=str(args.spec))
    except TransformSpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1

    if args.explain:
        sys.stdout.write(explain(spec))
        return 0

    try:
        name, raw = _read_input(args.input)
    except OSError as exc:
        print(f"{PROG}: {args.input}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        print(f"{PROG}: {name}: not valid JSON: {exc}", file=sys.stderr)
        return 1

    try:
        result = apply(spec, document)
    except TransformError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1

    try:
        output = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError as exc:
        print(f"{PROG}: the result cannot be written as JSON: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(output.decode() + "\n")
    return 0
