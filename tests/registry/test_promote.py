"""Promotion gate and rollback against the real tracking server (PostgreSQL-backed)."""

from __future__ import annotations

import threading
import warnings

import mlflow
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.registry.production import PRODUCTION_ALIAS, current_production
from matchmaking.registry.promote import (
    REPORT_ARTIFACT,
    exit_code,
    format_summary,
    promote,
    rollback,
)

from .conftest import Trained, register_copy, settings_for


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _state(settings: Settings, city: str = "jakarta") -> tuple[str | None, list[str]]:
    """(alias holder, versions in stage Production)."""
    client = _client(settings)
    name = f"{settings.model_name_prefix}-{city}"
    try:
        alias = str(client.get_model_version_by_alias(name, PRODUCTION_ALIAS).version)
    except mlflow.exceptions.MlflowException:
        alias = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        staged = sorted(
            str(mv.version)
            for mv in client.search_model_versions(f"name='{name}'")
            if mv.current_stage == "Production"
        )
    return alias, staged


def _tags(settings: Settings, version: str, city: str = "jakarta") -> dict[str, str]:
    name = f"{settings.model_name_prefix}-{city}"
    return dict(_client(settings).get_model_version(name, version).tags)


def test_worse_refused_better_promoted_then_rollback(trained: Trained) -> None:
    settings = settings_for(trained)
    v1 = register_copy(settings, "jakarta", trained.weak)
    [first] = promote(settings, ["jakarta"], actor="tester")
    assert (first.status, first.version, first.previous) == ("promoted", v1, None)
    assert "compared_with" not in first.detail  # no Production yet: floors only

    v2 = register_copy(settings, "jakarta", trained.shuffled)
    [refused] = promote(settings, ["jakarta"], actor="tester")
    assert refused.status == "refused" and refused.exit_code == 7
    assert refused.version == v2 and refused.previous == v1 and "AUC" in refused.detail
    assert _state(settings) == (v1, [v1])  # Production untouched
    bad = _tags(settings, v2)
    assert bad["gate.result"] == "failed" and "AUC" in bad["gate.reason"]

    v3 = register_copy(settings, "jakarta", trained.good)
    [better] = promote(settings, ["jakarta"], actor="tester")
    assert (better.status, better.version, better.previous) == ("promoted", v3, v1)
    assert better.metrics["auc"] > first.metrics["auc"]
    assert _state(settings) == (v3, [v3])
    good = _tags(settings, v3)
    assert good["gate.result"] == "passed"
    assert good["production.previous"] == v1 and good["gate.compared_with"] == v1
    assert good["production.by"] == "tester"
    report = mlflow.artifacts.load_text(f"runs:/{good['gate.run_id']}/{REPORT_ARTIFACT}")
    assert "PASS" in report and f"v{v1}" in report and "| acceptance |" in report

    [back] = rollback(settings, ["jakarta"], actor="tester")
    assert (back.status, back.version, back.previous) == ("rolled back", v1, v3)
    assert _state(settings) == (v1, [v1])
    # What serving polls for a city's model:
    serving_view = current_production(_client(settings), f"{settings.model_name_prefix}-jakarta")
    assert serving_view is not None and str(serving_view.version) == v1
    assert _tags(settings, v1)["production.reason"] == f"rollback from v{v3}"

    [explicit] = rollback(settings, ["jakarta"], to=v3)
    assert explicit.status == "rolled back" and _state(settings) == (v3, [v3])


def test_dry_run_changes_nothing(trained: Trained) -> None:
    settings = settings_for(trained)
    v1 = register_copy(settings, "jakarta", trained.weak)
    promote(settings, ["jakarta"])
    v2 = register_copy(settings, "jakarta", trained.good)
    before = _tags(settings, v2)
    client = _client(settings)
    exp = client.get_experiment_by_name(f"{settings.experiment_prefix}-jakarta")
    assert exp is not None
    runs_before = len(client.search_runs([exp.experiment_id]))

    [outcome] = promote(settings, ["jakarta"], dry_run=True)
    assert outcome.status == "would promote" and outcome.exit_code == 0
    assert outcome.version == v2 and outcome.previous == v1
    assert _state(settings) == (v1, [v1])
    assert _tags(settings, v2) == before
    assert len(client.search_runs([exp.experiment_id])) == runs_before


def test_concurrent_promotions_end_consistent(trained: Trained) -> None:
    settings = settings_for(trained)
    versions = {
        "weak": register_copy(settings, "jakarta", trained.weak),
        "good": register_copy(settings, "jakarta", trained.good),
        "shuffled": register_copy(settings, "jakarta", trained.shuffled),
    }
    results: dict[str, str] = {}

    def run(kind: str) -> None:
        [o] = promote(settings, ["jakarta"], version=versions[kind], actor=f"thread-{kind}")
        results[kind] = o.status

    threads = [threading.Thread(target=run, args=(k,)) for k in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(results) == 3, results
    assert results["shuffled"] == "refused"
    alias, staged = _state(settings)
    assert alias is not None and staged == [alias]
    assert alias != versions["shuffled"]
    assert _tags(settings, alias)["gate.result"] == "passed"
    assert (
        "promotion.lock"
        not in _client(settings).get_registered_model(f"{settings.model_name_prefix}-jakarta").tags
    )


def test_fleet_one_failing_city_does_not_stop_the_others(trained: Trained) -> None:
    settings = settings_for(trained)
    register_copy(settings, "bangkok", trained.shuffled, trained.world.train_dirs["bangkok"])
    v_jkt = register_copy(settings, "jakarta", trained.good)

    outcomes = promote(settings, None)  # every city with a registered model
    by_city = {o.city: o for o in outcomes}
    assert set(by_city) == {"bangkok", "jakarta"}
    assert by_city["bangkok"].status == "refused"
    assert by_city["jakarta"].status == "promoted" and by_city["jakarta"].version == v_jkt
    assert exit_code(outcomes) == 7
    table = format_summary(outcomes)
    assert "bangkok" in table and "refused" in table and "2 city(ies), 1 failed" in table
    assert _state(settings, "bangkok") == (None, [])


def test_rollback_without_history_fails_cleanly(trained: Trained) -> None:
    settings = settings_for(trained)
    register_copy(settings, "jakarta", trained.good)
    promote(settings, ["jakarta"])
    [outcome] = rollback(settings, ["jakarta"])
    assert outcome.status == "error" and outcome.exit_code == 6
    assert "--to" in outcome.detail
