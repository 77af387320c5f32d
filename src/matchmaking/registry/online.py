"""``matchmaking promote --evidence online``: promote the challenger on its live traffic.

The candidate is the version under the registered-model alias ``challenger``
(``conventions.CHALLENGER_ALIAS``), which the scoring service gives a share of the city's
bookings; the evidence is the experiment report (``experiments.report``) of the challenger's
version against the current Production version (the champion arm) over the logged decisions
and outcomes. The rule (``gate.yaml``'s ``online``): each arm has at least ``min_bookings``
bookings with a first offer, and the lower end of the ``confidence`` interval of the
difference of first-offer acceptance (challenger - champion, Newcombe-Wilson) is above
``margin``. Otherwise the candidate is refused (exit 7) and Production is not touched.

Everything else is the offline gate's machinery (``registry.promote``): the promotion lock,
the fence, ``set_production`` with ``production.previous`` (so ``rollback`` works after it),
the ``promote-<city>-v<N>`` run with its markdown report, the ``gate.*`` tags. On a pass the
``challenger`` alias is removed: the challenger is the champion now, and the service stops
splitting traffic at its next poll.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, date, datetime

from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import GateFailedError, InputError, ModelNotFoundError, StorageError
from matchmaking.experiments.report import ExperimentReport, build_report, params, render
from matchmaking.experiments.stats import DIFFERENCE_METHOD
from matchmaking.registry.context import PromotionContext, ci_tags, default_actor, registry_client
from matchmaking.registry.conventions import (
    CHALLENGER_ALIAS,
    EVIDENCE_ONLINE,
    GATE_CHECKED_AT_TAG,
    GATE_COMPARED_WITH_TAG,
    GATE_EVIDENCE_TAG,
    GATE_FAILED,
    GATE_PASSED,
    GATE_REASON_TAG,
    GATE_RESULT_TAG,
    GATE_RUN_ID_TAG,
    REPORT_ARTIFACT,
    gate_metric_tag,
)
from matchmaking.registry.fleet import CityOutcome, for_each_city, registered_cities
from matchmaking.registry.gate import GateResult, GateThresholds, load_thresholds
from matchmaking.registry.production import current_production, is_not_found
from matchmaking.registry.promote import gate_city_locked, move, refresh_choices, refuse
from matchmaking.registry.report import experiment_id

logger = logging.getLogger(__name__)


def promote_online(
    settings: Settings,
    cities: list[str] | None,
    dry_run: bool = False,
    actor: str | None = None,
    thresholds: GateThresholds | None = None,
    since: date | None = None,
    until: date | None = None,
) -> list[CityOutcome]:
    """Promote each city's challenger on its live traffic (``cities=None``: every city with a
    registered model). Never raises for one city's failure: see each outcome's ``exit_code``."""
    client = registry_client(settings)
    targets = cities if cities else registered_cities(client, settings)
    ctx = PromotionContext(
        client=client,
        settings=settings,
        actor=actor or default_actor(),
        thresholds=thresholds or load_thresholds(),
        dry_run=dry_run,
    )
    return for_each_city(
        targets, "promote", lambda city: promote_city_online(ctx, city, since, until)
    )


def challenger_version(ctx: PromotionContext, name: str) -> ModelVersion:
    """The version under alias ``challenger``.

    Raises:
        ModelNotFoundError: the model has no such alias.
    """
    try:
        return ctx.client.get_model_version_by_alias(name, CHALLENGER_ALIAS)
    except MlflowException as exc:
        if is_not_found(exc) or "alias" in str(exc).lower():
            raise ModelNotFoundError(
                f"{name} has no version under alias '{CHALLENGER_ALIAS}': give a version live "
                f"traffic first (alias '{CHALLENGER_ALIAS}' and the share tag, "
                "docs/experiments.md), or promote on the offline gate (no --evidence)"
            ) from None
        raise


def promote_city_online(
    ctx: PromotionContext, city: str, since: date | None, until: date | None
) -> CityOutcome:
    """Gate and (on pass, unless ``ctx.dry_run``) promote one city's challenger."""
    return gate_city_locked(
        ctx, city, lambda locked, city, name: _gate_city(locked, city, name, since, until)
    )


def check_online(report: ExperimentReport) -> GateResult:
    """The online rule on a report that compared the challenger with the champion."""
    t = report.thresholds
    result = GateResult(passed=True)
    c, p = report.challenger, report.champion
    enough = all(a is not None and a.offered >= t.min_bookings for a in (c, p))
    result.checks["online_sample"] = enough
    if not enough:
        result.passed = False
        result.reasons.append(
            "too small to decide: "
            + (
                "; ".join(report.warnings)
                if report.warnings
                else f"each arm needs >= {t.min_bookings} bookings with a first offer"
            )
        )
    low, high = report.difference_ci_low, report.difference_ci_high
    ahead = math.isfinite(low) and low > t.margin
    result.checks["online_acceptance"] = ahead
    if enough and not ahead:
        result.passed = False
        result.reasons.append(
            f"live first-offer acceptance vs Production: difference {report.difference:+.4f}, "
            f"{t.confidence:.0%} interval [{low:+.4f}, {high:+.4f}] "
            + (
                f"lies below the margin {t.margin:+.4f} (not better by the margin)"
                if high < t.margin
                else f"reaches the margin {t.margin:+.4f} (cannot tell it is better by the "
                "margin: too small to decide)"
            )
        )
    return result


def _evidence(
    ctx: PromotionContext,
    city: str,
    since: date | None,
    until: date | None,
    candidate: str,
    champion: str,
) -> ExperimentReport:
    """The experiment report of the two versions; a lake without their decisions gives an
    empty report (refused as too small), never a promotion."""
    t = ctx.thresholds.online
    try:
        return build_report(ctx.settings, city, since, until, t, candidate, champion)
    except StorageError as exc:
        empty = ExperimentReport(city, since, until, t, [], [], None, None)
        empty.warnings.append(str(exc))
        return empty


def _gate_city(
    ctx: PromotionContext, city: str, name: str, since: date | None, until: date | None
) -> CityOutcome:
    client = ctx.client
    cand_mv = challenger_version(ctx, name)
    candidate = str(cand_mv.version)
    prod_mv = current_production(client, name)
    if prod_mv is None:
        raise ModelNotFoundError(
            f"{name} has no Production version: online evidence compares the challenger with "
            "the champion it shares traffic with; promote the first version with the offline "
            "gate (no --evidence)"
        )
    prev = str(prod_mv.version)
    if prev == candidate:
        return CityOutcome(
            city, "promote", "unchanged", prev, prev, "the challenger is already in Production"
        )
    report = _evidence(ctx, city, since, until, candidate, prev)
    result = check_online(report)
    text = render_online(name, candidate, prev, report, result, ctx.dry_run)
    logger.info("%s v%s: online gate %s (%s)", name, candidate, result.passed, result.reason)
    metrics = report.metrics()
    if report.challenger is not None:
        metrics["acceptance"] = report.challenger.acceptance
    outcome = CityOutcome(city, "promote", "", candidate, prev, result.reason, metrics=metrics)
    outcome.report = text
    if not result.passed:
        outcome.exit_code = GateFailedError.exit_code
    if ctx.dry_run:
        outcome.status = "would promote" if result.passed else "would refuse"
        return outcome
    outcome.run_id = run_id = log_online_run(ctx, city, name, report, result, text)
    tags = {
        GATE_RESULT_TAG: GATE_PASSED if result.passed else GATE_FAILED,
        GATE_REASON_TAG: result.reason[:5000],
        GATE_RUN_ID_TAG: run_id,
        GATE_COMPARED_WITH_TAG: prev,
        GATE_CHECKED_AT_TAG: datetime.now(UTC).isoformat(timespec="seconds"),
        GATE_EVIDENCE_TAG: EVIDENCE_ONLINE,
        **{gate_metric_tag(f"online.{k}"): f"{v:.6g}" for k, v in metrics.items()},
        **ci_tags(),
    }
    if not result.passed:
        return refuse(ctx, name, outcome, tags)
    moved = move(ctx, name, outcome, tags)
    try:
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS)
    except MlflowException as exc:  # Production moved; the alias is only traffic routing
        logger.warning(
            "%s: v%s is in Production but alias '%s' could not be removed (%s): remove it, "
            "or the service keeps sending it a share of bookings as its own challenger",
            name,
            candidate,
            CHALLENGER_ALIAS,
            exc,
        )
    refresh_choices(ctx, [city], moved)
    return moved


def render_online(
    name: str,
    candidate: str,
    production: str,
    report: ExperimentReport,
    result: GateResult,
    dry_run: bool,
) -> str:
    """The markdown report of an online gate run: decision, rule, every check, the arms."""
    t = report.thresholds
    decision = "PASS" if result.passed else "FAIL"
    lines = [
        f"# Promotion gate (online evidence): {name} v{candidate}: {decision}"
        + (" (dry run)" if dry_run else ""),
        "",
        f"- candidate: v{candidate} (alias '{CHALLENGER_ALIAS}'), current Production: "
        f"v{production} (the champion arm)",
        f"- rule: challenger - champion first-offer acceptance on live traffic, "
        f"{t.confidence:.0%} {DIFFERENCE_METHOD} interval, lower end > margin {t.margin:+.4f}; "
        f">= {t.min_bookings} bookings with a first offer per arm",
        f"- reason: {result.reason}",
        "",
        "| check | decision |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in result.checks.items()]
    lines += ["", render(report)]
    return "\n".join(lines)


def log_online_run(
    ctx: PromotionContext,
    city: str,
    name: str,
    report: ExperimentReport,
    result: GateResult,
    text: str,
) -> str:
    """Log the ``promote-<city>-v<N>`` run of an online gate: params (window, rule, versions,
    ``evidence=online``), metrics (``challenger.*``, ``champion.*``, ``difference.*``,
    ``check.*``) and the report as ``promotion_report.md``."""
    client = ctx.client
    candidate = report.challenger.version if report.challenger else ""
    run = client.create_run(
        experiment_id(ctx, city),
        run_name=f"promote-{city}-v{candidate or '?'}",
        tags=tracking.reproducibility_tags(
            step="promote",
            city=city,
            model_name=name,
            evidence=EVIDENCE_ONLINE,
            candidate_version=candidate,
            production_version=report.champion.version if report.champion else "",
            gate_result=GATE_PASSED if result.passed else GATE_FAILED,
            **ci_tags(),
        ),
    )
    run_id = run.info.run_id
    values = report.metrics() | {f"check.{k}": float(ok) for k, ok in result.checks.items()}
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in values.items() if math.isfinite(v)],
        params=[Param(k, str(v)) for k, v in {**params(report), "evidence": "online"}.items()],
    )
    client.log_text(run_id, text, REPORT_ARTIFACT)
    client.set_terminated(run_id)
    return run_id


def refuse_offline_options(version: str | None, holdout: object | None) -> None:
    """``--version`` and ``--holdout`` belong to the offline gate.

    Raises:
        InputError: either was given with ``--evidence online``.
    """
    given = [opt for opt, v in (("--version", version), ("--holdout", holdout)) if v is not None]
    if given:
        raise InputError(
            f"{' and '.join(given)} do not apply to --evidence online: the candidate is the "
            f"version under alias '{CHALLENGER_ALIAS}' and the evidence its live traffic "
            "(use --since/--until to choose the window)"
        )
