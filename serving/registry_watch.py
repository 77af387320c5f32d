"""The models in memory: lazy loading, an LRU bound, one registry search per poll, live swaps.

Models are keyed by registered-model name (``conventions.model_name``), so the service holds any
number of them up to ``max_models`` (the hot cities' models are pinned: never evicted). Readers
take a model with ``ModelStore.get`` (a dict lookup) and keep that reference for the whole
request, so a request that started on version N finishes on N. A model is published as soon as
its booster is loaded; its compiled forest follows from the background ``Compiler`` and is
published the same way, by one assignment under the lock.

Every poll asks the registry once, however many models are loaded: one paged registered-model
search over the prefix returns every model's aliases and latest version per stage
(``registry_search``: decoded by msgspec from a tracking server, so that a poll of 1,000 models
holds the GIL for milliseconds, not the ~90 ms of MLflow's protobuf entities). Only a model
whose Production version changed costs more (its version's details, then its two files). When
the registry cannot be reached, the poller records it (``/readyz``, ``/metrics``) and the
loaded models keep serving. A rollback (the alias moved back) is just another version change.
An MLflow webhook delivery can start a poll at once
(``routes/registry.py``); polling stays the fallback.

Which model serves a city is its **route** (``Route``): its own Production model, or its
country's pooled one (``<prefix>-country-<cc>``). ``decide`` reads it from the same search
(docs/pooled.md): the ``serving.*`` tags ``matchmaking scope`` writes on the city's registered
model, else the city's own Production version, else its country's. A city with no model of its
own, a new market among them, is served by its country's model from its first request. Each
poll decides every routed city again from that one search and switches a route live when the
decision changed (the new model loaded first, then the route flipped by one assignment), so the
registry calls per poll stay constant in the number of models and cities.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
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
from serving.registry_search import StagedVersion, search_pages
from serving.settings import ServeSettings

logger = logging.getLogger(__name__)

#: Page size of the poll's registry search (the most a tracking server returns per page).
SEARCH_PAGE = 1000


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``).

    The service holds a few hundred thousand long-lived objects (MLflow, pandas, LightGBM,
    every loaded model); a full collection walks all of them: about 100 ms holding the GIL on
    these machines, and the decision log's queued records (alive for a flush interval, then
    freed) trigger one every few flushes. Frozen objects are never walked again; called after
    start-up and after each model load, so the generations hold only what requests and the
    log create since. Cyclic garbage alive at the moment of a freeze is never reclaimed: a
    model load's few transient objects, once per load.
    """
    gc.freeze()


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
    staged: StagedVersion | None  # the latest version in stage Production
    challenger_version: str | None = None  # the version at alias ``challenger``
    tags: dict[str, str] = field(default_factory=dict)  # the registered model's tags

    @property
    def production(self) -> str | None:
        """The Production version, as ``registry.production.resolve_production`` reads it."""
        if self.alias_version is not None:
            return self.alias_version
        return None if self.staged is None else str(self.staged.version)


@dataclass(frozen=True)
class Route:
    """Which registered model serves a city, and why (``decide``)."""

    name: str  # ``<prefix>-<city>`` or ``<prefix>-country-<cc>``
    scope: str  # ``city`` or ``country``
    reason: str
    country: str | None = None  # alpha-2, for a country route


def _scope_tag_holds(own: Registered, country: Registered, country_name: str) -> bool:
    """Whether the ``serving.scope=country`` choice on ``own`` still stands: it names this
    country model and the Production versions it compared are still the current ones (a
    Production moved since, by hand, makes it stale: docs/pooled.md)."""
    tags = own.tags
    return (
        tags.get(conventions.SERVING_SCOPE_TAG) == conventions.SCOPE_COUNTRY
        and tags.get(conventions.SERVING_MODEL_TAG, country_name) == country_name
        and tags.get(conventions.SERVING_CITY_VERSION_TAG, "") == (own.production or "")
        and tags.get(conventions.SERVING_COUNTRY_VERSION_TAG, "") == (country.production or "")
    )


def decide(
    city: str, own_name: str, country_name: str, snapshot: dict[str, Registered]
) -> Route | None:
    """The route of ``city`` from one registry search (None: nothing servable), in order:

    1. its registered model says ``serving.scope=country`` (``matchmaking scope``'s choice,
       still current) and the country model has a Production version: the country model;
    2. it has a Production version of its own: its own model;
    3. its country's model has a Production version: the country model (no model of its own,
       a new market among them).
    """
    own, pooled = snapshot.get(own_name), snapshot.get(country_name)
    country = get_market(city).country
    pooled_ok = pooled is not None and pooled.production is not None
    if (
        own is not None
        and pooled is not None
        and pooled_ok
        and _scope_tag_holds(own, pooled, country_name)
    ):
        reason = own.tags.get(conventions.SERVING_REASON_TAG, "serving.scope=country")
        return Route(country_name, conventions.SCOPE_COUNTRY, reason, country)
    if own is not None and own.production is not None:
        return Route(own_name, conventions.SCOPE_CITY, "its own Production model")
    if pooled_ok:
        return Route(
            country_name,
            conventions.SCOPE_COUNTRY,
            "no Production model of its own: its country's model serves it",
            country,
        )
    return None


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
        # city -> which model serves it (set by its first load, moved by the poll).
        self._routes: dict[str, Route] = {}
        # The last search's answer (None before the first one): routes are decided from it.
        self._snapshot: dict[str, Registered] | None = None
        # country-scoped city -> its exploration (no challenger: docs/pooled.md).
        self._city_traffic: dict[str, Traffic] = {}
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
        """The loaded model serving ``city`` (its route's; marks it recently used), or None."""
        name = self._route_name(city)
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
        exploration setting). A city served by its country's model gets no challenger (a
        challenger is a version of the city's own model, compared with its own Production):
        only its exploration temperature."""
        route = self._routes.get(city)
        if route is not None and route.scope == conventions.SCOPE_COUNTRY:
            held = self._city_traffic.get(city)
            if held is not None:
                return held
        else:
            found = self._traffic.get(self.model_name(city))
            if found is not None:
                return found
        return Traffic(temperature=self.settings.exploration.get(city) or None)

    def route(self, city: str) -> Route | None:
        """Which model serves ``city`` (None: not routed yet)."""
        return self._routes.get(city)

    def routes(self) -> dict[str, Route]:
        """A snapshot of every city's route."""
        return dict(self._routes)

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
        """The model serving ``city_id`` (its own or its country's: ``_find``), loading it
        from the registry when not in memory, and the city's route.

        Only the booster is loaded here (it serves at once); the compiled forest follows in
        the background.

        Raises:
            UnknownCityError: the city is not in the catalogue.
            ModelNotFoundError: neither the city nor its country has a Production version.
            TrackingError: the registry could not be reached.
        """
        city = get_market(city_id)
        model = self.get(city_id)
        if model is not None:
            return model
        with self._name_lock(f"city:{city_id}"):
            model = self.get(city_id)  # another thread may have loaded it meanwhile
            if model is not None:
                return model
            failed = self._failures.get(city_id)
            if failed is not None and time.monotonic() < failed[0]:
                raise failed[1]
            try:
                route, ref = self._find(city)
                model, loaded = self._held_or_loaded(route, ref, city)
            except MatchmakingError as exc:
                self.metrics.load_failures.labels(city_id).inc()
                self._failures[city_id] = (time.monotonic() + self.failure_ttl_s, exc)
                raise
            self._failures.pop(city_id, None)
            self._set_route(city_id, route, model)
        if loaded:
            self.compiler.submit(model, self._publish_compiled)
        return model

    def poll_once(self) -> None:
        """One registry round: one paged search for every model, swaps where Production moved,
        then the hot cities not loaded yet."""
        started, cpu = time.perf_counter(), time.thread_time()
        calls_before = self._calls_here()
        try:
            snapshot = self.search()
        except TrackingError:
            snapshot = None
        if snapshot is not None:
            self._snapshot = snapshot
            for current in self.loaded():
                self._follow(current, snapshot.get(current.name))
                self._follow_traffic(current, snapshot.get(current.name))
            self._reroute(snapshot)
        for city_id in self.settings.hot_cities:
            if self.get(city_id) is None:
                try:
                    self.load(city_id)
                except MatchmakingError as exc:
                    logger.warning("hot city %s not loaded: %s", city_id, exc)
        self.metrics.registry_poll_seconds.observe(time.perf_counter() - started)
        self.metrics.registry_poll_cpu_seconds.observe(time.thread_time() - cpu)
        self.metrics.registry_poll_calls.set(self._calls_here() - calls_before)

    def search(self) -> dict[str, Registered]:
        """Every registered model of the prefix with its Production version: one paged
        ``search_registered_models`` (one call per ``SEARCH_PAGE`` models).

        Raises:
            TrackingError: the registry failed or could not be reached (recorded in status).
        """
        found: dict[str, Registered] = {}
        head = f"{self.prefix}-"
        try:
            for page in search_pages(
                self.client,
                f"name LIKE '{head}%'",
                SEARCH_PAGE,
                on_call=lambda: self._count("search"),
            ):
                for rm in page:
                    if not rm.name.startswith(head):  # LIKE's _ matches any character
                        continue
                    found[rm.name] = Registered(
                        rm.name,
                        rm.aliases.get(conventions.PRODUCTION_ALIAS),
                        rm.staged,
                        rm.aliases.get(conventions.CHALLENGER_ALIAS),
                        rm.tags,
                    )
        except (MlflowException, OSError) as exc:
            self._registry_failed(f"registry search failed: {exc}")
            raise TrackingError(f"registry search failed: {exc}") from exc
        self._registry_answered()
        self.metrics.registry_models_seen.set(len(found))
        return found

    def preload(self) -> None:
        """One search (the routes' scope tags), then the hot set (failures are logged; the
        poller retries them)."""
        with contextlib.suppress(TrackingError):
            self._snapshot = self.search()
        for city_id in self.settings.hot_cities:
            try:
                self.load(city_id)
            except MatchmakingError as exc:
                logger.warning("hot city %s not loaded: %s", city_id, exc)

    def missing_hot_cities(self) -> list[str]:
        """Hot cities that are not in memory (readiness)."""
        return [c for c in self.settings.hot_cities if self._peek(self._route_name(c)) is None]

    def close(self) -> None:
        """Stop the background compilations."""
        self.compiler.shutdown()

    # -- routes ----------------------------------------------------------------------------

    def _route_name(self, city: str) -> str:
        route = self._routes.get(city)
        return route.name if route is not None else self.model_name(city)

    def _country_name(self, market: Market) -> str:
        return conventions.country_model_name(self.prefix, market.country)

    def _find(self, city: Market) -> tuple[Route, Callable[[], VersionRef]]:
        """The route of a city not loaded yet and how to get the version to load: decided
        from the last search when it names a servable model (the version's details are asked
        only if the model is not in memory yet), else asked of the registry directly (the
        city's own model, then its country's), so a model registered since the last poll is
        found at once.

        Raises:
            ModelNotFoundError: neither the city nor its country has a Production version.
            TrackingError: the registry could not be reached.
        """
        own, pooled = self.model_name(city.id), self._country_name(city)
        snapshot = self._snapshot
        if snapshot is not None:
            route = decide(city.id, own, pooled, snapshot)
            if route is not None:
                registered = snapshot[route.name]
                return route, lambda: self._ref(registered, registered.production or "")
        try:
            ref = self._resolve(own)
            return Route(own, conventions.SCOPE_CITY, "its own Production model"), lambda: ref
        except ModelNotFoundError as own_missing:
            try:
                ref = self._resolve(pooled)
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(
                    f"{city.id}: no Production model of its own ({own_missing}) nor of its "
                    f"country {city.country} ({exc})"
                ) from None
        reason = "no Production model of its own: its country's model serves it"
        return Route(pooled, conventions.SCOPE_COUNTRY, reason, city.country), lambda: ref

    def _held_or_loaded(
        self, route: Route, ref: Callable[[], VersionRef], city: Market
    ) -> tuple[LoadedModel, bool]:
        """The route's model: the one in memory when it is there (a country model another
        city loaded), else ``ref()`` loaded and published. True when it was loaded here."""
        with self._name_lock(route.name):
            held = self._peek(route.name)
            if held is not None:
                return held, False
            model = self._load_version(ref(), None if route.country else city, route.country)
            self._publish(model)
        self.metrics.loads.labels(model.label).inc()
        return model, True

    def _set_route(self, city: str, route: Route, model: LoadedModel) -> None:
        """Point ``city`` at ``route`` (one assignment) and say so in ``/metrics``."""
        old = self._routes.get(city)
        self._routes[city] = route
        gauge = self.metrics.city_model
        if old is not None and (old.name, old.scope) != (route.name, route.scope):
            with contextlib.suppress(KeyError):
                gauge.remove(city, old.name, old.scope)
        gauge.labels(city, route.name, route.scope).set(float(model.version))
        if old is None or old.name != route.name:
            logger.info("%s: served by %s v%s (%s)", city, route.name, model.version, route.reason)
        if route.scope == conventions.SCOPE_COUNTRY:
            self._city_traffic[city] = self._country_scoped_traffic(city, self._snapshot)
            self._challenger_metrics(city, Traffic())  # no challenger traffic

    def _country_scoped_traffic(self, city: str, snapshot: dict[str, Registered] | None) -> Traffic:
        """A country-scoped city's traffic: no challenger; the exploration temperature of its
        own registered model's tag (when it has one), else the setting."""
        own = (snapshot or {}).get(self.model_name(city))
        tags = own.tags if own is not None else {}
        return Traffic(
            temperature=_temperature(
                tags, self.model_name(city), self.settings.exploration.get(city)
            )
        )

    def _reroute(self, snapshot: dict[str, Registered]) -> None:
        """Decide every routed city again from this search; switch the ones whose decision
        changed (a city's own model reached Production, a scope tag flipped). The new model is
        loaded before the route moves: requests never wait, a failed load keeps the old route."""
        for city_id, route in list(self._routes.items()):
            city = get_market(city_id)
            new = decide(city_id, self.model_name(city_id), self._country_name(city), snapshot)
            if new is None:
                continue  # nothing servable any more: keep serving what is loaded
            if new.country is not None:
                self._city_traffic[city_id] = self._country_scoped_traffic(city_id, snapshot)
            if new.name == route.name:
                if new != route:
                    self._routes[city_id] = new  # a new reason only
                continue
            registered = snapshot[new.name]
            ref = functools.partial(self._ref, registered, registered.production or "")
            try:
                with self._name_lock(f"city:{city_id}"):
                    model, loaded = self._held_or_loaded(new, ref, city)
                    self._set_route(city_id, new, model)
            except MatchmakingError as exc:
                self.metrics.swap_failures.labels(city_id).inc()
                logger.error(
                    "%s: switching to %s failed, still served by %s: %s",
                    city_id,
                    new.name,
                    route.name,
                    exc,
                )
                continue
            self.metrics.swaps.labels(city_id).inc()
            if loaded:
                self.compiler.submit(model, self._publish_compiled)
            if new.scope == conventions.SCOPE_CITY:
                self._city_traffic.pop(city_id, None)
            self._release(route.name)

    def _release(self, name: str) -> None:
        """Drop a model no route points to any more (unless a hot city's)."""
        if name in self._pinned() or any(r.name == name for r in self._routes.values()):
            return
        with self._lock:
            gone = self._models.pop(name, None)
            self.metrics.models_loaded.set(len(self._models))
        if gone is not None:
            self._forget_metrics(gone)
            self._traffic.pop(name, None)
            logger.info("released %s v%s: no city is routed to it", gone.name, gone.version)

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
        if current.city is None or current.name != self._route_name(current.city.id):
            return  # a country model, or a city model not serving: traffic is ``traffic``'s
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
        if current.city is None:
            return None
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
        self.metrics.loads.labels(current.label).inc()
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
        mv: StagedVersion | ModelVersion
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
                new = self._load_version(ref, now.city, now.country)
            except MatchmakingError as exc:
                self.metrics.swap_failures.labels(now.label).inc()
                logger.error(
                    "swap of %s to v%s failed, still serving v%s: %s",
                    ref.name,
                    ref.version,
                    now.version,
                    exc,
                )
                return False
            self._publish(new)
        self.metrics.swaps.labels(new.label).inc()
        self.metrics.loads.labels(new.label).inc()
        for city_id, route in list(self._routes.items()):
            if route.name == new.name:
                self.metrics.city_model.labels(city_id, route.name, route.scope).set(
                    float(new.version)
                )
        logger.info("swapped %s: v%s -> v%s", ref.name, now.version, new.version)
        self.compiler.submit(new, self._publish_compiled)
        return True

    def _load_version(
        self, ref: VersionRef, city: Market | None, country: str | None = None
    ) -> LoadedModel:
        self._count("download")
        model = load_version(self.client, ref, city, self.uri, country)
        freeze_heap()
        return model

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

    def _resolve(self, name: str) -> VersionRef:
        """Ask the registry for one model's Production version, recording whether it answered."""
        self._count("resolve")
        try:
            ref = resolve_production(self.client, name)
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
                pinned = self._pinned()
                for name in [n for n in self._models if n not in pinned][:excess]:
                    evicted.append(self._models.pop(name))
            self.metrics.models_loaded.set(len(self._models))
        self.metrics.model_version.labels(model.label, model.name).set(float(model.version))
        self._engine_metrics(model, old)
        for gone in evicted:
            self.metrics.evictions.inc()
            self._forget_metrics(gone)
            logger.info(
                "evicted %s v%s (LRU, max_models=%d)",
                gone.name,
                gone.version,
                self.settings.max_models,
            )

    def _pinned(self) -> set[str]:
        """Models never evicted: those serving the hot cities (their routes' models; a hot
        city not routed yet: its own model's name)."""
        return {self._route_name(c) for c in self.settings.hot_cities}

    def _forget_metrics(self, gone: LoadedModel) -> None:
        with contextlib.suppress(KeyError):
            self.metrics.model_version.remove(gone.label, gone.name)
        self._engine_metrics(None, gone)

    def _engine_metrics(self, new: LoadedModel | None, old: LoadedModel | None) -> None:
        gauge = self.metrics.model_engine
        for m in (old, new):
            if m is not None:
                for engine in ("lleaves", "lightgbm"):
                    with contextlib.suppress(KeyError):
                        gauge.remove(m.label, m.name, engine)
        if new is not None:
            gauge.labels(new.label, new.name, new.engine).set(1)
