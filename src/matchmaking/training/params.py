"""Training parameters: a YAML file, overridable key by key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matchmaking.config import load_yaml_model
from matchmaking.errors import ConfigError, field_problems
from matchmaking.schema import ALL_FEATURES, FEATURE_NAMES

DEFAULT_PARAMS_FILE = Path(__file__).resolve().parent.parent / "config" / "train.yaml"

Objective = Literal["binary", "lambdarank"]
Subsample = Literal["uniform", "time_decay"]
SampleWeight = Literal["none", "ipw"]
OBJECTIVES: tuple[Objective, ...] = ("binary", "lambdarank")
SAMPLE_WEIGHTS: tuple[SampleWeight, ...] = ("none",)  # the default (measured: docs/evaluation.md)
#: List-valued parameters: ``--set KEY=a,b`` and MLproject ``-P KEY=a,b`` give a list.
LIST_PARAMS = ("objectives", "sample_weights")


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    objectives: list[Objective] = Field(default_factory=lambda: list(OBJECTIVES))
    valid_days: int = Field(5, ge=1)
    num_boost_round: int = Field(800, ge=1)
    early_stopping_rounds: int = Field(40, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(7, ge=2)
    min_data_in_leaf: int = Field(200, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    bagging_freq: int = Field(1, ge=0)
    lambda_l2: float = Field(1.0, ge=0)
    seed: int = 42
    num_threads: int = Field(2, ge=1)
    selection_tolerance: float = Field(0.002, ge=0)
    # At most this many labelled (offered) training rows are read; beyond it whole bookings
    # of the training days are subsampled (the validation days are always whole), seeded by
    # ``seed`` and the day: ``uniform`` keeps each booking with the same probability,
    # ``time_decay`` with a probability halving every ``subsample_half_life_days`` of age
    # (the newest training day keeps the most). None: no cap.
    max_labelled_rows: int | None = Field(None, ge=1)
    subsample: Subsample = "uniform"
    subsample_half_life_days: float = Field(7.0, gt=0)
    # Selection-bias correction (docs/evaluation.md, "Training on logged offers"): ``none``
    # fits the labelled rows as logged; ``ipw`` weights each by the inverse of the logging
    # policy's propensity of its offer, capped at ``ipw_clip`` and normalised to mean 1. With
    # both listed, the chosen objective is fitted both ways and the weighted model is kept
    # only when its doubly robust estimate of first-offer acceptance on the validation days
    # beats the unweighted one's clearly: the lower end of the 95% interval of the paired
    # (booking by booking) gain is above ``ipw_min_gain``.
    sample_weights: list[SampleWeight] = Field(default_factory=lambda: list(SAMPLE_WEIGHTS))
    ipw_clip: float = Field(10.0, ge=1)
    ipw_min_gain: float = 0.0

    def lgb_params(
        self, objective: Objective, feature_names: tuple[str, ...] = FEATURE_NAMES
    ) -> dict[str, object]:
        """LightGBM parameters for one objective on ``feature_names`` (the city contract by
        default; a country model's adds the context features), deterministic given the seed."""
        params: dict[str, object] = {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "num_threads": self.num_threads,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
            "monotone_constraints": [ALL_FEATURES[n].monotone for n in feature_names],
            "monotone_constraints_method": "intermediate",
        }
        if objective == "binary":
            params["metric"] = ["auc", "binary_logloss"]
        else:
            params["metric"] = ["ndcg"]
            params["eval_at"] = [1, 3]
        return params


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["learning_rate=0.1", "objectives=binary"]`` -> typed-later overrides dict."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. learning_rate=0.1)")
        if value.strip() in ("", "''", '""'):
            continue  # an empty MLflow Projects parameter keeps the file's value
        parsed = yaml.safe_load(value)
        if key in LIST_PARAMS and isinstance(parsed, str):
            parsed = [p.strip() for p in parsed.split(",")]
        out[key.strip()] = parsed
    return out


def load_params(
    path: Path | None = None, overrides: dict[str, object] | None = None
) -> TrainParams:
    """The parameters of ``path`` (default: the packaged train.yaml) with ``overrides`` on top.

    Raises:
        ConfigError: the file is invalid, or an override names an unknown parameter or has a
            value out of range; one line per offending ``--set KEY=VALUE``.
    """
    base = load_yaml_model(path or DEFAULT_PARAMS_FILE, TrainParams)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not given:
        return base
    try:
        return TrainParams.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        known = ", ".join(TrainParams.model_fields)
        lines = [
            f"--set {key}={_shown(given.get(key))}: {problem}"
            for key, problem in field_problems(exc, known)
        ]
        raise ConfigError("\n".join(lines)) from None


def _shown(value: object) -> str:
    """An override value as the user typed it (``objectives`` comes back as a list)."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
