"""What a gate run leaves behind: the markdown comparison report and the ``promote`` run."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from matchmaking import tracking
from matchmaking.lake.storage import Location
from matchmaking.registry.context import Context, ci_tags
from matchmaking.registry.conventions import GATE_FAILED, GATE_PASSED, REPORT_ARTIFACT
from matchmaking.registry.gate import GateResult, GateThresholds
from matchmaking.registry.measure import Measured

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """One gate run: both versions measured on the same logged holdout, their paired
    difference (candidate - Production; None without Production), and what the gate said."""

    name: str
    candidate: Measured
    production: Measured | None
    difference: dict[str, float] | None
    result: GateResult
    holdout: Location
    manifest: dict[str, object]


_ESTIMATOR_NAMES = {"dr": "doubly robust", "ips": "inverse propensity scoring"}


def _interval(m: dict[str, float], key: str = "acceptance", sign: str = "") -> str:
    return f"{m[key]:{sign}.4f} [{m[f'{key}_ci_low']:{sign}.4f}, {m[f'{key}_ci_high']:{sign}.4f}]"


def _support(m: dict[str, float]) -> str:
    if not math.isfinite(m["supported"]):
        return "-"
    return f"{m['supported']:.0f} of {m['bookings']:.0f} ({m['support']:.1%})"


def render_report(verdict: Verdict, thresholds: GateThresholds, dry_run: bool) -> str:
    """The markdown report: decision, holdout and estimator, each version's numbers (estimates
    with their intervals, support, ESS) against the rules, the paired difference with its
    interval, and the decision of every check."""
    candidate, production, result = verdict.candidate, verdict.production, verdict.result
    manifest, t = verdict.manifest, thresholds
    decision = "PASS" if result.passed else "FAIL"
    level = f"{t.confidence:.0%}"
    lines = [
        f"# Promotion gate: {verdict.name} v{candidate.version}: {decision}"
        + (" (dry run)" if dry_run else ""),
        "",
        f"- holdout: `{verdict.holdout}` ({manifest.get('start')}..{manifest.get('end')}, "
        f"digest {str(manifest.get('digest'))[:12]}), decision log only (no simulator truth)",
        f"- estimator: {t.estimator} ({_ESTIMATOR_NAMES[t.estimator]}) of first-offer "
        f"acceptance, {level} normal intervals, weight clip {t.clip or 'none'} (IPS), "
        f"{t.dr_clip or 'none'} (DR correction)",
        f"- current Production: {'v' + production.version if production else 'none (floors only)'}",
        f"- reason: {result.reason}",
        "",
        f"| metric | candidate v{candidate.version} | "
        f"{'production v' + production.version if production else 'production'} | rule |",
        "| --- | --- | --- | --- |",
    ]
    c, p = candidate.metrics, production.metrics if production else None
    rows = [
        ("auc", f"{c['auc']:.4f}", f"{p['auc']:.4f}" if p else "-", f">= {t.min_auc}"),
        (
            "acceptance",
            _interval(c),
            _interval(p) if p else "-",
            f">= {t.min_acceptance} ({t.estimator} estimate [{level} interval])",
        ),
        (
            "supported bookings",
            _support(c),
            _support(p) if p else "-",
            f">= {t.min_supported_bookings}",
        ),
        ("ess", f"{c['ess']:.1f}", f"{p['ess']:.1f}" if p else "-", f">= {t.min_ess}"),
        (
            "first_choice_eta_p50_min",
            f"{c['first_choice_eta_p50_min']:.2f}",
            f"{p['first_choice_eta_p50_min']:.2f}" if p else "-",
            f"increase <= {t.max_eta_p50_increase_min} min",
        ),
        (
            "latency_p99_ms",
            f"{candidate.canary.latency_p99_ms:.2f}",
            f"{production.canary.latency_p99_ms:.2f}" if production else "-",
            f"<= {t.max_latency_p99_ms}",
        ),
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    d = verdict.difference
    if d is not None:
        lines += [
            "",
            f"Paired difference candidate - Production ({t.estimator}, booking by booking on "
            f"the same {d['bookings']:.0f} logged bookings): {_interval(d, sign='+')} "
            f"({level} interval); non-inferiority needs the lower end >= "
            f"-{t.max_acceptance_drop}.",
        ]
    elif production is not None:
        lines += ["", "Paired difference: none (Production could not be scored)."]
    lines += ["", "| check | decision |", "| --- | --- |"]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in result.checks.items()]
    return "\n".join(lines) + "\n"


def experiment_id(ctx: Context, city: str) -> str:
    client, settings = ctx.client, ctx.settings
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


def log_run(
    ctx: Context, city: str, verdict: Verdict, report: str, thresholds: GateThresholds
) -> str:
    """Log the ``promote-<city>-v<N>`` run; its id. Params: the holdout and the estimator;
    metrics: ``candidate.*`` and ``production.*`` (``gate.GATE_METRICS``, latency),
    ``difference.*`` (the paired difference) and ``check.<name>`` (1 passed, 0 failed); the
    report as an artifact."""
    client, candidate, production = ctx.client, verdict.candidate, verdict.production
    run = client.create_run(
        experiment_id(ctx, city),
        run_name=f"promote-{city}-v{candidate.version}",
        tags=tracking.reproducibility_tags(
            step="promote",
            city=city,
            model_name=verdict.name,
            candidate_version=candidate.version,
            production_version=production.version if production else "",
            gate_result=GATE_PASSED if verdict.result.passed else GATE_FAILED,
            **ci_tags(),
        ),
    )
    run_id = run.info.run_id
    params = {
        "holdout_dir": str(verdict.holdout),
        "holdout_digest": str(verdict.manifest.get("digest")),
        "estimator": thresholds.estimator,
        "confidence": str(thresholds.confidence),
        "clip": "none" if thresholds.clip is None else str(thresholds.clip),
        "dr_clip": "none" if thresholds.dr_clip is None else str(thresholds.dr_clip),
    }
    values = {f"difference.{k}": v for k, v in (verdict.difference or {}).items()}
    for prefix, measured in (("candidate", candidate), ("production", production)):
        if measured is not None:
            values |= {f"{prefix}.{k}": v for k, v in measured.metrics.items()}
            values[f"{prefix}.latency_p99_ms"] = measured.canary.latency_p99_ms
    values |= {f"check.{k}": float(ok) for k, ok in verdict.result.checks.items()}
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in values.items() if math.isfinite(v)],
        params=[Param(k, v) for k, v in params.items()],
    )
    client.log_text(run_id, report, REPORT_ARTIFACT)
    client.set_terminated(run_id)
    return run_id
