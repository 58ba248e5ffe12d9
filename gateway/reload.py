"""Reload on file change (docs/operations.md): a watcher over config.toml, routes/ and transforms/.

``watch_files`` calls ``reload`` once per burst of changes that altered what the config is made of
(an editor's save, a deploy copying many files); ``http.app.reload`` does the work and keeps the running
config when the new one is invalid. The folders watched follow the config in force, so a reload that
moves ``routes_dir`` watches the new one.

What is watched: the folder holding config.toml (not recursively: it is often a repository root),
``routes_dir`` and ``transforms_dir`` (recursively), and the folders of the certificate files the
config names (``[gateway] tls`` and vendors' ``tls``: a rotated certificate is read by a reload). In
the folders of config.toml and of the certificates only their own names count (and a Kubernetes
volume's ``..data`` swap): an access log or anything else written there makes the watcher read
nothing.
Watching folders rather than files survives editors and deploy tools that rename a new file over the
old one, and Kubernetes ConfigMap and Secret volumes, which swap a ``..data`` symlink. Because a folder
sees unrelated changes too, a burst of events reloads only when the contents of config.toml,
``routes/*.toml``, the transforms tree or those certificate files changed (a digest).

A file is often seen mid-write: ``: > config.toml``, or an editor or ``>`` truncating before it writes.
So the watcher reloads only once that digest holds still across a short re-read (``SETTLE_SECONDS``),
and every reload, SIGHUP's too, reads the config through ``read_config``: it takes the digest before
and after loading and reads again if they differ, and refuses a config with no vendors, which is what
an empty or half-written file looks like and would turn every request into a 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, ConfigError, Problem, load_config
from .observability.logging import Logger

if TYPE_CHECKING:
    from watchfiles import Change

# How long the watcher waits for more changes before it looks (watchfiles' step), and the most it
# groups changes over (its debounce): a deploy that copies a tree becomes one reload, not fifty.
STEP_MS = 100
DEBOUNCE_MS = 1_600
# After that, the files' digest must be the same twice this far apart (up to SETTLE_ROUNDS re-reads,
# then the reload goes ahead and read_config decides).
SETTLE_SECONDS = 0.05
SETTLE_ROUNDS = 20
# A reload whose files changed while they were read reads them again, at most this many times in all.
READ_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Watched:
    config_file: Path
    routes_dir: Path
    transforms_dir: Path
    tls_files: tuple[Path, ...] = ()  # certificates, keys and CA bundles the config names

    @classmethod
    def of(cls, config: Config) -> Watched:
        return cls(
            config_file=config.path,
            routes_dir=config.gateway.routes_dir,
            transforms_dir=config.gateway.transforms_dir,
            tls_files=tls_files(config),
        )

    def covers(self, path: Path) -> bool:
        """Whether a changed path is one of the config's own files (for the reload's reason)."""
        return (
            path == self.config_file
            or self.routes_dir in path.parents
            or self.transforms_dir in path.parents
            or path in self.tls_files
        )

    def digest(self) -> str:
        """What the config is made of, as the loader reads it (symlinks followed)."""
        h = hashlib.sha256()
        files = [self.config_file]
        if self.routes_dir.is_dir():
            files += sorted(self.routes_dir.glob("*.toml"))
        if self.transforms_dir.is_dir():
            files += sorted(p for p in self.transforms_dir.rglob("*") if not p.name.startswith("."))
        files += self.tls_files
        for file in files:
            h.update(str(file).encode() + b"\0")
            try:
                if file.is_file():
                    h.update(hashlib.sha256(file.read_bytes()).digest())
            except OSError as exc:
                h.update(f"unreadable: {exc.errno}".encode())
        return h.hexdigest()


def tls_files(config: Config) -> tuple[Path, ...]:
    listener = config.gateway.tls
    found = [listener.cert_file, listener.key_file, listener.client_ca_file] if listener else []
    for vendor in config.vendors.values():
        found += [vendor.tls.ca_file, vendor.tls.cert_file, vendor.tls.key_file]
    return tuple(sorted({path for path in found if path is not None}))


def read_config(current: Config) -> Config:
    """The config file loaded again for a reload (blocking: run it in a thread).

    Applied only from files that did not change while they were read: the digest of what the config is
    made of is taken before and after ``load_config`` and must match, else the files are read again
    (``READ_ATTEMPTS`` in all, then refused). A config with no vendors is refused too. Refusals and
    load problems are a ``ConfigError``, which the reload logs as ``config_reload_failed``.
    """
    path = str(current.path)
    watched = Watched.of(current)
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(SETTLE_SECONDS)
        before = watched.digest()
        try:
            config = load_config(current.path)
        except ConfigError:
            if watched.digest() == before:
                raise  # broken as it stands, not caught mid-write
            continue
        now = Watched.of(config)
        if now != watched:  # the new config moved routes_dir or transforms_dir: read those
            watched = now
            continue
        if watched.digest() == before:
            break
    else:
        raise ConfigError(
            [
                Problem(
                    path,
                    "",
                    f"the config files changed while it was read, {READ_ATTEMPTS} times in a row; "
                    "not applied (the next change reloads again)",
                )
            ]
        )
    if not config.vendors:
        raise ConfigError(
            [
                Problem(
                    path,
                    "vendors",
                    "the new config has no vendors (an empty or half-written file?); not applied, "
                    "the running config keeps serving",
                )
            ]
        )
    return config


async def _settled(watched: Watched, digest: str) -> str:
    """The files' digest once it holds still across a short re-read (or after SETTLE_ROUNDS)."""
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(SETTLE_SECONDS)
        again = await asyncio.to_thread(watched.digest)
        if again == digest:
            break
        digest = again
    return digest


async def watch_files(
    current: Callable[[], Config],
    reload: Callable[[str], Awaitable[bool]],
    logger: Logger,
    *,
    stop: asyncio.Event,
) -> None:
    """Reload on every change until ``stop`` is set. ``current`` gives the config in force."""
    while not stop.is_set():
        watched = Watched.of(current())
        seen = await asyncio.to_thread(watched.digest)
        changes: asyncio.Queue[set[str]] = asyncio.Queue()
        restart = asyncio.Event()  # set to stop this round's watchers (stop, or folders moved)
        # (folders, recursive, the names that matter in them: None for every name)
        groups: list[tuple[list[Path], bool, frozenset[str] | None]] = [
            ([watched.config_file.parent], False, frozenset({watched.config_file.name})),
            ([watched.routes_dir, watched.transforms_dir], True, None),
        ]
        if watched.tls_files:  # a Kubernetes Secret volume swaps its ..data link: its folder is watched
            tls_names = frozenset(path.name for path in watched.tls_files)
            groups.append((sorted({path.parent for path in watched.tls_files}), False, tls_names))
        feeds = [
            asyncio.create_task(_feed(folders, recursive, only, changes, restart, logger))
            for folders, recursive, only in groups
        ]
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                getter = asyncio.create_task(changes.get())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                paths = getter.result()
                while not changes.empty():
                    paths |= changes.get_nowait()
                digest = await _settled(watched, await asyncio.to_thread(watched.digest))
                if digest == seen:
                    continue  # something else in those folders changed
                seen = digest
                names = sorted({Path(p).name for p in paths if watched.covers(Path(p))})
                await reload("file change: " + (", ".join(names) or "config files"))
                if Watched.of(current()) != watched:
                    break
        finally:
            restart.set()  # watchfiles sees it within one step and returns; cancelling would wait longer
            stopper.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)


def _named(names: frozenset[str]) -> Callable[[Change, str], bool]:
    """A watchfiles filter passing ``names`` and the ``..``-names of a Kubernetes volume's atomic swap
    (``..data``, ``..2026_12_01_...``), so an access log written beside config.toml is not looked at."""

    def keep(_change: Change, path: str) -> bool:
        name = os.path.basename(path)
        return name in names or name.startswith("..")

    return keep


async def _feed(
    folders: list[Path],
    recursive: bool,
    names: frozenset[str] | None,
    out: asyncio.Queue[set[str]],
    restart: asyncio.Event,
    logger: Logger,
) -> None:
    """Each batch of changes under ``folders`` (to ``names`` only, unless None) onto ``out``."""
    existing = sorted({f for f in folders if f.is_dir()})
    if not existing:
        return
    from watchfiles import DefaultFilter, awatch  # a native module: loaded by the watcher only

    try:
        async for found in awatch(
            *existing,
            # no .git, editor swap files, caches; in a folder of other files, only the config's own
            watch_filter=DefaultFilter() if names is None else _named(names),
            recursive=recursive,
            step=STEP_MS,
            debounce=DEBOUNCE_MS,
            stop_event=restart,
        ):
            out.put_nowait({path for _, path in found})
    except Exception as exc:  # a watched folder removed, inotify limits: SIGHUP still reloads
        logger.event("config_watch_failed", level="error", folders=[str(f) for f in existing], error=str(exc))
        await restart.wait()
