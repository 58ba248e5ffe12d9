"""``gateway dlq list|show|replay|purge``: the dead letters in the configured store (docs/operations.md).

Dead letters are deliveries that got a non-retryable vendor answer or ran out of attempts. The command
talks to the store named by ``[gateway] store`` directly, so it needs a ``redis://`` store: with
``memory://`` the queue lives inside the one gateway process and nothing outside it can reach it (the
command says so and exits 2). ``replay`` queues a dead letter again with a fresh attempt count, for any
running gateway to deliver; ``purge`` forgets it.

``list`` prints one line per dead letter, oldest first, tab-separated: id, vendor, method, path (with
its query), attempts, last error. ``show`` prints one as JSON, with the stored request and, when the
vendor answered, its answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from ...config import Config, ConfigError, load_config
from ...store import Store, StoreUnavailable, open_store
from .queue import record_json, valid_id

BATCH = 500


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters (needs a redis:// store)")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")

    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--config", default="config.toml", help="path to config.toml (default: %(default)s)"
        )
        return parser

    listing = with_config(actions.add_parser("list", help="one line per dead letter"))
    listing.add_argument("--limit", type=int, default=1000, help="at most this many (default: %(default)s)")
    show = with_config(actions.add_parser("show", help="one dead letter (or any delivery) as JSON"))
    show.add_argument("id")
    for name, verb in (("replay", "queue again for delivery"), ("purge", "forget")):
        parser = with_config(actions.add_parser(name, help=f"{verb}: one dead letter, or --all"))
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("id", nargs="?")
        target.add_argument("--all", action="store_true", help="every dead letter")
    dlq.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if config.gateway.store == "memory://":
        print(
            f"{args.config}: gateway.store is memory://: dead letters live inside the running gateway "
            "process and this command cannot reach them; configure a redis:// store to keep and manage "
            "them from outside",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_run(args, config))
    except StoreUnavailable as exc:
        print(f"gateway dlq: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, config: Config) -> int:
    store = open_store(config.gateway.store)
    try:
        if args.action == "list":
            return await _list(store, args.limit)
        if args.action == "show":
            return await _show(store, args.id)
        return await _change(store, args.action, None if args.all else args.id)
    finally:
        await store.close()


def _line(*fields: object) -> str:
    return "\t".join(" ".join(str(f).split()) for f in fields)


async def _list(store: Store, limit: int) -> int:
    letters = await store.deliveries.dead_letters(limit)
    for record in letters:
        req = record.request
        path = req.path + ("?" + req.query if req.query else "")
        print(
            _line(record.id, req.vendor, req.method, path or "/", record.attempts, record.last_error or "-")
        )
    print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    return 0


async def _show(store: Store, delivery_id: str) -> int:
    record = await store.deliveries.delivery_get(delivery_id) if valid_id(delivery_id) else None
    if record is None:
        print(f"gateway dlq: no delivery {delivery_id!r}", file=sys.stderr)
        return 1
    sys.stdout.write(
        orjson.dumps(record_json(record, request_body=True), option=orjson.OPT_INDENT_2).decode()
    )
    sys.stdout.write("\n")
    return 0


async def _change(store: Store, action: str, delivery_id: str | None) -> int:
    apply = store.deliveries.dead_replay if action == "replay" else store.deliveries.dead_purge
    done_word = "replayed" if action == "replay" else "purged"
    if delivery_id is not None:
        if not valid_id(delivery_id) or not await apply(delivery_id):
            print(f"gateway dlq: {delivery_id!r} is not a dead letter", file=sys.stderr)
            return 1
        print(f"{done_word}\t{delivery_id}")
        return 0
    count = 0
    while letters := await store.deliveries.dead_letters(BATCH):
        progressed = False
        for record in letters:
            if await apply(record.id):
                progressed = True
                count += 1
                print(f"{done_word}\t{record.id}")
        if not progressed:
            break
    print(f"{count} dead letter(s) {done_word}", file=sys.stderr)
    return 0
