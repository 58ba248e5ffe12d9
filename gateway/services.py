"""The composition root's registries: app-wide resources and the per-feature state the stages share.

Created once per app (``http.app.create_app``'s cleanup context) and kept across config reloads, so limiter
schedules, breaker state and tokens survive a reload. A reload builds a new Runtime against these
(``runtime.build_runtime``) and only then commits what changed in them (``commit``), so a reload that
fails half-way changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bus.registry import Buses
from .features.circuit.policy import CircuitBreakers
from .features.delivery.queue import Deliveries
from .features.deprecation.tracker import DeprecationTracker
from .features.faults.policy import fault_counts
from .features.idempotency.store import IDEMPOTENCY_OUTCOMES, outcome_counts
from .features.payload.schemas import schema_failure_counts
from .features.ratelimit.policy import RateLimits
from .features.retry.policy import Retries
from .features.webhooks.store import webhook_counts
from .observability.alerts import Alerts
from .observability.history import History
from .observability.logging import Logger
from .observability.metrics import Counts, Reporter, RequestMetrics
from .observability.tracing import Tracing
from .store import MemoryStore, Store
from .upstream.credentials import TokenManager
from .upstream.pool import Pool


@dataclass(slots=True, eq=False)
class Services:
    """App-wide resources the stages share; created and closed with the app (cleanup_ctx)."""

    logger: Logger
    store: Store = field(default_factory=MemoryStore)
    # Keep-alive connections to vendors, per origin (gateway.upstream.pool): the transport every vendor call,
    # OAuth2 token calls included, goes through.
    pool: Pool = field(default_factory=Pool)
    # (vendor, outcome) -> count; exported as gateway_idempotency_total{vendor,outcome}.
    idempotency_outcomes: Counts = field(default_factory=outcome_counts)
    # OpenTelemetry spans, when [tracing] has an exporter; None costs nothing per request.
    tracing: Tracing | None = None
    # Requests, durations and bytes per vendor (gateway_requests_total and friends).
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    # (vendor, route) -> vendor answers that failed their response schema in report mode.
    response_schema_failures: Counts = field(default_factory=schema_failure_counts)
    # (vendor, kind) -> faults injected: gateway_faults_injected_total{vendor,kind}.
    faults: Counts = field(default_factory=fault_counts)
    # OAuth2 tokens per vendor; kept across config reloads (keyed by the vendor's auth settings).
    tokens: TokenManager = field(init=False)
    # Deprecation/Sunset notices per (vendor, route): gateway_vendor_deprecations_total.
    deprecations: DeprecationTracker = field(init=False)
    # Rate and concurrency limiters per vendor, route and client, kept across config reloads, with the
    # wait and rejection figures for gateway_ratelimit_wait_seconds / gateway_ratelimit_rejected_total.
    ratelimits: RateLimits = field(init=False)
    # Retry budgets per vendor and gateway_retries_total{vendor,reason} (Retries.sent).
    retries: Retries = field(init=False)
    # Circuit breakers per vendor, kept across reloads; gateway_circuit_open{vendor}: open_state().
    circuits: CircuitBreakers = field(init=False)
    # The async delivery queue: accepting, and the figures (gateway_dlq_depth{vendor}: dead).
    deliveries: Deliveries = field(init=False)
    # (webhook, outcome) -> count: gateway_webhooks_total.
    webhook_outcomes: Counts = field(default_factory=webhook_counts)
    # The message buses events are published to ([bus]; the Redis store's streams), started with the app.
    bus: Buses = field(init=False)
    # The last hour per vendor, read by the alerts and the dashboard (kept by observability.monitor).
    history: History = field(default_factory=History)
    # [alerts] rules' state per vendor; gateway_alert_active{vendor,alert}.
    alerts: Alerts = field(init=False)

    def reporters(self) -> tuple[Reporter, ...]:
        """Everything that owns metrics, in the order /_gateway/metrics lists them."""
        return (
            self.metrics,
            self.ratelimits,
            self.idempotency_outcomes,
            self.deprecations,
            self.response_schema_failures,
            self.retries,
            self.circuits,
            self.deliveries,
            self.faults,
            self.webhook_outcomes,
            self.bus,
            self.alerts,
        )

    def commit(self, vendors: frozenset[str]) -> None:
        """A new Runtime for ``vendors`` goes into service: the limiters and breakers it reconfigured
        take effect."""
        self.ratelimits.commit()
        self.circuits.commit()
        self.deliveries.vendors = vendors
        self.metrics.start_series(vendors)
        for vendor in vendors:  # the documented outcomes and refusals exist at zero from the start
            self.ratelimits.rejected[vendor] += 0
            for outcome in IDEMPOTENCY_OUTCOMES:
                self.idempotency_outcomes[(vendor, outcome)] += 0

    def discard(self) -> None:
        """A Runtime was built but will not serve: drop the reconfigurations it prepared."""
        self.ratelimits.discard()
        self.circuits.discard()

    def __post_init__(self) -> None:
        self.tokens = TokenManager(self.pool, self.logger)
        self.deprecations = DeprecationTracker(self.logger)
        self.ratelimits = RateLimits(self.store.rates, self.logger)
        self.retries = Retries()
        self.circuits = CircuitBreakers(self.store, self.logger)
        self.deliveries = Deliveries(self.store, self.logger)
        self.bus = Buses(self.store, self.logger)
        self.alerts = Alerts(self.logger)
