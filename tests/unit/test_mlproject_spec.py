"""The MLproject's parameter defaults are the values in force, so MLflow logs those (never '')."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matchmaking.training.params import load_params, parse_overrides

MLPROJECT = Path(__file__).resolve().parents[2] / "mlproject" / "MLproject"
ENTRY_POINTS = yaml.safe_load(MLPROJECT.read_text())["entry_points"]


def _defaults(entry_point: str) -> dict[str, str]:
    params = ENTRY_POINTS[entry_point]["parameters"]
    return {k: str(v["default"]) for k, v in params.items() if "default" in v}


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_no_parameter_defaults_to_an_empty_value(entry_point: str) -> None:
    empty = [k for k, v in _defaults(entry_point).items() if v.strip() == ""]
    assert not empty, f"{entry_point}: MLflow would log {empty} as ''"


@pytest.mark.parametrize("entry_point", ["train", "train_country", "main"])
def test_hyperparameter_defaults_are_train_yaml_values(entry_point: str) -> None:
    file_params = load_params()
    hyper = {k: v for k, v in _defaults(entry_point).items() if k in type(file_params).model_fields}
    assert hyper, f"{entry_point} declares no hyperparameters"
    from_mlproject = load_params(overrides=parse_overrides([f"{k}={v}" for k, v in hyper.items()]))
    assert from_mlproject == file_params, (
        f"{entry_point}'s defaults differ from src/matchmaking/config/train.yaml: "
        "change both together"
    )
