"""The gateway as its server serves it: admin endpoints, the proxy path, reload and ``serve``.

``Gateway.__call__`` is the one place where errors become problem+json and where every proxied
request, short-circuited or not, gets its access record; ``Gateway.refused`` records the requests the
server refused itself (``server.py``: timeouts, oversized heads, broken framing).
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict
from opentelemetry.trace import Span
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .. import __version__
from ..config import Config, ConfigError, Problem
from ..errors import BadRequest, GatewayError, MethodNotAllowed, NotFound, ServiceUnavailable
from ..features.client_auth.admin import AdminKey, authorize
from ..features.delivery.queue import record_json, valid_id
from ..features.delivery.workers import DeliveryWorkers
from ..features.deprecation.tracker import UNROUTED
from ..features.webhooks.receiver import WEBHOOK_PREFIX, WebhookReceiver
from ..messages import REQUEST_ID, Answer, json_answer, problem_answer
from ..observability.collector import GatewayCollector, registry_for, render
from ..observability.dashboard import render_dashboard
from ..observability.logging import (
    Logger,
    access_record,
    capture_library_logs,
    milliseconds,
    new_request_id,
    now,
)
from ..observability.metrics import UNKNOWN_VENDOR
from ..observability.monitor import Monitor
from ..observability.status import parse_window, status
from ..observability.tracing import Tracing, finish_server_span
from ..pipeline import Exchange
from ..reload import read_config
from ..runtime import Live, Runtime, build_runtime, commit
from ..security import secret_values, startup_notes
from ..services import Services
from ..store import StoreUnavailable, open_store
from ..target import parse_target
from ..upstream.forwarder import request_headers
from ..upstream.pool import Pool
from ..upstream.secret_managers import refresh as refresh_secrets
from . import problems
from .server import Limits, Server, ServerRequest, StreamAborted
from .tls import server_context
from .worker import Worker

USER_AGENT = f"egress-gateway/{__version__}"
ADMIN_PREFIX = "/_gateway/"
DELIVERIES = "deliveries/"
PROBLEMS = "problems/"

# A proxied request whose metrics and access record are still to be made (Gateway._record_finished):
# the request, its id, the vendor it named, its exchange (None: refused before one), status, seconds and
# the Runtime it ran on.
_Finished = tuple[ServerRequest, str, str | None, Exchange | None, int, float, Runtime]
AdminHandler = Callable[[ServerRequest, str], Awaitable[Answer]]


def _request_id(headers: Any) -> str:
    given = headers.get(REQUEST_ID)
    # A caller's id is kept when it is a sane token; anything else could forge or break log lines.
    if given and len(given) <= 200 and given.isascii() and given.isprintable() and " " not in given:
        return str(given)
    return new_request_id()


class Drain:
    """Shutdown's one deadline: from the signal, requests in flight and deliveries in progress together
    get ``seconds`` (``shutdown_timeout_seconds``), once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None  # loop time; set when shutdown begins

    def begin(self) -> float:
        """Start the drain (once: later calls keep the first deadline) and return its deadline."""
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + self.seconds
        return self.deadline

    def remaining(self) -> float:
        if self.deadline is None:
            return self.seconds
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


class Gateway:
    """Everything one gateway process serves with. ``start`` opens the shared resources (store,
    pool, delivery workers), ``close`` closes them; in between, the server calls it per request."""

    def __init__(self, config: Config, *, logger: Logger | None = None) -> None:
        self.config = config  # the config it started with; the one in force: live.runtime.config
        self.logger = logger or Logger()
        self.logger.redact(secret_values(config))
        self.drain = Drain(config.gateway.shutdown_timeout_seconds)
        tracing = config.tracing
        self.tracing = Tracing(tracing) if tracing.exporter != "none" else None
        self.services = Services(
            logger=self.logger,
            store=open_store(config.gateway.store),
            tracing=self.tracing,
            pool=Pool(user_agent=USER_AGENT),
        )
        self.live = Live(build_runtime(config, self.services))
        commit(self.live.runtime, self.services)
        # /_gateway/metrics; with several workers, serve() adds the other workers' figures to it.
        self.collector = GatewayCollector(lambda: self.services)
        self.metrics = registry_for(self.collector)
        live = self.live
        self.workers = DeliveryWorkers(
            self.services, lambda: live.runtime.config, lambda *key: live.runtime.delivery_handler(*key)
        )
        # The history and the alerts (observability.monitor): one task from start to close; with several
        # workers, serve() has it read the collector's figures, every worker's.
        self.monitor = Monitor(self.services, lambda: live.runtime.config)
        self.admin: dict[str, AdminHandler] = {
            "health": self.health,
            "ready": self.ready,
            "deprecations": self.deprecations,
            "metrics": self.metrics_page,
            "dashboard": self.dashboard,
            "status": self.status,
            "alerts": self.alerts,
            DELIVERIES: self.delivery,
            PROBLEMS: self.problem_page,  # what each problem type means: public, like the type URIs
        }
        self.server: Server | None = None  # set by serve(); its connection figures feed metrics
        self.webhooks = WebhookReceiver(self.services)  # POST /_webhooks/NAME
        self.worker: Worker | None = None  # set by serve() in one of several worker processes
        self._finished: list[_Finished] = []  # proxied requests whose metrics and record are not made yet

    async def start(self) -> None:
        self.services.bus.start(self.config)
        self.workers.start()
        self.monitor.start()

    async def close(self) -> None:
        # Requests have drained by now: deliveries in progress get what is left of the drain (they ran
        # on meanwhile), then go back to the queue.
        services = self.services
        self._record_finished()
        await self.workers.stop(self.drain.remaining())
        await services.bus.close()
        await self.monitor.stop()
        services.circuits.close()
        services.ratelimits.close()
        await services.tokens.close()
        await services.pool.close()
        await services.store.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes spans still batched
        self.logger.flush()  # access lines still held for their batch

    # -- the server's side
    def __call__(self, request: ServerRequest) -> Awaitable[None]:
        """``App.__call__``: the coroutine that answers ``request`` (the proxy's own, not one wrapped
        in another)."""
        target = request.target
        # The gateway's own paths (one check for a vendor's).
        if target.startswith("/_") and (
            target.startswith((ADMIN_PREFIX, WEBHOOK_PREFIX)) or target.partition("?")[0] == ADMIN_PREFIX[:-1]
        ):
            return self._own(request)
        if self.tracing is None:
            return self._proxy(request, None)
        return self._traced(request, self.tracing)

    async def _own(self, request: ServerRequest) -> None:
        target = request.target
        if target.startswith(WEBHOOK_PREFIX):
            answer = await self.webhooks(
                self.live.runtime.config,
                request.method,
                target,
                request.as_request(),
                _request_id(request.headers),
            )
        else:
            answer = await self._admin(request)
        await request.respond(answer)

    async def _traced(self, request: ServerRequest, tracing: Tracing) -> None:
        with tracing.server_span(request.method, request.target.partition("?")[0], request.headers) as span:
            await self._proxy(request, span)

    def refused(self, error: GatewayError, request_id: str, method: str, target: str) -> None:
        """The access record and count of a request the server refused before it could be routed."""
        self.services.metrics.observe(UNKNOWN_VENDOR, UNROUTED, method or "-", error.status, 0.0, 0.0, 0, 0)
        self.logger.access(
            request_id=request_id,
            client=None,
            vendor=None,
            route=None,
            method=method or None,
            path=None,  # never echoed: the target may be what was refused
            status=error.status,
            duration_ms=0.0,
            upstream_ms=0.0,
            attempts=0,
            bytes_in=0,
            bytes_out=0,
            error=error.detail,
        )

    async def _proxy(self, request: ServerRequest, span: Span | None) -> None:
        runtime = self.live.runtime
        logger = self.logger
        request_id = _request_id(request.headers)
        started = time.perf_counter()
        ex: Exchange | None = None
        vendor_name: str | None = None
        status: int | None = None
        sent = 500
        try:
            try:
                target = parse_target(request.target)
                vendor_name = target.vendor
                method = request.method
                vendor, route, handler, target, client, key_in_authorization = runtime.resolve(
                    method, target, request.headers, request.client_cert
                )
                ex = Exchange(
                    request=request.as_request(),
                    request_id=request_id,
                    vendor=vendor,
                    route=route,
                    method=method,
                    path=target.path,
                    query=target.query,
                    headers=request_headers(
                        request.headers, request_id, key_in_authorization=key_in_authorization
                    ),
                    client=client,
                    segments=target.segments,
                    started=started,
                )
                runtime.admit(ex)
                answer = await handler(ex)
            except GatewayError as exc:
                answer = problem_answer(exc, request_id)
            except Exception as exc:
                logger.exception("unhandled_error", exc, request_id=request_id, vendor=vendor_name)
                error = GatewayError("the gateway failed unexpectedly; the error was logged")
                answer = problem_answer(error, request_id)
            sent = answer.status
            await request.respond(answer)
            status = sent  # written whole; cancelled (the caller left) or aborted, it stays None: 499
        except StreamAborted as exc:
            if not exc.caller:
                status = sent  # the vendor broke off after the head went out
                logger.event(
                    "upstream_aborted",
                    level="warning",
                    request_id=request_id,
                    vendor=vendor_name,
                    error=str(exc),
                )
        except ValueError as exc:  # a head that cannot be written (CR or LF in a field)
            logger.exception("unhandled_error", exc, request_id=request_id, vendor=vendor_name)
            status = 500
            await request.respond(
                problem_answer(
                    GatewayError("the gateway failed unexpectedly; the error was logged"), request_id
                )
            )
        finally:
            seconds = time.perf_counter() - started
            # 499 (nginx's "client closed request"): the caller left before its answer was complete (or
            # its request was cancelled when its connection closed).
            if status is None:
                status = 499
            if span is not None:
                route_path = ex.route.path if ex is not None and ex.route is not None else None
                finish_server_span(span, vendor=vendor_name, route=route_path, status=status)
            # Its metrics and access record are made once this loop iteration is over, with those of
            # every request that finished in it: one pass and one write for all of them, before any
            # request that comes in later runs (so a scrape or a log reader that saw this answer sees
            # them).
            finished = self._finished
            finished.append((request, request_id, vendor_name, ex, status, seconds, runtime))
            if len(finished) == 1:
                asyncio.get_running_loop().call_soon(self._record_finished)

    def _record_finished(self) -> None:
        """The metrics and access records of the requests finished since the last call."""
        finished, self._finished = self._finished, []
        if not finished:
            return
        observe = self.services.metrics.observe
        ts = now()
        records = []
        for request, request_id, vendor_name, ex, answered, seconds, runtime in finished:
            named = runtime.config.vendors.get(vendor_name or "")
            vendor = named.name if named is not None else UNKNOWN_VENDOR
            route_path: str | None = None
            client: str | None = None
            fault: str | None = None
            upstream_seconds, attempts, bytes_in, bytes_out = 0.0, 0, 0, 0
            if ex is not None:
                route_path = ex.route.path if ex.route is not None else None
                client, fault, attempts = ex.client, ex.fault, ex.attempts
                upstream_seconds, bytes_in, bytes_out = ex.upstream_seconds, ex.bytes_in, ex.bytes_out
            method = request.method
            observe(
                vendor,
                route_path or UNROUTED,
                method,
                answered,
                seconds,
                upstream_seconds,
                bytes_in,
                bytes_out,
            )
            records.append(
                access_record(
                    ts,
                    request_id,
                    client,
                    vendor_name,
                    route_path,
                    method,
                    request.target.partition("?")[0],
                    answered,
                    milliseconds(seconds),
                    milliseconds(upstream_seconds),
                    attempts,
                    bytes_in,
                    bytes_out,
                    fault,
                )
            )
        self.logger.write_access(records)

    # -- /_gateway/...
    async def _admin(self, request: ServerRequest) -> Answer:
        path = request.target.partition("?")[0][len(ADMIN_PREFIX) :]
        # A name ending in "/" serves what is below it (deliveries/ID, problems/TYPE).
        name = next((key for key in self.admin if key.endswith("/") and path.startswith(key)), path)
        rest = path[len(name) :]
        handler = self.admin.get(name)
        request_id = _request_id(request.headers)
        try:
            runtime = self.live.runtime
            admin = AdminKey(runtime.config.gateway.admin_key)
            authorize(name, admin, runtime.authenticator, request.headers, own_records=name == DELIVERIES)
            if handler is None or (name == DELIVERIES and not rest):
                known = ", ".join(
                    ADMIN_PREFIX + key + ("ID" if key == DELIVERIES else "") for key in self.admin
                )
                raise NotFound(f"no gateway endpoint {ADMIN_PREFIX}{path[:100]} (there are: {known})")
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{ADMIN_PREFIX}{name} answers GET", headers={"Allow": "GET, HEAD"})
            answer = await handler(request, rest)
        except GatewayError as exc:
            return problem_answer(exc, request_id)
        answer.headers.setdefault("X-Request-Id", request_id)
        return answer

    async def health(self, request: ServerRequest, _: str) -> Answer:
        return json_answer({"status": "ok", "version": __version__})

    async def ready(self, request: ServerRequest, _: str) -> Answer:
        store = self.services.store
        try:
            await store.ping()
        except StoreUnavailable as exc:
            raise ServiceUnavailable(f"the store is unreachable: {exc}") from None
        vendors = sorted(self.live.runtime.config.vendors)
        ready: dict[str, object] = {"status": "ready", "vendors": vendors, "store": store.url}
        if buses := self.services.bus.state():
            ready["bus"] = buses  # shown, not required: only webhooks and events need a bus
        return json_answer(ready)

    async def metrics_page(self, request: ServerRequest, _: str) -> Answer:
        headers = CIMultiDict({"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
        return Answer(status=200, headers=headers, body=render(self.metrics))

    async def dashboard(self, request: ServerRequest, _: str) -> Answer:
        html = render_dashboard(self.live.runtime.config, self.services)
        headers = CIMultiDict({"Content-Type": "text/html; charset=utf-8"})
        return Answer(status=200, headers=headers, body=html.encode())

    async def status(self, request: ServerRequest, _: str) -> Answer:
        """What the dashboard draws, as JSON: ``?window=5m`` (the default), ``1h`` or seconds."""
        query = request.target.partition("?")[2]
        try:
            params = parse_qsl(query, keep_blank_values=True, max_num_fields=10) if query else []
        except ValueError:
            raise BadRequest("too many query parameters: status takes window") from None
        for key, _value in params:
            if key != "window":
                raise BadRequest(f"unknown query parameter {key[:40]!r}: {ADMIN_PREFIX}status takes window")
        if len(params) > 1:
            raise BadRequest("window is given more than once")
        window = parse_window(params[0][1] if params else None)
        data = status(self.live.runtime.config, self.services, window)
        return json_answer(data, headers={"Cache-Control": "no-store"})

    async def alerts(self, request: ServerRequest, _: str) -> Answer:
        """The firing alerts (docs/operations.md), each as its webhook notice."""
        return json_answer({"alerts": self.services.alerts.firing()}, headers={"Cache-Control": "no-store"})

    async def delivery(self, request: ServerRequest, delivery_id: str) -> Answer:
        """``GET /_gateway/deliveries/ID``: a queued delivery's state and, once done, the vendor's answer."""
        runtime = self.live.runtime
        store = self.services.deliveries.store
        # With [clients] only the client that sent it may look (401 without a known key, else 404),
        # and the holder of the admin key.
        authenticator = runtime.authenticator
        if AdminKey(runtime.config.gateway.admin_key).admits(request.headers):
            authenticator = None
        client = (
            authenticator.identify(request.headers, request.client_cert)[0]
            if authenticator is not None
            else None
        )
        try:
            record = await store.deliveries.delivery_get(delivery_id) if valid_id(delivery_id) else None
        except StoreUnavailable as exc:
            raise ServiceUnavailable(
                f"the delivery store is unavailable: {exc}", headers={"Retry-After": "1"}
            ) from None
        if record is None or (authenticator is not None and record.request.client != client):
            raise NotFound(f"no delivery {delivery_id[:100]!r} (delivered ones are kept for a limited time)")
        return json_answer(record_json(record))

    async def problem_page(self, request: ServerRequest, slug: str) -> Answer:
        """``GET /_gateway/problems/``: every problem type; ``/_gateway/problems/TYPE``: what one means."""
        if not slug:
            text = problems.index()
        elif (cls := problems.find(slug)) is not None:
            text = problems.page(cls)
        else:
            raise NotFound(f"no problem type {slug[:100]!r}; {ADMIN_PREFIX}{PROBLEMS} lists them")
        headers = CIMultiDict({"Content-Type": "text/html; charset=utf-8"})
        return Answer(status=200, headers=headers, body=text.encode())

    async def deprecations(self, request: ServerRequest, _: str) -> Answer:
        """What vendors said is deprecated or sunsetting, per vendor and route, with dates and counts."""
        notices = self.services.deprecations.notices()
        return json_answer({"deprecations": [notice.as_dict() for notice in notices]})


def listener_context(config: Config) -> ssl.SSLContext | None:
    """The listener's context for a reloaded config (certificates re-read when their files changed);
    a file that became unusable since the load is a ``ConfigError`` naming its key."""
    tls = config.gateway.tls
    if tls is None:
        return None
    try:
        return server_context(tls)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            [Problem(str(config.path), "gateway.tls", f"cannot load the certificate: {exc}")]
        ) from None


# Settings a running process cannot take up: a reload that changes one logs it in ``needs_restart``
# (docs/configuration.md marks them "restart"). Dotted paths into ``Config``; a table stands for all its keys.
RESTART_KEYS = (
    "gateway.listen",
    "gateway.store",
    "gateway.shutdown_timeout_seconds",
    "tracing",
    "bus",
    "gateway.tls",
)
# Where only part of a setting needs a restart, what is compared: turning the listener's TLS on or off
# (HTTP <-> HTTPS) needs one; new certificates are taken at the reload.
RESTART_PART: dict[str, Callable[[object], object]] = {"gateway.tls": lambda tls: tls is None}


def _setting(config: Config, key: str) -> object:
    value: object = config
    for part in key.split("."):
        value = getattr(value, part)
    compared = RESTART_PART.get(key)
    return compared(value) if compared is not None else value


async def reload(gateway: Gateway, *, reason: str = "requested") -> bool:
    """Load the config file again and serve new requests with it; True when the new config is in force.

    Requests already in a pipeline finish on the old Runtime. Limiters are kept where a limit is
    unchanged and updated in place where it changed, so their schedules and queues carry over. A config
    that fails to load is refused: ``config_reload_failed`` lists every problem and the old config keeps
    serving. The settings in ``RESTART_KEYS`` need a restart: each that differs from the config the
    process started with is named in ``needs_restart``, on every reload until the process restarts (or
    the setting is put back).
    """
    live, logger, services = gateway.live, gateway.logger, gateway.services
    async with live.lock:
        old = live.runtime.config
        try:
            # In a thread: compiling schemas and transforms must not stall requests in flight.
            # read_config re-reads files caught mid-write and refuses a config with no vendors.
            config = await asyncio.to_thread(read_config, old)
            if gateway.worker is not None and (problems := gateway.worker.check(config, services.store.url)):
                raise ConfigError(problems)  # e.g. a breaker turned on while several workers share memory://
            logger.redact(secret_values(config))
            runtime = build_runtime(config, services)
            listener_tls = listener_context(config)
        except ConfigError as exc:
            services.discard()
            logger.event(
                "config_reload_failed",
                level="error",
                reason=reason,
                config=str(old.path),
                problems=[str(problem) for problem in exc.problems],
            )
            return False
        except Exception as exc:
            services.discard()
            logger.exception("config_reload_failed", exc, reason=reason, config=str(old.path))
            return False
        commit(runtime, services, live)
        gateway.monitor.reloaded()  # before any request reaches a vendor the reload added
        services.bus.update(config)
        if gateway.server is not None:  # new connections get the new limits (and certificates)
            gateway.server.limits = Limits.of(config.gateway)
            if gateway.server.ssl is not None and listener_tls is not None:
                gateway.server.ssl = listener_tls
        needs_restart = [
            key for key in RESTART_KEYS if _setting(gateway.config, key) != _setting(config, key)
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
            logger.event("config_warning", level="warning", **warning.fields())
        return True


async def serve(
    config: Config,
    *,
    logger: Logger,
    listen_host: str,
    listen_port: int,
    extra: Callable[[], Awaitable[Callable[[], Awaitable[None]]]] | None = None,
    watch: bool = True,
    reuse_port: bool = False,
    worker: Worker | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, let in-flight requests finish, and return.

    SIGHUP, and with ``watch`` a change to config.toml, routes or transforms, reloads the config.
    ``extra`` starts something beside the gateway (the sandbox) and returns its stop coroutine.
    ``reuse_port``: one of several worker processes sharing the port (SO_REUSEPORT); ``worker``: what
    such a worker does besides serving (``gateway.http.worker``: metrics, dashboard and alerts for all,
    reload checks).

    From here on the process's ``logging`` records (opentelemetry, urllib3, asyncio, aiohttp...) are
    ``library_log`` events of ``logger``, so every line of output is the gateway's own format.
    """
    capture_library_logs(logger)
    try:
        tls = listener_context(config)
    except ConfigError as exc:
        raise SystemExit("\n".join(str(problem) for problem in exc.problems)) from None
    gateway = Gateway(config, logger=logger)
    if worker is not None:
        gateway.worker = worker
        # /_gateway/metrics, and the history and alerts from the same figures, for every worker.
        gateway.collector.peers = worker.peers
        gateway.monitor.families = gateway.collector.families
        gateway.services.deprecations.peers = worker.deprecations
        # Every worker evaluates the alerts; one logs and sends each firing and resolving.
        gateway.services.alerts.announces = worker.announces
    await gateway.start()
    server = gateway.server = Server(gateway, Limits.of(config.gateway), logger)
    try:
        stop_extra = await extra() if extra is not None else None
    except BaseException:  # the sandbox could not start (its port is taken): stop what did
        await gateway.close()
        raise
    try:
        await server.listen(listen_host, listen_port, reuse_port=reuse_port, ssl=tls)
    except OSError as exc:
        await gateway.close()
        if stop_extra is not None:
            await stop_extra()
        raise SystemExit(
            f"gateway: cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}"
        ) from None
    which: dict[str, Any] = {"worker": worker.index} if worker is not None else {}
    logger.event(
        "started",
        listen=f"{listen_host}:{listen_port}",
        config=str(config.path),
        vendors=sorted(config.vendors),
        pid=os.getpid(),
        **which,
    )
    for event, level, fields in startup_notes(config, listen_host):
        logger.event(event, level=level, **fields)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(reload(gateway, reason="SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if worker is not None:
        worker.serving(lambda: gateway.services, logger)
    watcher: asyncio.Task[None] | None = None
    if watch:
        from ..reload import watch_files  # watchfiles loads a native module: only when serving

        watcher = loop.create_task(
            watch_files(
                lambda: gateway.live.runtime.config,
                lambda why: reload(gateway, reason=why),
                logger,
                stop=stopping,
            )
        )
    # [secrets]: aws-sm: and vault: secrets read again every refresh_seconds (a rotation reloads).
    refresher = loop.create_task(
        refresh_secrets(
            lambda: gateway.live.runtime.config,
            lambda why: reload(gateway, reason=why),
            logger,
            stop=stopping,
        )
    )
    await stopping.wait()
    refresher.cancel()
    deadline = gateway.drain.begin()  # the drain's one deadline counts from the signal
    loop.remove_signal_handler(signal.SIGHUP)
    logger.event("stopping", reason="signal", drain_seconds=config.gateway.shutdown_timeout_seconds)
    gateway.workers.stop_taking()
    # Stops accepting first, then lets in-flight requests run until the deadline (then cancels them),
    # then lets deliveries use what is left of it.
    await server.shutdown(deadline)
    await gateway.close()
    if watcher is not None:
        await asyncio.gather(watcher, return_exceptions=True)  # it returns within one watch step
    if stop_extra is not None:
        await stop_extra()
    if worker is not None:
        await worker.stopped()
    logger.event("stopped")
