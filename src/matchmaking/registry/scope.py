"""``matchmaking scope``: which model serves a city, its own or its country's, and why.

Per city, the Production version of the city's own model (``<prefix>-<city>``) and that of its
country's pooled model (``<prefix>-country-<cc>``) are measured on the city's logged holdout
exactly as the promotion gate measures a candidate against Production (``registry.measure``:
logged AUC, the off-policy estimate of first-offer acceptance and its paired difference,
support, ETA of the first choice, canary). The country model serves the city when

* the city has no Production version of its own (a new or small market), or
* on the city's holdout it has the higher logged AUC **and** it passes the gate's checks with the
  city's own model in the place of Production, except that on first-offer acceptance it must
  not be *shown worse* beyond the gate's margin (the upper end of the paired difference's
  interval >= -margin) rather than shown not worse: neither model is the incumbent, and a small
  city's holdout is too short to prove either (ETA, support and canary checks as the gate's).

Otherwise the city's own model serves it (also when the two cannot be compared: no holdout
after both training windows). The choice is written as tags on the city's registered model
(``conventions.SERVING_*``), so one paged ``search_registered_models`` gives every city's
choice together with the aliases; a city with no registered model has nowhere to hold a tag
and is served by its country's model by rule (docs/pooled.md). Promotion and rollback make
the choice again for the cities whose Production they move.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from matchmaking.config import Settings
from matchmaking.errors import InputError, ModelNotFoundError
from matchmaking.evaluation.logged import read_holdout
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.markets import get_market
from matchmaking.registry.context import PromotionContext, default_actor, registry_client
from matchmaking.registry.conventions import (
    SCOPE_CITY,
    SCOPE_COUNTRY,
    SERVING_CITY_VERSION_TAG,
    SERVING_COUNTRY_VERSION_TAG,
    SERVING_DECIDED_AT_TAG,
    SERVING_HOLDOUT_DIGEST_TAG,
    SERVING_MODEL_TAG,
    SERVING_REASON_TAG,
    SERVING_SCOPE_TAG,
    country_model_name,
    serving_metric_tag,
)
from matchmaking.registry.fleet import CityOutcome, for_each_city, registered_cities
from matchmaking.registry.gate import GateThresholds, check, load_thresholds
from matchmaking.registry.holdout import resolve_holdout
from matchmaking.registry.measure import Holdout, measure, paired
from matchmaking.registry.production import current_production

logger = logging.getLogger(__name__)

#: The figures recorded for each side (``serving.city.<m>``, ``serving.country.<m>``).
RECORDED_METRICS = ("auc", "acceptance", "acceptance_ci_low", "acceptance_ci_high", "bookings")


def choose(
    settings: Settings,
    cities: list[str] | None,
    holdout: LocationLike | None = None,
    thresholds: GateThresholds | None = None,
    dry_run: bool = False,
    actor: str | None = None,
) -> list[CityOutcome]:
    """Choose (and, unless ``dry_run``, record) which model serves each city; ``None``: every
    city with a registered model of its own."""
    client = registry_client(settings)
    targets = cities if cities else registered_cities(client, settings)
    if holdout is not None and len(targets) != 1:
        raise InputError("--holdout names one city's dataset: give exactly one --city with it")
    ctx = PromotionContext(
        client=client,
        settings=settings,
        actor=actor or default_actor(),
        thresholds=thresholds or load_thresholds(),
        holdout=None if holdout is None else Location.of(holdout),
        dry_run=dry_run,
    )
    return for_each_city(targets, "scope", lambda city: choose_city(ctx, city))


def choose_city(ctx: PromotionContext, city: str) -> CityOutcome:
    """The serving choice of one city (``status``: ``city`` or ``country``), recorded on its
    registered model unless ``ctx.dry_run``.

    Raises:
        ModelNotFoundError: neither the city nor its country has a Production version.
    """
    client, gate = ctx.client, ctx.thresholds
    market = get_market(city)
    prefix = ctx.settings.model_name_prefix
    own_name, pooled_name = ctx.model_name(city), country_model_name(prefix, market.country)
    own_mv = _production_or_none(ctx, own_name)
    pooled_mv = _production_or_none(ctx, pooled_name)
    metrics: dict[str, float] = {}
    digest = ""
    if own_mv is None and pooled_mv is None:
        raise ModelNotFoundError(
            f"{city}: neither {own_name} nor {pooled_name} has a Production version; promote "
            "one of them first"
        )
    if own_mv is None:
        scope, reason = SCOPE_COUNTRY, f"{own_name} has no Production version"
    elif pooled_mv is None:
        scope, reason = SCOPE_CITY, f"{pooled_name} has no Production version"
    else:
        try:
            holdout_dir = resolve_holdout(ctx.settings, city, own_mv, pooled_mv, ctx.holdout)
        except InputError as exc:
            scope = SCOPE_CITY
            reason = f"kept its own model: the two cannot be compared ({exc})"
        else:
            rows, manifest = read_holdout(city, holdout_dir)
            digest = str(manifest.get("digest", ""))
            holdout = Holdout.of(rows, market)
            own = measure(own_name, own_mv, holdout, gate)
            pooled = measure(pooled_name, pooled_mv, holdout, gate)
            difference = paired(pooled, own, gate)
            result = check(gate, pooled.metrics, own.metrics, pooled.canary, difference)
            for who, values in (("city", own.metrics), ("country", pooled.metrics)):
                metrics |= {f"{who}.{k}": values[k] for k in RECORDED_METRICS}
            metrics |= {f"difference.{k}": v for k, v in (difference or {}).items()}
            # Neither model is the incumbent here: the country model must not be shown worse
            # on acceptance (the interval's upper end below -margin), where a promotion must
            # show a candidate is not worse (its lower end); every other gate check applies.
            high = (difference or {}).get("acceptance_ci_high", math.nan)
            not_worse = math.isfinite(high) and high >= -gate.max_acceptance_drop
            others = [
                ok for name, ok in result.checks.items() if name != "no_regression_acceptance"
            ]
            passed = not_worse and all(others)
            scope, reason = _decide(own.metrics, pooled.metrics, difference, passed)
            if not passed:
                failed = [n for n, ok in result.checks.items() if not ok]
                why = (
                    f"its first-offer acceptance is worse beyond the margin "
                    f"{gate.max_acceptance_drop} (interval upper end {high:+.4f})"
                    if not not_worse
                    else f"gate checks {', '.join(failed)} failed ({result.reason})"
                )
                reason = f"{reason}; the country model fails against it: {why}"
    serving = pooled_name if scope == SCOPE_COUNTRY else own_name
    outcome = CityOutcome(
        city,
        "scope",
        scope,
        _version(pooled_mv if scope == SCOPE_COUNTRY else own_mv),
        None,
        f"{serving}: {reason}",
        metrics=metrics,
    )
    if ctx.dry_run:
        return outcome
    tags = {
        SERVING_SCOPE_TAG: scope,
        SERVING_MODEL_TAG: serving,
        SERVING_REASON_TAG: reason[:5000],
        SERVING_CITY_VERSION_TAG: _version(own_mv) or "",
        SERVING_COUNTRY_VERSION_TAG: _version(pooled_mv) or "",
        SERVING_DECIDED_AT_TAG: datetime.now(UTC).isoformat(timespec="seconds"),
        SERVING_HOLDOUT_DIGEST_TAG: digest,
        **{
            serving_metric_tag(*key.split(".", 1)): f"{value:.6g}"
            for key, value in metrics.items()
            if math.isfinite(value)
        },
    }
    if not _registered(ctx, own_name):
        logger.info("%s: no registered model %s to record the choice on", city, own_name)
        outcome.detail += " (not recorded: the city has no registered model; rule applies)"
        return outcome
    for stale in _stale_metric_tags(ctx, own_name, tags):
        client.delete_registered_model_tag(own_name, stale)
    for key, value in tags.items():
        client.set_registered_model_tag(own_name, key, value)
    logger.info("%s: served by %s (%s)", city, serving, reason)
    return outcome


def _decide(
    own: dict[str, float],
    pooled: dict[str, float],
    difference: dict[str, float] | None,
    passed: bool,
) -> tuple[str, str]:
    """``(scope, reason)`` from both sides' figures on the city's holdout."""
    d = difference or {}
    figures = (
        f"holdout AUC country {pooled['auc']:.4f} vs city {own['auc']:.4f}; first-offer "
        f"acceptance country - city {d.get('acceptance', math.nan):+.4f} "
        f"[{d.get('acceptance_ci_low', math.nan):+.4f}, "
        f"{d.get('acceptance_ci_high', math.nan):+.4f}]"
    )
    if passed and pooled["auc"] > own["auc"]:
        return SCOPE_COUNTRY, f"country model is better on the city's holdout: {figures}"
    if pooled["auc"] <= own["auc"] or not math.isfinite(pooled["auc"]):
        return SCOPE_CITY, f"city model is at least as good on its holdout: {figures}"
    return SCOPE_CITY, f"kept the city model: {figures}"


def _production_or_none(ctx: PromotionContext, name: str) -> ModelVersion | None:
    return current_production(ctx.client, name) if _registered(ctx, name) else None


def _version(mv: ModelVersion | None) -> str | None:
    return None if mv is None else str(mv.version)


def _registered(ctx: PromotionContext, name: str) -> bool:
    try:
        ctx.client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _stale_metric_tags(ctx: PromotionContext, name: str, tags: dict[str, str]) -> list[str]:
    """Figures of an earlier choice that this one does not restate (so none outlives it)."""
    current = ctx.client.get_registered_model(name).tags
    return [
        k
        for k in current
        if k.startswith(("serving.city.", "serving.country.", "serving.difference."))
        and k not in tags
    ]
