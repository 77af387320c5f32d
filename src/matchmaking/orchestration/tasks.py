"""The bodies of the DAG tasks: plain functions, testable without Airflow.

Every value they take and return is JSON (XCom and asset-event extras): city ids, ISO dates,
dataset URIs and MLflow run ids. Windows follow from the run's day (``data_windows``): the run
for day D processes data up to D - ``lag_days``, a holdout window ending there and the
training window just before it.

Retries are idempotent: the process step republishes an identical dataset under the same
content address, and the train step reuses the version already trained on the same data
digest, code version and parameters, so rerunning a day registers nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from matchmaking.config import Settings
from matchmaking.orchestration.config import PipelineConfig, lake_location

if TYPE_CHECKING:
    from matchmaking.pipeline import Windows
    from matchmaking.processing.day import DayProcessor

logger = logging.getLogger(__name__)

CityResult = dict[str, Any]


def data_windows(cfg: PipelineConfig, day: date) -> Windows:
    """The training and holdout windows of the run for ``day``."""
    from matchmaking.pipeline import windows

    end = day - timedelta(days=cfg.windows.lag_days)
    return windows(end, cfg.windows.train_days, cfg.windows.holdout_days)


# One mapped task instance: {"city": ..., "days": ["YYYY-MM-DD", ...]}, at most
# ``days_per_task`` days of one city (one, the default: one instance per (city, day)).
DayItem = dict[str, Any]


def _span(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def day_items(city: str, days: list[date], per_task: int) -> list[DayItem]:
    """``city``'s ``days`` (in order) cut into task instances of at most ``per_task`` days."""
    return [
        {"city": city, "days": [d.isoformat() for d in days[i : i + per_task]]}
        for i in range(0, len(days), per_task)
    ]


def day_label(city: str, days: list[str]) -> str:
    """A per-day task instance's label (rendered map index): ``city day``, or
    ``city first..last`` for several days."""
    return f"{city} {days[0]}" if len(days) == 1 else f"{city} {days[0]}..{days[-1]}"


@contextmanager
def lake_settings(cfg: PipelineConfig) -> Iterator[Settings]:
    """Settings for the configured lake, for the per-day tasks: they run no step process and
    open no MLflow run (the window's ``process`` run logs the lineage, every day's digest in
    its manifest), so neither the environment nor MLflow is touched (nor imported)."""
    data_dir = cfg.data_dir()
    values: dict[str, Any] = {"lake_uri": cfg.lake_location()}
    if data_dir is not None:
        values["data_dir"] = data_dir
    yield Settings(**values)


def plan_days(cfg: PipelineConfig, day: date) -> dict[str, list[DayItem]]:
    """The (city, days) task instances the run for ``day`` has to build, by executor queue.

    Per city: the days of the two windows whose feature partition is not published for
    today's inputs (``process_day``), and the days from the first history day of the
    training window to the end of the holdout window whose summary is not (``summarise``),
    but for the summaries one ``process_day`` task alone needs, which it publishes itself
    (its ``summaries``: the new day of a daily run, every summary when a task holds all of a
    city's days), each list cut into instances of ``days_per_task`` days. "Today's inputs"
    are the digests of the raw files, the roster and the code (``processing.day``): a day
    whose raw data changed is missing again. Nothing is validated or built here; every
    queue has both keys (an empty list maps no task instance).
    """
    from matchmaking import lake
    from matchmaking.processing.day import DayProcessor
    from matchmaking.processing.inputs import history_from

    w = data_windows(cfg, day)
    per_task = cfg.days_per_task
    plan: dict[str, list[DayItem]] = {}
    for queue in cfg.cities_by_queue():
        plan[cfg.plan_key("summarise", queue)] = []
        plan[cfg.plan_key("process_day", queue)] = []
    with lake_settings(cfg) as settings:
        for city in cfg.cities:
            proc = DayProcessor(settings, city, cfg.max_bad_share)
            first = history_from(w.train_start, lake.list_dates(settings.lake_dir, city))
            queue = cfg.queue_of(city)
            days = [d for d in _span(w.train_start, w.holdout_end) if proc.find_day(d) is None]
            chunks = day_items(city, days, per_task)
            missing = proc.missing_summaries(_span(first, w.holdout_end))
            summaries = _assign_summaries(proc, missing, days, chunks)
            plan[cfg.plan_key("summarise", queue)] += day_items(city, summaries, per_task)
            plan[cfg.plan_key("process_day", queue)] += chunks
            logger.info(
                "%s: %d summaries and %d feature days to build (%s..%s), %d days a task",
                city,
                len(summaries),
                len(days),
                w.train_start,
                w.holdout_end,
                per_task,
            )
    return plan


def _assign_summaries(
    proc: DayProcessor, missing: list[date], days: list[date], chunks: list[DayItem]
) -> list[date]:
    """Which task publishes each missing summary; returns those for ``summarise``.

    A summary that the feature days of one ``process_day`` task alone need (the day itself,
    or a day of their history) is published by that task, which validates the day anyway
    or before its first day that needs it: it goes to the task's ``summaries``. The others,
    shared by several tasks, are summarised first so that those tasks run in parallel
    without validating a day twice."""
    chunk_of = {d: i for i, item in enumerate(chunks) for d in item["days"]}
    for item in chunks:
        item["summaries"] = []
    shared = []
    for x in missing:
        owners = {chunk_of[d.isoformat()] for d in days if d == x or x in proc.history_days(d)}
        if len(owners) == 1:
            chunks[owners.pop()]["summaries"].append(x.isoformat())
        else:  # several tasks need it (or none: summarised all the same)
            shared.append(x)
    return shared


def _each_day(city: str, days: list[date], build: Any) -> list[dict[str, Any]]:
    """``build(day)`` for each of ``days`` in order; a day that fails does not stop the
    others. The first failure is raised as is when the task holds one day; otherwise one
    ``DataQualityError`` names every failed day and its reason.

    Raises:
        MatchmakingError: a day failed.
    """
    from matchmaking.errors import DataQualityError, MatchmakingError

    done: list[dict[str, Any]] = []
    failed: list[tuple[date, MatchmakingError]] = []
    for d in days:
        try:
            done.append(build(d))
        except MatchmakingError as exc:
            logger.error("%s %s: %s", city, d, exc)
            failed.append((d, exc))
    if failed and len(days) == 1:
        raise failed[0][1]
    if failed:
        reasons = "; ".join(f"{d}: {exc}" for d, exc in failed)
        raise DataQualityError(
            f"{city}: {len(failed)} of this task's {len(days)} days failed (the others are "
            f"published): {reasons}"
        )
    return done


def summarise_city_days(cfg: PipelineConfig, city: str, days: list[date]) -> list[DayItem]:
    """Validate each of ``city``'s ``days`` and publish its summary (reused when published).

    Raises:
        DataQualityError: too many of a day's rows are bad (nothing published for it).
        StorageError: a day's raw partitions are missing.
    """
    from matchmaking.processing.day import DayProcessor

    with lake_settings(cfg) as settings:
        proc = DayProcessor(settings, city, cfg.max_bad_share)

        def summarise(day: date) -> DayItem:
            summary = proc.ensure_summary(day)
            return {"city": city, "day": day.isoformat(), "summary_digest": summary.digest}

        return _each_day(city, days, summarise)


def process_city_days(
    cfg: PipelineConfig, city: str, days: list[date], summaries: list[date] | None = None
) -> list[CityResult]:
    """Build each of ``city``'s ``days``' feature partition (and its summary, when missing),
    in order, a partition reused when published with the same inputs. The history comes
    from the summaries the ``summarise`` tasks published, and from ``summaries``: those this
    task publishes itself (the plan's, which no other task needs), validated before the first
    day that needs them.

    Raises:
        DataQualityError: a summary a day's history needs is not published (that day's own
            task failed: it names the day), or a day's raw files break the contract or it is
            over the bad-row limit (several failed days: one error naming each).
        StorageError: the task's only day has a raw partition missing.
    """
    from matchmaking import lake
    from matchmaking.errors import DataQualityError
    from matchmaking.processing.day import DayProcessor

    with lake_settings(cfg) as settings:
        proc = DayProcessor(settings, city, cfg.max_bad_share)

        own = set(summaries or [])
        tried: set[date] = set()  # own summaries a day of this task needed already

        def build(day: date) -> CityResult:
            # The day's own summary is published here when missing (validating the day), and
            # so are this task's own history summaries, the first time a day needs them.
            history = proc.history_days(day)
            missing = [d for d in proc.missing_summaries(history) if d not in own or d in tried]
            tried.update(d for d in [*history, day] if d in own)
            if missing:
                raise DataQualityError(
                    f"{city} {day}: the summaries of {lake.describe_days(missing)} are not "
                    "published, and this day's features need them (its 28-day history). "
                    "Their summarise tasks (or the earlier days of this task) failed or did "
                    "not run: fix those days and clear their tasks, then this one"
                )
            result = proc.ensure_day(day)  # checks the raw partitions' footers first
            return {
                "city": city,
                "day": day.isoformat(),
                "digest": result.digest,
                "rows": int(result.manifest["rows"]),  # type: ignore[call-overload]
                "reused": result.reused,
            }

        return _each_day(city, days, build)


def missing_window_days(cfg: PipelineConfig, city: str, day: date) -> list[date]:
    """The days of ``city``'s two windows whose feature partition is not published."""
    from matchmaking.processing.day import DayProcessor

    w = data_windows(cfg, day)
    with lake_settings(cfg) as settings:
        proc = DayProcessor(settings, city, cfg.max_bad_share)
        return [d for d in _span(w.train_start, w.holdout_end) if proc.find_day(d) is None]


def process_city(
    cfg: PipelineConfig, city: str, day: date, *, require_days: bool = False
) -> CityResult:
    """Run ``process_data`` on the training and the holdout window of ``city``.

    With ``require_days`` (the data DAG, after its ``process_day`` tasks) every day of both
    windows must be published already: the step then only assembles the windows' manifests
    from them, and a city with a day that failed fails here, naming it, without trying it
    again.

    Raises:
        DataQualityError: ``require_days`` and a day of the windows is not published.
    """
    from matchmaking import lake
    from matchmaking.errors import DataQualityError
    from matchmaking.orchestration.projects import (
        city_experiment,
        run_project,
        run_tags,
        step_environment,
    )

    w = data_windows(cfg, day)
    if require_days:
        missing = missing_window_days(cfg, city, day)
        if missing:
            raise DataQualityError(
                f"{city}: the feature partitions of {lake.describe_days(missing)} are not "
                "published, so its windows cannot be assembled: their process_day tasks "
                "failed (see them). Fix those days and clear their tasks, then this one"
            )
    out: CityResult = {"city": city, "day": day.isoformat()}
    with step_environment(cfg) as settings:
        experiment_id = city_experiment(settings, city)
        for prefix, start, end in (
            ("", w.train_start, w.train_end),
            ("holdout_", w.holdout_start, w.holdout_end),
        ):
            run_id = run_project(
                "process_data",
                {"city": city, "start": start, "end": end, "max_bad_share": cfg.max_bad_share},
                experiment_id,
                run_name=f"process-{city}-{start}_{end}",
            )
            tags = run_tags(run_id, "features_uri", "data_digest")
            out |= {
                f"{prefix}window": [start.isoformat(), end.isoformat()],
                f"{prefix}process_run_id": run_id,
                f"{prefix}features_uri": tags["features_uri"],
                f"{prefix}data_digest": tags["data_digest"],
            }
    logger.info("%s: features %s", city, out["features_uri"])
    return out


def features_event(day: date, results: list[CityResult]) -> dict[str, Any]:
    """A day's features events together: the day and each city's datasets and runs.

    Each city publishes its own event (partition key: the city id, extra: its
    ``process_city`` result); this is the view of a whole day that the local runner and
    the reports show.
    """
    return {"day": day.isoformat(), "cities": {r["city"]: r for r in results}}


def latest_per_city(extras: list[CityResult], city: str | None = None) -> list[CityResult]:
    """Each city's newest event extra (``extras`` oldest first), or only ``city``'s."""
    latest: dict[str, CityResult] = {}
    for extra in extras:
        if extra.get("city") and (city is None or extra["city"] == city):
            latest[extra["city"]] = extra
    return list(latest.values())


def plan_by_queue(
    cfg: PipelineConfig, extras: list[CityResult], city: str | None = None
) -> dict[str, list[CityResult]]:
    """The cities to train from features events, grouped by their executor queue.

    Every queue of the configuration is a key (an empty list maps no task instance), so
    the per-queue task groups of the training DAG always find theirs.
    """
    newest = {e["city"]: e for e in latest_per_city(extras, city)}
    if city is None:
        plan = plan_training(cfg, {"cities": newest})
    elif city in cfg.cities and city in newest:
        plan = [newest[city]]
    else:
        plan = []
        logger.warning("%s: no features event, or not a configured city: nothing to train", city)
    grouped: dict[str, list[CityResult]] = {q: [] for q in cfg.cities_by_queue()}
    for item in plan:
        grouped[cfg.queue_of(item["city"])].append(item)
    return grouped


def plan_training(cfg: PipelineConfig, extra: dict[str, Any]) -> list[CityResult]:
    """The cities to train from a features event, in configured order (others are logged)."""
    published: dict[str, CityResult] = dict(extra.get("cities") or {})
    plan = [published[c] for c in cfg.cities if c in published]
    ignored = sorted(set(published) - set(cfg.cities))
    if ignored:
        logger.warning("features of cities no longer configured are not trained: %s", ignored)
    missing = [c for c in cfg.cities if c not in published]
    if missing:
        logger.warning("no features published for configured cities %s on this event", missing)
    return plan


def train_city(cfg: PipelineConfig, item: CityResult) -> CityResult:
    """Run ``train`` on the city's training features; reuses an identical version."""
    from matchmaking import tracking
    from matchmaking.orchestration.projects import (
        city_experiment,
        run_project,
        run_tags,
        step_environment,
    )

    city = item["city"]
    with step_environment(cfg) as settings:
        run_id = run_project(
            "train",
            {
                "city": city,
                "features": lake_location(item["features_uri"]),
                "process_run_id": item["process_run_id"],
                **cfg.train_params,
            },
            city_experiment(settings, city),
            run_name=f"train-{city}",
        )
        version = run_tags(run_id, "registered_version")["registered_version"]
        from mlflow.tracking import MlflowClient

        reused = MlflowClient().get_run(run_id).data.tags.get("reused_version") == "true"
        name = tracking.model_name(settings, city)
    logger.info("%s: %s v%s%s", city, name, version, " (reused)" if reused else "")
    return {
        "city": city,
        "day": item.get("day"),
        "train_run_id": run_id,
        "model_name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "reused": reused,
        "holdout_features_uri": item["holdout_features_uri"],
    }


def evaluate_city(cfg: PipelineConfig, trained: CityResult) -> CityResult:
    """Run ``evaluate`` of the trained version on the city's holdout features."""
    from matchmaking.orchestration.projects import city_experiment, run_project, step_environment

    city = trained["city"]
    with step_environment(cfg) as settings:
        run_id = run_project(
            "evaluate",
            {
                "city": city,
                "model_uri": trained["model_uri"],
                "features": lake_location(trained["holdout_features_uri"]),
                "seed": cfg.evaluate_seed,
            },
            city_experiment(settings, city),
            run_name=f"evaluate-{city}",
        )
    return {**trained, "evaluate_run_id": run_id}


def promote_city(cfg: PipelineConfig, evaluated: CityResult, actor: str) -> CityResult:
    """The promotion gate for the evaluated version (where configured).

    A refusal is an outcome, not a task failure: Production stays where it was.

    Raises:
        MatchmakingError: the gate could not run (registry, data or tracking problem).
    """
    from matchmaking.errors import GateFailedError, MatchmakingError
    from matchmaking.orchestration.projects import step_environment
    from matchmaking.registry.promote import promote

    city = evaluated["city"]
    if not cfg.promotion.applies_to(city):
        logger.info("%s: promotion not configured for this city; CI promotes", city)
        return {"city": city, "status": "not configured", "version": evaluated["version"]}
    with step_environment(cfg) as settings:
        (outcome,) = promote(
            settings,
            [city],
            version=evaluated["version"],
            holdout=lake_location(evaluated["holdout_features_uri"]),
            actor=actor,
        )
    if outcome.exit_code not in (0, GateFailedError.exit_code):
        raise MatchmakingError(f"{city}: promotion gate could not run: {outcome.detail}")
    logger.info("%s v%s: %s (%s)", city, outcome.version, outcome.status, outcome.detail)
    return {k: v for k, v in asdict(outcome).items() if k not in ("metrics", "report")}


def plan_countries(
    cfg: PipelineConfig, extras: list[CityResult], partition_key: str | None = None
) -> list[dict[str, Any]]:
    """The country models to train from features events (``extras``, oldest first).

    A country is planned when ``country_models`` is enabled and at least ``min_cities`` of its
    configured cities have published features, and all of its configured cities' newest events
    are of the same day (the same windows): a run triggered by the first city's event of a
    day plans nothing for the country, the run of its last city's event plans it. A run of one
    city (``partition_key``) plans its country only when that city's event is the country's
    newest: of the runs of one day exactly one trains the country model, so two runs never fit
    and register it at once (the reuse of identical data is not a lock), and another country's
    cities' runs never retrain it. A manual run (no key) plans every ready country; training
    reuses the version of identical data, so a repeated plan registers nothing new.
    """
    if not cfg.country_models.enabled:
        return []
    from matchmaking.markets import catalogue

    known = catalogue()
    only = (
        known.get(partition_key).country
        if partition_key is not None and partition_key in known.ids()
        else None
    )
    newest = {e["city"]: e for e in latest_per_city(extras)}
    order = {e.get("city"): i for i, e in enumerate(extras)}  # each city's newest position
    members: dict[str, list[str]] = {}
    for city in cfg.cities:
        members.setdefault(known.get(city).country, []).append(city)
    plan = []
    for country, cities in sorted(members.items()):
        if len(cities) < cfg.country_models.min_cities or only not in (None, country):
            continue
        last = max((c for c in cities if c in newest), key=lambda c: order[c], default=None)
        if only is not None and last != partition_key:
            continue
        waiting = [c for c in cities if c not in newest]
        days = {newest[c].get("day") for c in cities if c in newest}
        if waiting or len(days) != 1:
            logger.info(
                "%s: country model waits for features of %s (days seen: %s)",
                country,
                waiting or "the same day from every city",
                sorted(str(d) for d in days),
            )
            continue
        plan.append(
            {
                "country": country,
                "day": days.pop(),
                "features": {c: newest[c]["features_uri"] for c in cities},
                "holdout_features": {c: newest[c]["holdout_features_uri"] for c in cities},
            }
        )
    return plan


def train_country(cfg: PipelineConfig, item: dict[str, Any]) -> dict[str, Any]:
    """Run ``train_country`` on the country's cities' training features; reuses an identical
    version."""
    from mlflow.tracking import MlflowClient

    from matchmaking.orchestration.projects import run_project, run_tags, step_environment
    from matchmaking.registry.conventions import country_model_name
    from matchmaking.training.pooled import experiment_label

    country = item["country"]
    features = ",".join(f"{c}={lake_location(u)}" for c, u in sorted(item["features"].items()))
    with step_environment(cfg) as settings:
        from matchmaking.orchestration.projects import city_experiment

        run_id = run_project(
            "train_country",
            {"country": country, "features": features, **cfg.train_params},
            city_experiment(settings, experiment_label(country)),
            run_name=f"train-{experiment_label(country)}",
        )
        version = run_tags(run_id, "registered_version")["registered_version"]
        reused = MlflowClient().get_run(run_id).data.tags.get("reused_version") == "true"
        name = country_model_name(settings.model_name_prefix, country)
    logger.info("%s: %s v%s%s", country, name, version, " (reused)" if reused else "")
    return {
        **item,
        "train_run_id": run_id,
        "model_name": name,
        "version": version,
        "reused": reused,
    }


def promote_country(cfg: PipelineConfig, trained: dict[str, Any], actor: str) -> dict[str, Any]:
    """The promotion gate for a trained country version (where promotion is configured), on
    the holdout of each of its cities; a refusal is an outcome, not a task failure.

    Raises:
        MatchmakingError: the gate could not run.
    """
    from matchmaking.errors import GateFailedError, MatchmakingError
    from matchmaking.orchestration.projects import step_environment
    from matchmaking.registry.promote import promote

    country = trained["country"]
    if not cfg.promotion.enabled:
        return {"country": country, "status": "not configured", "version": trained["version"]}
    with step_environment(cfg) as settings:
        (outcome,) = promote(
            settings, [], countries=[country], version=trained["version"], actor=actor
        )
    if outcome.exit_code not in (0, GateFailedError.exit_code):
        raise MatchmakingError(f"{country}: promotion gate could not run: {outcome.detail}")
    logger.info("%s v%s: %s (%s)", country, outcome.version, outcome.status, outcome.detail)
    return {k: v for k, v in asdict(outcome).items() if k not in ("metrics", "report")}
