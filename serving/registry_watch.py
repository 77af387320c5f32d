"""The models in memory: lazy loading, an LRU bound, one registry search per poll, live swaps.

Models are keyed by registered-model name (``conventions.model_name``), so the service holds any
number of them up to ``max_models`` (the hot cities' models are pinned: never evicted). Readers
take a model with ``ModelStore.get`` (a dict lookup) and keep that reference for the whole
request, so a request that started on version N finishes on N. A model is published as soon as
its booster is loaded; its compiled forest follows from the background ``Compiler`` and is
published the same way, by one assignment under the lock.

Every poll asks the registry once, however many models are loaded: one paged
``search_registered_models`` over the prefix returns every model's aliases and latest version
per stage (``RegistrySnapshot``). Only a model whose Production version changed costs more (its
version's details, then its two files). When the registry cannot be reached, the poller records
it (``/readyz``, ``/metrics``) and the loaded models keep serving. A rollback (the alias moved
back) is just another version change. An MLflow webhook delivery can start a poll at once
(``routes/registry.py``); polling stays the fallback.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.errors import MatchmakingError, ModelNotFoundError, TrackingError
from matchmaking.markets import Market, get_market
from matchmaking.registry import conventions
from matchmaking.scorer import score_kind_of
from serving.compile import Compiler
from serving.metrics import Metrics
from serving.models import LoadedModel, VersionRef, load_version, resolve_production
from serving.settings import ServeSettings

logger = logging.getLogger(__name__)

#: Page size of the poll's registry search (the most a tracking server returns per page).
SEARCH_PAGE = 1000


@dataclass(frozen=True)
class RegistryStatus:
    """What the service last heard from the registry."""

    reachable: bool | None  # None: not asked yet
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None


@dataclass(frozen=True)
class Registered:
    """One registered model as the poll's search returned it."""

    name: str
    alias_version: str | None  # the version at alias ``production``
    staged: ModelVersion | None  # the latest version in stage Production
    challenger_version: str | None = None  # the version at alias ``challenger``
    tags: dict[str, str] = field(default_factory=dict)  # the registered model's tags

    @property
    def production(self) -> str | None:
        """The Production version, as ``registry.production.resolve_production`` reads it."""
        if self.alias_version is not None:
            return self.alias_version
        return None if self.staged is None else str(self.staged.version)


@dataclass(frozen=True)
class Traffic:
    """How a city's bookings are served beside its Production model: the challenger (if any),
    its share and mode, and the exploration temperature (None: greedy)."""

    challenger: LoadedModel | None = None
    share: float = 0.0
    mode: str = conventions.CHALLENGER_SPLIT
    temperature: float | None = None


def _share(tags: dict[str, str], name: str) -> float:
    raw = tags.get(conventions.CHALLENGER_SHARE_TAG)
    if raw is None:
        return 0.0
    try:
        share = float(raw)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:
        logger.warning(
            "%s: tag %s=%r is not a share in [0, 1]; the challenger gets no traffic",
            name,
            conventions.CHALLENGER_SHARE_TAG,
            raw,
        )
        return 0.0
    return share


def _mode(tags: dict[str, str], name: str) -> str:
    mode = tags.get(conventions.CHALLENGER_MODE_TAG, conventions.CHALLENGER_SPLIT)
    if mode not in conventions.CHALLENGER_MODES:
        logger.warning(
            "%s: tag %s=%r is not one of %s; running the challenger in shadow",
            name,
            conventions.CHALLENGER_MODE_TAG,
            mode,
            ", ".join(conventions.CHALLENGER_MODES),
        )
        return conventions.CHALLENGER_SHADOW
    return mode


def _temperature(tags: dict[str, str], name: str, default: float | None) -> float | None:
    raw = tags.get(conventions.EXPLORATION_TAG)
    if raw is None:
        return default or None
    try:
        t = float(raw)
    except ValueError:
        t = float("nan")
    if not 0.0 <= t < float("inf"):
        logger.warning(
            "%s: tag %s=%r is not a temperature >= 0; using the setting (%s)",
            name,
            conventions.EXPLORATION_TAG,
            raw,
            default,
        )
        return default or None
    return t or None


class ModelStore:
    """Production models by registered-model name, at most ``max_models`` of them (least
    recently used out, hot cities pinned)."""

    def __init__(
        self,
        settings: ServeSettings,
        metrics: Metrics,
        client: MlflowClient | None = None,
        compiler: Compiler | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.uri = settings.resolved_tracking_uri()
        self.client = client or MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.prefix = settings.resolved_model_name_prefix()
        self.compiler = compiler or Compiler(
            metrics,
            workers=settings.compile_workers,
            cache_dir=settings.compile_cache_dir,
            enabled=settings.compile_forests,
        )
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._pinned = {self.model_name(c) for c in settings.hot_cities}
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._status = RegistryStatus(None, None, None, None)
        self._thread_calls = threading.local()  # registry calls made by this thread
        # city -> (monotonic time until which the failure stands, the error): a city whose load
        # failed is not retried by every request, only once per FAILURE_TTL_S.
        self._failures: dict[str, tuple[float, MatchmakingError]] = {}
        # model name -> its traffic (challenger, share, mode, exploration), set by the poll.
        self._traffic: dict[str, Traffic] = {}
        # model name -> the challenger version whose load failed (retried when the alias moves).
        self._challenger_failed: dict[str, str] = {}

    # -- reading (request path) ------------------------------------------------------------

    def get(self, city: str) -> LoadedModel | None:
        """The loaded model of ``city`` (marks it recently used), or None."""
        name = self.model_name(city)
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
            return model

    def loaded(self) -> list[LoadedModel]:
        """A snapshot of the loaded models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def traffic(self, city: str) -> Traffic:
        """The city's traffic as of the last poll (before any: no challenger, the
        exploration setting)."""
        found = self._traffic.get(self.model_name(city))
        if found is not None:
            return found
        return Traffic(temperature=self.settings.exploration.get(city) or None)

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

        Only the booster is loaded here (it serves at once); the compiled forest follows in
        the background.

        Raises:
            UnknownCityError: the city is not in the catalogue.
            ModelNotFoundError: the city has no Production version.
            TrackingError: the registry could not be reached.
        """
        city = get_market(city_id)
        model = self.get(city_id)
        if model is not None:
            return model
        name = self.model_name(city_id)
        with self._name_lock(name):
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
            self._publish(model)
            self.metrics.loads.labels(city_id).inc()
        self.compiler.submit(model, self._publish_compiled)
        return model

    def refresh(self, city_id: str) -> bool:
        """Swap in the city's current Production version if it changed; True when swapped.

        Asks the registry for this one model (``poll_once`` asks for all of them at once).
        Errors are recorded and never reach the caller: the loaded model keeps serving.
        """
        current = self._peek(self.model_name(city_id))
        if current is None:
            return False
        try:
            ref = self._resolve(city_id)
        except ModelNotFoundError as exc:
            logger.warning("%s; still serving v%s", exc, current.version)
            return False
        except TrackingError:
            return False
        return self._swap(current, ref)

    def poll_once(self) -> None:
        """One registry round: one paged search for every model, swaps where Production moved,
        then the hot cities not loaded yet."""
        started = time.perf_counter()
        calls_before = self._calls_here()
        try:
            snapshot = self.search()
        except TrackingError:
            snapshot = None
        if snapshot is not None:
            for current in self.loaded():
                self._follow(current, snapshot.get(current.name))
                self._follow_traffic(current, snapshot.get(current.name))
        for city_id in self.settings.hot_cities:
            if self._peek(self.model_name(city_id)) is None:
                try:
                    self.load(city_id)
                except MatchmakingError as exc:
                    logger.warning("hot city %s not loaded: %s", city_id, exc)
        self.metrics.registry_poll_seconds.observe(time.perf_counter() - started)
        self.metrics.registry_poll_calls.set(self._calls_here() - calls_before)

    def search(self) -> dict[str, Registered]:
        """Every registered model of the prefix with its Production version: one paged
        ``search_registered_models`` (one call per ``SEARCH_PAGE`` models).

        Raises:
            TrackingError: the registry failed or could not be reached (recorded in status).
        """
        found: dict[str, Registered] = {}
        token: str | None = None
        head = f"{self.prefix}-"
        try:
            while True:
                self._count("search")
                page = self.client.search_registered_models(
                    filter_string=f"name LIKE '{head}%'",
                    max_results=SEARCH_PAGE,
                    page_token=token,
                )
                for rm in page:
                    if not rm.name.startswith(head):  # LIKE's _ matches any character
                        continue
                    staged = [
                        mv
                        for mv in rm.latest_versions or []
                        if mv.current_stage == conventions.PRODUCTION_STAGE
                    ]
                    aliases = rm.aliases or {}
                    alias = aliases.get(conventions.PRODUCTION_ALIAS)
                    challenger = aliases.get(conventions.CHALLENGER_ALIAS)
                    found[rm.name] = Registered(
                        rm.name,
                        None if alias is None else str(alias),
                        staged[0] if staged else None,
                        None if challenger is None else str(challenger),
                        dict(rm.tags or {}),
                    )
                token = page.token
                if not token:
                    break
        except (MlflowException, OSError) as exc:
            self._registry_failed(f"registry search failed: {exc}")
            raise TrackingError(f"registry search failed: {exc}") from exc
        self._registry_answered()
        self.metrics.registry_models_seen.set(len(found))
        return found

    def preload(self) -> None:
        """Load the hot set (failures are logged; the poller retries them)."""
        for city_id in self.settings.hot_cities:
            try:
                self.load(city_id)
            except MatchmakingError as exc:
                logger.warning("hot city %s not loaded: %s", city_id, exc)

    def missing_hot_cities(self) -> list[str]:
        """Hot cities that are not in memory (readiness)."""
        return [c for c in self.settings.hot_cities if self._peek(self.model_name(c)) is None]

    def close(self) -> None:
        """Stop the background compilations."""
        self.compiler.shutdown()

    # -- internals -------------------------------------------------------------------------

    def _follow(self, current: LoadedModel, registered: Registered | None) -> None:
        """Swap ``current`` to the Production version the search found, if it moved."""
        if registered is None:
            logger.warning(
                "%s is no longer registered; still serving v%s", current.name, current.version
            )
            return
        wanted = registered.production
        if wanted is None:
            logger.warning(
                "%s has no Production version any more; still serving v%s",
                current.name,
                current.version,
            )
            return
        if wanted == current.version:
            return
        try:
            ref = self._ref(registered, wanted)
        except TrackingError:
            return
        except ModelNotFoundError as exc:
            logger.warning("%s; still serving v%s", exc, current.version)
            return
        self._swap(current, ref)

    def _follow_traffic(self, current: LoadedModel, registered: Registered | None) -> None:
        """Take the challenger, its share and mode, and the exploration temperature from the
        search (the registered model's aliases and tags); the challenger's files are fetched
        only when its alias names a version not held yet."""
        name, city = current.name, current.city.id
        default_t = self.settings.exploration.get(city)
        if registered is None:
            self._traffic.pop(name, None)
            return
        tags = registered.tags
        temperature = _temperature(tags, name, default_t)
        held = self._traffic.get(name)
        wanted = registered.challenger_version
        challenger = None
        if wanted is not None and wanted != current.version:
            if (
                held is not None
                and held.challenger is not None
                and held.challenger.version == wanted
            ):
                challenger = held.challenger
            elif self._challenger_failed.get(name) != wanted:
                challenger = self._load_challenger(name, wanted, current)
        elif held is not None and held.challenger is not None:
            logger.info(
                "%s: challenger v%s is no longer under its alias", name, held.challenger.version
            )
        share = _share(tags, name) if challenger is not None else 0.0
        mode = _mode(tags, name)
        new = Traffic(challenger, share, mode, temperature)
        if new != held:
            self._traffic[name] = new
            if challenger is not None and (
                held is None
                or held.challenger is not challenger
                or held.share != share
                or held.mode != mode
            ):
                logger.info(
                    "%s: challenger v%s, %s, share %g", name, challenger.version, mode, share
                )
            self._challenger_metrics(city, new)

    def _load_challenger(self, name: str, version: str, current: LoadedModel) -> LoadedModel | None:
        self._count("get_model_version")
        try:
            mv = self.client.get_model_version(name, version)
            tags = dict(mv.tags or {})
            ref = VersionRef(
                name=name,
                version=str(mv.version),
                run_id=mv.run_id,
                source=f"alias:{conventions.CHALLENGER_ALIAS}",
                score_kind=score_kind_of(tags, f"{name} v{mv.version}"),
                tags=tags,
            )
            model = self._load_version(ref, current.city)
        except (MlflowException, OSError, MatchmakingError) as exc:
            self._challenger_failed[name] = version
            logger.error(
                "challenger %s v%s not loaded (no challenger traffic): %s", name, version, exc
            )
            return None
        self._challenger_failed.pop(name, None)
        self.metrics.loads.labels(current.city.id).inc()
        return model

    def _challenger_metrics(self, city: str, traffic: Traffic) -> None:
        gauge = self.metrics.challenger_share
        for mode in conventions.CHALLENGER_MODES:
            with contextlib.suppress(KeyError):
                gauge.remove(city, mode)
        if traffic.challenger is not None:
            gauge.labels(city, traffic.mode).set(traffic.share)

    def _ref(self, registered: Registered, version: str) -> VersionRef:
        """The details of the version the search named (one call, unless the stage's entry
        already carries them)."""
        name = registered.name
        if registered.alias_version is None and registered.staged is not None:
            mv = registered.staged
            source = f"stage:{conventions.PRODUCTION_STAGE}"
        else:
            self._count("get_model_version")
            try:
                mv = self.client.get_model_version(name, version)
            except MlflowException as exc:
                self._registry_failed(f"registry error reading {name} v{version}: {exc}")
                raise TrackingError(str(exc)) from exc
            except OSError as exc:
                self._registry_failed(f"registry unreachable reading {name} v{version}: {exc}")
                raise TrackingError(str(exc)) from exc
            source = f"alias:{conventions.PRODUCTION_ALIAS}"
        tags = dict(mv.tags or {})
        return VersionRef(
            name=name,
            version=str(mv.version),
            run_id=mv.run_id,
            source=source,
            score_kind=score_kind_of(tags, f"{name} v{mv.version}"),
            tags=tags,
        )

    def _swap(self, current: LoadedModel, ref: VersionRef) -> bool:
        with self._name_lock(current.name):
            now = self._peek(current.name)
            if now is None or ref.version == now.version:
                return False
            try:
                new = self._load_version(ref, now.city)
            except MatchmakingError as exc:
                self.metrics.swap_failures.labels(now.city.id).inc()
                logger.error(
                    "swap of %s to v%s failed, still serving v%s: %s",
                    ref.name,
                    ref.version,
                    now.version,
                    exc,
                )
                return False
            self._publish(new)
        self.metrics.swaps.labels(new.city.id).inc()
        self.metrics.loads.labels(new.city.id).inc()
        logger.info("swapped %s: v%s -> v%s", ref.name, now.version, new.version)
        self.compiler.submit(new, self._publish_compiled)
        return True

    def _load_version(self, ref: VersionRef, city: Market) -> LoadedModel:
        self._count("download")
        return load_version(self.client, ref, city, self.uri)

    def _count(self, call: str) -> None:
        """Count one registry call (``/metrics``, and this thread's tally for the poll)."""
        self.metrics.registry_calls.labels(call).inc()
        self._thread_calls.n = self._calls_here() + 1

    def _calls_here(self) -> int:
        n: int = getattr(self._thread_calls, "n", 0)
        return n

    def _peek(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(name)

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _resolve(self, city_id: str) -> VersionRef:
        """Ask the registry for one model's Production version, recording whether it answered."""
        self._count("resolve")
        try:
            ref = resolve_production(self.client, self.model_name(city_id))
        except TrackingError as exc:
            self._registry_failed(str(exc))
            raise
        except ModelNotFoundError:
            self._registry_answered()
            raise
        self._registry_answered()
        return ref

    def _registry_failed(self, error: str) -> None:
        self.metrics.registry_errors.inc()
        self.metrics.registry_up.set(0)
        self._status = RegistryStatus(False, self._status.last_success_at, error, time.time())
        logger.error("%s", error)

    def _registry_answered(self) -> None:
        now = time.time()
        self.metrics.registry_up.set(1)
        self.metrics.registry_last_success.set(now)
        self._status = RegistryStatus(
            True, now, self._status.last_error, self._status.last_error_at
        )

    def _publish_compiled(self, model: LoadedModel) -> bool:
        """Republish ``model`` (now compiled) if its version is still the one served."""
        with self._lock:
            current = self._models.get(model.name)
            if current is None or current.version != model.version or current.compiled:
                return False
            self._models[model.name] = model  # same place in the LRU order
        self._engine_metrics(model, None)
        return True

    def _publish(self, model: LoadedModel) -> None:
        """Make ``model`` the one served under its name (one assignment), evicting by LRU
        (never a pinned hot city's model)."""
        evicted: list[LoadedModel] = []
        with self._lock:
            old = self._models.get(model.name)
            self._models[model.name] = model
            self._models.move_to_end(model.name)
            excess = len(self._models) - self.settings.max_models
            if excess > 0:
                for name in [n for n in self._models if n not in self._pinned][:excess]:
                    evicted.append(self._models.pop(name))
            self.metrics.models_loaded.set(len(self._models))
        self.metrics.model_version.labels(model.city.id, model.name).set(float(model.version))
        self._engine_metrics(model, old)
        for gone in evicted:
            self.metrics.evictions.inc()
            self.metrics.model_version.remove(gone.city.id, gone.name)
            self._engine_metrics(None, gone)
            logger.info(
                "evicted %s v%s (LRU, max_models=%d)",
                gone.name,
                gone.version,
                self.settings.max_models,
            )

    def _engine_metrics(self, new: LoadedModel | None, old: LoadedModel | None) -> None:
        gauge = self.metrics.model_engine
        for m in (old, new):
            if m is not None:
                for engine in ("lleaves", "lightgbm"):
                    with contextlib.suppress(KeyError):
                        gauge.remove(m.city.id, m.name, engine)
        if new is not None:
            gauge.labels(new.city.id, new.name, new.engine).set(1)
