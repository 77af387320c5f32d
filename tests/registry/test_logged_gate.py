"""The promotion gate on logged evidence alone, on a lake whose ``truth/`` tree is deleted.

The chain without truth (issue 12), from this side: the registry world is processed and its
models trained with ``truth/`` already gone (``conftest.registry_world``); here a deliberately
worse candidate (one boosting round, shuffled labels) is refused on the off-policy evidence, a
clearly better one passes and ``serve`` ranks with it over real HTTP, and a holdout too small
to support an estimate is refused rather than passed. ``evaluate`` without truth is the
evaluation tests' part.
"""

from __future__ import annotations

import httpx
import mlflow
from mlflow.tracking import MlflowClient
from support.live import ServerThread, rank_body
from support.registry_world import Trained, register_copy, settings_for, tiny_copy, truth_deleted

from matchmaking.registry.conventions import REPORT_ARTIFACT
from matchmaking.registry.gate import load_thresholds
from matchmaking.registry.promote import promote
from serving.app import create_app
from serving.settings import ServeSettings

# A busy machine must not turn the evidence these tests are about into a latency refusal.
RELAXED = load_thresholds().model_copy(update={"max_latency_p99_ms": 10_000.0})


def _failed(detail_checks: dict[str, float]) -> list[str]:
    return sorted(k.removeprefix("check.") for k, ok in detail_checks.items() if ok == 0.0)


def _run_metrics(settings_uri: str, run_id: str | None) -> dict[str, float]:
    assert run_id is not None
    return dict(MlflowClient(tracking_uri=settings_uri).get_run(run_id).data.metrics)


def test_worse_candidates_are_refused_on_logged_evidence_and_a_better_one_is_served(
    trained: Trained,
) -> None:
    assert truth_deleted(trained.world)
    settings = settings_for(trained)
    margin = RELAXED.max_acceptance_drop

    v1 = register_copy(settings, "jakarta", trained.one_round)
    [first] = promote(settings, ["jakarta"], actor="tester", thresholds=RELAXED)
    assert (first.status, first.version) == ("promoted", v1), first.detail

    # Clearly better than the one-round Production: non-inferior, and ahead on the estimate.
    v2 = register_copy(settings, "jakarta", trained.good)
    [better] = promote(settings, ["jakarta"], actor="tester", thresholds=RELAXED)
    assert (better.status, better.previous) == ("promoted", v1), better.detail
    assert better.metrics["difference.acceptance"] > 0
    assert better.metrics["difference.acceptance_ci_low"] >= -margin
    logged = _run_metrics(settings.tracking_uri or "", better.run_id)
    assert not [k for k in logged if k.startswith("sim.")]  # nothing from the simulator
    assert logged["check.no_regression_acceptance"] == 1.0
    assert logged["production.acceptance"] < logged["candidate.acceptance"]

    # One boosting round again, now against the good Production: its AUC clears the floor,
    # the paired off-policy difference is what refuses it.
    v3 = register_copy(settings, "jakarta", trained.one_round)
    [worse] = promote(settings, ["jakarta"], actor="tester", thresholds=RELAXED)
    assert (worse.status, worse.exit_code, worse.previous) == ("refused", 7, v2)
    assert worse.metrics["auc"] >= RELAXED.min_auc
    assert worse.metrics["difference.acceptance_ci_low"] < -margin
    checks = {k: v for k, v in _run_metrics(settings.tracking_uri or "", worse.run_id).items()}
    assert _failed({k: v for k, v in checks.items() if k.startswith("check.")}) == [
        "no_regression_acceptance"
    ]
    assert "paired difference" in worse.detail
    report = mlflow.artifacts.load_text(f"runs:/{worse.run_id}/{REPORT_ARTIFACT}")
    assert "| no_regression_acceptance | FAIL |" in report
    assert "Paired difference candidate - Production (dr" in report
    assert "supported bookings" in report and "| ess |" in report

    # Shuffled labels: refused too, whatever else it fails.
    v4 = register_copy(settings, "jakarta", trained.shuffled)
    [shuffled] = promote(settings, ["jakarta"], actor="tester", thresholds=RELAXED)
    assert (shuffled.status, shuffled.version) == ("refused", v4)
    assert shuffled.metrics["difference.acceptance_ci_high"] < 0  # clearly worse, not unsure
    assert v3 != v4

    # What serving polls is the good version, and it ranks with it over real HTTP.
    serve = ServeSettings(
        tracking_uri=settings.tracking_uri,
        model_name_prefix=settings.model_name_prefix,
        hot_cities=["jakarta"],
        registry_retries=0,
    )
    body = rank_body(n=6, seed=3)
    with ServerThread(create_app(serve)) as server, httpx.Client(base_url=server.url) as c:
        r = c.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model"], str(out["version"])) == (f"{settings.model_name_prefix}-jakarta", v2)
    assert out["fallback"] is False
    ranked = out["candidates"]
    assert sorted(c["driver_id"] for c in ranked) == sorted(
        c["driver_id"] for c in body["candidates"]
    )
    scores = [c["score"] for c in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    assert [c["rank"] for c in ranked] == list(range(1, len(ranked) + 1))


def test_a_holdout_too_small_to_support_an_estimate_is_refused_as_too_uncertain(
    trained: Trained,
) -> None:
    assert truth_deleted(trained.world)
    settings = settings_for(trained)
    tiny = tiny_copy(
        trained.world.holdout_dirs["jakarta"],
        trained.scratch / f"tiny-{settings.model_name_prefix}",
        60,
    )
    register_copy(settings, "jakarta", trained.good)
    [alone] = promote(settings, ["jakarta"], holdout=tiny, thresholds=RELAXED)
    assert alone.status == "refused" and alone.exit_code == 7  # never passes by default
    assert alone.detail.startswith("too uncertain: the candidate's"), alone.detail
    assert alone.metrics["supported"] < RELAXED.min_supported_bookings
    assert alone.metrics["auc"] >= RELAXED.min_auc  # not refused for its quality
