"""``gateway contract check|verify``: the operator's commands for contract checks (docs/operations.md).

``check`` sends the examples to the vendors (``--record DIR`` also keeps their answers); ``verify``
judges answers kept in ``--fixtures DIR`` again, offline, against the schemas as they are now.

One line per example on stdout: ``PASS vendor route example``, ``FAIL vendor route example: /pointer:
message`` (one line per schema error; ``(root)`` is the whole answer) or ``FAIL vendor route example:
message`` (a non-2xx answer, an answer that is not JSON, a transform that cannot apply), and ``SKIP
vendor route example: why`` for examples not sent (or, in verify, not recorded). Exit 0 when nothing
failed, 1 on any failure (and when there was nothing to check), 2 on a bad argument. What the
pipeline logs (a breaker opening, a vendor deprecation) goes to stderr as text.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ...config import Config, ConfigError, load_config
from ...observability.logging import Logger
from .check import Verdict, examples_of, run_check
from .fixtures import record, verify


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    contract = sub.add_parser("contract", help="check vendor answers against the routes' response schemas")
    actions = contract.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="send each route's examples to its vendor and check the answers against the schemas"
    )
    check.add_argument("--config", default="config.toml", help="path to config.toml (default: %(default)s)")
    check.add_argument("--vendor", help="only this vendor's examples")
    check.add_argument(
        "--allow-writes",
        action="store_true",
        help="also send examples not safe to repeat (POST/PATCH without a forwarded idempotency key)",
    )
    check.add_argument("--record", metavar="DIR", help="also keep each vendor answer in DIR (for verify)")
    check.set_defaults(func=main_check)
    verify = actions.add_parser(
        "verify", help="check answers kept by check --record against the schemas as they are now (offline)"
    )
    verify.add_argument("--config", default="config.toml", help="path to config.toml (default: %(default)s)")
    verify.add_argument("--fixtures", metavar="DIR", required=True, help="the folder check --record wrote")
    verify.add_argument("--vendor", help="only this vendor's examples")
    verify.set_defaults(func=main_verify)


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _chosen(config: Config, vendor: str | None, what: str) -> bool:
    """Whether there is anything to do; says why not on stderr."""
    if vendor is not None and vendor not in config.vendors:
        print(f"--vendor: no vendor named {vendor!r} in {config.path}", file=sys.stderr)
        return False
    if next(examples_of(config, vendor), None) is None:
        scope = f"vendor {vendor!r}" if vendor else str(config.path)
        print(f"nothing to {what}: no route of {scope} lists examples", file=sys.stderr)
        return False
    return True


def _print(verdict: Verdict) -> None:
    for line in verdict.lines():
        print(line, flush=True)


def main_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    if not _chosen(config, args.vendor, "check"):
        return 2 if args.vendor is not None and args.vendor not in config.vendors else 1
    logger = Logger(stream=sys.stderr.buffer, fmt="text")
    root = Path(args.record) if args.record else None
    if root is not None and root.exists() and not root.is_dir():
        print(f"--record: {root} is not a folder", file=sys.stderr)
        return 2
    keep = (
        None
        if root is None
        else lambda v, route, example, answered: record(root, v, route, example, answered)
    )
    verdicts = asyncio.run(
        run_check(
            config, vendor=args.vendor, allow_writes=args.allow_writes, logger=logger, emit=_print, keep=keep
        )
    )
    return 1 if any(v.outcome == "FAIL" for v in verdicts) else 0


def main_verify(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    root = Path(args.fixtures)
    if not root.is_dir():
        print(f"--fixtures: {root} is not a folder", file=sys.stderr)
        return 2
    if not _chosen(config, args.vendor, "verify"):
        return 2 if args.vendor is not None and args.vendor not in config.vendors else 1
    verdicts = verify(config, root, vendor=args.vendor, emit=_print)
    if all(v.outcome == "SKIP" for v in verdicts):
        print(f"nothing to verify: {root} holds no recorded answer for these examples", file=sys.stderr)
        return 1
    return 1 if any(v.outcome == "FAIL" for v in verdicts) else 0
