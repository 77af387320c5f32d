"""The generated world looks like production: rates, distances, speeds, labels, statuses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.lakeworld import SmallWorld
from scipy.stats import skew

from matchmaking import lake
from matchmaking.markets import default_catalogue
from matchmaking.world.generate import CIRCUITY, MAX_CANDIDATES, MAX_OFFERS

CITIES = default_catalogue().markets


@pytest.fixture(scope="module")
def cand(jakarta_world: SmallWorld) -> pd.DataFrame:
    return jakarta_world.candidates()


@pytest.fixture(scope="module")
def bookings(jakarta_world: SmallWorld) -> pd.DataFrame:
    return jakarta_world.bookings()


def _local_hour(ts: pd.Series, tz: str) -> pd.Series:
    return ts.dt.tz_convert(tz).dt.hour


def test_offer_acceptance_rate_is_75_to_85_percent(cand: pd.DataFrame) -> None:
    offered = cand[cand["offered"]]
    assert len(offered) > 1000
    assert 0.75 <= offered["accepted"].astype(bool).mean() <= 0.85


def test_candidates_within_3_km_at_most_8_and_3_to_8_on_average(
    cand: pd.DataFrame, bookings: pd.DataFrame
) -> None:
    assert cand["distance_km"].max() <= 3.0
    per_booking = cand.groupby("booking_id").size()
    assert per_booking.max() <= MAX_CANDIDATES
    mean = per_booking.reindex(bookings["booking_id"], fill_value=0).mean()
    assert 3.0 <= mean <= 8.0
    assert (bookings["n_candidates"] == 0).mean() < 0.05
    counted = bookings.set_index("booking_id")["n_candidates"]
    assert (per_booking == counted.loc[per_booking.index]).all()


def test_search_radius_widens_only_when_needed(cand: pd.DataFrame) -> None:
    within_1km = cand.assign(near=cand["distance_km"] <= 1.0).groupby("booking_id")["near"]
    enough_near = within_1km.sum() >= 3
    farthest = cand.groupby("booking_id")["distance_km"].max()
    assert (farthest[enough_near[enough_near].index] <= 1.0).all()


def test_eta_rank_orders_logged_eta(cand: pd.DataFrame) -> None:
    ranked = cand.sort_values(["booking_id", "eta_rank"])
    diffs = ranked.groupby("booking_id")["eta_seconds"].diff().dropna()
    assert (diffs >= 0).all()
    first = ranked.groupby("booking_id")["eta_rank"].agg(["min", "max", "size"])
    assert (first["min"] == 1).all() and (first["max"] == first["size"]).all()


def test_eta_follows_the_speed_profile(cand: pd.DataFrame) -> None:
    city = CITIES["jakarta"]
    far = cand[cand["distance_km"] > 1.0].copy()
    far["hour"] = _local_hour(far["requested_at"], city.tz)
    far["speed"] = far["distance_km"] * CIRCUITY / (far["eta_seconds"] / 3600)
    by_hour = far.groupby("hour")["speed"].agg(["median", "size"])
    by_hour = by_hour[by_hour["size"] >= 50]
    assert len(by_hour) >= 12
    ratio = by_hour["median"] / np.array([city.speed_at(h) for h in by_hour.index])
    # A few tens of seconds of pickup overhead make implied speeds a little lower.
    assert ratio.between(0.75, 1.02).all(), ratio
    assert by_hour.loc[8, "median"] < by_hour.loc[12, "median"]
    assert by_hour.loc[18, "median"] < by_hour.loc[22, "median"]


def test_ratings_are_left_skewed_around_4_8(jakarta_world: SmallWorld) -> None:
    drivers = lake.read_drivers(jakarta_world.root, "jakarta").to_pandas()
    assert 4.7 <= drivers["rating"].mean() <= 4.9
    assert drivers["rating"].between(1.0, 5.0).all()
    assert skew(drivers["rating"]) < -0.5
    assert (drivers["shift_length_min"].between(360, 660)).all()
    assert drivers["driver_id"].str.match(r"^jakarta-d\d{6}$").all()


def test_labels_exist_exactly_for_offers(cand: pd.DataFrame) -> None:
    assert (cand["accepted"].isna() == ~cand["offered"]).all()
    assert ((cand["offer_order"] == 0) == ~cand["offered"]).all()
    offers = cand[cand["offered"]].sort_values(["booking_id", "offer_order"])
    g = offers.groupby("booking_id")
    assert (g["offer_order"].max() == g.size()).all()  # offers 1..n, no gaps
    assert g.size().max() <= MAX_OFFERS
    # At most one acceptance, and it ends the sequence.
    acc = offers[offers["accepted"].astype(bool)]
    assert acc["booking_id"].is_unique
    assert (acc["offer_order"].to_numpy() == g.size()[acc["booking_id"]].to_numpy()).all()


def test_statuses_follow_the_offers(cand: pd.DataFrame, bookings: pd.DataFrame) -> None:
    b = bookings.set_index("booking_id")
    offers = cand[cand["offered"]].groupby("booking_id").size()
    assert (b["n_offers"] == offers.reindex(b.index, fill_value=0)).all()
    assert ((b["n_candidates"] == 0) == (b["status"] == "no_driver")).all()
    accepted = cand[cand["accepted"].fillna(False).astype(bool)].set_index("booking_id")
    assigned = b["status"].isin(["completed", "rider_cancelled"])
    assert set(accepted.index) == set(b.index[assigned])
    assert (b.loc[accepted.index, "assigned_driver_id"] == accepted["driver_id"]).all()
    assert b.loc[~assigned, "assigned_driver_id"].isna().all()
    expired = b[b["status"] == "expired"]
    assert (expired["n_offers"] == np.minimum(expired["n_candidates"], MAX_OFFERS)).all()
    assert 0.7 <= (b["status"] == "completed").mean() <= 0.95


def test_cancellation_grows_with_pickup_eta(cand: pd.DataFrame, bookings: pd.DataFrame) -> None:
    acc = cand[cand["accepted"].fillna(False).astype(bool)][["booking_id", "eta_seconds"]]
    df = acc.merge(bookings[["booking_id", "status"]], on="booking_id")
    df["cancelled"] = df["status"] == "rider_cancelled"
    df["tercile"] = pd.qcut(df["eta_seconds"], 3, labels=False)
    rate = df.groupby("tercile")["cancelled"].mean()
    assert rate[2] > rate[0]


def test_ground_truth_covers_every_candidate(jakarta_world: SmallWorld, cand: pd.DataFrame) -> None:
    truth = jakarta_world.truth()
    assert len(truth) == len(cand)
    assert (truth["booking_id"].to_numpy() == cand["booking_id"].to_numpy()).all()
    assert (truth["driver_id"].to_numpy() == cand["driver_id"].to_numpy()).all()
    assert truth["p_accept"].between(0, 1, inclusive="neither").all()
    # Nearer drivers are likelier to accept (the ETA effect dominates).
    merged = cand.assign(p=truth["p_accept"].to_numpy())
    assert (
        merged.groupby("eta_rank")["p"].mean().loc[1]
        > merged.groupby("eta_rank")["p"].mean().loc[8]
    )


def test_demand_peaks_and_trip_lengths(bookings: pd.DataFrame) -> None:
    hour = _local_hour(bookings["requested_at"], CITIES["jakarta"].tz)
    per_hour = hour.value_counts()
    assert per_hour[8] > 3 * per_hour[3] and per_hour[18] > 3 * per_hour[3]
    assert bookings["trip_km"].between(1.5, 21.5).all()
    assert 4 <= bookings["trip_km"].median() <= 16
    assert (bookings["fare"] > 0).all()
