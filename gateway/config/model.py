"""The config model: frozen, typed objects with every default written once, here, at module level.

What ``gateway check`` and a reload build from config.toml and routes/*.toml (``config.loader``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from yarl import URL

from ..bus.subjects import Template
from ..features.contract.examples import Example
from ..features.payload.schemas import CompiledSchema
from ..transform import TransformSpec
from ..transform.pointer import Tokens, compile_pointer

DEFAULT_STORE = "memory://"
DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 10.0
DEFAULT_CONNECT_SECONDS = 5.0
DEFAULT_TOTAL_SECONDS = 30.0
DEFAULT_READ_IDLE_SECONDS = 30.0
DEFAULT_IDEMPOTENCY_TTL_SECONDS = 86_400.0
DEFAULT_IDEMPOTENCY_LEASE_SECONDS = 10.0
DEFAULT_IDEMPOTENCY_MAX_BODY_BYTES = 1_048_576
DEFAULT_RATE_PER_SECONDS = 1.0
DEFAULT_MAX_WAIT_SECONDS = 1.0  # how long a request may queue for a rate or concurrency slot
# The longest a vendor's Retry-After may hold its queue for every caller (vendor rate_limit only).
DEFAULT_MAX_PAUSE_SECONDS = 60.0
# Queue depth for a vendor with `concurrency` but no `rate_limit` (nothing to derive it from).
DEFAULT_CONCURRENCY_MAX_QUEUE = 1000
# Retries, circuit breakers and async delivery (docs/configuration.md).
DEFAULT_RETRY_ATTEMPTS = 3
DEFAULT_RETRY_BASE_DELAY_SECONDS = 0.1
DEFAULT_RETRY_MAX_DELAY_SECONDS = 5.0
DEFAULT_RETRY_ON = frozenset({429, 502, 503, 504})
DEFAULT_RETRY_BUDGET_RATIO = 0.2
DEFAULT_RETRY_BUDGET_MIN_PER_SECOND = 1.0
DEFAULT_CIRCUIT_FAILURE_RATIO = 0.5
DEFAULT_CIRCUIT_MIN_REQUESTS = 20
DEFAULT_CIRCUIT_WINDOW_SECONDS = 10.0
DEFAULT_CIRCUIT_OPEN_SECONDS = 30.0
DEFAULT_DELIVERY_WORKERS = 8
DEFAULT_DELIVERY_MAX_ATTEMPTS = 10
DEFAULT_DELIVERY_CLAIM_AFTER_SECONDS = 30.0
DEFAULT_DELIVERY_KEEP_SECONDS = 86_400.0
DEFAULT_FAULT_ABORT_STATUS = 503  # fault injection (docs/configuration.md): what an injected abort answers
# Alerts (docs/configuration.md).
DEFAULT_ALERT_EVALUATE_SECONDS = 5.0
DEFAULT_ALERT_WINDOW_SECONDS = 60.0
DEFAULT_ALERT_FOR_SECONDS = 0.0
DEFAULT_ALERT_MIN_REQUESTS = 20
DEFAULT_ALERT_WEBHOOK_TIMEOUT_SECONDS = 5.0
DEFAULT_ALERT_WEBHOOK_ATTEMPTS = 5
# The longest window a rule may look at: the gateway keeps this much history in memory.
ALERT_MAX_WINDOW_SECONDS = 3600.0
ALERT_KINDS = ("error_ratio", "p99_latency", "dlq_depth", "circuit_open", "rejected_ratio")
RATE_SCOPES = ("local", "global")
IDEMPOTENCY_MODES = ("required", "optional", "off")
# Methods that get idempotency "optional" when their route says nothing (docs/configuration.md).
IDEMPOTENCY_DEFAULT_METHODS = frozenset({"POST", "PATCH"})

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_VENDOR_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"

    def fields(self) -> dict[str, str]:
        """Its log fields, as a ``config_warning`` event carries them."""
        return {"file": self.file, "key": self.key, "detail": self.message}


class ConfigError(Exception):
    """The config could not be loaded; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class Secret:
    """A secret resolved from a reference (``env:NAME``, ``file:/path``, ``aws-sm:NAME#field``,
    ``vault:PATH#field``); its value never shows in repr or str."""

    __slots__ = ("_value", "reference")

    def __init__(self, reference: str, value: str) -> None:
        self.reference = reference
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reference == self.reference and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.reference)


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    connect_seconds: float = DEFAULT_CONNECT_SECONDS
    # Up to the vendor's answer head, every attempt together (a streamed upload's time is not counted).
    total_seconds: float = DEFAULT_TOTAL_SECONDS
    # Once the head is in: the longest gap between body bytes (a slow caller's backpressure excluded).
    read_idle_seconds: float = DEFAULT_READ_IDLE_SECONDS


TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    """A vendor's ``tls = {...}`` (docs/configuration.md): how its certificate is checked (``verify``, against
    ``ca_file`` instead of the system's CAs when given), the client certificate the gateway presents
    (``cert_file`` and ``key_file``, for vendors that demand mTLS) and the oldest TLS version accepted."""

    verify: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerTls:
    """``[gateway] tls = {...}``: the listener serves HTTPS with ``cert_file`` and ``key_file``; with
    ``client_ca_file`` every caller must present a certificate that CA signed (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


# cert_subject's attribute names -> the names OpenSSL gives them in a peer certificate's subject.
SUBJECT_ATTRIBUTES = {
    "CN": "commonName",
    "O": "organizationName",
    "OU": "organizationalUnitName",
    "C": "countryName",
    "ST": "stateOrProvinceName",
    "L": "localityName",
    "DC": "domainComponent",
    "UID": "userId",
    "emailAddress": "emailAddress",
    "serialNumber": "serialNumber",
}


@dataclass(frozen=True, slots=True)
class CertSubject:
    """A client's ``cert_subject = "CN=billing,O=Acme"``: a certificate is the client's when its
    subject holds every one of these attributes with these values (others are not compared)."""

    text: str  # as configured, for messages
    attributes: frozenset[tuple[str, str]]  # (OpenSSL's name, value): ("commonName", "billing")

    def matches(self, presented: frozenset[tuple[str, str]]) -> bool:
        return self.attributes <= presented


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    """Credentials injected into every vendor request; what the caller sent there is replaced.

    ``type``: "bearer" (Authorization: Bearer), "header" (``name: value``), "query" (``?name=value``)
    or "basic" (Authorization: Basic username:password).
    """

    type: Literal["bearer", "header", "query", "basic"]
    name: str = ""
    username: str = ""
    secret: Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuth2ClientCredentials:
    """``auth = { type = "oauth2_client_credentials", ... }``: a bearer token fetched from ``token_url``.

    ``client_auth``: how the client authenticates to the token endpoint, "basic" (HTTP Basic, RFC 6749
    section 2.3.1, the default) or "body" (``client_id``/``client_secret`` form fields).
    Hashable: the token cache is keyed by it, so a rotated secret gets a fresh token.
    """

    type: Literal["oauth2_client_credentials"] = "oauth2_client_credentials"
    token_url: URL
    client_id: Secret
    client_secret: Secret
    scope: str = ""
    client_auth: Literal["basic", "body"] = "basic"


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionPin:
    """``version = {...}``: the vendor API version every request is sent with, whatever the caller said.

    ``kind``: "header" (``name: value``), "query" (``?name=value``) or "path_prefix" (``value`` is put
    in front of the vendor path, e.g. "/v2"; ``segments`` are its segments).
    """

    kind: Literal["header", "query", "path_prefix"]
    name: str = ""
    value: str
    segments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """``rate_limit = {...}`` on a vendor, a route or a client: at most ``requests`` per ``per_seconds``.

    Requests are paced one every ``per_seconds / requests`` (GCRA), with up to ``burst`` (default
    ``requests``) let through at once after a quiet spell; so any window of ``per_seconds`` holds at
    most ``requests + burst`` (set ``burst = 1`` for a strictly even pace). A request over the limit
    queues up to ``max_wait_seconds`` for its turn, at most ``max_queue`` at a time (default: as many as
    the limit admits in ``max_wait_seconds``), then gets a 429. ``scope``: "local" (this process) or
    "global" (one limit for every gateway process on the same store). ``max_pause_seconds`` (a vendor's
    rate_limit only): the longest a vendor's ``Retry-After`` holds the vendor's queue for every caller.
    """

    requests: int
    per_seconds: float = DEFAULT_RATE_PER_SECONDS
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    scope: Literal["local", "global"] = "local"
    burst: int
    max_queue: int
    max_pause_seconds: float = DEFAULT_MAX_PAUSE_SECONDS

    @property
    def interval_seconds(self) -> float:
        """The pace: one request every this many seconds."""
        return self.per_seconds / self.requests


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowRule:
    """One entry of a client's ``allow``: a whole vendor (``route`` None) or a method and path glob."""

    vendor: str
    route: Route | None = None  # matched with Route.matches, so globs work exactly as in routes files


@dataclass(frozen=True, slots=True, kw_only=True)
class Client:
    """``[clients.NAME]``: an internal caller, its gateway key or certificate subject (at least one),
    and what it may reach."""

    name: str
    key: Secret | None = None
    cert_subject: CertSubject | None = None  # with [gateway] tls.client_ca_file only
    allow: tuple[AllowRule, ...] = ()
    rate_limit: RateLimit | None = None  # this caller's quota over every vendor together


@dataclass(frozen=True, slots=True, kw_only=True)
class Idempotency:
    """A vendor's ``idempotency = {...}``: how keyed requests are remembered and replayed.

    ``forward_header``: the vendor's header for the caller's key (None: the caller's field passes as is).
    ``ttl_seconds``: how long a completed response is replayed. ``lease_seconds``: how long an in-flight
    claim survives without its owner renewing it (a crashed process frees the key after this).
    ``max_body_bytes``: the largest response body kept for replay; a larger one keeps only the key.
    """

    forward_header: str | None = None
    ttl_seconds: float = DEFAULT_IDEMPOTENCY_TTL_SECONDS
    lease_seconds: float = DEFAULT_IDEMPOTENCY_LEASE_SECONDS
    max_body_bytes: int = DEFAULT_IDEMPOTENCY_MAX_BODY_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """A vendor's ``retry = {...}`` (docs/configuration.md); every vendor has one, ``attempts = 1``
    turns it off.

    ``attempts``: total tries per request. The pause before try n+1 is drawn uniformly from 0 to
    ``min(max_delay_seconds, base_delay_seconds * 2**(n-1))`` (full jitter), and is at least the vendor's
    ``Retry-After``. Retried: connection errors, timeouts and ``retry_on`` statuses, for GET, HEAD,
    OPTIONS, PUT and DELETE, and for POST and PATCH whose idempotency key is forwarded to the vendor.
    The vendor's ``timeout.total_seconds`` bounds all tries together. Retry budget: over the last
    ``RETRY_BUDGET_WINDOW_SECONDS``, retries are at most ``budget_ratio`` of first tries plus
    ``budget_min_per_second`` per second (so a quiet vendor still gets its retries).
    """

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    base_delay_seconds: float = DEFAULT_RETRY_BASE_DELAY_SECONDS
    max_delay_seconds: float = DEFAULT_RETRY_MAX_DELAY_SECONDS
    retry_on: frozenset[int] = DEFAULT_RETRY_ON
    budget_ratio: float = DEFAULT_RETRY_BUDGET_RATIO
    budget_min_per_second: float = DEFAULT_RETRY_BUDGET_MIN_PER_SECOND


@dataclass(frozen=True, slots=True, kw_only=True)
class Circuit:
    """A vendor's ``circuit = {...}``: every vendor has a breaker with these defaults unless
    ``enabled = false``. It opens when, over the last ``window_seconds``, at least ``min_requests`` calls
    were made and ``failure_ratio`` of them failed (connection error, timeout or a 5xx answer); it stays
    open ``open_seconds``, then lets one probe through (half-open) and closes if the probe succeeds."""

    enabled: bool = True
    failure_ratio: float = DEFAULT_CIRCUIT_FAILURE_RATIO
    min_requests: int = DEFAULT_CIRCUIT_MIN_REQUESTS
    window_seconds: float = DEFAULT_CIRCUIT_WINDOW_SECONDS
    open_seconds: float = DEFAULT_CIRCUIT_OPEN_SECONDS


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    """``[delivery]``: the async delivery workers (docs/operations.md).

    ``workers``: deliveries in progress at once, per gateway process. ``max_attempts``: vendor calls a
    delivery may make before it is dead-lettered (waiting out an open circuit or a rate-limit queue costs
    none). ``claim_after_seconds``: how long a delivery held by a process that stopped answering stays
    with it before another process takes it over. ``keep_seconds``: how long a delivered record (and its
    vendor answer) stays readable at ``/_gateway/deliveries/ID``; dead letters stay until purged.
    """

    workers: int = DEFAULT_DELIVERY_WORKERS
    max_attempts: int = DEFAULT_DELIVERY_MAX_ATTEMPTS
    claim_after_seconds: float = DEFAULT_DELIVERY_CLAIM_AFTER_SECONDS
    keep_seconds: float = DEFAULT_DELIVERY_KEEP_SECONDS
    # Each delivery that ends delivered or dead is published here, as its status JSON (docs/configuration.md).
    publish: Publish | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """``faults = {...}`` on a vendor, or on a route (which then replaces the vendor's): injected faults
    for chaos tests (docs/configuration.md), each drawn per vendor call (per attempt) and independently.

    ``delay_percent`` of calls wait ``delay_seconds`` first (as a slow vendor: the wait counts against
    the vendor's timeout); then ``abort_percent`` are answered with ``abort_status`` as if the vendor
    had, or ``reset_percent`` are cut as a connection error (abort and reset exclude each other, so
    together they are at most 100). ``header_control``: a caller may ask for a fault on its own request
    with ``X-Gateway-Fault`` (instead of the drawn ones).
    """

    abort_percent: float = 0.0
    abort_status: int = DEFAULT_FAULT_ABORT_STATUS
    delay_percent: float = 0.0
    delay_seconds: float = 0.0
    reset_percent: float = 0.0
    header_control: bool = False

    @property
    def enabled(self) -> bool:
        """Whether anything can be injected (a table with nothing in it is as good as none)."""
        return bool(self.abort_percent or self.delay_percent or self.reset_percent or self.header_control)


IdempotencyMode = Literal["required", "optional", "off"]
# "sync": answered by the vendor; "async": 202 and a durable queue; "prefer": async when the caller
# sends ``Prefer: respond-async`` (RFC 7240), else sync.
DeliveryMode = Literal["sync", "async", "prefer"]
DELIVERY_MODES = ("sync", "async", "prefer")


AUTH_TYPES = ("bearer", "header", "query", "basic", "oauth2_client_credentials")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    listen: Listen = Listen(host="127.0.0.1", port=8080)
    store: str = DEFAULT_STORE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    routes_dir: Path
    transforms_dir: Path
    shutdown_timeout_seconds: float = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
    # The server's limits (docs/configuration.md): past each, the caller gets a problem and the connection
    # closes; none of them is ever blamed on a vendor.
    header_timeout_seconds: float = 10.0  # the request head must be complete within this
    body_timeout_seconds: float = 30.0  # the longest gap between two request-body bytes
    keepalive_timeout_seconds: float = 75.0  # an idle keep-alive connection is closed after this
    max_url_bytes: int = 8192  # the request target
    max_header_bytes: int = 32768  # all request header fields together (names and values)
    max_connections: int = 10000  # past this, new connections wait in the kernel's backlog
    tls: ListenerTls | None = None  # None: plain HTTP (a sidecar on loopback)
    # Opens /_gateway/* (but health and ready, always open) to whoever sends it; see client_auth/admin.py.
    admin_key: Secret | None = None


PathSegment = str  # a literal segment, "*" (one segment) or "**" (the rest)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One ``[[route]]`` of a routes file: which vendor paths it covers and what it adds."""

    method: str  # an HTTP method, or "*" for any
    path: str
    segments: tuple[PathSegment, ...]
    source: str  # "routes/stripe.toml: route[2]", for messages
    idempotency: IdempotencyMode | None = None  # None: "optional" for POST and PATCH, else "off"
    request_schema: CompiledSchema | None = None
    response_schema: CompiledSchema | None = None
    response_schema_mode: Literal["enforce", "report"] = "enforce"
    request_transform: TransformSpec | None = None
    response_transform: TransformSpec | None = None
    rate_limit: RateLimit | None = None  # on top of the vendor's: requests matching this route only
    delivery: DeliveryMode = "sync"
    faults: Faults | None = None  # replaces the vendor's faults for requests matching this route
    # Requests that `gateway contract check` sends through this route (files under transforms/).
    examples: tuple[Example, ...] = ()

    def matches(self, method: str, segments: tuple[str, ...]) -> bool:
        if self.method != "*" and self.method != method and not (self.method == "GET" and method == "HEAD"):
            return False
        pattern = self.segments
        for i, want in enumerate(pattern):
            if want == "**":
                return True
            if i >= len(segments):
                return False
            if want != "*" and want != segments[i]:
                return False
        return len(segments) == len(pattern)


@dataclass(frozen=True, slots=True, kw_only=True)
class Vendor:
    name: str
    base_url: URL
    timeout: Timeout = field(default_factory=Timeout)
    tls: Tls = field(default_factory=Tls)
    auth: Auth | OAuth2ClientCredentials | None = None
    version: VersionPin | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    idempotency: Idempotency = field(default_factory=Idempotency)
    rate_limit: RateLimit | None = None
    concurrency: int | None = None  # at most this many requests in flight to the vendor (per process)
    retry: Retry = field(default_factory=Retry)
    circuit: Circuit = field(default_factory=Circuit)
    faults: Faults | None = None  # off unless configured: [vendors.NAME.faults]
    expose: Literal["all", "declared"] = "all"
    routes: tuple[Route, ...] = ()
    # A plain http:// base_url or token_url off loopback is refused unless the vendor says so.
    allow_plaintext: bool = False

    @property
    def base_path(self) -> str:
        """The base URL's path without its trailing slash ("" for the root)."""
        return self.base_url.raw_path.rstrip("/")

    def find_route(self, method: str, segments: tuple[str, ...]) -> Route | None:
        for route in self.routes:
            if route.matches(method, segments):
                return route
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingSettings:
    """``[tracing]``: "none" (the default: the caller's traceparent passes through untouched), "console"
    (spans printed to stdout) or "otlp" (OTLP over HTTP to ``endpoint``); ``sample_ratio`` of new traces
    are kept (a caller's sampled flag is followed)."""

    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = None
    sample_ratio: float = 1.0
    service_name: str = "egress-gateway"


# -- Webhooks in, events out (docs/configuration.md) ---------------------------------------------------------

DEFAULT_WEBHOOK_TOLERANCE_SECONDS = 300.0
DEFAULT_WEBHOOK_DEDUPE_SECONDS = 259_200.0  # 72 h: longer than the vendors' own retry schedules
DEFAULT_BUS_PUBLISH_TIMEOUT_SECONDS = 5.0
DEFAULT_NATS_STREAM = "GATEWAY"
WEBHOOK_SCHEMES = ("stripe", "github", "shopify", "standard", "hmac-sha256")
WebhookScheme = Literal["stripe", "github", "shopify", "standard", "hmac-sha256"]
BusKind = Literal["nats", "redis"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookVerify:
    """``verify = {...}`` of a webhook: how a vendor's signature is checked.

    ``secrets``: every secret accepted (several while one is rotated). ``tolerance_seconds``: how far a
    signed timestamp (stripe, standard) may be from now, either way. ``header``, ``prefix`` and
    ``encoding``: the generic ``hmac-sha256`` scheme's signature field, what stands before the
    signature in it ("sha256="), and how the digest is written.
    """

    scheme: WebhookScheme
    secrets: tuple[Secret, ...]
    tolerance_seconds: float = DEFAULT_WEBHOOK_TOLERANCE_SECONDS
    header: str = ""
    prefix: str = ""
    encoding: Literal["hex", "base64"] = "hex"


@dataclass(frozen=True, slots=True, kw_only=True)
class EventField:
    """Where an event's id or type is read: a request header, or a JSON Pointer into the body."""

    kind: Literal["header", "pointer"]
    name: str  # the header's name, or the pointer ("/id")
    tokens: Tokens = ()  # the pointer, compiled


# Where each scheme's vendor puts the event's id and type when the config names none.
WEBHOOK_DEFAULT_ID: Mapping[str, EventField] = {
    "stripe": EventField(kind="pointer", name="/id", tokens=compile_pointer("/id")),
    "github": EventField(kind="header", name="X-GitHub-Delivery"),
    "shopify": EventField(kind="header", name="X-Shopify-Webhook-Id"),
    "standard": EventField(kind="header", name="webhook-id"),
}
WEBHOOK_DEFAULT_TYPE: Mapping[str, EventField] = {
    "github": EventField(kind="header", name="X-GitHub-Event"),
    "shopify": EventField(kind="header", name="X-Shopify-Topic"),
}
TYPE_POINTER = EventField(kind="pointer", name="/type", tokens=compile_pointer("/type"))  # every other scheme


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    """``publish = {...}``: where an event goes. ``subject`` is the NATS subject (bus "nats") or the
    Redis stream's key (bus "redis"), a template: ``{type}``, ``{id}`` and ``{webhook}`` for a webhook,
    ``{state}`` and ``{vendor}`` for a delivery. ``max_length``: a Redis stream is trimmed to about
    this many entries (None: never)."""

    bus: BusKind
    subject: Template
    max_length: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Webhook:
    """``[webhooks.NAME]``: what ``POST /_webhooks/NAME`` checks and where it publishes."""

    name: str
    verify: WebhookVerify
    event_id: EventField
    event_type: EventField
    publish: Publish
    dedupe_seconds: float = DEFAULT_WEBHOOK_DEDUPE_SECONDS
    request_schema: CompiledSchema | None = None
    request_transform: TransformSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BusSettings:
    """``[bus]``: the message bus events are published to. ``nats_url`` (None: no NATS; the Redis store's
    streams may still be used), ``nats_token`` (a secret), ``nats_stream``: the JetStream stream made at
    start if missing, capturing every configured subject. ``publish_timeout_seconds``: how long a
    publish may wait for the bus's acknowledgement before the vendor gets 503."""

    nats_url: str | None = None
    nats_token: Secret | None = None
    nats_stream: str = DEFAULT_NATS_STREAM
    publish_timeout_seconds: float = DEFAULT_BUS_PUBLISH_TIMEOUT_SECONDS


AlertKind = Literal["error_ratio", "p99_latency", "dlq_depth", "circuit_open", "rejected_ratio"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRule:
    """One ``[[alerts.rule]]``: fires for a vendor while its ``kind`` of figure is above ``threshold``.

    ``vendor``: a vendor's name, or "*" for one alert per configured vendor. ``error_ratio``: answers
    with status >= 500 over all answers in the last ``window_seconds``; ``rejected_ratio``: the
    gateway's own 429s over all; both stay quiet below ``min_requests`` answers in the window.
    ``p99_latency``: the whole request's 99th percentile in the window, in seconds. ``dlq_depth``: dead
    letters now; ``circuit_open``: 1 while the breaker is open or half-open (its threshold is 0).
    The condition must hold ``for_seconds`` before the alert fires (Prometheus' ``for``).
    """

    name: str
    vendor: str
    kind: AlertKind
    threshold: float = 0.0
    window_seconds: float = DEFAULT_ALERT_WINDOW_SECONDS
    for_seconds: float = DEFAULT_ALERT_FOR_SECONDS
    min_requests: int = DEFAULT_ALERT_MIN_REQUESTS


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertSettings:
    """``[alerts]``: rules evaluated every ``evaluate_seconds``; each firing and resolved notice is POSTed
    to ``webhook_url`` when set (``webhook_timeout_seconds`` per try, up to ``webhook_attempts`` tries)."""

    evaluate_seconds: float = DEFAULT_ALERT_EVALUATE_SECONDS
    webhook_url: URL | None = None
    webhook_timeout_seconds: float = DEFAULT_ALERT_WEBHOOK_TIMEOUT_SECONDS
    webhook_attempts: int = DEFAULT_ALERT_WEBHOOK_ATTEMPTS
    rules: tuple[AlertRule, ...] = ()


DEFAULT_SECRETS_REFRESH_SECONDS = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsSecretsManager:
    """``[secrets.aws]``: where ``"aws-sm:NAME"`` references are read. ``region`` (else AWS_REGION from
    the environment) and ``endpoint_url`` (a VPC endpoint, or a local stand-in); credentials come from
    the usual AWS chain (environment, web identity, instance or task role), never from the config."""

    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Vault:
    """``[secrets.vault]``: HashiCorp Vault's HTTP API at ``address`` (KV version 2), logged in to
    with ``token``, or with AppRole (``role_id`` and ``secret_id``: a short-lived token per read).
    ``ca_file``: the CA bundle for a Vault with a private certificate."""

    address: URL
    token: Secret | None = None
    role_id: Secret | None = None
    secret_id: Secret | None = None
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretsSettings:
    """``[secrets]``: the secret managers, and how often what was read from them is read again
    (``refresh_seconds``; a failed read keeps the last value). ``managed``: every ``aws-sm:`` and
    ``vault:`` reference the config uses."""

    refresh_seconds: float = DEFAULT_SECRETS_REFRESH_SECONDS
    aws: AwsSecretsManager | None = None
    vault: Vault | None = None
    managed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    path: Path
    gateway: GatewaySettings
    vendors: Mapping[str, Vendor]
    tracing: TracingSettings = field(default_factory=TracingSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    # Empty: callers are not authenticated (a sidecar on loopback). Otherwise every request needs a key.
    clients: Mapping[str, Client] = field(default_factory=dict)
    # Accepted but risky settings (``tls.verify = false``...): printed by ``check``, logged at start.
    warnings: tuple[Problem, ...] = ()
    webhooks: Mapping[str, Webhook] = field(default_factory=dict)  # [webhooks.NAME]
    bus: BusSettings = field(default_factory=BusSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
