"""Live reload (docs/operations.md): new limits, routes and vendors without a restart or a dropped request;
a bad config is refused and the running one keeps serving."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import load_config
from gateway.http.app import reload
from gateway.observability.logging import Logger
from gateway.reload import Watched, _feed, watch_files
from tests.conftest import CapturedLogs
from tests.gateway_proc import GatewayProcess
from tests.ratelimit_vendor import ARRIVALS, long_run_rate, rate_vendor


def config_text(server: Any, limit: str, extra: str = "") -> str:
    return f"""
[vendors.v]
base_url = "{server.make_url("/")}"
rate_limit = {{ {limit} }}
{extra}
"""


async def test_a_limit_changes_under_load_with_zero_failed_requests(
    gateway: Any, vendor: Any, write_config: Callable[..., Path], logs: CapturedLogs
) -> None:
    server = await vendor(rate_vendor())
    # burst = 2: one turn of slack lets the schedule catch up after a late wake-up on a loaded machine.
    queue_forever = "max_wait_seconds = 20, max_queue = 1000, burst = 2"
    client = await gateway(config_text(server, f"requests = 10, {queue_forever}"))
    statuses: list[int] = []
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            resp = await client.get("/v/load")
            await resp.read()
            statuses.append(resp.status)

    workers = [asyncio.ensure_future(worker()) for _ in range(20)]
    await asyncio.sleep(1.5)
    write_config(config_text(server, f"requests = 40, {queue_forever}"))
    switched = time.monotonic()
    assert await reload(client.app) is True
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*workers)
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {sorted(set(statuses))}"
    times = server.app[ARRIVALS].all()
    before = long_run_rate([t for t in times if t < switched], skip=2)
    after = long_run_rate([t for t in times if t > switched + 0.1], skip=0)
    print(f"reload under load: {len(statuses)} requests, all 200; {before:.2f}/s before, {after:.2f}/s after")
    assert 9.0 <= before <= 11.0
    assert 34.0 <= after <= 44.0
    reloaded = [r for r in logs.records() if r["event"] == "config_reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["vendors"] == ["v"]


async def test_an_unchanged_limit_keeps_its_schedule_across_a_reload(
    gateway: Any, vendor: Any, write_config: Callable[..., Path]
) -> None:
    server = await vendor(rate_vendor())
    text = config_text(server, "requests = 1, per_seconds = 60, max_wait_seconds = 0")
    client = await gateway(text)
    assert (await client.get("/v/a")).status == 200
    write_config(text + "\n# a comment changed\n")
    assert await reload(client.app) is True
    assert (await client.get("/v/a")).status == 429  # not a fresh bucket


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("[vendors.v\n", "invalid TOML"),
        (
            "[vendors.v]\nbase_url = 'http://127.0.0.1:1'\nrate_limit = { requests = -5 }\n",
            "must be at least 1",
        ),
        # `: > config.toml`, or a file caught between truncation and write: every request would 404.
        ("", "the new config has no vendors"),
        ("# half-written\n[gateway]\nmax_body_bytes = 1024\n", "the new config has no vendors"),
    ],
    ids=["invalid-toml", "invalid-value", "empty", "no-vendors"],
)
async def test_a_bad_config_is_refused_and_the_old_one_keeps_serving(
    gateway: Any,
    vendor: Any,
    write_config: Callable[..., Path],
    logs: CapturedLogs,
    broken: str,
    expected: str,
) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(config_text(server, "requests = 100"))
    before = client.app.live.runtime
    write_config(broken)
    assert await reload(client.app, reason="test") is False
    assert client.app.live.runtime is before
    failed = [r for r in logs.records() if r["event"] == "config_reload_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error" and failed[0]["reason"] == "test"
    assert any(expected in problem and "config.toml" in problem for problem in failed[0]["problems"])
    assert (await client.get("/v/still")).status == 200


def load_then_write(monkeypatch: pytest.MonkeyPatch, path: Path, writes: list[str]) -> list[int]:
    """Make each config load rewrite config.toml just after reading it (with ``writes`` in turn): a
    deploy writing the file again while the gateway reads it. Returns how many loads there were."""
    loads = [0]

    def racing(config_path: Any) -> Any:
        loaded = load_config(config_path)
        if loads[0] < len(writes):
            path.write_text(writes[loads[0]])
        loads[0] += 1
        return loaded

    import gateway.http.app
    import gateway.reload

    monkeypatch.setattr(gateway.http.app, "load_config", racing, raising=False)  # before read_config
    monkeypatch.setattr(gateway.reload, "load_config", racing, raising=False)
    return loads


async def test_a_file_that_changed_while_it_was_read_is_read_again(
    gateway: Any,
    vendor: Any,
    write_config: Callable[..., Path],
    logs: CapturedLogs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = await vendor(rate_vendor())
    url = server.make_url("/")
    client = await gateway(f'[vendors.v]\nbase_url = "{url}"\n')
    path = write_config(f'[vendors.v]\nbase_url = "{url}"\n[vendors.w]\nbase_url = "{url}"\n')
    loads = load_then_write(
        monkeypatch, path, [f'[vendors.v]\nbase_url = "{url}"\n[vendors.x]\nbase_url = "{url}"\n']
    )
    assert await reload(client.app) is True
    assert loads[0] == 2  # the first read was of a file that changed under it: read again
    reloaded = [r for r in logs.records() if r["event"] == "config_reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["vendors"] == ["v", "x"]  # never the in-between ["v", "w"]
    assert (await client.get("/x/a")).status == 200
    assert (await client.get("/w/a")).status == 404


async def test_a_file_that_keeps_changing_while_it_is_read_is_refused(
    gateway: Any,
    vendor: Any,
    write_config: Callable[..., Path],
    logs: CapturedLogs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = await vendor(rate_vendor())
    url = server.make_url("/")
    client = await gateway(f'[vendors.v]\nbase_url = "{url}"\n')
    before = client.app.live.runtime
    path = write_config(f'[vendors.v]\nbase_url = "{url}"\n')
    versions = [f'[vendors.v]\nbase_url = "{url}"\n[vendors.n{i}]\nbase_url = "{url}"\n' for i in range(20)]
    load_then_write(monkeypatch, path, versions)
    assert await reload(client.app, reason="test") is False
    assert client.app.live.runtime is before
    failed = [r for r in logs.records() if r["event"] == "config_reload_failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "test"
    assert any("changed while it was read" in problem for problem in failed[0]["problems"]), failed[0]
    assert (await client.get("/v/still")).status == 200


async def test_routes_and_vendors_change_and_in_flight_requests_finish_on_the_old_config(
    gateway: Any, vendor: Any, write_config: Callable[..., Path]
) -> None:
    server = await vendor(rate_vendor())
    server.app[ARRIVALS].delay = 0.5
    client = await gateway(f'[vendors.old]\nbase_url = "{server.make_url("/")}"\n')
    in_flight = asyncio.ensure_future(client.get("/old/slow"))
    await asyncio.sleep(0.1)
    write_config(
        f'[vendors.new]\nbase_url = "{server.make_url("/")}"\n',
        routes={"new": 'vendor = "new"\n[[route]]\nmethod = "GET"\npath = "/only"\n'},
    )
    assert await reload(client.app) is True
    assert (await in_flight).status == 200  # started on the old config, finished on it
    assert (await client.get("/old/slow")).status == 404
    assert (await client.get("/new/only")).status == 200
    assert (await client.get("/new/other")).status == 404  # expose = "declared" from the new routes file


@pytest.mark.slow
async def test_sighup_and_file_changes_reload_a_running_process(
    vendor: Any, write_config: Callable[..., Path]
) -> None:
    server = await vendor(rate_vendor())
    base = f'[vendors.a]\nbase_url = "{server.make_url("/")}"\n'
    path = write_config(base)
    gw = GatewayProcess(path)

    async def wait_for_log(text: str) -> None:
        deadline = time.monotonic() + 10
        while text not in gw.output():
            assert time.monotonic() < deadline, f"no {text!r} in:\n{gw.output()}"
            await asyncio.sleep(0.05)

    try:
        await asyncio.to_thread(gw.wait_ready)
        async with aiohttp.ClientSession() as session:

            async def status(vendor_name: str) -> int:
                async with session.get(f"{gw.url}/{vendor_name}/x") as resp:
                    return resp.status

            assert await status("b") == 404
            # SIGHUP. The file watcher sees this write too; either may reload first, both succeed.
            path.write_text(base + f'[vendors.b]\nbase_url = "{server.make_url("/")}"\n')
            os.kill(gw.proc.pid, signal.SIGHUP)
            await wait_for_log('"reason":"SIGHUP"')
            assert await status("b") == 200
            # A file change alone, and a broken one: refused, logged, the running config keeps serving.
            # Written the way editors and `>` redirections do, truncation first: the watcher may well
            # look while the file is empty, and must not take that for a config with no vendors.
            with path.open("w") as fh:
                fh.flush()
                await asyncio.sleep(0.5)
                fh.write(base + "[vendors.c\n")
            await wait_for_log("invalid TOML")
            assert await status("b") == 200
            assert await status("a") == 200
            assert '"vendors":[]' not in gw.output()
            path.write_text(base + f'[vendors.c]\nbase_url = "{server.make_url("/")}"\n')
            deadline = time.monotonic() + 10
            while await status("c") != 200:
                assert time.monotonic() < deadline, gw.output()
                await asyncio.sleep(0.05)
            assert await status("b") == 404
        assert gw.proc.poll() is None
    finally:
        gw.stop()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_the_watcher_reloads_when_config_routes_or_transforms_change_and_not_otherwise(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_config('[vendors.a]\nbase_url = "http://127.0.0.1:1"\n')
    config = load_config(path)
    reasons: list[str] = []

    async def fake_reload(why: str) -> bool:
        reasons.append(why)
        return True

    stop = asyncio.Event()
    task = asyncio.ensure_future(
        watch_files(lambda: config, fake_reload, Logger(stream=io.BytesIO()), stop=stop)
    )
    try:
        await asyncio.sleep(0.5)  # the watches are in place
        (tmp_path / "gateway.log").write_text("unrelated")
        path.touch()  # same contents
        await asyncio.sleep(0.6)
        assert reasons == []
        (tmp_path / "transforms" / "sub").mkdir()
        (tmp_path / "transforms" / "sub" / "x.schema.json").write_text("{}")
        await _until(lambda: len(reasons) == 1, "no reload for a transforms change")
        (tmp_path / "routes" / "a.toml").write_text('vendor = "a"\n')
        await _until(lambda: len(reasons) == 2, "no reload for a routes change")
        path.write_text(path.read_text() + "# edited\n")
        await _until(lambda: len(reasons) == 3, "no reload for a config change")
        assert reasons[2] == "file change: config.toml"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_in_the_config_folder_only_the_config_file_counts(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    # An access log beside config.toml must not have the watcher re-read the config at every write.
    path = write_config('[vendors.a]\nbase_url = "http://127.0.0.1:1"\n')
    changes: asyncio.Queue[set[str]] = asyncio.Queue()
    restart = asyncio.Event()
    only = frozenset({path.name})
    feed = asyncio.ensure_future(
        _feed([path.parent], False, only, changes, restart, Logger(stream=io.BytesIO()))
    )
    try:
        await asyncio.sleep(0.5)  # the watch is in place
        (tmp_path / "access.log").write_text("a line\n")
        (tmp_path / "notes.toml").write_text("# not the config\n")
        path.write_text(path.read_text() + "# edited\n")
        assert await asyncio.wait_for(changes.get(), 10) == {str(path)}
        assert changes.empty()
    finally:
        restart.set()
        await asyncio.wait_for(feed, 5)


async def test_the_watcher_reloads_once_the_files_hold_still(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config('[vendors.a]\nbase_url = "http://127.0.0.1:1"\n')
    config = load_config(path)
    real_digest = Watched.digest
    digests: list[str] = []

    def digest(self: Watched) -> str:  # the 2nd to 4th look find the files still being written
        value = real_digest(self) if not 2 <= len(digests) + 1 <= 4 else f"mid-write {len(digests)}"
        digests.append(value)
        return value

    monkeypatch.setattr(Watched, "digest", digest)
    looked_before_reload: list[int] = []

    async def fake_reload(why: str) -> bool:
        looked_before_reload.append(len(digests))
        return True

    stop = asyncio.Event()
    task = asyncio.ensure_future(
        watch_files(lambda: config, fake_reload, Logger(stream=io.BytesIO()), stop=stop)
    )
    try:
        await _until(lambda: len(digests) == 1, "the watcher's first look")
        await asyncio.sleep(0.5)  # the watches are in place
        path.write_text(path.read_text() + "# edited\n")
        await _until(lambda: len(looked_before_reload) == 1, "no reload after the change")
        await asyncio.sleep(0.3)
        # One reload, after two equal looks in a row (looks 5 and 6), not at the first changed look.
        assert looked_before_reload == [6]
        assert digests[4] == digests[5] != digests[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_the_watcher_follows_a_kubernetes_style_symlink_swap(tmp_path: Path) -> None:
    for version, port in (("v1", 1), ("v2", 2)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "config.toml").write_text(
            f'[vendors.a]\nbase_url = "http://127.0.0.1:{port}"\n'
        )
    (tmp_path / "routes").mkdir()
    (tmp_path / "transforms").mkdir()
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/config.toml", tmp_path / "config.toml")
    config = load_config(tmp_path / "config.toml")
    reasons: list[str] = []

    async def fake_reload(why: str) -> bool:
        reasons.append(why)
        return True

    stop = asyncio.Event()
    task = asyncio.ensure_future(
        watch_files(lambda: config, fake_reload, Logger(stream=io.BytesIO()), stop=stop)
    )
    try:
        await asyncio.sleep(0.5)
        os.symlink("v2", tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # what the kubelet does on an update
        await _until(lambda: len(reasons) == 1, "no reload after the symlink swap")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_settings_that_need_a_restart_are_named(
    gateway: Any, vendor: Any, write_config: Callable[..., Path], logs: CapturedLogs
) -> None:
    server = await vendor(rate_vendor())
    vendors = f'[vendors.v]\nbase_url = "{server.make_url("/")}"\n'
    client = await gateway(vendors)
    write_config('[gateway]\nlisten = "127.0.0.1:1"\nstore = "redis://127.0.0.1:1/0"\n' + vendors)
    assert await reload(client.app) is True
    reloaded = [r for r in logs.records() if r["event"] == "config_reloaded"]
    assert reloaded[0]["level"] == "warning"
    assert reloaded[0]["needs_restart"] == ["gateway.listen", "gateway.store"]
    assert (await client.get("/v/x")).status == 200


async def test_needs_restart_is_named_on_every_reload_until_the_setting_is_back(
    gateway: Any, vendor: Any, write_config: Callable[..., Path], logs: CapturedLogs
) -> None:
    """Against the config the process started with, not the previous reload's: the second reload below
    changes nothing that needs a restart, yet the restart the first one asked for is still owed."""
    server = await vendor(rate_vendor())
    vendors = f'[vendors.v]\nbase_url = "{server.make_url("/")}"\n'
    client = await gateway(vendors)
    for text in (
        '[gateway]\nstore = "redis://127.0.0.1:1/0"\n' + vendors,
        '[gateway]\nstore = "redis://127.0.0.1:1/0"\nmax_body_bytes = 2048\n' + vendors,
        '[tracing]\nexporter = "console"\n[gateway]\nstore = "redis://127.0.0.1:1/0"\n' + vendors,
        vendors,  # everything as at start: nothing owed
    ):
        write_config(text)
        assert await reload(client.app) is True
    reloaded = [r for r in logs.records() if r["event"] == "config_reloaded"]
    assert [r["needs_restart"] for r in reloaded] == [
        ["gateway.store"],
        ["gateway.store"],
        ["gateway.store", "tracing"],
        None,
    ]
    assert [r["level"] for r in reloaded] == ["warning", "warning", "warning", "info"]
