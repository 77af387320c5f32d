"""``matchmaking evaluate``: a model and two baselines on a later holdout, from logged data.

What any dispatch log supports (``evaluation.logged``): logged-data metrics on the offered rows
(``logged.<policy>.*``) and off-policy estimates of each policy's first-offer acceptance with
intervals (``ope.<policy>.*``). When the lake holds the simulator's ``truth/`` for the holdout,
the simulator diagnostics are logged too (``evaluation.simulator``: ``sim.oracle.*``,
``sim.replay.*``, ``sim.matching.*``, ``sim.ope.*``); without it nothing fails and no ``sim.*``
metric exists. Metric names and what they mean: docs/evaluation.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import InputError, ModelNotFoundError
from matchmaking.evaluation import simulator
from matchmaking.evaluation.logged import (
    DEFAULT_DR_CLIP,
    OffPolicy,
    has_decision_log,
    logged_metrics,
    off_policy,
    policy_scores,
    read_holdout,
)
from matchmaking.evaluation.offpolicy import INTERVAL_METHOD
from matchmaking.evaluation.plots import (
    close_figure,
    plot_calibration,
    plot_estimates,
    plot_importance,
    plot_policies,
)
from matchmaking.features.context import model_input
from matchmaking.lake import storage
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.markets import get_market
from matchmaking.progress import SILENT, Progress
from matchmaking.registry.conventions import CITY_TAG, COUNTRY_TAG, SCOPE_COUNTRY, SCOPE_TAG
from matchmaking.reporting.drift import evaluation_drift
from matchmaking.scorer import Scorer, load_scorer

logger = logging.getLogger(__name__)

#: Families of per-policy metrics, as logged: ``<family>.<policy>.<metric>``.
POLICY_FAMILIES = ("logged", "ope", "sim.oracle", "sim.replay", "sim.ope")
SIM_PREFIX = "sim."
#: Run tag: whether the simulator diagnostics ran (``yes``) or the lake had no truth (``no``).
SIMULATOR_TAG = "simulator_diagnostics"


@dataclass
class EvaluationResult:
    """What an evaluation measured, by logged metric name (``logged.model.auc``, ...)."""

    city: str
    model_uri: str
    run_id: str | None
    metrics: dict[str, float]
    artifact_uri: str | None = None  # the run's artifacts: plots/*.png, summary.txt, summary.json

    def metric(self, name: str) -> float:
        """The metric ``name`` (NaN when it was not measured: no truth, no decision log...)."""
        return float(self.metrics.get(name, math.nan))

    @property
    def simulated(self) -> bool:
        """Whether the simulator diagnostics ran (the lake had ``truth/``)."""
        return any(k.startswith(SIM_PREFIX) for k in self.metrics)

    @property
    def matching(self) -> dict[str, float]:
        """Greedy vs batch matching (a simulator diagnostic; empty without truth)."""
        prefix = f"{SIM_PREFIX}matching."
        return {k.removeprefix(prefix): v for k, v in self.metrics.items() if k.startswith(prefix)}

    @property
    def table(self) -> pd.DataFrame:
        """One row per policy, a column per ``<family>.<metric>`` (``logged.auc``,
        ``ope.dr``, ``sim.replay.acceptance``...)."""
        return policy_table(self.metrics)


def policy_table(metrics: Mapping[str, float]) -> pd.DataFrame:
    """Per-policy metrics (``<family>.<policy>.<metric>``) as a policy x ``<family>.<metric>``
    frame; the model first, then the oracle, then the rest."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        for family in POLICY_FAMILIES:
            if key.startswith(f"{family}.") and key.count(".") == family.count(".") + 2:
                policy, metric = key.removeprefix(f"{family}.").split(".")
                rows.setdefault(policy, {})[f"{family}.{metric}"] = value
                break
    order = sorted(rows, key=lambda p: (p != "model", p != "oracle", p))
    return pd.DataFrame.from_dict(rows, orient="index").reindex(index=order)


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
    tags = model_tags(model_uri) if tags is None else tags
    if tags.get(SCOPE_TAG) == SCOPE_COUNTRY:  # a country model scores each of its cities
        country = get_market(city).country
        if tags.get(COUNTRY_TAG, "").upper() != country:
            raise InputError(
                f"{model_uri} is the country model of {tags.get(COUNTRY_TAG)!r}, and {city!r} "
                f"is a city of {country}; evaluate {country}'s country model or a {city} model"
            )
        return
    model_city = tags.get(CITY_TAG)
    if model_city is None:
        logger.warning("%s has no city tag: cannot check it was trained for %s", model_uri, city)
    elif model_city != city:
        raise InputError(
            f"{model_uri} is a model of {model_city!r} (its city tag), not {city!r}; evaluate "
            f"it with --city {model_city} on a {model_city} holdout, or pass a {city} model"
        )


@dataclass(frozen=True)
class _Scored:
    """One evaluation's inputs and intermediate results, for logging the run."""

    rows: pd.DataFrame
    manifest: dict[str, object]
    features_dir: Location
    scorer: Scorer
    model_scores: npt.NDArray[np.float64]
    seed: int
    clip: float | None
    dr_clip: float | None
    ope: OffPolicy | None
    truth_rows: pd.DataFrame | None
    diagnostics: simulator.Diagnostics | None


def evaluate(
    settings: Settings,
    city: str,
    model_uri: str,
    features_dir: LocationLike,
    seed: int = 7,
    log_run: bool = True,
    progress: Progress = SILENT,
    clip: float | None = None,
    dr_clip: float | None = DEFAULT_DR_CLIP,
) -> EvaluationResult:
    """Score the holdout with the model; logged-data metrics and off-policy estimates for the
    model and the baselines; simulator diagnostics when the lake has the holdout's truth.

    Args:
        seed: the replay's outcome draws (simulator) and a ranker's calibration folds.
        clip: cap on the IPS and SNIPS importance weights (None: unclipped).
        dr_clip: cap on the DR correction's weights (None: unclipped; docs/evaluation.md).

    Raises:
        InputError: the model or the holdout belongs to another city.
        ModelNotFoundError: nothing loadable at ``model_uri``.
    """
    tracking.configure(settings)
    tags = model_tags(model_uri)
    check_model_city(model_uri, city, tags)
    progress.step(f"reading the holdout {features_dir}")
    rows, manifest = read_holdout(city, features_dir)
    progress.step(f"loading {model_uri}")
    scorer = load_model(model_uri, tags)
    matrix = model_input(rows, scorer.feature_names, get_market(city))
    model_scores = np.asarray(scorer.predict(matrix), dtype=np.float64)
    probabilistic = scorer.score_kind == "probability"
    scores = policy_scores(rows, model_scores)
    n_bookings = rows["booking_id"].nunique()
    progress.step(f"logged-data metrics and off-policy estimates on {n_bookings:,} bookings")
    logged = logged_metrics(rows, scores, probabilistic)
    metrics = {f"logged.{p}.{k}": float(v) for p, r in logged.iterrows() for k, v in r.items()}
    ope: OffPolicy | None = None
    if has_decision_log(rows):
        ope = off_policy(rows, scores, scorer.score_kind, clip=clip, dr_clip=dr_clip, seed=seed)
        table = ope.table()
        metrics |= {f"ope.{p}.{k}": float(v) for p, r in table.iterrows() for k, v in r.items()}
        metrics |= ope.versus_baselines()
    else:
        logger.warning(
            "%s: the holdout %s has no logged propensities (published before they were "
            "logged): no off-policy estimate; process the window again to get them",
            city,
            features_dir,
        )
    truth_rows: pd.DataFrame | None = None
    diagnostics: simulator.Diagnostics | None = None
    start = date.fromisoformat(str(manifest["start"]))
    end = date.fromisoformat(str(manifest["end"]))
    if simulator.truth_available(settings, city, start, end):
        progress.step(f"replaying {n_bookings:,} bookings under the truth (simulator diagnostics)")
        truth_rows = simulator.join_truth(settings, city, rows, manifest)
        estimates = ope.estimates if ope is not None else None
        diagnostics = simulator.diagnose(truth_rows, model_scores, probabilistic, seed, estimates)
        metrics |= diagnostics.metrics()
    else:
        logger.info("%s: no truth/ for %s..%s: no simulator diagnostics", city, start, end)
    result = EvaluationResult(city=city, model_uri=model_uri, run_id=None, metrics=metrics)
    if log_run:
        progress.step("logging metrics, plots and the report to MLflow")
        scored = _Scored(
            rows,
            manifest,
            Location.of(features_dir),
            scorer,
            model_scores,
            seed,
            clip,
            dr_clip,
            ope,
            truth_rows,
            diagnostics,
        )
        _log_run(settings, result, scored)
    progress.done()
    return result


def _log_run(settings: Settings, result: EvaluationResult, s: _Scored) -> None:
    """The ``evaluate-<city>`` run: params, lineage, metrics, the summary and the plots."""
    city, model_uri, manifest = result.city, result.model_uri, s.manifest
    tracking.use_experiment(settings, city)
    with mlflow.start_run(run_name=f"evaluate-{city}") as run:
        result.run_id = run.info.run_id
        result.artifact_uri = run.info.artifact_uri
        mlflow.set_tags(
            tracking.reproducibility_tags(
                step="evaluate", city=city, model_uri=model_uri, data_digest=manifest["digest"]
            )
        )
        mlflow.set_tag(SIMULATOR_TAG, "yes" if s.diagnostics is not None else "no")
        params: dict[str, object] = {
            "city": city,
            "model_uri": model_uri,
            "seed": s.seed,
            "holdout_start": manifest["start"],
            "holdout_end": manifest["end"],
            "ope_clip": "none" if s.clip is None else s.clip,
            "ope_dr_clip": "none" if s.dr_clip is None else s.dr_clip,
        }
        if s.ope is not None:
            params |= {"ope_interval": INTERVAL_METHOD, "ope_direct_method": s.ope.direct.method}
        for column in ("logging_policy", "logging_policy_version"):  # who made the log
            if column in s.rows.columns:
                params[column] = ",".join(sorted(map(str, s.rows[column].dropna().unique())))
        mlflow.log_params(params)
        mlflow.log_input(
            tracking.lineage_dataset(
                storage.as_uri(s.features_dir), f"features-{city}-holdout", str(manifest["digest"])
            ),
            context="evaluation",
        )
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if math.isfinite(v)})
        # PSI of each feature, holdout vs the model's training window (docs/monitoring.md).
        mlflow.log_metrics(evaluation_drift(model_uri, s.rows))
        mlflow.log_text(summary_text(result), "summary.txt")
        mlflow.log_table(result.table.reset_index(names="policy"), "summary.json")
        importance = s.scorer.feature_importance()
        if importance is not None:
            _log_figure(
                plot_importance(list(s.scorer.feature_names), importance),
                "plots/feature_importance.png",
            )
        offered = s.rows["offered"].to_numpy(dtype=bool)
        if s.scorer.score_kind == "probability":
            probs = {"model": s.model_scores[offered]}
            if s.truth_rows is not None:  # how calibrated the truth itself is, for reference
                probs["oracle (simulator)"] = s.truth_rows.loc[offered, "p_accept"].to_numpy()
            labels = s.rows.loc[offered, "accepted"].astype("float64").to_numpy()
            _log_figure(plot_calibration(labels, probs), "plots/calibration.png")
        if s.ope is not None:
            truth = s.diagnostics.ope["true_value"] if s.diagnostics is not None else None
            _log_figure(plot_estimates(s.ope.table(), truth), "plots/off_policy_estimates.png")
        if s.diagnostics is not None:
            _log_figure(plot_policies(s.diagnostics.table), "plots/sim_replay.png")


def _log_figure(figure: Figure, path: str) -> None:
    """Log ``figure`` as an artifact and close it (pyplot keeps every open figure)."""
    mlflow.log_figure(figure, path)
    close_figure(figure)


def result_from_run(client: MlflowClient, run_id: str) -> EvaluationResult:
    """An ``EvaluationResult`` rebuilt from what an evaluate run logged."""
    run = client.get_run(run_id)
    return EvaluationResult(
        city=run.data.params["city"],
        model_uri=run.data.params["model_uri"],
        run_id=run_id,
        metrics={k: v for k, v in run.data.metrics.items() if not k.startswith("drift.")},
        artifact_uri=run.info.artifact_uri,
    )


def artifact_lines(result: EvaluationResult) -> list[str]:
    """Where the evaluate run put its plots and report (nothing when no run was logged)."""
    if result.artifact_uri is None:
        return []
    base = result.artifact_uri.rstrip("/")
    plots = "feature importance, calibration, off-policy estimates"
    if result.simulated:
        plots += ", simulator replay"
    return [
        f"plots: {base}/plots/ ({plots})",
        f"report: {base}/summary.txt (as a table: summary.json)",
    ]


#: What the printed summary shows: logged data first, then the simulator's diagnostics.
LOGGED_SUMMARY = ("logged.auc", "logged.ndcg_at_1", "ope.dr", "ope.snips", "ope.ips")
SIM_SUMMARY = (
    "sim.ope.true_value",
    "sim.replay.acceptance",
    "sim.replay.completion",
    "sim.replay.pickup_eta_p50_min",
    "sim.replay.heading_home_share",
)


def _frame(results: list[EvaluationResult], columns: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for r in results:
        t = r.table.reindex(columns=list(columns))
        t = t[t.notna().any(axis=1)]
        if "ope.dr" in columns:
            low, high = r.table.get("ope.dr_ci_low"), r.table.get("ope.dr_ci_high")
            if low is not None and high is not None:
                ci = [
                    f"[{lo:.4f}, {hi:.4f}]"
                    for lo, hi in zip(low[t.index], high[t.index], strict=True)
                ]
                t.insert(t.columns.get_loc("ope.dr") + 1, "ope.dr_95ci", ci)
            support = r.table.get("ope.support")
            if support is not None:
                t["ope.support"] = support[t.index]
        t.insert(0, "city", r.city)
        frames.append(t.reset_index(names="policy"))
    return pd.concat(frames) if frames else pd.DataFrame()


def summary_text(result: EvaluationResult) -> str:
    """The run's ``summary.txt``: every per-policy metric, one table."""
    return result.table.to_string(float_format=lambda v: f"{v:.4f}")


def format_summary(results: list[EvaluationResult]) -> str:
    """The per-city tables the CLI and the demo print: logged data and off-policy estimates
    (first-offer acceptance, 95% interval), then the simulator diagnostics when there are."""
    fmt = {"float_format": lambda v: f"{v:.4f}", "index": False}
    lines = [
        "logged data: AUC and NDCG@1 on offered rows; off-policy first-offer acceptance "
        "(DR with its 95% interval, SNIPS, IPS; support = share of bookings whose choice the "
        "log can vouch for):",
        _frame(results, LOGGED_SUMMARY).to_string(**fmt),
    ]
    simulated = [r for r in results if r.simulated]
    if simulated:
        lines += [
            "",
            "simulator diagnostics (the world's hidden truth; production has none): true "
            "first-offer acceptance, replay with one offer per booking and the same draws:",
            _frame(simulated, SIM_SUMMARY).to_string(**fmt),
            "",
            "greedy vs batch matching (simulator; 30 s windows, model scores, expected "
            "acceptances):",
        ]
        for r in simulated:
            mt = r.matching
            lines.append(
                f"  {r.city}: greedy {mt.get('greedy_acceptance', float('nan')):.4f}  "
                f"batch {mt.get('batch_acceptance', float('nan')):.4f}  "
                f"difference {mt.get('batch_minus_greedy', float('nan')):+.4f} "
                f"({int(mt.get('contested_windows', 0))} of {int(mt.get('windows', 0))} windows "
                "contested)"
            )
    return "\n".join(lines)
