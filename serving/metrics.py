"""Prometheus metrics of one app instance (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

COMPILE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0)
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the service exports on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram(
            "matchmaking_request_seconds",
            "Scoring latency inside the service, by endpoint and city.",
            ["endpoint", "city"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "matchmaking_requests",
            "Requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.model_version = Gauge(
            "matchmaking_model_version",
            "Registered version of each loaded model (absent: not loaded), by the city it serves "
            "(a country model: country:<CC>) and name.",
            ["city", "model"],
            registry=r,
        )
        self.city_model = Gauge(
            "matchmaking_city_model",
            "Which model serves each city: the version of the model at its route, by city, "
            "model name and scope (city: its own model; country: its country's pooled model).",
            ["city", "model", "model_scope"],
            registry=r,
        )
        self.models_loaded = Gauge(
            "matchmaking_models_loaded", "City models held in memory.", registry=r
        )
        self.loads = Counter(
            "matchmaking_model_loads", "Model versions loaded, by city.", ["city"], registry=r
        )
        self.load_failures = Counter(
            "matchmaking_model_load_failures",
            "Model loads that failed (registry or artifact errors), by city.",
            ["city"],
            registry=r,
        )
        self.swaps = Counter(
            "matchmaking_model_swaps",
            "Live swaps to a new Production version (or a rollback), by city.",
            ["city"],
            registry=r,
        )
        self.swap_failures = Counter(
            "matchmaking_model_swap_failures",
            "New Production versions that could not be loaded (the old one kept serving).",
            ["city"],
            registry=r,
        )
        self.evictions = Counter(
            "matchmaking_model_evictions", "Models dropped by the LRU.", registry=r
        )
        self.registry_errors = Counter(
            "matchmaking_registry_errors", "Registry calls that failed.", registry=r
        )
        self.registry_up = Gauge(
            "matchmaking_registry_up",
            "1 when the last registry call succeeded, else 0.",
            registry=r,
        )
        self.registry_last_success = Gauge(
            "matchmaking_registry_last_success_timestamp_seconds",
            "Unix time of the last successful registry poll.",
            registry=r,
        )
        self.model_engine = Gauge(
            "matchmaking_model_engine",
            "1 for the engine scoring each loaded model: lleaves (compiled forest) or lightgbm "
            "(the plain booster, until its compiled forest is swapped in).",
            ["city", "model", "engine"],
            registry=r,
        )
        self.compile_seconds = Histogram(
            "matchmaking_compile_seconds",
            "Time from load to the compiled forest swapped in (background, off the request path).",
            buckets=COMPILE_BUCKETS,
            registry=r,
        )
        self.compile_failures = Counter(
            "matchmaking_compile_failures",
            "Compilations that failed or disagreed with the booster (the booster kept serving).",
            registry=r,
        )
        self.compiles_pending = Gauge(
            "matchmaking_compiles_pending", "Compilations queued or running.", registry=r
        )
        self.registry_calls = Counter(
            "matchmaking_registry_calls",
            "Registry calls made by the service, by call (search: the poll's paged search).",
            ["call"],
            registry=r,
        )
        self.registry_poll_seconds = Histogram(
            "matchmaking_registry_poll_seconds",
            "Duration of one registry poll (the paged search and the swaps it starts).",
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.registry_poll_cpu_seconds = Histogram(
            "matchmaking_registry_poll_cpu_seconds",
            "CPU time of the poller's thread in one registry poll (time it may hold the GIL "
            "while requests wait; the rest of a poll is waiting on the registry).",
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.registry_poll_calls = Gauge(
            "matchmaking_registry_poll_calls",
            "Registry calls made by the last poll (the search pages, plus one per model whose "
            "Production version moved and its download).",
            registry=r,
        )
        self.registry_models_seen = Gauge(
            "matchmaking_registry_models_seen",
            "Registered models of this prefix in the last poll's search.",
            registry=r,
        )
        self.webhooks = Counter(
            "matchmaking_registry_webhooks",
            "MLflow webhook deliveries received, by result (accepted, rejected).",
            ["result"],
            registry=r,
        )
        self.fallbacks = Counter(
            "matchmaking_fallback_answers",
            "Rankings answered by the nearest-ETA fallback, by city.",
            ["city"],
            registry=r,
        )
        self.answers = Counter(
            "matchmaking_answers",
            "Rankings answered, by city, arm (champion, challenger, fallback), the scope of the "
            "model that scored (city, country, fallback) and its name and version (empty for "
            "the fallback); shadow scorings, which never answer, are counted with arm shadow.",
            ["city", "arm", "model_scope", "model", "version"],
            registry=r,
        )
        self.log_rows = Counter(
            "matchmaking_log_rows",
            "Rows published to the serving log in the lake, by table (decisions, outcomes).",
            ["table"],
            registry=r,
        )
        self.log_dropped = Counter(
            "matchmaking_log_dropped_rows",
            "Serving-log records dropped, by table and reason (queue_full: one per answer or "
            "outcome; lake_error: rows of a failed flush; shadow_error: a failed shadow scoring).",
            ["table", "reason"],
            registry=r,
        )
        self.log_queue = Gauge(
            "matchmaking_log_queue",
            "Records waiting for the serving-log writer (at its last flush).",
            registry=r,
        )
        self.log_flush_seconds = Histogram(
            "matchmaking_log_flush_seconds",
            "Duration of one successful serving-log write (one table of one flush).",
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.challenger_share = Gauge(
            "matchmaking_challenger_share",
            "Configured share of a city's bookings its challenger gets, by mode (split answers, "
            "shadow only scores); absent: no challenger.",
            ["city", "mode"],
            registry=r,
        )
