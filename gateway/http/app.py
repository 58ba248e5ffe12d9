"""Builds the aiohttp application: one pipeline per route, shared resources via cleanup_ctx, serving.

The proxy handler is the one place where errors become problem+json and where every request,
short-circuited or not, gets its access record.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from opentelemetry.trace import Span
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .. import __version__
from ..config import Config, ConfigError
from ..errors import GatewayError, NotFound, ServiceUnavailable
from ..features.delivery.queue import record_json, valid_id
from ..features.delivery.workers import DeliveryWorkers
from ..features.deprecation.tracker import UNROUTED
from ..observability.collector import registry_for, render
from ..observability.dashboard import render_dashboard
from ..observability.logging import Logger, capture_library_logs, new_request_id
from ..observability.metrics import UNKNOWN_VENDOR
from ..observability.tracing import Tracing, finish_server_span
from ..pipeline import Exchange
from ..reload import read_config
from ..runtime import Live, build_runtime, commit
from ..security import secret_values, startup_notes
from ..services import Services
from ..store import StoreUnavailable, open_store
from ..target import parse_target
from ..upstream.forwarder import request_headers
from ..upstream.pool import Pool
from .adapter import StreamAborted, incoming, problem_response, write_answer

USER_AGENT = f"egress-gateway/{__version__}"


RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True, eq=False)
class Drain:
    """Shutdown's one deadline: from the signal, requests in flight and deliveries in progress together
    get ``seconds`` (``shutdown_timeout_seconds``), once. What still runs then is cancelled.

    aiohttp alone would wait its ``shutdown_timeout`` for handlers, then cancel them and wait up to as
    long again (a handler awaiting a vendor notices nothing until its task is cancelled), and the
    delivery workers would then get the timeout once more. Here every handler's task is known, and at
    the deadline they are cancelled, which ends aiohttp's wait at once; the workers get what is left.
    """

    seconds: float
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)  # handler tasks running now
    deadline: float | None = None  # loop time; set when shutdown begins
    timer: asyncio.TimerHandle | None = None

    def begin(self) -> float:
        """Start the drain (once: later calls keep the first deadline) and return its deadline."""
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + self.seconds
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self.cancel_handlers)
        return self.deadline

    def remaining(self) -> float:
        if self.deadline is None:
            return self.seconds
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def cancel_handlers(self) -> None:
        for task in list(self.handlers):
            task.cancel()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def track(self, handler: RouteHandler) -> RouteHandler:
        """``handler``, with its task known to the drain while it runs."""
        running = self.handlers

        async def tracked(request: web.Request) -> web.StreamResponse:
            task = request.task  # the handler's task (asyncio.current_task() cost 4% of a request)
            running.add(task)
            try:
                return await handler(request)
            finally:
                running.discard(task)

        return tracked


LOGGER = web.AppKey("logger", Logger)
CONFIG = web.AppKey("config", Config)  # the config the app started with; the one in force: LIVE
LIVE = web.AppKey("live", Live)
SERVICES = web.AppKey("services", Services)
WORKERS = web.AppKey("workers", DeliveryWorkers)
METRICS = web.AppKey("metrics", CollectorRegistry)
DRAIN = web.AppKey("drain", Drain)


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id")
    # A caller's id is kept when it is a sane token; anything else could forge or break log lines.
    if given and len(given) <= 200 and given.isascii() and given.isprintable() and " " not in given:
        return given
    return new_request_id()


async def proxy(request: web.Request) -> web.StreamResponse:
    tracing = request.app[SERVICES].tracing
    if tracing is None:
        return await _proxy(request, None)
    with tracing.server_span(request.method, request.path, request.headers) as span:
        return await _proxy(request, span)


async def _proxy(request: web.Request, span: Span | None = None) -> web.StreamResponse:
    runtime = request.app[LIVE].runtime
    logger = request.app[LOGGER]
    request_id = _request_id(request)
    started = time.perf_counter()
    ex: Exchange | None = None
    vendor_name: str | None = None
    response: web.StreamResponse | None = None
    caller_gone = False
    try:
        target = parse_target(request.raw_path)
        vendor_name = target.vendor
        method = request.method
        vendor, route, handler, target = runtime.resolve(method, target, request.headers)
        ex = Exchange(
            request=incoming(request),
            request_id=request_id,
            vendor=vendor,
            route=route,
            method=method,
            path=target.path,
            query=target.query,
            segments=target.segments,
            headers=request_headers(request.headers, request_id),
            started=started,
        )
        answer = await handler(ex)
        response = await write_answer(request, answer)
        return response
    except GatewayError as exc:
        response = problem_response(exc, request_id)
        return response
    except StreamAborted as exc:
        if exc.caller:
            caller_gone = True
        else:
            logger.event(
                "upstream_aborted", level="warning", request_id=request_id, vendor=vendor_name, error=str(exc)
            )
        response = exc.response
        return response
    except Exception as exc:
        logger.exception("unhandled_error", exc, request_id=request_id, vendor=vendor_name)
        response = problem_response(
            GatewayError("the gateway failed unexpectedly; the error was logged"), request_id
        )
        return response
    finally:
        seconds = time.perf_counter() - started
        # 499 (nginx's "client closed request"): the caller left before its answer was complete. A
        # cancelled handler (the caller's connection closed: handler_cancellation) has no response.
        status = 499 if caller_gone or response is None else response.status
        route_path = ex.route.path if ex and ex.route else None
        upstream_seconds = ex.upstream_seconds if ex else 0.0
        bytes_in = ex.bytes_in if ex else 0
        bytes_out = ex.bytes_out if ex else 0
        request.app[SERVICES].metrics.observe(
            vendor_name
            if vendor_name is not None and vendor_name in runtime.config.vendors
            else UNKNOWN_VENDOR,
            route_path or UNROUTED,
            request.method,
            status,
            seconds,
            upstream_seconds,
            bytes_in,
            bytes_out,
        )
        if span is not None:
            finish_server_span(span, vendor=vendor_name, route=route_path, status=status)
        logger.access(
            request_id=request_id,
            client=ex.client if ex else None,
            vendor=vendor_name,
            route=route_path,
            method=request.method,
            path=request.raw_path.partition("?")[0],
            status=status,
            duration_ms=round(seconds * 1000, 3),
            upstream_ms=round(upstream_seconds * 1000, 3),
            attempts=ex.attempts if ex else 0,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
        )


def _json(request: web.Request, data: object, status: int = 200) -> web.Response:
    response = web.Response(status=status, body=orjson.dumps(data), content_type="application/json")
    response.headers["X-Request-Id"] = _request_id(request)
    return response


async def health(request: web.Request) -> web.Response:
    return _json(request, {"status": "ok", "version": __version__})


async def ready(request: web.Request) -> web.Response:
    runtime = request.app[LIVE].runtime
    store = request.app[SERVICES].store
    try:
        await store.ping()
    except StoreUnavailable as exc:
        return problem_response(ServiceUnavailable(f"the store is unreachable: {exc}"), _request_id(request))
    return _json(
        request,
        {
            "status": "ready",
            "vendors": sorted(runtime.config.vendors),
            "store": store.url,
        },
    )


async def metrics(request: web.Request) -> web.Response:
    body = render(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


async def dashboard_page(request: web.Request) -> web.Response:
    html = render_dashboard(request.app[LIVE].runtime.config, request.app[SERVICES])
    return web.Response(text=html, content_type="text/html")


async def delivery(request: web.Request) -> web.Response:
    """``GET /_gateway/deliveries/ID``: a queued delivery's state and, once done, the vendor's answer."""
    authenticator = request.app[LIVE].runtime.authenticator
    store = request.app[SERVICES].deliveries.store
    delivery_id = request.match_info["id"]
    try:
        # With [clients] only the client that sent it may look: 401 without a known key, else 404.
        client = authenticator.identify(request.headers)[0] if authenticator is not None else None
        try:
            record = await store.deliveries.delivery_get(delivery_id) if valid_id(delivery_id) else None
        except StoreUnavailable as exc:
            raise ServiceUnavailable(
                f"the delivery store is unavailable: {exc}", headers={"Retry-After": "1"}
            ) from None
        if record is None or (authenticator is not None and record.request.client != client):
            raise NotFound(f"no delivery {delivery_id!r} (delivered ones are kept for a limited time)")
    except GatewayError as exc:
        return problem_response(exc, _request_id(request))
    return _json(request, record_json(record))


async def deprecations(request: web.Request) -> web.Response:
    """What vendors said is deprecated or sunsetting, per vendor and route, with dates and counts."""
    notices = request.app[SERVICES].deprecations.notices()
    return _json(request, {"deprecations": [notice.as_dict() for notice in notices]})


def create_app(config: Config, *, logger: Logger | None = None) -> web.Application:
    app = web.Application(handler_args={"max_field_size": 16384})
    app[CONFIG] = config
    app[LOGGER] = logger or Logger()
    app[LOGGER].redact(secret_values(config))
    drain = app[DRAIN] = Drain(config.gateway.shutdown_timeout_seconds)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        store = open_store(app[CONFIG].gateway.store)
        settings = app[CONFIG].tracing
        tracing = Tracing(settings) if settings.exporter != "none" else None
        services = Services(
            logger=app[LOGGER],
            store=store,
            tracing=tracing,
            pool=Pool(user_agent=USER_AGENT),
        )
        app[SERVICES] = services
        runtime = build_runtime(app[CONFIG], services)
        commit(runtime, services)
        app[LIVE] = Live(runtime)
        app[METRICS] = registry_for(lambda: services)
        live = app[LIVE]
        workers = DeliveryWorkers(
            services, lambda: live.runtime.config, lambda *key: live.runtime.delivery_handler(*key)
        )
        app[WORKERS] = workers
        workers.start()
        try:
            yield
        finally:
            # Requests have drained by now: deliveries in progress get what is left of the drain
            # (they ran on meanwhile), then go back to the queue.
            await workers.stop(drain.remaining())
            drain.close()
            services.circuits.close()
            services.ratelimits.close()
            await services.tokens.close()
            await services.pool.close()
            await store.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)  # flushes spans still batched

    async def begin_drain(app: web.Application) -> None:
        # aiohttp calls this once the listening sockets are closed, before it waits for handlers.
        drain.begin()
        if WORKERS in app:
            app[WORKERS].stop_taking()

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(begin_drain)
    track = drain.track
    app.router.add_get("/_gateway/health", track(health))
    app.router.add_get("/_gateway/ready", track(ready))
    app.router.add_get("/_gateway/deprecations", track(deprecations))
    app.router.add_get("/_gateway/metrics", track(metrics))
    app.router.add_get("/_gateway/dashboard", track(dashboard_page))
    app.router.add_get("/_gateway/deliveries/{id}", track(delivery))
    # Without tracing (it needs a restart to change) the route skips the span wrapper altogether.
    app.router.add_route("*", "/{tail:.*}", track(proxy if config.tracing.exporter != "none" else _proxy))
    return app


async def reload(app: web.Application, *, reason: str = "requested") -> bool:
    """Load the config file again and serve new requests with it; True when the new config is in force.

    Requests already in a pipeline finish on the old Runtime. Limiters are kept where a limit is
    unchanged and updated in place where it changed, so their schedules and queues carry over. A config
    that fails to load is refused: ``config_reload_failed`` lists every problem and the old config keeps
    serving. ``gateway.listen``, ``store``, ``shutdown_timeout_seconds`` and ``[tracing]`` need a
    restart: a change to them is logged as ``needs_restart``.
    """
    live, logger = app[LIVE], app[LOGGER]
    async with live.lock:
        old = live.runtime.config
        try:
            # In a thread: compiling schemas and transforms must not stall requests in flight.
            # read_config re-reads files caught mid-write and refuses a config with no vendors.
            config = await asyncio.to_thread(read_config, old)
            logger.redact(secret_values(config))
            runtime = build_runtime(config, app[SERVICES])
        except ConfigError as exc:
            app[SERVICES].discard()
            logger.event(
                "config_reload_failed",
                level="error",
                reason=reason,
                config=str(old.path),
                problems=[str(problem) for problem in exc.problems],
            )
            return False
        except Exception as exc:
            app[SERVICES].discard()
            logger.exception("config_reload_failed", exc, reason=reason, config=str(old.path))
            return False
        commit(runtime, app[SERVICES], live)
        needs_restart = [
            key
            for key, before, after in (
                ("gateway.listen", old.gateway.listen, config.gateway.listen),
                ("gateway.store", old.gateway.store, config.gateway.store),
                (
                    "gateway.shutdown_timeout_seconds",
                    old.gateway.shutdown_timeout_seconds,
                    config.gateway.shutdown_timeout_seconds,
                ),
                ("tracing", old.tracing, config.tracing),
            )
            if before != after
        ]
        logger.event(
            "config_reloaded",
            level="warning" if needs_restart else "info",
            reason=reason,
            config=str(config.path),
            vendors=sorted(config.vendors),
            routes=sum(len(v.routes) for v in config.vendors.values()),
            needs_restart=needs_restart or None,
        )
        for warning in config.warnings:
            logger.event(
                "config_warning", level="warning", file=warning.file, key=warning.key, detail=warning.message
            )
        return True


async def serve(
    config: Config,
    *,
    logger: Logger,
    listen_host: str,
    listen_port: int,
    extra: Callable[[], Awaitable[Callable[[], Awaitable[None]]]] | None = None,
    watch: bool = True,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, let in-flight requests finish, and return.

    SIGHUP, and with ``watch`` a change to config.toml, routes or transforms, reloads the config.

    ``extra`` starts something beside the gateway (the sandbox) and returns its stop coroutine.

    From here on the process's ``logging`` records (opentelemetry, urllib3, asyncio, aiohttp...) are
    ``library_log`` events of ``logger``, so every line of output is the gateway's own format.
    """
    capture_library_logs(logger)
    app = create_app(config, logger=logger)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # A caller that closes its connection cancels its request: the vendor call is abandoned and
        # its connection closed (a keyed or async request runs on; see the idempotency stage).
        handler_cancellation=True,
        shutdown_timeout=config.gateway.shutdown_timeout_seconds,
    )
    await runner.setup()
    stop_extra = await extra() if extra is not None else None
    site = web.TCPSite(runner, listen_host, listen_port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if stop_extra is not None:
            await stop_extra()
        raise SystemExit(
            f"gateway: cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}"
        ) from None
    logger.event(
        "started",
        listen=f"{listen_host}:{listen_port}",
        config=str(config.path),
        vendors=sorted(config.vendors),
        pid=os.getpid(),
    )
    for event, level, fields in startup_notes(config, listen_host):
        logger.event(event, level=level, **fields)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(reload(app, reason="SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    watcher: asyncio.Task[None] | None = None
    if watch:
        from ..reload import watch_files  # watchfiles loads a native module: only when serving

        watcher = loop.create_task(
            watch_files(
                lambda: app[LIVE].runtime.config,
                lambda why: reload(app, reason=why),
                logger,
                stop=stopping,
            )
        )
    await stopping.wait()
    app[DRAIN].begin()  # the drain's one deadline counts from the signal
    loop.remove_signal_handler(signal.SIGHUP)
    logger.event("stopping", reason="signal", drain_seconds=config.gateway.shutdown_timeout_seconds)
    # Stops the listening socket first, then waits for in-flight handlers until the drain's deadline
    # (Drain cancels them then), then lets deliveries use what is left of it.
    await runner.cleanup()
    if watcher is not None:
        await asyncio.gather(watcher, return_exceptions=True)  # it returns within one watch step
    if stop_extra is not None:
        await stop_extra()
    logger.event("stopped")
