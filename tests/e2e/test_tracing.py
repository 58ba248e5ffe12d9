"""Tracing: off, the caller's traceparent passes untouched; on, the trace continues through the gateway."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.config import ConfigError, load_config
from tests.gateway_proc import GatewayProcess

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def recording_vendor(seen: list[dict[str, str]]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(status=503 if request.path == "/down" else 200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def otlp_collector(batches: list[ExportTraceServiceRequest]) -> web.Application:
    async def traces(request: web.Request) -> web.Response:
        batch = ExportTraceServiceRequest()
        batch.ParseFromString(await request.read())
        batches.append(batch)
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    return app


async def test_tracing_off_passes_traceparent_unchanged(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, str]] = []
    server = await vendor(recording_vendor(seen))
    client = await gateway(f'[vendors.v]\nbase_url = "{server.make_url("/")}"\n')
    resp = await client.get("/v/x", headers={"traceparent": TRACEPARENT, "tracestate": "k=v"})
    assert resp.status == 200
    assert seen[0]["traceparent"] == TRACEPARENT
    assert seen[0]["tracestate"] == "k=v"


async def test_tracing_on_continues_the_callers_trace(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, str]] = []
    batches: list[ExportTraceServiceRequest] = []
    server = await vendor(recording_vendor(seen))
    collector = await vendor(otlp_collector(batches))
    client = await gateway(
        f"""
        [tracing]
        exporter = "otlp"
        endpoint = "{collector.make_url("/v1/traces")}"
        [vendors.v]
        base_url = "{server.make_url("/")}"
        retry = {{ attempts = 1 }}  # one vendor call, so one client span, per request
        """
    )
    assert (await client.get("/v/x?token=secret", headers={"traceparent": TRACEPARENT})).status == 200
    assert (await client.get("/v/down")).status == 503
    await client.close()  # shuts the app down, which flushes the spans to the collector

    spans = [
        span for batch in batches for rs in batch.resource_spans for ss in rs.scope_spans for span in ss.spans
    ]
    assert len(spans) == 4  # a server and a client span per request
    by_id = {span.span_id.hex(): span for span in spans}
    vendor_parent = seen[0]["traceparent"].split("-")
    assert vendor_parent[1] == CALLER_TRACE  # the caller's trace goes on to the vendor
    client_span = by_id[vendor_parent[2]]  # ... as a child of the gateway's client span
    server_span = by_id[client_span.parent_span_id.hex()]
    assert server_span.parent_span_id.hex() == CALLER_SPAN
    assert server_span.trace_id.hex() == CALLER_TRACE
    attributes = {kv.key: kv.value for kv in server_span.attributes}
    assert attributes["gateway.vendor"].string_value == "v"
    assert attributes["http.response.status_code"].int_value == 200
    assert all("secret" not in str(span) for span in spans)  # no query strings in spans
    # A request without a traceparent starts a trace of its own; a 5xx marks both spans as errors.
    second = [s for s in spans if s.trace_id.hex() != CALLER_TRACE]
    assert len(second) == 2 and all(s.status.code == 2 for s in second)
    assert seen[1]["traceparent"].split("-")[1] == second[0].trace_id.hex()


@pytest.mark.slow
async def test_the_exporters_own_errors_are_json_log_records(
    vendor: Any, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port held bound but not listening: every export to it is refused, and nobody else can take it.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export soon after the request, not in 5 s
    # Give up on a batch after 4 s: the first retry (in about 1 s) always fits, so a warning comes first.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "4")
    server = await vendor(recording_vendor([]))
    config = write_config(
        f"""
        [tracing]
        exporter = "otlp"
        endpoint = "http://127.0.0.1:{port}/v1/traces"
        [vendors.v]
        base_url = "{server.make_url("/")}"
        """
    )
    gw = GatewayProcess(config)  # its stdout and stderr, both, go to one file
    try:
        await asyncio.to_thread(gw.wait_ready)
        async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/v/x") as resp:
            assert resp.status == 200
        waited = time.monotonic() + 30
        while "Failed to export" not in gw.output():  # the exporter gave up on the batch
            assert gw.proc.poll() is None and time.monotonic() < waited, gw.output()
            await asyncio.sleep(0.05)
        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gw.proc.wait, 20) == 0, gw.output()
        lines = [line for line in gw.output().splitlines() if line.strip()]
        records = []
        for line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            assert isinstance(record, dict), f"not one JSON object per line: {line!r}"
            records.append(record)
        library = [r for r in records if r["event"] == "library_log"]
        failed = [r for r in library if "Failed to export" in r["message"]]
        assert failed and failed[0]["level"] == "error", library
        assert failed[0]["logger"].startswith("opentelemetry.")
        transient = [r for r in library if "Transient error" in r["message"]]
        assert transient and transient[0]["level"] == "warning", library
        assert records[-1]["event"] == "stopped"
    finally:
        gw.stop()
        closed.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[tracing]\nexporter = "otlp"\n', "tracing.endpoint: is required"),
        ('[tracing]\nexporter = "jaeger"\n', "tracing.exporter: must be one of"),
        ("[tracing]\nsample_ratio = 2\n", "tracing.sample_ratio: must be from 0 to 1"),
        (
            '[tracing]\nexporter = "otlp"\nendpoint = "collector:4318"\n',
            "tracing.endpoint: must be an http://",
        ),
    ],
)
def test_tracing_config_problems(write_config: Any, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(text))
    assert any(expected in str(p) for p in info.value.problems), info.value.problems
