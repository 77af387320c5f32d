"""The historical dispatcher is an exploring logging policy, and the log holds its exact
propensities: what off-policy evaluation needs (docs/data.md, "The historical dispatcher").

The expected probabilities are recomputed here, one booking at a time, straight from the
softmax definition and the logged ETAs: never with the generator's own helper.
"""

from __future__ import annotations

import itertools
import math
from datetime import date
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from support.lakeworld import SmallWorld

from matchmaking import lake
from matchmaking.world.dispatch import (
    DEFAULT_TEMPERATURE_MIN,
    POLICY_NAME,
    SoftmaxEtaPolicy,
    dispatch,
)
from matchmaking.world.generate import MAX_OFFERS, generate_world


@pytest.fixture(scope="module")
def cand(jakarta_world: SmallWorld) -> pd.DataFrame:
    return jakarta_world.candidates()


def _softmax(eta_seconds: list[float], temperature: float) -> list[float]:
    """P(first offer) of each candidate: exp(-eta_min / T), normalised (largest weight 1)."""
    logits = [-(e / 60.0) / temperature for e in eta_seconds]
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def _expected(booking: pd.DataFrame, temperature: float) -> tuple[list[float], list[float]]:
    """(first-offer propensity, conditional offer propensity or NaN) of a booking's rows."""
    etas = booking["eta_seconds"].tolist()
    first = _softmax(etas, temperature)
    conditional = [math.nan] * len(etas)
    remaining = list(range(len(etas)))
    for row in booking["offer_order"].to_numpy().argsort():
        order = int(booking["offer_order"].iloc[row])
        if order == 0:
            continue
        probs = _softmax([etas[i] for i in remaining], temperature)
        conditional[row] = probs[remaining.index(row)]
        remaining.remove(row)
    return first, conditional


def test_logged_propensities_are_the_policys_probabilities(cand: pd.DataFrame) -> None:
    first_got = cand["first_offer_propensity"].to_numpy()
    cond_got = cand["offer_propensity"].to_numpy(dtype=np.float64, na_value=np.nan)
    first_want = np.empty(len(cand))
    cond_want = np.empty(len(cand))
    for _, booking in cand.groupby("booking_id", sort=False):
        first, conditional = _expected(booking, DEFAULT_TEMPERATURE_MIN)
        first_want[booking.index] = first
        cond_want[booking.index] = conditional
    np.testing.assert_allclose(first_got, first_want, rtol=1e-9, atol=1e-300)
    assert (np.isnan(cond_got) == np.isnan(cond_want)).all()
    offered = ~np.isnan(cond_want)
    np.testing.assert_allclose(cond_got[offered], cond_want[offered], rtol=1e-9)


def test_first_offer_propensities_are_positive_and_sum_to_one(cand: pd.DataFrame) -> None:
    assert (cand["first_offer_propensity"] > 0).all()
    assert (cand["first_offer_propensity"] <= 1).all()
    sums = cand.groupby("booking_id")["first_offer_propensity"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-12)


def test_offer_propensity_exists_exactly_for_offers(cand: pd.DataFrame) -> None:
    assert (cand["offer_propensity"].isna() == ~cand["offered"]).all()
    offers = cand[cand["offered"]]
    assert offers["offer_propensity"].between(0, 1, inclusive="right").all()
    first = offers[offers["offer_order"] == 1]
    np.testing.assert_allclose(
        first["offer_propensity"].to_numpy(dtype=np.float64),
        first["first_offer_propensity"].to_numpy(),
        rtol=1e-12,
    )
    # Later offers are drawn among fewer candidates: their conditional probability is at least
    # their share of the whole booking's softmax.
    later = offers[offers["offer_order"] > 1]
    assert (
        later["offer_propensity"].to_numpy(dtype=np.float64)
        >= later["first_offer_propensity"].to_numpy() - 1e-12
    ).all()


def test_bookings_name_the_logging_policy(jakarta_world: SmallWorld) -> None:
    bookings = jakarta_world.bookings()
    assert set(bookings["logging_policy"]) == {POLICY_NAME}
    assert set(bookings["logging_policy_version"]) == {SoftmaxEtaPolicy().version}
    assert SoftmaxEtaPolicy(temperature_min=1.5).version != SoftmaxEtaPolicy().version
    assert SoftmaxEtaPolicy(max_offers=2).version != SoftmaxEtaPolicy().version


def _z(observed: float, p: npt.NDArray[np.float64]) -> float:
    """z-score of a count of events with these independent probabilities."""
    return float((observed - p.sum()) / math.sqrt((p * (1 - p)).sum()))


def test_first_offer_frequencies_match_the_propensities(cand: pd.DataFrame) -> None:
    """Over ~4,000 generated bookings, first offers per ETA rank and per propensity band occur
    as often as the logged propensities say (each a sum of Bernoullis: |z| < 4)."""
    first = (cand["offer_order"] == 1).to_numpy()
    p = cand["first_offer_propensity"].to_numpy()
    assert cand["booking_id"].nunique() > 3000
    for rank in range(1, 6):
        at = (cand["eta_rank"] == rank).to_numpy()
        assert abs(_z(first[at].sum(), p[at])) < 4, rank
    bands = pd.qcut(p, 8, labels=False, duplicates="drop")
    for band in np.unique(bands):
        at = bands == band
        assert abs(_z(first[at].sum(), p[at])) < 4, band
    # Exploration is real: candidates beyond the nearest two get a share of the first offers.
    assert 0.05 < first[(cand["eta_rank"] > 2).to_numpy()].sum() / first.sum() < 0.5


def test_sampled_order_is_plackett_luce_at_every_position() -> None:
    """One booking of 5 candidates dispatched 200,000 times: the first, second and third offer
    follow the softmax over the candidates not offered yet."""
    eta = np.array([95.0, 130.0, 150.0, 240.0, 400.0])
    reps = 200_000
    group = np.repeat(np.arange(reps), len(eta))
    policy = SoftmaxEtaPolicy(temperature_min=1.0, max_offers=3)
    out = dispatch(group, np.tile(eta, reps), policy, np.random.default_rng(3))
    pos = out.offer_pos.reshape(reps, len(eta))
    first = _softmax(eta.tolist(), 1.0)
    counts = np.bincount(pos.argmin(axis=1), minlength=len(eta))
    for i, p in enumerate(first):
        assert abs(counts[i] - reps * p) < 4 * math.sqrt(reps * p * (1 - p)), i
    # Second offer given the nearest was first: softmax over the other four.
    nearest_first = pos[:, 0] == 1
    second = np.flatnonzero(pos[nearest_first] == 2) % len(eta)
    want = _softmax(eta[1:].tolist(), 1.0)
    n = int(nearest_first.sum())
    for j, p in enumerate(want, start=1):
        got = int((second == j).sum())
        assert abs(got - n * p) < 4 * math.sqrt(n * p * (1 - p)), j
    # Third offer after (0, 1): softmax over candidates 2, 3, 4; its logged conditional
    # propensity is that number.
    both = nearest_first & (pos[:, 1] == 2)
    third = pos[both][:, 2:] == 3
    want3 = _softmax(eta[2:].tolist(), 1.0)
    n3 = int(both.sum())
    for j, p in enumerate(want3):
        got = int(third[:, j].sum())
        assert abs(got - n3 * p) < 4 * math.sqrt(n3 * p * (1 - p)), j
    cond = out.offer_propensity.reshape(reps, len(eta))
    np.testing.assert_allclose(cond[both][:, 2][third[:, 0]], want3[0], rtol=1e-12)
    assert np.isnan(cond[pos > MAX_OFFERS]).all()


def test_low_temperature_approaches_nearest_eta() -> None:
    """As the temperature falls, the nearest candidate's first-offer propensity goes to 1 and
    the sampled order becomes the ETA order; nothing overflows or turns NaN."""
    rng = np.random.default_rng(11)
    reps, k = 2_000, 6
    eta = (60 + np.cumsum(rng.uniform(1, 100, (reps, k)), axis=1)).ravel()  # gaps >= 1 s
    group = np.repeat(np.arange(reps), k)
    nearest = []
    for temperature in (3.0, 0.75, 0.1, 0.01, 1e-4):
        policy = SoftmaxEtaPolicy(temperature_min=temperature, max_offers=MAX_OFFERS)
        out = dispatch(group, eta, policy, np.random.default_rng(5))
        assert np.isfinite(out.first_offer_propensity).all()
        nearest.append(out.first_offer_propensity.reshape(reps, k)[:, 0].mean())
    assert all(a < b for a, b in itertools.pairwise(nearest)), nearest
    assert nearest[-1] == pytest.approx(1.0, abs=1e-9)
    pos = out.offer_pos.reshape(reps, k)
    assert (pos == np.arange(1, k + 1)).all()  # exactly the ETA order at T -> 0


def test_world_at_low_temperature_is_nearly_nearest_eta(tmp_path: Path) -> None:
    """The world setting reaches the dispatcher: a cold world offers the nearest driver first
    far more often than the default, a hot one less."""
    share = {}
    for temperature in (0.1, DEFAULT_TEMPERATURE_MIN, 3.0):
        root = tmp_path / f"t{temperature}"
        day = date(2026, 10, 5)
        generate_world(["jakarta"], day, 1, 3, root, 0.002, 800, False, temperature)
        cand = lake.read_partitions(root, "jakarta", "candidates", day, day).to_pandas()
        first = cand[cand["offer_order"] == 1]
        share[temperature] = (first["eta_rank"] == 1).mean()
    assert share[0.1] > 0.9
    assert share[0.1] > share[DEFAULT_TEMPERATURE_MIN] > share[3.0], share
