"""One of several worker processes (``gateway run --workers N``, docs/operations.md): what N workers need
of the config, and what a worker does besides serving.

The supervisor (``gateway.http.supervisor``) forks the workers; each runs ``serve(..., reuse_port=True,
worker=Worker(...))`` on the same port (SO_REUSEPORT: the kernel spreads new connections over them).
A ``Worker`` tells the supervisor once it serves (a byte on a pipe), refuses a reload that the workers
could not share (``shared_state_problems``), and makes ``/_gateway/metrics``, the dashboard,
``/_gateway/status`` and the alerts answer for every worker:

- every ``SNAPSHOT_SECONDS`` and when it stops, a worker writes its metric families to its own file
  in the run directory (``RunDir``: a private temp folder the supervisor makes and removes);
- a scrape merges the worker's live figures with the other workers' files and with ``retired.json``,
  where the supervisor folds the counters and histograms of each worker that exited, so merged counters
  never go down when a worker is restarted (``gateway.observability.collector.merge`` has the rules).

So another worker's figures are at most ``SNAPSHOT_SECONDS`` (plus a write) old; a worker that stopped
cleanly loses nothing (its last file is written after its drain); a worker killed outright (kill -9,
out of memory) loses what it counted since its last file, at most ``SNAPSHOT_SECONDS`` of requests.
A scrape interval longer than ``SNAPSHOT_SECONDS`` (Prometheus' default is 15 s) sees merged counters
only grow, whichever worker answers each scrape.

The monitor of each worker reads the same merged figures into its history once a second
(``gateway.observability.monitor``), so every worker evaluates the alerts on all the requests and
agrees on which fire; only worker 1 (``ANNOUNCING_WORKER``, restarted under the same index) logs their
firing and resolving and sends their webhook notices, so each is said once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import IDEMPOTENCY_DEFAULT_METHODS, Config, Problem
from ..features.deprecation.tracker import merge_records
from ..observability.collector import decode, encode, merge, retired
from ..observability.logging import Logger
from ..observability.metrics import Family
from ..services import Services

SNAPSHOT_SECONDS = 1.0
ANNOUNCING_WORKER = 1
RETIRED = "retired.json"
# Incarnations folded into retired.json that a scrape may still have read the file of: kept in it so the
# scrape drops that file rather than count it twice. Far more than can exit while one scrape runs.
FOLDED_KEPT = 256
SHARED_STORE_EXAMPLE = 'store = "redis://127.0.0.1:6379/0"'


def _records(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The deprecation notices a snapshot's meta carries (``DeprecationTracker.export``'s records)."""
    records = meta.get("deprecations")
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def shared_state_problems(config: Config, workers: int, *, store: str | None = None) -> list[Problem]:
    """Why ``config`` cannot be served by ``workers`` processes: features whose state must be shared by
    all of them while the store is ``memory://`` (each process would have its own). Empty when it can.
    ``store``: the store in use, when it is not the config's (a reload does not change it).

    A vendor's circuit breaker is on unless ``circuit = { enabled = false }``; idempotency keys apply to
    POST and PATCH on every path a vendor passes through and on routes that do not turn them off;
    ``scope = "global"`` rate limits, async delivery and webhooks' duplicate event ids need the store
    by definition.
    """
    if workers <= 1 or (store or config.gateway.store) != "memory://":
        return []
    config_file = _display(config.path)
    found: list[tuple[str, Problem]] = []

    def need(feature: str, file: str, key: str, what: str) -> None:
        found.append((feature, Problem(file, key, what)))

    for name, vendor in config.vendors.items():
        if vendor.circuit.enabled:
            need(
                "circuit breakers",
                config_file,
                f"vendors.{name}.circuit",
                "a circuit breaker (on by default) needs one state for all workers; "
                "or turn it off: circuit = { enabled = false }",
            )
        if vendor.rate_limit is not None and vendor.rate_limit.scope == "global":
            need(
                "global rate limits",
                config_file,
                f"vendors.{name}.rate_limit.scope",
                '"global": one schedule shared by all workers',
            )
        if vendor.expose == "all":
            shared_keys = "idempotency keys on POST and PATCH must be shared by all workers"
            if vendor.routes:  # said by a routes file (a vendor without one passes everything too)
                need(
                    "idempotency keys",
                    vendor.routes[0].source.partition(": ")[0],
                    "expose",
                    f'"all": every path passes through, and {shared_keys}; or expose = "declared"',
                )
            else:
                need(
                    "idempotency keys",
                    config_file,
                    f"vendors.{name}",
                    f"no routes file: every path passes through, and {shared_keys}; or declare its routes "
                    f'(routes/{name}.toml with expose = "declared")',
                )
        for route in vendor.routes:
            file, _, where = route.source.partition(": ")
            mode = route.idempotency
            if mode in ("required", "optional") or (
                mode is None and (route.method == "*" or route.method in IDEMPOTENCY_DEFAULT_METHODS)
            ):
                said = f'"{mode}"' if mode else f'"optional" (the default for {route.method})'
                need(
                    "idempotency keys",
                    file,
                    f"{where}.idempotency",
                    f'{said}: idempotency keys must be shared by all workers; or idempotency = "off"',
                )
            if route.delivery != "sync":
                need(
                    "async delivery",
                    file,
                    f"{where}.delivery",
                    f'"{route.delivery}": the delivery queue must be shared by all workers',
                )
            if route.rate_limit is not None and route.rate_limit.scope == "global":
                need(
                    "global rate limits",
                    file,
                    f"{where}.rate_limit.scope",
                    '"global": one schedule shared by all workers',
                )
    for name, client in config.clients.items():
        if client.rate_limit is not None and client.rate_limit.scope == "global":
            need(
                "global rate limits",
                config_file,
                f"clients.{name}.rate_limit.scope",
                '"global": one schedule shared by all workers',
            )
    for name in config.webhooks:
        need(
            "webhook event ids",
            config_file,
            f"webhooks.{name}",
            "a duplicate event must be seen as one by all workers (published once)",
        )
    if not found:
        return []
    features = sorted({feature for feature, _ in found})
    summary = Problem(
        config_file,
        "gateway.store",
        f"is memory://, which keeps state inside one process, but --workers {workers} runs {workers} "
        f"processes and {', '.join(features)} need state they all share: use a redis:// store "
        f"([gateway] {SHARED_STORE_EXAMPLE}), or --workers 1",
    )
    return [summary, *(problem for _, problem in found)]


def per_process_warnings(config: Config, workers: int) -> list[Problem]:
    """Settings that hold per process, so ``workers`` processes allow ``workers`` times as much."""
    if workers <= 1:
        return []
    config_file = _display(config.path)
    times = f"each of the {workers} workers enforces it on its own, so up to {workers}x it goes through"
    local = f'scope is "local": {times} (scope = "global" shares it through a redis:// store)'
    found: list[Problem] = []
    for name, vendor in config.vendors.items():
        if vendor.rate_limit is not None and vendor.rate_limit.scope == "local":
            found.append(Problem(config_file, f"vendors.{name}.rate_limit", local))
        if vendor.concurrency is not None:
            found.append(Problem(config_file, f"vendors.{name}.concurrency", f"is per process: {times}"))
        for route in vendor.routes:
            if route.rate_limit is not None and route.rate_limit.scope == "local":
                file, _, where = route.source.partition(": ")
                found.append(Problem(file, f"{where}.rate_limit", local))
    for name, client in config.clients.items():
        if client.rate_limit is not None and client.rate_limit.scope == "local":
            found.append(Problem(config_file, f"clients.{name}.rate_limit", local))
    return found


class RunDir:
    """The supervisor's folder of metric snapshots: ``worker-<incarnation>.json`` per running worker
    (an incarnation is one fork, numbered by the supervisor, so a restarted worker starts a new file)
    and ``retired.json``, the counters, histograms and deprecation notices of workers that exited."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def snapshot(self, incarnation: int) -> Path:
        return self.path / f"worker-{incarnation}.json"

    def write(self, incarnation: int, data: bytes) -> None:
        """Replace the worker's file at once (a reader sees the old file or the new one, never half)."""
        path = self.snapshot(incarnation)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _retired(self) -> tuple[list[int], list[Family], list[dict[str, Any]]]:
        """retired.json: the incarnations folded into it, their families and deprecation notices."""
        try:
            meta, families = decode((self.path / RETIRED).read_bytes())
        except (FileNotFoundError, ValueError):
            return [], [], []
        return [int(n) for n in meta.get("folded", ())], families, _records(meta)

    def _snapshots(self, own: int | None) -> list[tuple[int, dict[str, Any], list[Family]]]:
        """(incarnation, meta, families) of every other running worker's latest snapshot."""
        found = []
        for path in self.path.glob("worker-*.json"):
            try:
                incarnation = int(path.stem.partition("-")[2])
            except ValueError:
                continue
            if incarnation == own:
                continue
            try:
                found.append((incarnation, *decode(path.read_bytes())))
            except (FileNotFoundError, ValueError):
                continue  # gone (folded), or not a snapshot
        return found

    def peers(self, own: int | None = None) -> list[Sequence[Family]]:
        """Every other worker's latest families, and the retired ones. The worker files are read first
        and retired.json after: a file folded meanwhile is then either dropped (its incarnation is
        listed as folded) or already gone, and counted once either way."""
        found = self._snapshots(own)
        folded, old, _ = self._retired()
        out: list[Sequence[Family]] = [families for n, _, families in found if n not in folded]
        if old:
            out.append(old)
        return out

    def deprecations(self, own: int | None = None) -> list[dict[str, Any]]:
        """Every other worker's deprecation notices: the running ones' and those of workers that exited
        (read in the order of ``peers``, for the same reason)."""
        found = self._snapshots(own)
        folded, _, retired_notices = self._retired()
        notices = [record for n, meta, _ in found if n not in folded for record in _records(meta)]
        return notices + retired_notices

    def retire(self, incarnation: int) -> None:
        """A worker exited (the supervisor reaped it): fold its counters, histograms and deprecation
        notices into retired.json, then remove its file (in that order: see ``peers``)."""
        path = self.snapshot(incarnation)
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # killed while writing
        try:
            meta, families = decode(path.read_bytes())
        except FileNotFoundError:
            return  # it died before its first snapshot: nothing counted yet
        except ValueError:
            path.unlink(missing_ok=True)
            return
        folded, old, old_notices = self._retired()
        total = merge(old, [retired(families)])
        data = encode(
            total,
            folded=[*folded, incarnation][-FOLDED_KEPT:],
            deprecations=merge_records([*old_notices, *_records(meta)]),  # one per vendor and route
        )
        tmp = self.path / (RETIRED + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path / RETIRED)
        path.unlink(missing_ok=True)


class Worker:
    """What serve() does as worker ``index`` (1..``workers``) of a supervisor: ``serving`` once it
    listens (tells the supervisor, starts the snapshots), ``stopped`` once it has drained (the last
    snapshot), ``check`` on every reload, ``peers`` for /_gateway/metrics and the monitor, ``announces``:
    whether it logs the alerts' firing and resolving and sends their notices."""

    def __init__(self, *, index: int, workers: int, run_dir: RunDir, incarnation: int, ready_fd: int) -> None:
        self.index = index
        self.workers = workers
        self.run_dir = run_dir
        self.incarnation = incarnation
        self._ready_fd: int | None = ready_fd
        self._services: Callable[[], Services] | None = None
        self._logger: Logger | None = None
        self._task: asyncio.Task[None] | None = None
        self._write_failed = False

    def check(self, config: Config, store: str) -> list[Problem]:
        """Problems that make ``config`` unfit for these workers on ``store``, the store they run on (a
        reload is refused with them)."""
        return shared_state_problems(config, self.workers, store=store)

    def peers(self) -> list[Sequence[Family]]:
        """What /_gateway/metrics merges with this worker's live figures: every other one's."""
        return self.run_dir.peers(self.incarnation)

    def deprecations(self) -> list[dict[str, Any]]:
        """What /_gateway/deprecations and the dashboard show with this worker's notices."""
        return self.run_dir.deprecations(self.incarnation)

    @property
    def announces(self) -> bool:
        return self.index == ANNOUNCING_WORKER

    def serving(self, services: Callable[[], Services], logger: Logger) -> None:
        """The worker listens and handles signals: tell the supervisor, start writing snapshots."""
        self._services, self._logger = services, logger
        self.snapshot()
        self._task = asyncio.get_running_loop().create_task(self._snapshots())
        if self._ready_fd is not None:
            with contextlib.suppress(OSError):  # the supervisor is gone: its death signal follows
                os.write(self._ready_fd, b"1")
            os.close(self._ready_fd)
            self._ready_fd = None

    async def stopped(self) -> None:
        """The worker has drained and closed: its final figures."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._services is not None:
            self.snapshot()

    def snapshot(self) -> None:
        assert self._services is not None
        services = self._services()
        families = (family for reporter in services.reporters() for family in reporter.families())
        data = encode(
            families,
            worker=self.index,
            pid=os.getpid(),
            incarnation=self.incarnation,
            written=time.time(),
            deprecations=services.deprecations.export(),
        )
        try:
            self.run_dir.write(self.incarnation, data)
        except OSError as exc:
            if not self._write_failed and self._logger is not None:  # once, not every second
                self._logger.event(
                    "metrics_snapshot_failed",
                    level="error",
                    worker=self.index,
                    path=str(self.run_dir.path),
                    error=exc.strerror or str(exc),
                )
            self._write_failed = True
        else:
            self._write_failed = False

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            self.snapshot()
