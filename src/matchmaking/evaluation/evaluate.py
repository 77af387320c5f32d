"""``matchmaking evaluate``: a model against the oracle and two baselines on a later holdout."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd

from matchmaking import lake, tracking
from matchmaking.config import Settings
from matchmaking.errors import InputError, ModelNotFoundError
from matchmaking.evaluation import metrics as m
from matchmaking.evaluation.matching import match_replay
from matchmaking.evaluation.plots import plot_calibration, plot_importance, plot_policies
from matchmaking.evaluation.replay import draw_outcomes, replay
from matchmaking.lake import storage
from matchmaking.lake.datasets import read_dataset
from matchmaking.lake.storage import Location
from matchmaking.progress import SILENT, Progress
from matchmaking.registry.conventions import CITY_TAG
from matchmaking.reporting.drift import evaluation_drift
from matchmaking.schema import FEATURE_NAMES
from matchmaking.scorer import Scorer, load_scorer

logger = logging.getLogger(__name__)

POLICIES = ("model", "oracle", "nearest_eta", "highest_rating")
SUMMARY_COLUMNS = (
    "auc",
    "logloss",
    "calibration_error",
    "ndcg_at_1",
    "ndcg_at_5",
    "hit_at_1",
    "acceptance",
    "completion",
    "pickup_eta_p50_min",
    "pickup_eta_p90_min",
    "heading_home_share",
)


@dataclass
class EvaluationResult:
    city: str
    model_uri: str
    run_id: str | None
    table: pd.DataFrame  # one row per policy, SUMMARY_COLUMNS
    matching: dict[str, float]  # greedy vs batch matching with the model's scores
    artifact_uri: str | None = None  # the run's artifacts: plots/*.png, summary.txt, summary.json

    def metric(self, policy: str, name: str) -> float:
        return float(self.table.loc[policy, name])


def load_model(model_uri: str, tags: Mapping[str, str] | None = None) -> Scorer:
    """The model behind a registry or run URI, through the platform's one loader.

    Raises:
        ModelNotFoundError: nothing loadable is there (no such version, run or artifact).
    """
    try:
        return load_scorer(model_uri, tags)
    except mlflow.exceptions.MlflowException as exc:
        if tracking.unreachable(exc):
            raise
        raise ModelNotFoundError(f"no model at {model_uri!r}: {_first_line(exc)}; {_HOW}") from None


_HOW = (
    "pass models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/model, as "
    "printed by `matchmaking train` (model_uri: ...)"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_tags(model_uri: str) -> dict[str, str]:
    """Tags of the registered version (``models:/<name>/<version>``, ``models:/<name>@<alias>``)
    or run (``runs:/``) behind a URI; empty for other locations (a path, a logged-model id).

    Raises:
        ModelNotFoundError: the registered model, version, alias or run does not exist.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        if model_uri.startswith("models:/"):
            ref = model_uri.removeprefix("models:/").strip("/")
            name, at, alias = ref.partition("@")
            if at:
                return dict(client.get_model_version_by_alias(name, alias).tags)
            name, _, version = ref.partition("/")
            if version.isdigit():
                return dict(client.get_model_version(name, version).tags)
            # models:/m-<id> (a logged model) or a stage: no version tags to read
        elif model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
            return dict(client.get_run(run_id).data.tags)
    except mlflow.exceptions.MlflowException as exc:
        if tracking.unreachable(exc):
            raise
        raise ModelNotFoundError(f"no model at {model_uri!r}: {_first_line(exc)}; {_HOW}") from None
    return {}


def check_model_city(model_uri: str, city: str, tags: Mapping[str, str] | None = None) -> None:
    """Refuse a model trained for another city than the one evaluated (``tags``: the model's,
    read with ``model_tags`` when not given).

    Raises:
        InputError: the model's ``city`` tag names another city.
        ModelNotFoundError: see ``model_tags``.
    """
    model_city = (model_tags(model_uri) if tags is None else tags).get(CITY_TAG)
    if model_city is None:
        logger.warning("%s has no city tag: cannot check it was trained for %s", model_uri, city)
    elif model_city != city:
        raise InputError(
            f"{model_uri} is a model of {model_city!r} (its city tag), not {city!r}; evaluate "
            f"it with --city {model_city} on a {model_city} holdout, or pass a {city} model"
        )


def holdout_frame(
    settings: Settings, city: str, features_dir: Location
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Features of the holdout joined with the ground truth, grouped by booking."""
    rows, manifest = read_dataset(features_dir)
    if manifest.get("city") != city:
        raise InputError(f"{features_dir} holds features of {manifest.get('city')!r}, not {city!r}")
    start, end = (
        date.fromisoformat(str(manifest["start"])),
        date.fromisoformat(str(manifest["end"])),
    )
    truth = lake.read_truth(settings.lake_dir, city, start, end).to_pandas()
    rows = rows.merge(truth, on=["booking_id", "driver_id"], how="inner", validate="one_to_one")
    rows = rows.sort_values(["requested_at", "booking_id", "eta_rank"], kind="stable")
    return rows.reset_index(drop=True), manifest


def policy_scores(
    rows: pd.DataFrame, model_scores: npt.NDArray[np.float64]
) -> dict[str, npt.NDArray[np.float64]]:
    return {
        "model": model_scores,
        "oracle": rows["p_accept"].to_numpy(dtype=np.float64),
        "nearest_eta": -rows["eta_min"].to_numpy(dtype=np.float64),
        "highest_rating": rows["rating"].to_numpy(dtype=np.float64)
        - 1e-6 * rows["eta_min"].to_numpy(),
    }


def compare(
    rows: pd.DataFrame, model_scores: npt.NDArray[np.float64], probabilistic: bool, seed: int
) -> pd.DataFrame:
    """All metrics for the model, the oracle and the baselines on the same rows and draws."""
    group = pd.factorize(rows["booking_id"])[0].astype(np.int64)
    offered = rows["offered"].to_numpy(dtype=bool)
    labels = rows.loc[offered, "accepted"].astype("float64").to_numpy()
    outcomes = draw_outcomes(rows["p_accept"].to_numpy(), rows["p_cancel"].to_numpy(), seed)
    eta = rows["eta_min"].to_numpy(dtype=np.float64)
    home = rows["home_gain_km"].to_numpy(dtype=np.float64)
    relevance = rows["p_accept"].to_numpy(dtype=np.float64)
    table: dict[str, dict[str, float]] = {}
    for policy, scores in policy_scores(rows, model_scores).items():
        row: dict[str, float] = {"auc": m.auc(labels, scores[offered])}
        is_prob = policy == "oracle" or (policy == "model" and probabilistic)
        row["logloss"] = m.logloss(labels, scores[offered]) if is_prob else float("nan")
        row["calibration_error"] = (
            m.calibration_error(labels, scores[offered]) if is_prob else float("nan")
        )
        row.update(m.ranking_metrics(group, scores, relevance))
        row.update(replay(group, scores, outcomes, eta, home))
        table[policy] = row
    return pd.DataFrame.from_dict(table, orient="index")


def evaluate(
    settings: Settings,
    city: str,
    model_uri: str,
    features_dir: Location,
    seed: int = 7,
    log_run: bool = True,
    progress: Progress = SILENT,
) -> EvaluationResult:
    """Score the holdout with the model, compare with oracle and baselines, log plots.

    Raises:
        InputError: the model or the holdout belongs to another city.
        ModelNotFoundError: nothing loadable at ``model_uri``.
    """
    tracking.configure(settings)
    tags = model_tags(model_uri)
    check_model_city(model_uri, city, tags)
    progress.step(f"reading the holdout {features_dir} and its ground truth")
    rows, manifest = holdout_frame(settings, city, features_dir)
    progress.step(f"loading {model_uri}")
    scorer = load_model(model_uri, tags)
    model_scores = scorer.predict(rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float64))
    probabilistic = scorer.score_kind == "probability"
    progress.step(
        f"replaying {rows['booking_id'].nunique():,} bookings under {len(POLICIES)} policies"
    )
    table = compare(rows, np.asarray(model_scores, dtype=np.float64), probabilistic, seed)
    table = table[[*SUMMARY_COLUMNS, "bookings"]]
    matching = match_replay(
        rows["booking_id"].to_numpy(dtype=object),
        rows["driver_id"].to_numpy(dtype=object),
        rows["requested_at"].to_numpy(),
        np.asarray(model_scores, dtype=np.float64),
        rows["p_accept"].to_numpy(dtype=np.float64),
        probabilistic=probabilistic,
    )
    run_id = None
    artifact_uri: str | None = None
    if log_run:
        progress.step("logging metrics, plots and the report to MLflow")
        tracking.use_experiment(settings, city)
        with mlflow.start_run(run_name=f"evaluate-{city}") as run:
            run_id = run.info.run_id
            artifact_uri = run.info.artifact_uri
            mlflow.set_tags(
                tracking.reproducibility_tags(
                    step="evaluate", city=city, model_uri=model_uri, data_digest=manifest["digest"]
                )
            )
            mlflow.log_params(
                {
                    "city": city,
                    "model_uri": model_uri,
                    "seed": seed,
                    "holdout_start": manifest["start"],
                    "holdout_end": manifest["end"],
                }
            )
            mlflow.log_input(
                tracking.lineage_dataset(
                    storage.as_uri(features_dir),
                    f"features-{city}-holdout",
                    str(manifest["digest"]),
                ),
                context="evaluation",
            )
            for policy, values in table.iterrows():
                mlflow.log_metrics(
                    {f"{policy}.{k}": float(v) for k, v in values.items() if np.isfinite(v)}
                )
            mlflow.log_metrics({f"matching.{k}": float(v) for k, v in matching.items()})
            # PSI of each feature, holdout vs the model's training window (docs/monitoring.md).
            mlflow.log_metrics(evaluation_drift(model_uri, rows))
            mlflow.log_text(table.to_string(float_format=lambda v: f"{v:.4f}"), "summary.txt")
            mlflow.log_table(table.reset_index(names="policy"), "summary.json")
            importance = scorer.feature_importance()
            if importance is not None:
                mlflow.log_figure(
                    plot_importance(list(scorer.feature_names), importance),
                    "plots/feature_importance.png",
                )
            offered = rows["offered"].to_numpy(dtype=bool)
            if probabilistic:
                mlflow.log_figure(
                    plot_calibration(
                        rows.loc[offered, "accepted"].astype("float64").to_numpy(),
                        {
                            "model": np.asarray(model_scores)[offered],
                            "oracle": rows.loc[offered, "p_accept"].to_numpy(),
                        },
                    ),
                    "plots/calibration.png",
                )
            mlflow.log_figure(plot_policies(table), "plots/policy_comparison.png")
    progress.done()
    return EvaluationResult(
        city=city,
        model_uri=model_uri,
        run_id=run_id,
        table=table,
        matching=matching,
        artifact_uri=artifact_uri,
    )


def artifact_lines(result: EvaluationResult) -> list[str]:
    """Where the evaluate run put its plots and report (nothing when no run was logged)."""
    if result.artifact_uri is None:
        return []
    base = result.artifact_uri.rstrip("/")
    return [
        f"plots: {base}/plots/ (feature importance, calibration, policy comparison)",
        f"report: {base}/summary.txt (as a table: summary.json)",
    ]


def format_summary(results: list[EvaluationResult]) -> str:
    """The per-city table the CLI and the demo print."""
    frames = []
    for r in results:
        t = r.table[
            [
                "auc",
                "ndcg_at_1",
                "hit_at_1",
                "acceptance",
                "completion",
                "pickup_eta_p50_min",
                "heading_home_share",
            ]
        ].copy()
        t.insert(0, "city", r.city)
        frames.append(t.reset_index(names="policy"))
    text = pd.concat(frames).to_string(index=False, float_format=lambda v: f"{v:.4f}")
    lines = [
        text,
        "",
        "greedy vs batch matching (30 s windows, model scores, expected acceptances):",
    ]
    for r in results:
        mt = r.matching
        lines.append(
            f"  {r.city}: greedy {mt.get('greedy_acceptance', float('nan')):.4f}  "
            f"batch {mt.get('batch_acceptance', float('nan')):.4f}  "
            f"difference {mt.get('batch_minus_greedy', float('nan')):+.4f} "
            f"({int(mt.get('contested_windows', 0))} of {int(mt.get('windows', 0))} windows "
            "contested)"
        )
    return "\n".join(lines)
