"""Simulator diagnostics: what only the synthetic world can say, from its hidden ``truth/``.

The simulator (``matchmaking.world``) writes the true acceptance and cancellation probability
of every candidate into the lake's truth layer. A real dispatch system has no such table, so
nothing in production decides on it; inside the simulator it is a yardstick:

- the **oracle table** (``sim.oracle.<policy>.<metric>``): NDCG@1/@5 and hit@1 per booking
  with the true acceptance probability as relevance, and the oracle policy's own AUC, log loss
  and calibration on the logged labels (the ceiling a model could reach);
- the **replay** (``sim.replay.<policy>.<metric>``): each policy offers every booking to its
  top driver, outcomes drawn from the truth with common random numbers: acceptance,
  completion, p50/p90 pickup ETA, share of trips heading home;
- **greedy vs batch matching** (``sim.matching.*``) on the model's scores, judged by the
  expected acceptances under the truth (``evaluation.matching.match_replay``);
- the **off-policy check** (``sim.ope.<policy>.*``): each policy's true expected first-offer
  acceptance (mean true probability of its first choice) and each estimator's error against
  it and whether its interval covers it.

This module and the simulator are the only readers of the truth layer (a structural test
keeps it so). Truth that is absent is not an error: ``truth_available`` says whether to run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt
import pandas as pd

from matchmaking import lake
from matchmaking.config import Settings
from matchmaking.errors import DataQualityError
from matchmaking.evaluation import metrics as m
from matchmaking.evaluation.logged import policy_scores as logged_policy_scores
from matchmaking.evaluation.logged import read_holdout
from matchmaking.evaluation.matching import match_replay
from matchmaking.evaluation.offpolicy import ESTIMATORS, PolicyEstimate
from matchmaking.evaluation.replay import draw_outcomes, replay
from matchmaking.lake.storage import LocationLike

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

POLICIES = ("model", "oracle", "nearest_eta", "highest_rating")
#: Today's comparison table: one row per policy (``compare``).
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
#: Columns of the table that use the truth as relevance (every policy) ...
ORACLE_COLUMNS = ("ndcg_at_1", "ndcg_at_5", "hit_at_1")
#: ... and the oracle policy's own scores on the logged labels.
ORACLE_POLICY_COLUMNS = ("auc", "logloss", "calibration_error")
REPLAY_COLUMNS = (
    "acceptance",
    "completion",
    "pickup_eta_p50_min",
    "pickup_eta_p90_min",
    "heading_home_share",
    "bookings",
)


def _window(manifest: dict[str, object]) -> tuple[date, date]:
    return date.fromisoformat(str(manifest["start"])), date.fromisoformat(str(manifest["end"]))


def truth_available(settings: Settings, city: str, start: date, end: date) -> bool:
    """Whether the lake has a complete truth partition for every day of ``[start, end]``."""
    try:
        days = set(lake.list_dates(settings.lake_dir, city, layer=lake.TRUTH))
    except (OSError, ImportError):  # an unreachable or driverless store has no truth for us
        logger.warning("cannot list the truth layer of %s: no simulator diagnostics", city)
        return False
    wanted = {date.fromordinal(d) for d in range(start.toordinal(), end.toordinal() + 1)}
    if not days & wanted:
        return False
    if not wanted <= days:
        logger.warning(
            "%s: truth/ covers %d of the holdout's %d days: no simulator diagnostics",
            city,
            len(days & wanted),
            len(wanted),
        )
        return False
    return True


def join_truth(
    settings: Settings, city: str, rows: pd.DataFrame, manifest: dict[str, object]
) -> pd.DataFrame:
    """``rows`` with the truth columns (``p_accept``, ``p_cancel``) beside them, same order.

    Raises:
        DataQualityError: the truth does not cover every row (not the same world).
    """
    start, end = _window(manifest)
    truth = lake.read_truth(settings.lake_dir, city, start, end).to_pandas()
    joined = rows.merge(truth, on=["booking_id", "driver_id"], how="left", validate="one_to_one")
    missing = int(joined["p_accept"].isna().sum())
    if missing:
        raise DataQualityError(
            f"{city}: truth/ has no probabilities for {missing} of the holdout's {len(rows)} "
            "rows: the holdout and truth/ come from different worlds; regenerate one of them"
        )
    return joined


def holdout_with_truth(
    settings: Settings, city: str, features_dir: LocationLike
) -> tuple[pd.DataFrame, dict[str, object]]:
    """The holdout joined with the truth (inner join), grouped by booking: what the promotion
    gate measures on until it decides on logged evidence (issue 12)."""
    rows, manifest = read_holdout(city, features_dir)
    start, end = _window(manifest)
    truth = lake.read_truth(settings.lake_dir, city, start, end).to_pandas()
    rows = rows.merge(truth, on=["booking_id", "driver_id"], how="inner", validate="one_to_one")
    rows = rows.sort_values(["requested_at", "booking_id", "eta_rank"], kind="stable")
    return rows.reset_index(drop=True), manifest


def policy_scores(rows: pd.DataFrame, model_scores: FloatArray) -> dict[str, FloatArray]:
    """The logged policies' scores and the oracle's (the true probabilities), ``POLICIES``."""
    scores = logged_policy_scores(rows, model_scores)
    oracle = rows["p_accept"].to_numpy(dtype=np.float64)
    return {p: oracle if p == "oracle" else scores[p] for p in POLICIES}


def compare(
    rows: pd.DataFrame, model_scores: FloatArray, probabilistic: bool, seed: int
) -> pd.DataFrame:
    """All metrics for the model, the oracle and the baselines on the same rows and draws
    (``SUMMARY_COLUMNS`` and ``bookings``, one row per policy)."""
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
    return pd.DataFrame.from_dict(table, orient="index")[[*SUMMARY_COLUMNS, "bookings"]]


def table_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``compare``'s table under its logged names: ``sim.oracle.<policy>.<metric>`` and
    ``sim.replay.<policy>.<metric>`` (metrics that are not finite are left out)."""
    out: dict[str, float] = {}
    for policy, values in table.iterrows():
        oracle_cols = ORACLE_COLUMNS + (ORACLE_POLICY_COLUMNS if policy == "oracle" else ())
        out |= {f"sim.oracle.{policy}.{k}": float(values[k]) for k in oracle_cols}
        out |= {f"sim.replay.{policy}.{k}": float(values[k]) for k in REPLAY_COLUMNS}
    return {k: v for k, v in out.items() if np.isfinite(v)}


def ope_check(rows: pd.DataFrame, estimates: dict[str, PolicyEstimate]) -> pd.DataFrame:
    """Per policy: its true expected first-offer acceptance on the estimated bookings
    (``true_value``), each estimator's error (estimate - truth) and whether its interval
    covers the truth (1.0 / 0.0)."""
    p = rows["p_accept"].to_numpy(dtype=np.float64)
    table: dict[str, dict[str, float]] = {}
    for policy, e in estimates.items():
        truth = float(p[e.choice].mean()) if e.bookings else float("nan")
        row = {"true_value": truth}
        for name in ESTIMATORS:
            value = getattr(e, name)
            low, high = getattr(e, f"{name}_ci")
            row[f"{name}_error"] = value - truth
            row[f"{name}_covered"] = float(low <= truth <= high)
        table[policy] = row
    return pd.DataFrame.from_dict(table, orient="index")


@dataclass(frozen=True)
class Diagnostics:
    """Everything the truth said about one holdout."""

    table: pd.DataFrame  # ``compare``: one row per policy
    matching: dict[str, float]  # greedy vs batch (``match_replay``)
    ope: pd.DataFrame  # ``ope_check``: one row per policy (empty without a decision log)

    def metrics(self) -> dict[str, float]:
        """Every diagnostic under its logged ``sim.*`` name."""
        out = table_metrics(self.table)
        out |= {f"sim.matching.{k}": float(v) for k, v in self.matching.items()}
        for policy, values in self.ope.iterrows():
            out |= {f"sim.ope.{policy}.{k}": float(v) for k, v in values.items()}
        return {k: v for k, v in out.items() if np.isfinite(v)}


def diagnose(
    rows: pd.DataFrame,
    model_scores: FloatArray,
    probabilistic: bool,
    seed: int,
    estimates: dict[str, PolicyEstimate] | None = None,
) -> Diagnostics:
    """The oracle table, the replay, greedy vs batch matching and (given off-policy
    ``estimates`` on the same rows) the off-policy check, on ``rows`` joined with the truth."""
    scores = np.asarray(model_scores, dtype=np.float64)
    matching = match_replay(
        rows["booking_id"].to_numpy(dtype=object),
        rows["driver_id"].to_numpy(dtype=object),
        rows["requested_at"].to_numpy(),
        scores,
        rows["p_accept"].to_numpy(dtype=np.float64),
        probabilistic=probabilistic,
    )
    return Diagnostics(
        table=compare(rows, scores, probabilistic, seed),
        matching=matching,
        ope=ope_check(rows, estimates) if estimates else pd.DataFrame(),
    )
