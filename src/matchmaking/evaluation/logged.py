"""Evaluation on logged data alone: what a dispatch system's own logs can tell.

Two families of numbers, both computed from the published holdout feature dataset only (no
ground truth, so they exist in production as in the simulator):

- **logged-data metrics** (``logged.<policy>.<metric>``): AUC, and for a probability model
  log loss and calibration error, on the offered rows against their logged labels; NDCG@1/@3
  and hit@1 on the offered rows of each booking (relevance: the logged acceptance; bookings
  with at least two offers and one acceptance). Biased towards what the logging policy chose
  to offer, they compare models, not policies.
- **off-policy estimates** (``ope.<policy>.<estimate>``): the first-offer acceptance each
  policy would get, estimated from the logged first offers and their propensities by IPS,
  SNIPS and DR (``evaluation.offpolicy``), the model's acceptance probability as the direct
  method (``evaluation.direct``); and the model's paired difference with each baseline
  (``ope_paired.model_vs_<baseline>.*``). See docs/evaluation.md.

Policies: the model (its scores), ``nearest_eta`` (lowest ETA first) and ``highest_rating``
(best rating first, ETA breaking ties); each offers a booking first to the candidate it ranks
first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from matchmaking.errors import InputError
from matchmaking.evaluation import metrics as m
from matchmaking.evaluation.direct import DirectMethod, acceptance_estimates
from matchmaking.evaluation.offpolicy import (
    FirstOffers,
    PolicyEstimate,
    estimate,
    first_choice,
    first_offers,
    paired_difference,
)
from matchmaking.lake.datasets import read_dataset
from matchmaking.lake.storage import LocationLike
from matchmaking.scorer import ScoreKind

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

BASELINES = ("nearest_eta", "highest_rating")
POLICIES = ("model", *BASELINES)
LOGGED_COLUMNS = (
    "auc",
    "logloss",
    "calibration_error",
    "ndcg_at_1",
    "ndcg_at_3",
    "hit_at_1",
)
#: The decision-log columns the off-policy estimates need (docs/data.md).
OPE_COLUMNS = ("offer_order", "first_offer_propensity")
#: Default cap on the importance weights of DR's correction term: a booking whose logged
#: first offer had a propensity below 1/10 counts as if it had 1/10. Measured on simulated
#: holdouts (benchmarks/reports/ope.md): it removes most of the variance the rare tiny
#: propensities bring and adds a bias far below a point, because a calibrated direct method
#: leaves little to correct; IPS and SNIPS stay unclipped by default (clipping them biases
#: them by the whole clipped weight).
DEFAULT_DR_CLIP = 10.0


def read_holdout(city: str, features_dir: LocationLike) -> tuple[pd.DataFrame, dict[str, object]]:
    """The holdout feature dataset of ``city``, rows grouped by booking in request order.

    Raises:
        InputError: the dataset holds another city's features.
    """
    rows, manifest = read_dataset(features_dir)
    if manifest.get("city") != city:
        raise InputError(f"{features_dir} holds features of {manifest.get('city')!r}, not {city!r}")
    rows = rows.sort_values(["requested_at", "booking_id", "eta_rank"], kind="stable")
    return rows.reset_index(drop=True), manifest


def baseline_scores(rows: pd.DataFrame) -> dict[str, FloatArray]:
    """Scores under which each baseline ranks its preferred candidate first."""
    eta = rows["eta_min"].to_numpy(dtype=np.float64)
    return {
        "nearest_eta": -eta,
        "highest_rating": rows["rating"].to_numpy(dtype=np.float64) - 1e-6 * eta,
    }


def policy_scores(rows: pd.DataFrame, model_scores: FloatArray) -> dict[str, FloatArray]:
    """The model's scores and the baselines', in ``POLICIES`` order."""
    return {"model": np.asarray(model_scores, dtype=np.float64), **baseline_scores(rows)}


def logged_metrics(
    rows: pd.DataFrame, scores: dict[str, FloatArray], probabilistic: bool
) -> pd.DataFrame:
    """``LOGGED_COLUMNS`` per policy on the offered rows and their logged labels (log loss and
    calibration only for the model, and only when its scores are probabilities)."""
    offered = rows["offered"].to_numpy(dtype=bool)
    labels = rows.loc[offered, "accepted"].astype("float64").to_numpy()
    group = pd.factorize(rows.loc[offered, "booking_id"])[0].astype(np.int64)
    # Bookings worth ranking: two offers or more, one of them accepted.
    n_offers = np.bincount(group)
    n_accepts = np.bincount(group, weights=labels)
    ranked = (n_offers[group] >= 2) & (n_accepts[group] > 0)
    table: dict[str, dict[str, float]] = {}
    for policy, s in scores.items():
        row = {"auc": m.auc(labels, s[offered])}
        is_prob = policy == "model" and probabilistic
        row["logloss"] = m.logloss(labels, s[offered]) if is_prob else float("nan")
        row["calibration_error"] = (
            m.calibration_error(labels, s[offered]) if is_prob else float("nan")
        )
        row |= m.ranking_metrics(group[ranked], s[offered][ranked], labels[ranked], ks=(1, 3))
        table[policy] = row
    return pd.DataFrame.from_dict(table, orient="index").reindex(columns=list(LOGGED_COLUMNS))


def has_decision_log(rows: pd.DataFrame) -> bool:
    """Whether the holdout carries the logged propensities (datasets published before they
    were logged do not: no off-policy estimate then)."""
    return all(c in rows.columns for c in OPE_COLUMNS)


def decision_log(rows: pd.DataFrame) -> FirstOffers:
    """The holdout's logged first offers (``evaluation.offpolicy.first_offers``)."""
    missing = [c for c in OPE_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(
            f"the holdout has no {', '.join(missing)} column(s): it was published before the "
            "decision log carried propensities; process the window again (`matchmaking process`)"
        )
    return first_offers(
        rows["booking_id"].to_numpy(dtype=object),
        rows["offer_order"].to_numpy(dtype=np.int64),
        rows["first_offer_propensity"].to_numpy(dtype=np.float64),
        rows["accepted"].astype("float64").to_numpy(),
    )


def direct_method(
    rows: pd.DataFrame, model_scores: FloatArray, score_kind: ScoreKind, seed: int = 0
) -> DirectMethod:
    """The model's acceptance probability per row, calibrated (cross-fitted on the logged
    first offers) when its scores are rank scores."""
    first = rows["offer_order"].to_numpy(dtype=np.int64) == 1
    return acceptance_estimates(
        model_scores,
        score_kind,
        rows["booking_id"].to_numpy(dtype=object),
        first,
        rows["accepted"].astype("float64").to_numpy(),
        seed=seed,
    )


@dataclass(frozen=True)
class OffPolicy:
    """The off-policy estimates of every policy on one holdout."""

    log: FirstOffers
    direct: DirectMethod
    estimates: dict[str, PolicyEstimate]

    def table(self) -> pd.DataFrame:
        """One row per policy, ``PolicyEstimate.metrics()`` as columns."""
        return pd.DataFrame.from_dict(
            {p: e.metrics() for p, e in self.estimates.items()}, orient="index"
        )

    def versus_baselines(self) -> dict[str, float]:
        """The model minus each baseline, booking by booking (``paired_difference``), as
        ``ope_paired.model_vs_<baseline>.<metric>``."""
        out: dict[str, float] = {}
        for baseline in BASELINES:
            if "model" in self.estimates and baseline in self.estimates:
                diff = paired_difference(self.estimates["model"], self.estimates[baseline])
                prefix = f"ope_paired.model_vs_{baseline}"
                out |= {f"{prefix}.{k}": v for k, v in diff.metrics().items()}
        return out


def off_policy(
    rows: pd.DataFrame,
    scores: dict[str, FloatArray],
    score_kind: ScoreKind,
    *,
    clip: float | None = None,
    dr_clip: float | None = DEFAULT_DR_CLIP,
    seed: int = 0,
) -> OffPolicy:
    """IPS, SNIPS and DR of each policy's first-offer acceptance on the holdout's log; the
    model's acceptance probability is every policy's direct-method part. ``clip`` caps the
    IPS and SNIPS weights, ``dr_clip`` DR's (``offpolicy.estimate``)."""
    log = decision_log(rows)
    direct = direct_method(rows, scores["model"], score_kind, seed)
    estimates = {
        policy: estimate(log, first_choice(log, s), direct.q_hat, clip=clip, dr_clip=dr_clip)
        for policy, s in scores.items()
    }
    for policy, e in estimates.items():
        logger.info(
            "%s: DR %.4f [%.4f, %.4f], SNIPS %.4f, IPS %.4f, support %.3f, ESS %.0f of %d",
            policy,
            e.dr,
            *e.dr_ci,
            e.snips,
            e.ips,
            e.support,
            e.ess,
            e.bookings,
        )
    return OffPolicy(log, direct, estimates)
