"""The promote/rollback Typer commands, registered the way cli.py registers them."""

from __future__ import annotations

import pytest
import typer
from support.registry_world import Trained, register_copy, settings_for
from typer.testing import CliRunner

from matchmaking.registry.commands import promote_command, rollback_command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    return app


def test_commands_print_the_summary_and_exit_with_failures(
    trained: Trained, remote_tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(trained)
    monkeypatch.setenv("MATCHMAKING_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MATCHMAKING_MODEL_NAME_PREFIX", settings.model_name_prefix)
    monkeypatch.setenv("MATCHMAKING_EXPERIMENT_PREFIX", settings.experiment_prefix)
    monkeypatch.setenv("CI_PIPELINE_ID", "4242")
    app, runner = _app(), CliRunner()

    v1 = register_copy(settings, "jakarta", trained.weak)
    register_copy(settings, "bangkok", trained.shuffled, trained.world.train_dirs["bangkok"])

    dry = runner.invoke(app, ["promote", "--city", "jakarta,bangkok", "--dry-run"])
    assert dry.exit_code == 7, dry.output  # the gate's verdict, though nothing changed
    assert "would promote" in dry.output and "would refuse" in dry.output

    fleet = runner.invoke(app, ["promote", "--all-cities", "--actor", "ci-test"])
    assert fleet.exit_code == 7, fleet.output
    assert "promoted" in fleet.output and "refused" in fleet.output
    assert "2 city(ies), 1 failed" in fleet.output

    v2 = register_copy(settings, "jakarta", trained.good)
    one = runner.invoke(app, ["promote", "--city", "jakarta", "--version", v2])
    assert one.exit_code == 0, one.output

    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_model_version(f"{settings.model_name_prefix}-jakarta", v2).tags
    assert tags["ci.pipeline_id"] == "4242" and tags["production.previous"] == v1

    back = runner.invoke(app, ["rollback", "--city", "jakarta"])
    assert back.exit_code == 0, back.output
    assert "rolled back" in back.output and f"v{v2} -> v{v1}" in back.output

    neither = runner.invoke(app, ["rollback"])
    assert neither.exit_code == 2 and "--all-cities" in neither.output
    both = runner.invoke(app, ["promote", "--city", "jakarta", "--all-cities"])
    assert both.exit_code == 2


def test_online_evidence_refuses_a_country_model() -> None:
    """A country model has no challenger on live traffic: ``--evidence online --country`` is
    bad input (exit 2), refused before the registry is asked."""
    result = CliRunner().invoke(_app(), ["promote", "--country", "ID", "--evidence", "online"])
    assert result.exit_code == 2, result.output
    assert "--evidence offline" in result.output
