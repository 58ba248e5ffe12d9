"""``gateway run|check|transform|sandbox|dlq|contract``: the operator's commands (docs/operations.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from . import __version__
from .config import Config, ConfigError, load_config, parse_listen
from .config.model import Listen
from .observability.logging import Logger

MAX_WORKERS = 256


def cannot_listen(where: object, exc: OSError) -> str:
    """The one line a command prints when its port is taken (or not allowed), instead of a traceback."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"gateway: cannot listen on {where}: {reason}"


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return
    uvloop.install()


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    for warning in config.warnings:
        print(f"{warning.file}: warning: {warning.key}: {warning.message}", file=sys.stderr)
    routes = sum(len(v.routes) for v in config.vendors.values())
    print(f"{args.config}: ok ({len(config.vendors)} vendors, {routes} routes)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .http.app import serve

    config = _load(args.config)
    if config is None:
        return 1
    listen = config.gateway.listen
    if args.listen:
        try:
            listen = parse_listen(args.listen)
        except ValueError as exc:
            print(f"--listen: {exc}", file=sys.stderr)
            return 2
    try:
        workers = _workers(args.workers)
    except ValueError as exc:
        print(f"--workers: {exc}", file=sys.stderr)
        return 2
    if workers > 1 and listen.port == 0:
        print(f"--workers: {workers} workers share one port: give a port, not 0", file=sys.stderr)
        return 2
    logger = Logger(fmt=args.log_format)
    extra: Callable[[], Awaitable[Callable[[], Awaitable[None]]]] | None = None
    sandbox_at = None
    if args.sandbox:
        try:
            sandbox_at = parse_listen(args.sandbox)
        except ValueError as exc:
            print(f"--sandbox: {exc}", file=sys.stderr)
            return 2
    if workers > 1:
        return _run_workers(config, workers, logger, listen, sandbox_at)
    if sandbox_at is not None:

        async def start_sandbox() -> Callable[[], Awaitable[None]]:
            from .sandbox import start

            try:
                runner = await start(sandbox_at.host, sandbox_at.port)
            except OSError as exc:
                raise SystemExit(cannot_listen(f"{sandbox_at} (--sandbox)", exc)) from None
            logger.event("sandbox_started", listen=str(sandbox_at))
            return runner.cleanup

        extra = start_sandbox
    _install_uvloop()
    asyncio.run(serve(config, logger=logger, listen_host=listen.host, listen_port=listen.port, extra=extra))
    return 0


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number of processes, not {text!r}") from None
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"must be from 1 to {MAX_WORKERS}, not {workers}")
    return workers


def _run_workers(config: Config, workers: int, logger: Logger, listen: Listen, sandbox: Listen | None) -> int:
    """``--workers N`` with N > 1: a supervisor and N worker processes (gateway.http.supervisor)."""
    from .http.supervisor import Supervisor
    from .http.worker import shared_state_problems

    problems = shared_state_problems(config, workers)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    _install_uvloop()  # the workers' event loops; the supervisor runs none
    supervisor = Supervisor(
        config,
        workers=workers,
        logger=logger,
        listen_host=listen.host,
        listen_port=listen.port,
        sandbox=sandbox,
    )
    return supervisor.run()


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox import run

    try:
        listen = parse_listen(args.listen)
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 2
    try:
        run(listen.host, listen.port)
    except OSError as exc:
        print(cannot_listen(listen, exc), file=sys.stderr)
        return 1
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Each command's purpose on its own line beside it: argparse measures command names one indent
    short, so a long one (``transform``) would push its help to the next line."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(map(len, action.choices), default=0)
            indent = self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, longest + indent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Egress API gateway: internal services call vendors through it.",
        epilog="Each command has its own --help. Reference: docs/ in the repository.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve the gateway (--sandbox: and the sandbox vendor beside it)")
    run.add_argument("--config", default="config.toml", help="path to config.toml (default: %(default)s)")
    run.add_argument("--listen", help="HOST:PORT, overrides [gateway].listen")
    run.add_argument("--log-format", choices=("json", "text"), default="json", help="default: %(default)s")
    run.add_argument("--sandbox", metavar="HOST:PORT", help="also run the sandbox vendor at HOST:PORT")
    run.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="serve with N processes sharing the port, under a supervisor (default: %(default)s)",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check", help="validate config, routes, schemas and transforms, listing every problem"
    )
    check.add_argument("--config", default="config.toml", help="path to config.toml (default: %(default)s)")
    check.set_defaults(func=cmd_check)

    # Parsed by gateway.transform.cli (main() hands it the arguments); listed here for --help.
    transform = sub.add_parser(
        "transform",
        help="apply a transform spec to a JSON document (--explain: print the mapping)",
        add_help=False,
    )
    transform.add_argument("args", nargs=argparse.REMAINDER)
    transform.set_defaults(func=lambda args: _transform(args.args))

    sandbox = sub.add_parser("sandbox", help="run the local stand-in vendor the quickstart and tests use")
    sandbox.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT (default: %(default)s)")
    sandbox.set_defaults(func=cmd_sandbox)

    from .features.delivery.dlq import add_parser as add_dlq_parser

    add_dlq_parser(sub)
    from .features.contract.cli import add_parser as add_contract_parser

    add_contract_parser(sub)
    return parser


def _transform(argv: list[str]) -> int:
    from .transform.cli import main as transform_main

    return transform_main(argv)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["transform"]:
        return _transform(args_list[1:])
    args = build_parser().parse_args(args_list)
    result: int = args.func(args)
    return result
