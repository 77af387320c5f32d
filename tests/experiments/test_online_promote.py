"""`matchmaking promote --evidence online` on the real tracking server and a real lake: the
challenger is promoted only when its live acceptance beats the champion's by the margin at
the confidence; otherwise exit 7 and Production untouched; rollback works after it."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support.traffic import Arm, write_traffic

from matchmaking.cli import run
from matchmaking.registry.conventions import CHALLENGER_ALIAS, PRODUCTION_ALIAS, REPORT_ARTIFACT
from matchmaking.registry.production import set_production


class Registry:
    """A model of its own on the session's server: versions registered, aliases set."""

    def __init__(self, uri: str, prefix: str) -> None:
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.name = f"{prefix}-jakarta"
        exp = self.client.create_experiment(f"{prefix}-models")
        self.run_id = self.client.create_run(exp).info.run_id
        self.client.set_terminated(self.run_id)
        self.client.create_registered_model(self.name, tags={"city": "jakarta"})

    def version(self) -> str:
        mv = self.client.create_model_version(
            self.name, f"runs:/{self.run_id}/model", run_id=self.run_id
        )
        return str(mv.version)

    def alias(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except mlflow.exceptions.MlflowException:
            return None

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.name, version).tags)


@pytest.fixture
def registry(remote_tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    prefix = f"on{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MATCHMAKING_MODEL_NAME_PREFIX", prefix)
    monkeypatch.setenv("MATCHMAKING_EXPERIMENT_PREFIX", prefix)
    monkeypatch.setenv("MATCHMAKING_PROMOTION_LOCKS_URI", str(tmp_path / "locks"))
    monkeypatch.setenv("MATCHMAKING_LAKE_URI", str(tmp_path / "lake"))
    return Registry(remote_tracking, prefix)


def _champion_and_challenger(reg: Registry) -> tuple[str, str]:
    champion, challenger = reg.version(), reg.version()
    set_production(reg.client, reg.name, champion, "test setup", "tester")
    reg.client.set_registered_model_alias(reg.name, CHALLENGER_ALIAS, challenger)
    return champion, challenger


def test_a_better_challenger_is_promoted_on_live_traffic_and_rollback_goes_back(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, challenger = _champion_and_challenger(registry)
    write_traffic(
        tmp_path / "lake",
        [Arm("champion", champion, 0.70, 700), Arm("challenger", challenger, 0.85, 700)],
    )
    assert run(["promote", "--city", "jakarta", "--evidence", "online", "--dry-run"]) == 0
    assert "would promote" in capsys.readouterr().out
    assert registry.alias(PRODUCTION_ALIAS) == champion  # a dry run moves nothing

    assert run(["promote", "--city", "jakarta", "--evidence", "online"]) == 0
    out = capsys.readouterr().out
    assert "Promotion gate (online evidence)" in out and "promoted" in out
    assert registry.alias(PRODUCTION_ALIAS) == challenger
    assert registry.alias(CHALLENGER_ALIAS) is None  # the experiment is over
    tags = registry.tags(challenger)
    assert tags["gate.result"] == "passed" and tags["gate.evidence"] == "online"
    assert tags["production.previous"] == champion and tags["gate.compared_with"] == champion
    assert float(tags["gate.online.difference.acceptance_ci_low"]) > 0
    report = mlflow.artifacts.load_text(f"runs:/{tags['gate.run_id']}/{REPORT_ARTIFACT}")
    assert "PASS" in report and f"challenger | {challenger}" in report

    assert run(["rollback", "--city", "jakarta"]) == 0
    assert registry.alias(PRODUCTION_ALIAS) == champion


@pytest.mark.parametrize(
    ("p_challenger", "bookings", "reason"),
    [(0.55, 700, "lies below the margin"), (0.90, 40, "too small to decide")],
)
def test_a_worse_or_unproven_challenger_is_refused_with_exit_7(
    registry: Registry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    p_challenger: float,
    bookings: int,
    reason: str,
) -> None:
    champion, challenger = _champion_and_challenger(registry)
    write_traffic(
        tmp_path / "lake",
        [
            Arm("champion", champion, 0.75, 700),
            Arm("challenger", challenger, p_challenger, bookings),
        ],
    )
    assert run(["promote", "--city", "jakarta", "--evidence", "online"]) == 7
    out = capsys.readouterr().out
    assert "refused" in out and reason in out
    assert registry.alias(PRODUCTION_ALIAS) == champion
    assert registry.alias(CHALLENGER_ALIAS) == challenger
    tags = registry.tags(challenger)
    assert tags["gate.result"] == "failed" and reason in tags["gate.reason"]


def test_online_evidence_needs_a_challenger_and_refuses_offline_options(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = registry.version()
    set_production(registry.client, registry.name, champion, "test setup", "tester")
    assert run(["promote", "--city", "jakarta", "--evidence", "online"]) == 6
    assert f"no version under alias '{CHALLENGER_ALIAS}'" in capsys.readouterr().out
    assert run(["promote", "--city", "jakarta", "--evidence", "online", "--version", "1"]) == 2
    assert "--version do not apply to --evidence online" in capsys.readouterr().err
    # A challenger without any logged traffic: no evidence, refused (never promoted).
    challenger = registry.version()
    registry.client.set_registered_model_alias(registry.name, CHALLENGER_ALIAS, challenger)
    assert run(["promote", "--city", "jakarta", "--evidence", "online"]) == 7
    assert registry.alias(PRODUCTION_ALIAS) == champion
