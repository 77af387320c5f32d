"""Drift from the lake: a day whose ETAs are shifted is flagged, an unchanged day is not.

A one-city world (600 bookings a day: enough drivers that the per-driver history features are
not lumpy) with a full 28 days of driver history before the training window (so the
history features are settled), a training window, then two later days processed as the daily
pipeline does: one untouched, one whose raw candidate ETAs were rewritten in the lake 1.6x
slower plus two minutes, as a broken ETA service would log them.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from matchmaking import lake
from matchmaking.config import Settings
from matchmaking.errors import ConfigError
from matchmaking.lake.datasets import read_dataset
from matchmaking.processing.step import build_dataset
from matchmaking.reporting.drift import (
    DriftConfig,
    daily_drift,
    drift_metrics,
    feature_bins,
    load_drift_config,
    psi,
    published_datasets,
    reference,
)
from matchmaking.world.generate import generate_world

CITY = "jakarta"
START = date(2026, 7, 1)
TRAIN = (date(2026, 7, 29), date(2026, 8, 4))
UNCHANGED = date(2026, 8, 5)
SHIFTED = date(2026, 8, 6)
ETA_FEATURES = {"eta_min", "eta_gap_min"}


@pytest.fixture(scope="module")
def lake_world(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("drift-world")
    settings = Settings(data_dir=root)
    days = (SHIFTED - START).days + 1
    generate_world([CITY], START, days, 5, settings.lake_dir, 0.02, 600, progress=False)
    part = lake.partition_dir(settings.lake_dir, "raw", CITY, SHIFTED)
    bookings = lake.read_partitions(settings.lake_dir, CITY, "bookings", SHIFTED, SHIFTED)
    candidates = lake.read_partitions(settings.lake_dir, CITY, "candidates", SHIFTED, SHIFTED)
    eta = candidates.column("eta_seconds").to_numpy()
    shifted = candidates.set_column(
        candidates.schema.get_field_index("eta_seconds"),
        candidates.schema.field("eta_seconds"),
        pa.array(np.minimum(eta * 1.6 + 120.0, 3500.0)),
    )
    assert lake.is_complete(part)
    lake.write_partition(
        settings.lake_dir, "raw", CITY, SHIFTED, {"bookings": bookings, "candidates": shifted}
    )
    build_dataset(settings, CITY, *TRAIN, max_bad_share=0.05)
    for day in (UNCHANGED, SHIFTED):
        build_dataset(settings, CITY, day, day, max_bad_share=0.05)
    return settings


def _train(settings: Settings) -> Path:
    return next(
        Path(str(p.location)) for p in published_datasets(settings, CITY) if p.end == TRAIN[1]
    )


def test_a_shifted_eta_day_is_flagged_and_an_unchanged_day_is_not(lake_world: Settings) -> None:
    config = load_drift_config()
    frame, _ = read_dataset(_train(lake_world))
    ref = reference(frame, config)
    days = daily_drift(ref, published_datasets(lake_world, CITY), TRAIN[1], config)
    by_day = {d.day: d for d in days}
    assert sorted(by_day) == [UNCHANGED, SHIFTED]
    unchanged, shifted = by_day[UNCHANGED], by_day[SHIFTED]
    assert unchanged.scored and shifted.scored
    assert unchanged.flagged == [], unchanged.psi
    assert set(shifted.flagged) >= ETA_FEATURES, shifted.psi
    # the shift moved the ETA features only: the others stay as quiet as on the unchanged day
    assert set(shifted.flagged) <= ETA_FEATURES, shifted.psi
    assert shifted.psi["eta_min"] > 10 * max(unchanged.psi["eta_min"], 0.01)


def test_since_and_the_training_window_bound_the_days(lake_world: Settings) -> None:
    config = load_drift_config()
    frame, _ = read_dataset(_train(lake_world))
    ref = reference(frame, config)
    datasets = published_datasets(lake_world, CITY)
    assert [d.day for d in daily_drift(ref, datasets, UNCHANGED, config)] == [SHIFTED]
    assert [d.day for d in daily_drift(ref, datasets, TRAIN[1], config, since=SHIFTED)] == [SHIFTED]
    # a day with fewer rows than min_rows is listed, not scored
    strict = config.model_copy(update={"min_rows": 10**9})
    assert not any(d.scored for d in daily_drift(ref, datasets, TRAIN[1], strict))


def test_evaluate_metrics_name_every_compared_feature(lake_world: Settings) -> None:
    config = load_drift_config()
    frame, _ = read_dataset(_train(lake_world))
    day = next(p for p in published_datasets(lake_world, CITY) if p.start == SHIFTED)
    holdout, _ = read_dataset(day.location)
    metrics = drift_metrics(reference(frame, config), holdout, config)
    assert {f"drift.psi.{f}" for f in config.features} <= set(metrics)
    assert "drift.psi.day_of_week" not in metrics  # excluded in drift.yaml
    assert metrics["drift.features_over_alert"] >= 2
    assert (
        metrics["drift.max_psi"] == metrics["drift.psi.eta_min"]
        or metrics["drift.max_psi"] == metrics["drift.psi.eta_gap_min"]
    )


def test_psi_of_a_sample_against_itself_is_zero_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(5, 1, 20_000)
    bins = feature_bins(base, 10)
    assert psi(bins.expected, bins.shares(base)) == pytest.approx(0.0, abs=1e-12)
    small = psi(bins.expected, bins.shares(base + 0.1))
    large = psi(bins.expected, bins.shares(base + 1.0))
    assert 0 < small < 0.1 < 0.2 < large
    with_missing = np.append(base, [np.nan] * 2000)
    assert psi(bins.expected, bins.shares(with_missing)) > 0.05  # missing values are a bin


def test_drift_config_rejects_unknown_keys_and_features(tmp_path: Path) -> None:
    bad = tmp_path / "drift.yaml"
    bad.write_text("alert_psi: 0.2\nalert_level: 0.3\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_drift_config(bad)
    bad.write_text("exclude: [no_such_feature]\n")
    with pytest.raises(ConfigError, match="no_such_feature"):
        load_drift_config(bad)
    assert DriftConfig().alert_psi == load_drift_config().alert_psi


def test_days_are_each_read_from_one_dataset(lake_world: Settings) -> None:
    """Overlapping windows: a day is scored once, from the newest window holding it."""
    config = load_drift_config()
    build_dataset(lake_world, CITY, UNCHANGED, SHIFTED, max_bad_share=0.05)
    frame, _ = read_dataset(_train(lake_world))
    days = daily_drift(
        ref := reference(frame, config), published_datasets(lake_world, CITY), TRAIN[1], config
    )
    assert [d.day for d in days] == [UNCHANGED, SHIFTED]
    assert ref.rows == len(frame)
    assert days[0].day + timedelta(days=1) == days[1].day
