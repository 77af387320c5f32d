"""``matchmaking promote`` and ``matchmaking rollback``: move Production only through the gate.

Per city, under the promotion lock (``registry.lock``; ``fence`` checks it again right before
Production moves): pick the candidate (default: the newest version), find the holdout, replay
candidate and current Production on the same holdout rows with the same seed, score a canary
request, time single-booking calls, apply the gate, log a ``promote`` run with a markdown
report, then either move alias + stage (pass) or tag the candidate with the reason (fail).
Fleet mode runs the cities one after the other; a failing city never stops the others.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import (
    GateFailedError,
    InputError,
    MatchmakingError,
    ModelNotFoundError,
    TrackingError,
)
from matchmaking.evaluation.evaluate import compare, holdout_frame
from matchmaking.lake import storage
from matchmaking.lake.datasets import MANIFEST_FILE, find_holdout
from matchmaking.lake.storage import Location
from matchmaking.registry.gate import (
    GATE_METRICS,
    Canary,
    GateResult,
    GateThresholds,
    canary_checks,
    check,
    load_thresholds,
)
from matchmaking.registry.lock import Lease, LeaseLostError, PromotionLock
from matchmaking.registry.production import (
    PRODUCTION_ALIAS,
    PRODUCTION_STAGE,
    current_production,
    set_production,
)
from matchmaking.schema import FEATURE_NAMES, GROUP_COLUMN

logger = logging.getLogger(__name__)

FENCE_TAG = "promotion.generation"  # registered model: highest lock generation that moved it
GENERATION_TAG = "production.lock_generation"  # version: the generation that moved it
PREVIOUS_TAG = "production.previous"
PROMOTED_AT_TAG = "production.promoted_at"
REPORT_ARTIFACT = "promotion_report.md"


# -- outcomes ---------------------------------------------------------------------------------


@dataclass
class CityOutcome:
    """What happened to one city; ``exit_code`` 0 means it went as asked."""

    city: str
    action: str
    status: str
    version: str | None = None
    previous: str | None = None
    detail: str = ""
    exit_code: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None


def exit_code(outcomes: list[CityOutcome]) -> int:
    """0 when every city succeeded, else the highest exit code among the failures."""
    return max((o.exit_code for o in outcomes), default=0)


def format_summary(outcomes: list[CityOutcome]) -> str:
    """The fleet summary table the commands print."""
    header = ("city", "action", "status", "version", "previous", "auc", "acceptance", "detail")
    rows = [
        (
            o.city,
            o.action,
            o.status,
            o.version or "-",
            o.previous or "-",
            f"{o.metrics['auc']:.4f}" if "auc" in o.metrics else "-",
            f"{o.metrics['acceptance']:.4f}" if "acceptance" in o.metrics else "-",
            o.detail,
        )
        for o in outcomes
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, str(r[-1])]).rstrip())
    failed = sum(1 for o in outcomes if o.exit_code)
    lines.append(f"{len(outcomes)} city(ies), {failed} failed")
    return "\n".join(lines)


def default_actor() -> str:
    """Who acts: the GitLab user in CI, else the OS user."""
    login = os.environ.get("GITLAB_USER_LOGIN")
    if login:
        return f"{login} (ci)"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _ci_tags() -> dict[str, str]:
    tags = {}
    for var, tag in (
        ("CI_PIPELINE_ID", "ci.pipeline_id"),
        ("CI_PIPELINE_URL", "ci.pipeline_url"),
        ("CI_JOB_ID", "ci.job_id"),
        ("CI_COMMIT_SHA", "ci.commit_sha"),
    ):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags


# -- registry helpers -------------------------------------------------------------------------


def _client(settings: Settings) -> MlflowClient:
    uri = tracking.configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException as exc:
        raise TrackingError(f"cannot list versions of {name}: {exc}") from exc


def _get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"{name} has no version {version}; list them in the registry"
        ) from exc


def newest_version(client: MlflowClient, name: str) -> ModelVersion:
    """The most recently registered version of ``name``."""
    versions = _versions(client, name)
    if not versions:
        raise ModelNotFoundError(f"{name} has no registered version; run `matchmaking train`")
    return max(versions, key=lambda mv: (mv.creation_timestamp or 0, int(mv.version)))


def registered_cities(client: MlflowClient, settings: Settings) -> list[str]:
    """Every city that has a registered model ``<prefix>-<city>``."""
    prefix = f"{settings.model_name_prefix}-"
    cities: list[str] = []
    token: str | None = None
    while True:
        page = client.search_registered_models(
            filter_string=f"name LIKE '{prefix}%'", max_results=200, page_token=token
        )
        cities += [rm.name[len(prefix) :] for rm in page if rm.name.startswith(prefix)]
        token = page.token
        if not token:
            return sorted(cities)


def _lock(settings: Settings, name: str) -> PromotionLock:
    return PromotionLock(settings.promotion_locks_dir, name, lease_s=settings.promotion_lease_s)


def fence(client: MlflowClient, name: str, lock: PromotionLock, lease: Lease) -> Lease:
    """The last check before Production moves; returns the renewed lease.

    Renews the lease (``LeaseLostError`` if it expired or a later generation took over), then
    compares its generation with the registered model's tag ``promotion.generation``, the
    highest generation that has moved Production so far: a higher one means a later holder has
    acted already, so this one must not. Records our generation there before the move.
    """
    renewed = lock.renew(lease)
    recorded = client.get_registered_model(name).tags.get(FENCE_TAG, "0")
    try:
        highest = int(recorded)
    except ValueError:
        raise TrackingError(
            f"{name}: registered-model tag {FENCE_TAG}={recorded!r} is not a number; delete it "
            "(it is rewritten by the next promotion)"
        ) from None
    if highest > renewed.generation:
        raise LeaseLostError(
            f"{name}: promotion lock generation {highest} has moved Production already, ours is "
            f"{renewed.generation}; nothing was moved by this process. If the lock folder "
            f"{storage.join(lock.root, name)} was deleted, delete the tag {FENCE_TAG} as well"
        )
    client.set_registered_model_tag(name, FENCE_TAG, str(renewed.generation))
    return renewed


def _consistent(client: MlflowClient, name: str) -> bool:
    try:
        verify_consistent(client, name)
    except TrackingError as exc:
        logger.warning("%s", exc)
        return False
    return True


def verify_consistent(client: MlflowClient, name: str) -> str:
    """Check alias ``production`` and stage Production name the same single version.

    A check only: under the promotion lock nothing else moves them, so a mismatch means a
    half-done move or a writer that bypassed the lock, and is reported, not papered over.
    Returns the Production version.
    """
    alias = client.get_model_version_by_alias(name, PRODUCTION_ALIAS).version
    staged = sorted(
        str(mv.version) for mv in _versions(client, name) if mv.current_stage == PRODUCTION_STAGE
    )
    if staged == [str(alias)]:
        return str(alias)
    raise TrackingError(
        f"{name}: alias production -> v{alias} but stage Production -> {staged}; fix with "
        f"`matchmaking rollback --city <city> --to {alias}`"
    )


# -- holdout ----------------------------------------------------------------------------------


def training_window_end(mv: ModelVersion) -> date | None:
    """Last day of the version's training window, from the manifest behind ``features_uri``."""
    uri = mv.tags.get("features_uri")
    if not uri:
        return None
    manifest = storage.join(uri, MANIFEST_FILE)
    try:
        if not storage.exists(manifest):
            return None
        return date.fromisoformat(str(json.loads(storage.read_bytes(manifest))["end"]))
    except (OSError, ImportError, ValueError):  # unreachable filesystem, no driver for it
        logger.warning("cannot read the manifest behind features_uri %s", uri)
        return None


def resolve_holdout(
    settings: Settings,
    city: str,
    candidate: ModelVersion,
    production: ModelVersion | None,
    holdout: Location | None,
) -> Location:
    """``holdout`` if given, else the newest dataset after both models' training windows."""
    if holdout is not None:
        return holdout
    ends = [training_window_end(mv) for mv in (candidate, production) if mv is not None]
    if ends[0] is None:
        raise InputError(
            f"{city}: cannot tell the training window of v{candidate.version} (tag features_uri "
            "missing or unreadable here); pass --holdout DIR"
        )
    return find_holdout(settings, city, max(e for e in ends if e is not None))


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Measured:
    version: str
    metrics: dict[str, float]
    canary: Canary


def measure(
    name: str, mv: ModelVersion, rows: pd.DataFrame, thresholds: GateThresholds
) -> Measured:
    """Replay metrics on the holdout, a canary request and single-booking latency."""
    uri = f"models:/{name}/{mv.version}"
    try:
        booster = mlflow.lightgbm.load_model(uri)
    except (MlflowException, OSError, ValueError) as exc:
        canary = Canary(False, False, False, math.inf, f"{uri} does not load: {exc}")
        nan = float("nan")
        return Measured(str(mv.version), dict.fromkeys(GATE_METRICS, nan), canary)
    x = rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    scores = np.asarray(booster.predict(x), dtype=np.float64)
    probabilistic = mv.tags.get("score_kind", "probability") == "probability"
    table = compare(rows, scores, probabilistic, thresholds.replay_seed)
    metrics = {k: float(table.loc["model", k]) for k in GATE_METRICS}
    return Measured(str(mv.version), metrics, _canary(booster, rows, probabilistic, thresholds))


def _canary(
    booster: object, rows: pd.DataFrame, probabilistic: bool, thresholds: GateThresholds
) -> Canary:
    groups = pd.factorize(rows[GROUP_COLUMN])[0]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], len(groups)], strict=True))
    features = rows[list(FEATURE_NAMES)].astype("float64")
    canary = features.iloc[: bounds[min(thresholds.canary_bookings, len(bounds)) - 1][1]]
    scores = np.asarray(booster.predict(canary), dtype=np.float64)  # type: ignore[attr-defined]
    finite, in_range = canary_checks(scores, len(canary), probabilistic)
    x = features.to_numpy()
    timings = []
    for lo, hi in bounds[: thresholds.latency_bookings]:
        started = time.perf_counter()
        booster.predict(x[lo:hi])  # type: ignore[attr-defined]
        timings.append((time.perf_counter() - started) * 1000)
    return Canary(True, finite, in_range, float(np.percentile(timings, 99)))


# -- the report and the run -------------------------------------------------------------------


def _report(
    name: str,
    candidate: Measured,
    production: Measured | None,
    result: GateResult,
    thresholds: GateThresholds,
    holdout: Location,
    manifest: dict[str, object],
    dry_run: bool,
) -> str:
    decision = "PASS" if result.passed else "FAIL"
    lines = [
        f"# Promotion gate: {name} v{candidate.version}: {decision}"
        + (" (dry run)" if dry_run else ""),
        "",
        f"- holdout: `{holdout}` ({manifest.get('start')}..{manifest.get('end')}, "
        f"digest {str(manifest.get('digest'))[:12]}), replay seed {thresholds.replay_seed}",
        f"- current Production: {'v' + production.version if production else 'none (floors only)'}",
        f"- reason: {result.reason}",
        "",
        "| metric | candidate | production | rule |",
        "| --- | --- | --- | --- |",
    ]
    rules = {
        "auc": f">= {thresholds.min_auc}",
        "acceptance": f">= {thresholds.min_acceptance}, drop <= {thresholds.max_acceptance_drop}",
        "completion": f"drop <= {thresholds.max_completion_drop}",
        "pickup_eta_p50_min": f"increase <= {thresholds.max_eta_p50_increase_min} min",
    }
    for key in GATE_METRICS:
        prod = f"{production.metrics[key]:.4f}" if production else "-"
        lines.append(f"| {key} | {candidate.metrics[key]:.4f} | {prod} | {rules[key]} |")
    lines.append(
        f"| latency_p99_ms | {candidate.canary.latency_p99_ms:.2f} | "
        f"{f'{production.canary.latency_p99_ms:.2f}' if production else '-'} | "
        f"<= {thresholds.max_latency_p99_ms} |"
    )
    lines += ["", "| check | ok |", "| --- | --- |"]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in result.checks.items()]
    return "\n".join(lines) + "\n"


def _experiment_id(client: MlflowClient, settings: Settings, city: str) -> str:
    name = tracking.experiment_name(settings, city)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if not settings.resolved_tracking_uri().startswith(("http://", "https://")):
        location = (settings.artifacts_dir.resolve() / name).as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created meanwhile by a concurrent promotion
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def _log_run(
    client: MlflowClient,
    settings: Settings,
    city: str,
    name: str,
    candidate: Measured,
    production: Measured | None,
    result: GateResult,
    holdout: Location,
    manifest: dict[str, object],
    report: str,
) -> str:
    run = client.create_run(
        _experiment_id(client, settings, city),
        run_name=f"promote-{city}-v{candidate.version}",
        tags=tracking.reproducibility_tags(
            step="promote",
            city=city,
            model_name=name,
            candidate_version=candidate.version,
            production_version=production.version if production else "",
            gate_result="passed" if result.passed else "failed",
            **_ci_tags(),
        ),
    )
    run_id = run.info.run_id
    client.log_param(run_id, "holdout_dir", str(holdout))
    client.log_param(run_id, "holdout_digest", str(manifest.get("digest")))
    for prefix, measured in (("candidate", candidate), ("production", production)):
        if measured is None:
            continue
        for key, value in {
            **measured.metrics,
            "latency_p99_ms": measured.canary.latency_p99_ms,
        }.items():
            if math.isfinite(value):
                client.log_metric(run_id, f"{prefix}.{key}", value)
    client.log_text(run_id, report, REPORT_ARTIFACT)
    client.set_terminated(run_id)
    return run_id


# -- promote ----------------------------------------------------------------------------------


def promote(
    settings: Settings,
    cities: list[str] | None,
    version: str | None = None,
    dry_run: bool = False,
    holdout: Location | None = None,
    actor: str | None = None,
    thresholds: GateThresholds | None = None,
) -> list[CityOutcome]:
    """Promote each city's candidate through the gate; ``cities=None`` means every city with a
    registered model. Never raises for one city's failure: see each outcome's ``exit_code``."""
    client = _client(settings)
    targets = cities if cities else registered_cities(client, settings)
    if version is not None and len(targets) != 1:
        raise InputError("--version names one model version: give exactly one --city with it")
    if holdout is not None and len(targets) != 1:
        raise InputError("--holdout names one city's dataset: give exactly one --city with it")
    gate = thresholds or load_thresholds()
    who = actor or default_actor()
    return _for_each_city(
        targets,
        "promote",
        lambda city: promote_city(client, settings, city, version, dry_run, holdout, who, gate),
    )


def _for_each_city(
    cities: list[str], action: str, run: Callable[[str], CityOutcome]
) -> list[CityOutcome]:
    """Fleet mode: ``run`` each city in turn; a city's failure is recorded, never fatal."""
    outcomes = []
    for city in cities:
        try:
            outcome = run(city)
        except MatchmakingError as exc:
            logger.error("%s: %s", city, exc)
            outcome = CityOutcome(city, action, "error", detail=str(exc), exit_code=exc.exit_code)
        except MlflowException as exc:
            logger.error("%s: tracking server error: %s", city, exc)
            outcome = CityOutcome(city, action, "error", detail=str(exc), exit_code=5)
        outcomes.append(outcome)
    return outcomes


def promote_city(
    client: MlflowClient,
    settings: Settings,
    city: str,
    version: str | None,
    dry_run: bool,
    holdout: Location | None,
    actor: str,
    gate: GateThresholds,
) -> CityOutcome:
    """Gate and (on pass, unless ``dry_run``) promote one city's candidate."""
    name = tracking.model_name(settings, city)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{city}: no registered model {name}; train one first") from exc
    if dry_run:
        return _gate_city(client, settings, city, name, version, True, holdout, actor, gate, None)
    lock = _lock(settings, name)
    with lock.hold() as lease:
        guard = (lock, lease)
        return _gate_city(client, settings, city, name, version, False, holdout, actor, gate, guard)


def _gate_city(
    client: MlflowClient,
    settings: Settings,
    city: str,
    name: str,
    version: str | None,
    dry_run: bool,
    holdout: Location | None,
    actor: str,
    gate: GateThresholds,
    guard: tuple[PromotionLock, Lease] | None,
) -> CityOutcome:
    """The gate and the move; ``guard`` is the promotion lock we hold (None for a dry run)."""
    cand_mv = _get_version(client, name, version) if version else newest_version(client, name)
    prod_mv = current_production(client, name)
    prev = str(prod_mv.version) if prod_mv else None
    if prev == str(cand_mv.version):
        return CityOutcome(
            city, "promote", "unchanged", prev, prev, "candidate is already in Production"
        )
    holdout_dir = resolve_holdout(settings, city, cand_mv, prod_mv, holdout)
    rows, manifest = holdout_frame(settings, city, holdout_dir)
    candidate = measure(name, cand_mv, rows, gate)
    production = measure(name, prod_mv, rows, gate) if prod_mv else None
    result = check(
        gate, candidate.metrics, production.metrics if production else None, candidate.canary
    )
    report = _report(name, candidate, production, result, gate, holdout_dir, manifest, dry_run)
    logger.info("%s v%s: gate %s (%s)", name, cand_mv.version, result.passed, result.reason)
    outcome = CityOutcome(
        city,
        "promote",
        "",
        candidate.version,
        prev,
        result.reason,
        metrics={**candidate.metrics, "latency_p99_ms": candidate.canary.latency_p99_ms},
    )
    if not result.passed:
        outcome.exit_code = GateFailedError.exit_code
    if dry_run:
        outcome.status = "would promote" if result.passed else "would refuse"
        return outcome
    run_id = _log_run(
        client, settings, city, name, candidate, production, result, holdout_dir, manifest, report
    )
    outcome.run_id = run_id
    tags = {
        "gate.result": "passed" if result.passed else "failed",
        "gate.reason": result.reason[:5000],
        "gate.run_id": run_id,
        "gate.holdout_digest": str(manifest.get("digest")),
        "gate.compared_with": prev or "",
        "gate.checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **{f"gate.{k}": f"{v:.6g}" for k, v in outcome.metrics.items()},
        **_ci_tags(),
    }
    if not result.passed:
        for key, value in tags.items():
            client.set_model_version_tag(name, candidate.version, key, value)
        logger.warning(
            "%s v%s refused; Production stays %s (report: run %s)",
            name,
            candidate.version,
            f"v{prev}" if prev else "empty",
            run_id,
        )
        outcome.status = "refused"
        return outcome
    if guard is None:
        raise TrackingError(f"{name}: Production is only moved under the promotion lock")
    lease = fence(client, name, *guard)
    tags[PREVIOUS_TAG] = prev or ""
    tags[GENERATION_TAG] = str(lease.generation)
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    set_production(
        client,
        name,
        candidate.version,
        f"passed the promotion gate (run {run_id})"
        + (
            f", CI pipeline {os.environ['CI_PIPELINE_ID']}"
            if os.environ.get("CI_PIPELINE_ID")
            else ""
        ),
        actor,
    )
    verify_consistent(client, name)
    outcome.status = "promoted"
    return outcome


# -- rollback ---------------------------------------------------------------------------------


def rollback(
    settings: Settings,
    cities: list[str] | None,
    to: str | None = None,
    actor: str | None = None,
) -> list[CityOutcome]:
    """Put each city's previous Production holder (or version ``to``) back in Production."""
    client = _client(settings)
    targets = cities if cities else registered_cities(client, settings)
    if to is not None and len(targets) != 1:
        raise InputError("--to names one model version: give exactly one --city with it")
    who = actor or default_actor()
    return _for_each_city(
        targets, "rollback", lambda city: rollback_city(client, settings, city, to, who)
    )


def previous_holder(client: MlflowClient, name: str, current: ModelVersion) -> str | None:
    """The version that held Production before ``current``: its ``production.previous`` tag,
    else the most recently promoted other version."""
    recorded = current.tags.get(PREVIOUS_TAG)
    if recorded:
        return recorded
    others = [
        mv
        for mv in _versions(client, name)
        if mv.tags.get(PROMOTED_AT_TAG) and str(mv.version) != str(current.version)
    ]
    if not others:
        return None
    best = max(others, key=lambda mv: (mv.tags[PROMOTED_AT_TAG], int(mv.version)))
    return str(best.version)


def rollback_city(
    client: MlflowClient, settings: Settings, city: str, to: str | None, actor: str
) -> CityOutcome:
    """Roll one city back under its promotion lock."""
    name = tracking.model_name(settings, city)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{city}: no registered model {name}") from exc
    lock = _lock(settings, name)
    with lock.hold() as lease:
        current = current_production(client, name)
        if current is None:
            raise ModelNotFoundError(f"{name} has no Production version to roll back from")
        cur = str(current.version)
        target = to or previous_holder(client, name, current)
        if target is None:
            raise ModelNotFoundError(
                f"{name}: no earlier Production version is recorded; pass --to N"
            )
        _get_version(client, name, target)
        if target == cur:
            if _consistent(client, name):
                return CityOutcome(city, "rollback", "unchanged", cur, cur, "already in Production")
            fence(client, name, lock, lease)  # stages out of step with the alias: set them again
            set_production(client, name, cur, "stage repaired from the alias", actor)
            verify_consistent(client, name)
            return CityOutcome(city, "rollback", "repaired", cur, cur, "stage Production repaired")
        lease = fence(client, name, lock, lease)
        tags = {
            PREVIOUS_TAG: cur,
            "production.rollback_from": cur,
            GENERATION_TAG: str(lease.generation),
            **_ci_tags(),
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, target, key, value)
        set_production(client, name, target, f"rollback from v{cur}", actor)
        verify_consistent(client, name)
    return CityOutcome(city, "rollback", "rolled back", target, cur, f"v{cur} -> v{target}")
