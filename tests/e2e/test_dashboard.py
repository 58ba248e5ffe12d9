"""The dashboard in a real browser: headless Chromium loads ``/_gateway/dashboard``, sees each vendor,
sees the numbers and a sparkline change after traffic without the page reloading, sees a firing alert
on top, switches to the hour window, and saves a screenshot (``artifacts/dashboard.png``, or under
``$GATEWAY_ARTIFACTS``) for CI to keep. The gateway's monitor runs on a ManualClock (tests/monitor_clock.py);
the page polls in real time."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.observability.logging import Logger
from gateway.sandbox import create_app as sandbox_app
from tests.browser import Browser, require_chromium
from tests.conftest import CapturedLogs
from tests.gateway_client import GatewayClient
from tests.manual_clock import ManualClock
from tests.monitor_clock import start_gateway, tick

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("GATEWAY_ARTIFACTS", ROOT / "artifacts"))


async def traffic(client: GatewayClient, clock: ManualClock, seconds: int, *, flaky: bool) -> None:
    """``seconds`` clock-seconds of calls to both vendors, rising and falling; ``flaky``: the sandbox's
    flaky endpoint too (every third call a 503), and a 404 now and then."""
    for second in range(seconds):
        calls = 4 + round(3 * math.sin(second / 5))
        for i in range(calls):
            async with client.get("/sandbox/v1/customers?limit=1") as resp:
                assert resp.status == 200
            async with client.get("/billing/v1/customers?limit=2") as resp:
                assert resp.status == 200
            if flaky:
                async with client.get("/sandbox/v1/flaky?key=dash") as resp:
                    assert resp.status in (200, 503)
                if i == 0 and second % 4 == 0:
                    async with client.get("/sandbox/v1/customers/cus_missing") as resp:
                        assert resp.status == 404
        await tick(client, clock)


async def test_the_dashboard_draws_each_vendor_and_updates_in_place(
    vendor: Any, write_config: Any, logs: CapturedLogs
) -> None:
    binary = require_chromium()
    sandbox = await vendor(sandbox_app())
    config = load_config(
        write_config(
            f"""
[vendors.sandbox]
base_url = "{sandbox.make_url("/")}"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}
rate_limit = {{ requests = 500, per_seconds = 1 }}

[vendors.billing]
base_url = "{sandbox.make_url("/")}"

[alerts]
evaluate_seconds = 5

[[alerts.rule]]
name = "vendor-errors"
vendor = "*"
kind = "error_ratio"
threshold = 0.1
window_seconds = 60
"""
        )
    )
    clock = ManualClock()
    client = await start_gateway(config, Logger(stream=logs), clock)
    try:
        await traffic(client, clock, 30, flaky=False)
        async with Browser(binary) as browser:
            page = await browser.new_page()
            await page.goto(str(client.make_url("/_gateway/dashboard")))
            vendors = await page.evaluate(
                "[...document.querySelectorAll('[data-vendor]')].map(e => e.dataset.vendor)"
            )
            assert vendors == ["billing", "sandbox"]
            await page.evaluate("window.sameDocument = true")  # gone if the page reloads

            def tile(vendor: str, metric: str, part: str) -> str:
                selector = f"[data-vendor={vendor}] [data-metric={metric}]"
                if part == "text":
                    return f"document.querySelector('{selector} .value').textContent"
                return f"document.querySelector('{selector} path.line').getAttribute('d')"

            before = {
                key: await page.evaluate(tile("sandbox", metric, part))
                for key, metric, part in (
                    ("rps", "rps", "text"),
                    ("rps_line", "rps", "line"),
                    ("ratio_5xx", "ratio_5xx", "text"),
                    ("ratio_line", "ratio_5xx", "line"),
                )
            }
            assert float(before["rps"]) > 0 and before["ratio_5xx"] == "0.0 %"
            assert "No alerts firing" in await page.evaluate("document.getElementById('alerts').textContent")
            updates = int(await page.evaluate("document.body.dataset.updates"))

            await traffic(
                client, clock, 60, flaky=True
            )  # failures begin: the 5xx ratio climbs, an alert fires
            await page.wait_for(
                f"{tile('sandbox', 'ratio_5xx', 'text')} !== {before['ratio_5xx']!r} && "
                "document.getElementById('alerts').classList.contains('firing')",
                "the page to show the failures and the alert",
            )
            after_rps_line = await page.evaluate(tile("sandbox", "rps", "line"))
            after_ratio_line = await page.evaluate(tile("sandbox", "ratio_5xx", "line"))
            assert after_rps_line != before["rps_line"] and after_ratio_line != before["ratio_line"]
            assert after_ratio_line.count("L") >= 5  # a line through several points, not a dot
            assert await page.evaluate("window.sameDocument") is True  # updated in place, no reload
            assert int(await page.evaluate("document.body.dataset.updates")) > updates
            alerts_text = await page.evaluate("document.getElementById('alerts').textContent")
            assert "1 alert firing" in alerts_text and "vendor-errors \u00b7 sandbox" in alerts_text
            ratio = await page.evaluate(tile("sandbox", "ratio_5xx", "text"))
            assert ratio.endswith(" %") and float(ratio[:-2]) > 10
            assert await page.evaluate(tile("billing", "ratio_5xx", "text")) == "0.0 %"
            p99 = await page.evaluate(tile("sandbox", "p99_seconds", "text"))
            assert p99.endswith(" ms") and not p99.startswith("\u2264")  # an estimate, not "<= bound"
            assert await page.evaluate(
                "document.querySelector('[data-vendor=sandbox] .limit').textContent"
            ) == ("limit 500/1s local")
            shot = await page.screenshot(ARTIFACTS / "dashboard.png")
            print(f"dashboard screenshot: {shot}")

            # The hour window: the button is pressed and the page draws from status?window=1h.
            hour_updates = int(await page.evaluate("document.body.dataset.updates"))
            await page.evaluate("document.querySelector('button[data-window=\"1h\"]').click()")
            await page.wait_for(
                f"Number(document.body.dataset.updates) > {hour_updates}", "the hour's status"
            )
            assert (
                await page.evaluate(
                    "document.querySelector('button[data-window=\"1h\"]').getAttribute('aria-pressed')"
                )
                == "true"
            )
            assert await page.evaluate(tile("sandbox", "rps", "line")) != after_rps_line
            assert await page.evaluate("window.sameDocument") is True
            assert browser.console == []
    finally:
        await client.close()
