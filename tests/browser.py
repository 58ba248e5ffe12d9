"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for page tests.

Chromium is started with ``--remote-debugging-port=0`` and a private profile; the test speaks the
DevTools protocol (the one Playwright and Puppeteer speak) over a WebSocket with aiohttp, which the
project already has: Playwright's pinned greenlet would pull httpbin, which tests/fidelity runs, back
to an older release, and nothing here needs more than navigate, evaluate and screenshot.

Without ``chromium`` the test is skipped with a loud reason, or fails under ``CI=true`` (scripts/test
installs it there), where a skip would hide that the dashboard went untested in a browser.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
START_TIMEOUT = 60.0  # real seconds for the browser to listen (a cold start on a loaded machine)
COMMAND_TIMEOUT = 60.0


def chromium_binary() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        reason = (
            "chromium is not installed, so the dashboard is NOT TESTED in a browser "
            "(apt-get install chromium; scripts/test installs it under CI=true)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true requires it")
        pytest.skip(reason)
    return binary


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, **params: Any) -> Any:
        return await self.browser.send(method, session=self.session, **params)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", f"{url} to load")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, seconds: float = 30.0) -> Any:
        """Poll ``expression`` in the page until it is truthy (real time: the page's own timers run)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))
        return path


class Browser:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.console: list[str] = []  # the pages' console errors and uncaught exceptions

    async def __aenter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="gateway-chromium-")
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self._profile}",
            "--window-size=1280,900",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        url = await asyncio.wait_for(self._devtools_url(), START_TIMEOUT)
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _devtools_url(self) -> str:
        assert self._process.stderr is not None
        while True:
            line = await self._process.stderr.readline()
            if not line:
                raise AssertionError(f"chromium exited ({await self._process.wait()}) before listening")
            found = re.search(rb"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1).decode()

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            waiter = self._waiting.pop(data.get("id", -1), None)
            if waiter is not None and not waiter.done():
                if "error" in data:
                    waiter.set_exception(AssertionError(f"DevTools error: {data['error']}"))
                else:
                    waiter.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(data["params"]["exceptionDetails"]))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.console.append(str(data["params"]["args"]))
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(AssertionError("the browser closed its DevTools connection"))

    async def send(self, method: str, *, session: str | None = None, **params: Any) -> Any:
        ident = next(self._ids)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = waiter
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_json(message)
        return await asyncio.wait_for(waiter, COMMAND_TIMEOUT)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
        )
        return page

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        with contextlib.suppress(Exception):
            await self._ws.close()
        await self._http.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)
