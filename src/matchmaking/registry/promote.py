"""``matchmaking promote``: move Production only through the gate.

Per city, under the promotion lock (``registry.lock``; ``registry.fence`` checks it again right
before Production moves): pick the candidate (default: the newest version), find the holdout
(``registry.holdout``), estimate candidate and current Production on the same logged holdout
with the same off-policy estimator and pair them booking by booking, score a canary request,
time single-booking calls (``registry.measure``), apply
the gate (``registry.gate``), log a ``promote`` run with a markdown report
(``registry.report``), then either move alias + stage (pass) or tag the candidate with the
reason (fail). Fleet mode (``registry.fleet``) runs the cities one after the other; a failing
city never stops the others. Rollback is ``registry.rollback``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.errors import (
    GateFailedError,
    InputError,
    MatchmakingError,
    ModelNotFoundError,
    TrackingError,
)
from matchmaking.evaluation.logged import read_holdout
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.markets import catalogue, get_market
from matchmaking.registry.context import (
    Context,
    PromotionContext,
    ci_tags,
    default_actor,
    registry_client,
)
from matchmaking.registry.conventions import (
    EVIDENCE_OFFLINE,
    GATE_CHECKED_AT_TAG,
    GATE_COMPARED_WITH_TAG,
    GATE_EVIDENCE_TAG,
    GATE_FAILED,
    GATE_HOLDOUT_DIGEST_TAG,
    GATE_PASSED,
    GATE_REASON_TAG,
    GATE_RESULT_TAG,
    GATE_RUN_ID_TAG,
    GENERATION_TAG,
    POOLED_CITIES_TAG,
    PREVIOUS_TAG,
    country_model_name,
    gate_metric_tag,
)
from matchmaking.registry.fence import fence
from matchmaking.registry.fleet import (
    COUNTRY_TARGET_PREFIX,
    CityOutcome,
    for_each_city,
    registered_cities,
    registered_countries,
)
from matchmaking.registry.gate import GateThresholds, check, load_thresholds
from matchmaking.registry.holdout import resolve_holdout
from matchmaking.registry.measure import Holdout, measure, paired
from matchmaking.registry.production import (
    current_production,
    get_version,
    list_versions,
    set_production,
    verify_consistent,
)
from matchmaking.registry.report import Verdict, log_run, render_report

logger = logging.getLogger(__name__)


def promote(
    settings: Settings,
    cities: list[str] | None,
    version: str | None = None,
    dry_run: bool = False,
    holdout: LocationLike | None = None,
    actor: str | None = None,
    thresholds: GateThresholds | None = None,
    countries: list[str] | None = None,
) -> list[CityOutcome]:
    """Promote each city's (and each country model's) candidate through the gate.

    ``cities=None`` and ``countries=None`` mean every registered city model and country model
    (countries first, so the cities' serving choices see the new country Production);
    ``countries`` alone promotes those country models only. Never raises for one model's
    failure: see each outcome's ``exit_code``.
    """
    client = registry_client(settings)
    every = cities is None and countries is None
    targets = registered_cities(client, settings) if every else list(cities or [])
    country_targets = (
        registered_countries(client, settings) if every else [c.upper() for c in countries or []]
    )
    if version is not None and len(targets) + len(country_targets) != 1:
        raise InputError(
            "--version names one model version: give exactly one --city (or --country) with it"
        )
    if holdout is not None and (len(targets) != 1 or country_targets):
        raise InputError("--holdout names one city's dataset: give exactly one --city with it")
    ctx = PromotionContext(
        client=client,
        settings=settings,
        actor=actor or default_actor(),
        thresholds=thresholds or load_thresholds(),
        version=version,
        holdout=None if holdout is None else Location.of(holdout),
        dry_run=dry_run,
    )
    outcomes = for_each_city(
        [country_target(c) for c in country_targets],
        "promote",
        lambda target: promote_country(ctx, target.removeprefix(COUNTRY_TARGET_PREFIX)),
    )
    return outcomes + for_each_city(targets, "promote", lambda city: promote_city(ctx, city))


def newest_version(client: MlflowClient, name: str) -> ModelVersion:
    """The most recently registered version of ``name``."""
    versions = list_versions(client, name)
    if not versions:
        raise ModelNotFoundError(f"{name} has no registered version; run `matchmaking train`")
    return max(versions, key=lambda mv: (mv.creation_timestamp or 0, int(mv.version)))


def promote_city(ctx: PromotionContext, city: str) -> CityOutcome:
    """Gate and (on pass, unless ``ctx.dry_run``) promote one city's candidate."""
    return gate_city_locked(ctx, city, _gate_city)


def gate_city_locked(
    ctx: PromotionContext,
    city: str,
    gate: Callable[[PromotionContext, str, str], CityOutcome],
) -> CityOutcome:
    """Run ``gate(ctx, city, model name)`` under the city's promotion lock (a dry run takes
    no lock); the offline gate and the online one share it.

    Raises:
        ModelNotFoundError: the city has no registered model.
    """
    name = ctx.model_name(city)
    try:
        ctx.client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{city}: no registered model {name}; train one first") from exc
    if ctx.dry_run:
        return gate(ctx, city, name)
    lock = ctx.lock(name)
    with lock.hold() as lease:
        return gate(ctx.locked(lock, lease), city, name)


def gate_on_holdout(
    ctx: PromotionContext,
    city: str,
    name: str,
    cand_mv: ModelVersion,
    prod_mv: ModelVersion | None,
    holdout_dir: Location | None = None,
) -> Verdict:
    """Measure the candidate (and Production) of model ``name`` on ``city``'s logged holdout
    (given, or found from the training windows) and apply the gate."""
    gate = ctx.thresholds
    holdout_dir = resolve_holdout(ctx.settings, city, cand_mv, prod_mv, holdout_dir)
    rows, manifest = read_holdout(city, holdout_dir)
    holdout = Holdout.of(rows, get_market(city))
    candidate = measure(name, cand_mv, holdout, gate)
    production = measure(name, prod_mv, holdout, gate) if prod_mv else None
    difference = paired(candidate, production, gate) if production else None
    result = check(
        gate,
        candidate.metrics,
        production.metrics if production else None,
        candidate.canary,
        difference,
    )
    logger.info(
        "%s v%s on %s: gate %s (%s)", name, cand_mv.version, city, result.passed, result.reason
    )
    return Verdict(name, candidate, production, difference, result, holdout_dir, manifest)


def _gate_city(ctx: PromotionContext, city: str, name: str) -> CityOutcome:
    """The gate and the move; ``ctx.guard`` is the promotion lock we hold (None: dry run)."""
    client, gate = ctx.client, ctx.thresholds
    cand_mv = (
        get_version(client, name, ctx.version) if ctx.version else newest_version(client, name)
    )
    prod_mv = current_production(client, name)
    prev = str(prod_mv.version) if prod_mv else None
    if prev == str(cand_mv.version):
        return CityOutcome(
            city, "promote", "unchanged", prev, prev, "candidate is already in Production"
        )
    verdict = gate_on_holdout(ctx, city, name, cand_mv, prod_mv, ctx.holdout)
    candidate, difference, result = verdict.candidate, verdict.difference, verdict.result
    manifest = verdict.manifest
    report = render_report(verdict, gate, ctx.dry_run)
    outcome = CityOutcome(
        city,
        "promote",
        "",
        candidate.version,
        prev,
        result.reason,
        metrics={
            **candidate.metrics,
            **{f"difference.{k}": v for k, v in (difference or {}).items()},
            "latency_p99_ms": candidate.canary.latency_p99_ms,
        },
    )
    outcome.report = report
    if not result.passed:
        outcome.exit_code = GateFailedError.exit_code
    if ctx.dry_run:
        outcome.status = "would promote" if result.passed else "would refuse"
        return outcome
    outcome.run_id = run_id = log_run(ctx, city, verdict, report, gate)
    tags = {
        GATE_RESULT_TAG: GATE_PASSED if result.passed else GATE_FAILED,
        GATE_REASON_TAG: result.reason[:5000],
        GATE_RUN_ID_TAG: run_id,
        GATE_HOLDOUT_DIGEST_TAG: str(manifest.get("digest")),
        GATE_COMPARED_WITH_TAG: prev or "",
        GATE_CHECKED_AT_TAG: datetime.now(UTC).isoformat(timespec="seconds"),
        GATE_EVIDENCE_TAG: EVIDENCE_OFFLINE,
        **{gate_metric_tag(k): f"{v:.6g}" for k, v in outcome.metrics.items()},
        **ci_tags(),
    }
    if not result.passed:
        return refuse(ctx, name, outcome, tags)
    moved = move(ctx, name, outcome, tags)
    refresh_choices(ctx, [city], moved)
    return moved


def country_target(country: str) -> str:
    """How a country model appears among the fleet's outcomes: ``country:<CC>``."""
    return f"{COUNTRY_TARGET_PREFIX}{country.upper()}"


def member_cities(mv: ModelVersion, country: str) -> list[str]:
    """The cities a country version was pooled from (its ``pooled_cities`` tag) that are
    still the country's markets, else every market of the country."""
    markets = catalogue().cities_of(country)
    pooled = [c for c in mv.tags.get(POOLED_CITIES_TAG, "").split(",") if c in markets]
    return pooled or markets


def promote_country(ctx: PromotionContext, country: str) -> CityOutcome:
    """Gate and (on pass, unless ``ctx.dry_run``) promote a country model's candidate.

    The candidate is measured against the country's Production version on the holdout of each
    city it was pooled from (each city's newest dataset after both training windows), with the
    gate of a city model; it passes only when it passes on every city that has a holdout (at
    least one must). Cities without a holdout are named in the outcome.
    """
    code = country.upper()
    name = country_model_name(ctx.settings.model_name_prefix, code)
    try:
        ctx.client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"{code}: no registered country model {name}; run `matchmaking train-country "
            f"--country {code}` first"
        ) from exc
    if ctx.dry_run:
        return _gate_country(ctx, code, name)
    lock = ctx.lock(name)
    with lock.hold() as lease:
        return _gate_country(ctx.locked(lock, lease), code, name)


def _gate_country(ctx: PromotionContext, country: str, name: str) -> CityOutcome:
    client, gate = ctx.client, ctx.thresholds
    target = country_target(country)
    cand_mv = (
        get_version(client, name, ctx.version) if ctx.version else newest_version(client, name)
    )
    prod_mv = current_production(client, name)
    prev = str(prod_mv.version) if prod_mv else None
    if prev == str(cand_mv.version):
        return CityOutcome(
            target, "promote", "unchanged", prev, prev, "candidate is already in Production"
        )
    verdicts: dict[str, Verdict] = {}
    no_holdout: list[str] = []
    for city in member_cities(cand_mv, country):
        try:
            verdicts[city] = gate_on_holdout(ctx, city, name, cand_mv, prod_mv)
        except InputError as exc:
            logger.warning("%s: no holdout of %s to gate on: %s", name, city, exc)
            no_holdout.append(city)
    if not verdicts:
        raise InputError(
            f"{name}: none of its cities ({', '.join(no_holdout)}) has a holdout dataset after "
            "the training window; process a later window for them first"
        )
    failed = {c: v for c, v in verdicts.items() if not v.result.passed}
    reason = (
        "; ".join(f"{c}: {v.result.reason}" for c, v in failed.items())
        if failed
        else f"passed on the holdouts of {', '.join(verdicts)}"
    ) + (f" (no holdout: {', '.join(no_holdout)})" if no_holdout else "")
    report = "\n".join(render_report(v, gate, ctx.dry_run) for v in verdicts.values())
    metrics = _pooled_metrics(verdicts)
    outcome = CityOutcome(target, "promote", "", str(cand_mv.version), prev, reason)
    outcome.metrics, outcome.report = metrics, report
    if failed:
        outcome.exit_code = GateFailedError.exit_code
    if ctx.dry_run:
        outcome.status = "would refuse" if failed else "would promote"
        return outcome
    label = f"country-{country.lower()}"
    run_ids = [
        log_run(ctx, label, v, render_report(v, gate, False), gate) for v in verdicts.values()
    ]
    outcome.run_id = run_ids[0]
    tags = {
        GATE_RESULT_TAG: GATE_FAILED if failed else GATE_PASSED,
        GATE_REASON_TAG: reason[:5000],
        GATE_RUN_ID_TAG: ",".join(run_ids)[:5000],
        GATE_HOLDOUT_DIGEST_TAG: ",".join(
            f"{c}:{str(v.manifest.get('digest'))[:16]}" for c, v in verdicts.items()
        )[:5000],
        GATE_COMPARED_WITH_TAG: prev or "",
        GATE_CHECKED_AT_TAG: datetime.now(UTC).isoformat(timespec="seconds"),
        GATE_EVIDENCE_TAG: EVIDENCE_OFFLINE,
        **{gate_metric_tag(k): f"{v:.6g}" for k, v in metrics.items()},
        **ci_tags(),
    }
    if failed:
        return refuse(ctx, name, outcome, tags)
    moved = move(ctx, name, outcome, tags)
    refresh_choices(ctx, catalogue().cities_of(country), moved)
    return moved


def _pooled_metrics(verdicts: dict[str, Verdict]) -> dict[str, float]:
    """Each city's gate metrics (``<city>.<metric>``) and, as ``auc`` and ``acceptance``, their
    booking-weighted means (what the fleet summary shows for a country model)."""
    out: dict[str, float] = {}
    weights = {c: v.candidate.metrics.get("bookings", math.nan) for c, v in verdicts.items()}
    total = sum(w for w in weights.values() if math.isfinite(w))
    for key in ("auc", "acceptance"):
        values = [(v.candidate.metrics[key], weights[c]) for c, v in verdicts.items()]
        ok = [(x, w) for x, w in values if math.isfinite(x) and math.isfinite(w)]
        out[key] = sum(x * w for x, w in ok) / total if ok and total else math.nan
    for city, v in verdicts.items():
        out |= {f"{city}.{k}": x for k, x in v.candidate.metrics.items()}
        out |= {f"{city}.difference.{k}": x for k, x in (v.difference or {}).items()}
    return out


def refresh_choices(ctx: Context, cities: list[str], outcome: CityOutcome) -> None:
    """After Production moved, choose again which model serves each of ``cities``
    (``registry.scope``), noted in ``outcome.serving`` (``detail`` keeps the gate's reason, which
    the report shows); a choice that cannot be made is noted there too and never undoes the
    move."""
    from matchmaking.registry.scope import choose_city

    thresholds = ctx.thresholds if isinstance(ctx, PromotionContext) else load_thresholds()
    scope_ctx = PromotionContext(
        client=ctx.client, settings=ctx.settings, actor=ctx.actor, thresholds=thresholds
    )
    notes = []
    for city in cities:
        try:
            choice = choose_city(scope_ctx, city)
        except (MatchmakingError, MlflowException) as exc:
            logger.warning("%s: serving choice not refreshed: %s", city, exc)
            notes.append(f"{city}: serving choice not refreshed ({exc})")
            continue
        notes.append(f"{city} served by its {choice.status} model")
    outcome.serving = "; ".join(notes)


def refuse(
    ctx: PromotionContext, name: str, outcome: CityOutcome, tags: dict[str, str]
) -> CityOutcome:
    """Record the refusal on the candidate; Production is not touched."""
    for key, value in tags.items():
        ctx.client.set_model_version_tag(name, outcome.version or "", key, value)
    logger.warning(
        "%s v%s refused; Production stays %s (report: run %s)",
        name,
        outcome.version,
        f"v{outcome.previous}" if outcome.previous else "empty",
        outcome.run_id,
    )
    outcome.status = "refused"
    return outcome


def move(
    ctx: PromotionContext, name: str, outcome: CityOutcome, tags: dict[str, str]
) -> CityOutcome:
    """Past the fence, tag the candidate and move alias and stage to it, then verify."""
    if ctx.guard is None:
        raise TrackingError(f"{name}: Production is only moved under the promotion lock")
    version = outcome.version or ""
    lease = fence(ctx.client, name, ctx.guard.lock, ctx.guard.lease)
    tags = {**tags, PREVIOUS_TAG: outcome.previous or "", GENERATION_TAG: str(lease.generation)}
    for key, value in tags.items():
        ctx.client.set_model_version_tag(name, version, key, value)
    pipeline = os.environ.get("CI_PIPELINE_ID")
    set_production(
        ctx.client,
        name,
        version,
        f"passed the promotion gate (run {outcome.run_id})"
        + (f", CI pipeline {pipeline}" if pipeline else ""),
        ctx.actor,
    )
    verify_consistent(ctx.client, name)
    outcome.status = "promoted"
    return outcome
