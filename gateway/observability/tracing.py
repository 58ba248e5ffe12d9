"""Tracing with OpenTelemetry (docs/operations.md): the caller's trace continues through the gateway.

With ``[tracing] exporter = "none"`` (the default) nothing here runs: no tracer exists and the caller's
``traceparent`` passes to the vendor unchanged, as any other header. With "console" or "otlp" each
request is a server span that continues the caller's ``traceparent``, and each vendor call (every
attempt) is a client span whose context is what the vendor receives in ``traceparent``. Span attributes
are method, vendor, route, path (never the query string, which may carry secrets) and status.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__
from ..config import TracingSettings
from ..messages import Answer
from ..pipeline import Exchange, Handler


class Tracing:
    """One TracerProvider per app (not the process-global one), flushed and shut down with the app."""

    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        if exporter is None:
            if settings.exporter == "console":
                # One JSON object per line, like the gateway's own log records.
                exporter = ConsoleSpanExporter(
                    service_name=settings.service_name,
                    formatter=lambda span: span.to_json(indent=None) + "\n",
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter(endpoint=settings.endpoint)
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=Resource.create({"service.name": settings.service_name, "service.version": __version__}),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("gateway", __version__)

    def server_span(self, method: str, path: str, headers: Mapping[str, str]) -> AbstractContextManager[Span]:
        """The span of one whole request, continuing the caller's trace if it sent one."""
        parent: Context = propagate.extract(headers)
        return self.tracer.start_as_current_span(
            f"{method} gateway",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
            record_exception=False,
            set_status_on_exception=False,
        )

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor still holds


def finish_server_span(span: Span, *, vendor: str | None, route: str | None, status: int) -> None:
    if vendor:
        span.set_attribute("gateway.vendor", vendor)
    if route:
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


class VendorCallSpan:
    """A stage right before the forwarder: each vendor call is a client span, and the vendor gets it."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracer = tracing.tracer

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        attributes: Mapping[str, str | int] = {
            "http.request.method": ex.method,
            "gateway.vendor": ex.vendor.name,
            "server.address": ex.vendor.base_url.raw_host or "",
            "url.path": ex.path or "/",
        }
        with self.tracer.start_as_current_span(
            f"{ex.method} {ex.vendor.name}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            # The caller's traceparent/tracestate are replaced by this span's: the vendor is its child.
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            for name in ("traceparent", "tracestate"):
                ex.headers.popall(name, None)
            ex.headers.update(carrier)
            response = await call_next(ex)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response
