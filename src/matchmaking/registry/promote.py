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
import os
from collections.abc import Callable
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.errors import GateFailedError, InputError, ModelNotFoundError, TrackingError
from matchmaking.evaluation.logged import read_holdout
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.registry.context import (
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
    PREVIOUS_TAG,
    gate_metric_tag,
)
from matchmaking.registry.fence import fence
from matchmaking.registry.fleet import CityOutcome, for_each_city, registered_cities
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
) -> list[CityOutcome]:
    """Promote each city's candidate through the gate; ``cities=None`` means every city with a
    registered model. Never raises for one city's failure: see each outcome's ``exit_code``."""
    client = registry_client(settings)
    targets = cities if cities else registered_cities(client, settings)
    if version is not None and len(targets) != 1:
        raise InputError("--version names one model version: give exactly one --city with it")
    if holdout is not None and len(targets) != 1:
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
    return for_each_city(targets, "promote", lambda city: promote_city(ctx, city))


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
    holdout_dir = resolve_holdout(ctx.settings, city, cand_mv, prod_mv, ctx.holdout)
    rows, manifest = read_holdout(city, holdout_dir)
    holdout = Holdout.of(rows)
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
    verdict = Verdict(name, candidate, production, difference, result, holdout_dir, manifest)
    report = render_report(verdict, gate, ctx.dry_run)
    logger.info("%s v%s: gate %s (%s)", name, cand_mv.version, result.passed, result.reason)
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
    return move(ctx, name, outcome, tags)


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
