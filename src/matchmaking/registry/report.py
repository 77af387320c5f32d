"""What a gate run leaves behind: the markdown comparison report and the ``promote`` run."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from matchmaking import tracking
from matchmaking.lake.storage import Location
from matchmaking.registry.context import Context, ci_tags
from matchmaking.registry.conventions import GATE_FAILED, GATE_PASSED, REPORT_ARTIFACT
from matchmaking.registry.gate import GATE_METRICS, GateResult, GateThresholds
from matchmaking.registry.measure import Measured

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """One gate run: both versions measured on the same holdout, and what the gate said."""

    name: str
    candidate: Measured
    production: Measured | None
    result: GateResult
    holdout: Location
    manifest: dict[str, object]


def render_report(verdict: Verdict, thresholds: GateThresholds, dry_run: bool) -> str:
    """The markdown report: decision, holdout, metrics of both versions against the rules."""
    candidate, production, result = verdict.candidate, verdict.production, verdict.result
    manifest = verdict.manifest
    decision = "PASS" if result.passed else "FAIL"
    lines = [
        f"# Promotion gate: {verdict.name} v{candidate.version}: {decision}"
        + (" (dry run)" if dry_run else ""),
        "",
        f"- holdout: `{verdict.holdout}` ({manifest.get('start')}..{manifest.get('end')}, "
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


def _experiment_id(ctx: Context, city: str) -> str:
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


def log_run(ctx: Context, city: str, verdict: Verdict, report: str) -> str:
    """Log the ``promote-<city>-v<N>`` run (metrics of both versions, the report); its id."""
    client, candidate, production = ctx.client, verdict.candidate, verdict.production
    run = client.create_run(
        _experiment_id(ctx, city),
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
    client.log_param(run_id, "holdout_dir", str(verdict.holdout))
    client.log_param(run_id, "holdout_digest", str(verdict.manifest.get("digest")))
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
