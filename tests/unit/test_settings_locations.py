"""Locations are resolved once, where the settings are built, and reach steps absolute."""

from __future__ import annotations

from pathlib import Path

import pytest

from matchmaking.config import Settings, refuse_mlflow_default_store
from matchmaking.errors import ConfigError


def test_relative_locations_are_absolute_against_the_building_process_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MATCHMAKING_DATA_DIR", "data")
    monkeypatch.setenv("MATCHMAKING_LAKE_URI", "elsewhere/lake")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///data/mlflow.db")
    settings = Settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.lake_dir == tmp_path / "elsewhere" / "lake"
    assert settings.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    assert settings.step_environment() == {
        "MATCHMAKING_DATA_DIR": str(tmp_path / "data"),
        "MATCHMAKING_LAKE_URI": str(tmp_path / "elsewhere" / "lake"),
    }


def test_object_storage_lake_is_passed_on_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHMAKING_LAKE_URI", "s3://bucket/lake/")
    assert Settings().step_environment()["MATCHMAKING_LAKE_URI"] == "s3://bucket/lake"


def test_a_step_refuses_mlflow_default_store_in_the_repository_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # steps run from the repository root (mlproject/step.sh)
    default = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refuse_mlflow_default_store(default)  # not under MLflow Projects: the user's choice
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123")
    with pytest.raises(ConfigError, match=r"export MLFLOW_TRACKING_URI=sqlite:///\$PWD/data"):
        refuse_mlflow_default_store(default)
    refuse_mlflow_default_store(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    refuse_mlflow_default_store("http://127.0.0.1:5000")
