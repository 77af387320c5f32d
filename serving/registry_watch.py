"""The models in memory: lazy per-city loading, an LRU bound, and live version swaps.

Readers take a model with ``ModelStore.get`` (a dict lookup) and keep that reference for the
whole request, so a request that started on version N finishes on N. A new version is
downloaded, loaded and warmed by the poller thread while N keeps serving, then published by a
single assignment under the lock: every request that starts afterwards sees N+1. When the
registry cannot be reached, the poller records it (``/readyz``, ``/metrics``) and the loaded
models keep serving. A rollback (the alias moved back) is just another version change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from matchmaking.errors import MatchmakingError, ModelNotFoundError, TrackingError
from matchmaking.markets import Market, get_market
from matchmaking.registry import conventions
from serving.metrics import Metrics
from serving.models import LoadedModel, VersionRef, load_version, resolve_production
from serving.settings import ServeSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryStatus:
    """What the service last heard from the registry."""

    reachable: bool | None  # None: not asked yet
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None


class ModelStore:
    """Per-city Production models, at most ``max_models`` of them (least recently used out)."""

    def __init__(
        self, settings: ServeSettings, metrics: Metrics, client: MlflowClient | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.uri = settings.resolved_tracking_uri()
        self.client = client or MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.prefix = settings.resolved_model_name_prefix()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._city_locks: dict[str, threading.Lock] = {}
        self._status = RegistryStatus(None, None, None, None)
        # city -> (monotonic time until which the failure stands, the error): a city whose load
        # failed is not retried by every request, only once per FAILURE_TTL_S.
        self._failures: dict[str, tuple[float, MatchmakingError]] = {}

    # -- reading (request path) ------------------------------------------------------------

    def get(self, city: str) -> LoadedModel | None:
        """The loaded model of ``city`` (marks it recently used), or None."""
        with self._lock:
            model = self._models.get(city)
            if model is not None:
                self._models.move_to_end(city)
            return model

    def loaded(self) -> list[LoadedModel]:
        """A snapshot of the loaded models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    @property
    def status(self) -> RegistryStatus:
        return self._status

    @property
    def failure_ttl_s(self) -> float:
        """How long a failed load of a city stands before a request may try again."""
        return min(self.settings.poll_interval_s, 30.0)

    def model_name(self, city: str) -> str:
        return conventions.model_name(self.prefix, city)

    # -- loading (worker threads) ----------------------------------------------------------

    def load(self, city_id: str) -> LoadedModel:
        """The model of ``city_id``, loading it from the registry when not in memory.

        Raises:
            UnknownCityError: the city is not in the catalogue.
            ModelNotFoundError: the city has no Production version.
            TrackingError: the registry could not be reached.
        """
        city = get_market(city_id)
        model = self.get(city_id)
        if model is not None:
            return model
        with self._city_lock(city_id):
            model = self.get(city_id)  # another thread may have loaded it meanwhile
            if model is not None:
                return model
            failed = self._failures.get(city_id)
            if failed is not None and time.monotonic() < failed[0]:
                raise failed[1]
            try:
                ref = self._resolve(city_id)
                model = self._load_version(ref, city)
            except MatchmakingError as exc:
                self.metrics.load_failures.labels(city_id).inc()
                self._failures[city_id] = (time.monotonic() + self.failure_ttl_s, exc)
                raise
            self._failures.pop(city_id, None)
            self._publish(city_id, model)
            self.metrics.loads.labels(city_id).inc()
            return model

    def refresh(self, city_id: str) -> bool:
        """Swap in the city's current Production version if it changed; True when swapped.

        Errors are recorded (metrics, status, log) and never reach the caller: the loaded model
        keeps serving.
        """
        current = self._peek(city_id)
        if current is None:
            return False
        with self._city_lock(city_id):
            try:
                ref = self._resolve(city_id)
            except ModelNotFoundError as exc:
                logger.warning("%s; still serving v%s", exc, current.version)
                return False
            except TrackingError:
                return False
            if ref.version == current.version:
                return False
            try:
                new = self._load_version(ref, current.city)
            except MatchmakingError as exc:
                self.metrics.swap_failures.labels(city_id).inc()
                logger.error(
                    "swap of %s to v%s failed, still serving v%s: %s",
                    ref.name,
                    ref.version,
                    current.version,
                    exc,
                )
                return False
            self._publish(city_id, new)
        self.metrics.swaps.labels(city_id).inc()
        self.metrics.loads.labels(city_id).inc()
        logger.info("swapped %s: v%s -> v%s", ref.name, current.version, new.version)
        return True

    def poll_once(self) -> None:
        """One registry round: refresh every loaded city, retry hot cities not loaded yet."""
        for city_id in [m.city.id for m in self.loaded()]:
            self.refresh(city_id)
        for city_id in self.settings.hot_cities:
            if self._peek(city_id) is None:
                try:
                    self.load(city_id)
                except MatchmakingError as exc:
                    logger.warning("hot city %s not loaded: %s", city_id, exc)

    def preload(self) -> None:
        """Load the hot set (failures are logged; the poller retries them)."""
        for city_id in self.settings.hot_cities:
            try:
                self.load(city_id)
            except MatchmakingError as exc:
                logger.warning("hot city %s not loaded: %s", city_id, exc)

    def missing_hot_cities(self) -> list[str]:
        """Hot cities that are not in memory (readiness)."""
        return [c for c in self.settings.hot_cities if self._peek(c) is None]

    # -- internals -------------------------------------------------------------------------

    def _load_version(self, ref: VersionRef, city: Market) -> LoadedModel:
        return load_version(
            self.client,
            ref,
            city,
            self.uri,
            compile_cache=self.settings.compile_cache_dir,
            compile_forests=self.settings.compile_forests,
        )

    def _peek(self, city_id: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(city_id)

    def _city_lock(self, city_id: str) -> threading.Lock:
        with self._lock:
            return self._city_locks.setdefault(city_id, threading.Lock())

    def _resolve(self, city_id: str) -> VersionRef:
        """Ask the registry, recording whether it answered."""
        try:
            ref = resolve_production(self.client, self.model_name(city_id))
        except TrackingError as exc:
            self.metrics.registry_errors.inc()
            self.metrics.registry_up.set(0)
            self._status = RegistryStatus(
                False, self._status.last_success_at, str(exc), time.time()
            )
            logger.error("%s", exc)
            raise
        except ModelNotFoundError:
            self._registry_answered()
            raise
        self._registry_answered()
        return ref

    def _registry_answered(self) -> None:
        now = time.time()
        self.metrics.registry_up.set(1)
        self.metrics.registry_last_success.set(now)
        self._status = RegistryStatus(
            True, now, self._status.last_error, self._status.last_error_at
        )

    def _publish(self, city_id: str, model: LoadedModel) -> None:
        """Make ``model`` the one served for ``city_id`` (one assignment), evicting by LRU."""
        evicted: list[LoadedModel] = []
        with self._lock:
            old = self._models.get(city_id)
            self._models[city_id] = model
            self._models.move_to_end(city_id)
            while len(self._models) > self.settings.max_models:
                _, gone = self._models.popitem(last=False)
                evicted.append(gone)
            self.metrics.models_loaded.set(len(self._models))
        if old is not None and old.name != model.name:
            self.metrics.model_version.remove(city_id, old.name)
        self.metrics.model_version.labels(city_id, model.name).set(float(model.version))
        for gone in evicted:
            self.metrics.evictions.inc()
            self.metrics.model_version.remove(gone.city.id, gone.name)
            logger.info(
                "evicted %s v%s (LRU, max_models=%d)",
                gone.name,
                gone.version,
                self.settings.max_models,
            )
