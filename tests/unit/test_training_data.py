"""Training reads only the labelled rows, in float32, in the order training expects; beyond
the configured cap it subsamples whole bookings of the training days by a seeded rule."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from matchmaking.config import Settings
from matchmaking.lake.datasets import read_dataset, read_manifest
from matchmaking.processing.step import build_dataset
from matchmaking.schema import FEATURE_NAMES
from matchmaking.training.data import Labelled, keep_probabilities, read_labelled, split
from matchmaking.training.params import TrainParams
from matchmaking.training.train import labelled
from matchmaking.world.generate import generate_world

FIRST = date(2026, 8, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    s = Settings(data_dir=tmp_path_factory.mktemp("train-data"))
    generate_world(["jakarta"], FIRST, 8, 6, s.lake_dir, 0.002, 300, progress=False)
    return Path(
        build_dataset(
            s, "jakarta", FIRST + timedelta(days=1), FIRST + timedelta(days=7), 0.05
        ).dataset_dir
    )


def test_labelled_rows_equal_the_dataframe_path(dataset: Path) -> None:
    rows, manifest = read_dataset(dataset)
    read = read_labelled(dataset, manifest, TrainParams())
    frame = Labelled.from_frame(labelled(rows))
    assert read.data.x.dtype == np.float32 and read.data.x.shape == (len(frame), len(FEATURE_NAMES))
    assert len(read.data) == int(rows["offered"].sum()) < len(rows) / 3  # no unlabelled row
    np.testing.assert_array_equal(read.data.x, frame.x)
    np.testing.assert_array_equal(read.data.y, frame.y)
    np.testing.assert_array_equal(read.data.day, frame.day)
    np.testing.assert_array_equal(read.data.group_sizes(), frame.group_sizes())


def test_labelled_rows_carry_the_logged_offer_propensity_never_as_a_feature(
    dataset: Path,
) -> None:
    rows, manifest = read_dataset(dataset)
    read = read_labelled(dataset, manifest, TrainParams()).data
    frame = labelled(rows)
    assert read.propensity is not None and "offer_propensity" not in FEATURE_NAMES
    np.testing.assert_array_equal(read.propensity, frame["offer_propensity"].to_numpy())
    first = frame["offer_order"].to_numpy() == 1  # a first offer's is its first-offer one
    np.testing.assert_allclose(
        read.propensity[first], frame["first_offer_propensity"].to_numpy()[first]
    )
    assert (read.propensity > 0).all() and (read.propensity <= 1).all()


def test_the_cap_subsamples_whole_bookings_of_training_days_only(dataset: Path) -> None:
    manifest = read_manifest(dataset)
    full = read_labelled(dataset, manifest, TrainParams()).data
    train_full, valid_full = split(full, 2)
    cap = 500
    assert len(train_full) > 2 * cap
    for rule in ("uniform", "time_decay"):
        params = TrainParams(
            valid_days=2,
            max_labelled_rows=cap,
            subsample=rule,  # type: ignore[arg-type]
            subsample_half_life_days=1.0,
            seed=3,
        )
        got = read_labelled(dataset, manifest, params).data
        train, valid = split(got, 2)
        assert abs(len(train) - cap) < 0.2 * cap, rule
        np.testing.assert_array_equal(valid.x, valid_full.x)  # validation days whole
        again = read_labelled(dataset, manifest, params).data
        np.testing.assert_array_equal(again.x, got.x)  # seeded
        # whole bookings: each kept booking has all its rows of the full read
        assert _bookings(train) <= _bookings(train_full) and len(_bookings(train)) > 100
        _, per_day = np.unique(train.day, return_counts=True)
        if rule == "time_decay":  # the newest training day keeps more than the oldest
            _, full_day = np.unique(train_full.day, return_counts=True)
            share = per_day / full_day
            assert share[-1] > 3 * share[0]
    other = read_labelled(
        dataset, manifest, TrainParams(valid_days=2, max_labelled_rows=cap, seed=4)
    ).data
    assert not np.array_equal(other.x[: len(other) // 2], got.x[: len(other) // 2])


def _bookings(data: Labelled) -> set[bytes]:
    """Each booking as the bytes of all its rows."""
    starts = np.r_[0, np.cumsum(data.group_sizes())]
    return {data.x[a:b].tobytes() for a, b in itertools.pairwise(starts)}


def test_keep_probabilities_meet_the_cap() -> None:
    days = [np.datetime64("2026-08-01") + i for i in range(10)]
    counts = dict.fromkeys(days, 1000)
    assert set(keep_probabilities(counts, None, "uniform", 7.0).values()) == {1.0}
    assert set(keep_probabilities(counts, 20_000, "uniform", 7.0).values()) == {1.0}
    uniform = keep_probabilities(counts, 2500, "uniform", 7.0)
    assert set(uniform.values()) == {0.25}
    decay = keep_probabilities(counts, 2500, "time_decay", 2.0)
    assert abs(sum(1000 * p for p in decay.values()) - 2500) < 1
    assert decay[days[-1]] == pytest.approx(2 * decay[days[-3]])
