"""The per-day engine against today's window-at-once processing, on the same world: every
column of every row equal; a day reprocessed writes the same digest; a window reuses the days
already processed; a broken day fails alone."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from support.window_reference import reference_window

from matchmaking.config import Settings
from matchmaking.errors import DataQualityError
from matchmaking.lake import datasets, storage
from matchmaking.lake.datasets import read_dataset
from matchmaking.processing.day import DayProcessor
from matchmaking.processing.step import build_dataset
from matchmaking.world.generate import generate_world

FIRST = date(2026, 8, 1)
DAYS = 9


# A day in buckets through DuckDB, or (a day that fits in one bucket) read whole with pyarrow.
BUCKETS = pytest.mark.parametrize(
    "settings", [1_500, 1_000_000], indirect=True, ids=["buckets", "one-bucket"]
)


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    # Small batches and buckets: many of each per day, so their boundaries are exercised.
    s = Settings(
        data_dir=tmp_path / "data",
        process_bucket_rows=getattr(request, "param", 1_500),
        process_batch_rows=700,
        process_memory_limit="256MB",
    )
    generate_world(["jakarta"], FIRST, DAYS, 4, s.lake_dir, 0.002, 400, progress=False)
    return s


def _assert_frames_equal(new: pd.DataFrame, old: pd.DataFrame) -> None:
    assert list(new.columns) == list(old.columns)
    assert len(new) == len(old) > 0
    for name in old.columns:
        a, b = new[name], old[name]
        assert a.dtype == b.dtype, name
        if a.dtype.kind == "f":
            # bit for bit: NaN where NaN, the same float elsewhere
            np.testing.assert_array_equal(a.to_numpy(), b.to_numpy(), err_msg=name)
        else:
            assert a.equals(b), name


@BUCKETS
def test_days_equal_todays_window_processing(settings: Settings) -> None:
    start, end = FIRST + timedelta(days=3), FIRST + timedelta(days=DAYS - 1)
    result = build_dataset(settings, "jakarta", start, end, 0.05)
    new, manifest = read_dataset(result.dataset_dir)
    old = reference_window(settings.lake_dir, "jakarta", start, end)
    _assert_frames_equal(new, old.rows)
    # The features that come from history are there to compare (drivers with offers).
    assert new["drv_offers_28d"].gt(0).mean() > 0.5
    assert set(new["day"].dt.date) == {start + timedelta(days=i) for i in range(6)}
    table = pd.read_parquet(Path(result.dataset_dir) / "driver_table.parquet")
    _assert_frames_equal(table, old.driver_table)
    assert manifest["quarantine"] == {}  # clean world
    assert [d["day"] for d in manifest["days"]] == sorted(d["day"] for d in manifest["days"])


def test_point_in_time_history_ignores_the_future(settings: Settings) -> None:
    """Caught: history that reads the row's own day or later (leakage). Rewriting every
    offer after day 5 (all declined) changes no feature of days <= 5."""
    cut = FIRST + timedelta(days=5)
    before = read_dataset(build_dataset(settings, "jakarta", cut, cut, 0.05).dataset_dir)[0]
    for i in range(5, DAYS):
        path = settings.raw_dir / "city=jakarta" / f"date={FIRST + timedelta(days=i)}"
        table = pq.read_table(path / "candidates.parquet").to_pandas()
        table.loc[table["offered"], "accepted"] = False
        pq.write_table(
            pq.read_table(path / "candidates.parquet").from_pandas(
                table, schema=pq.read_schema(path / "candidates.parquet")
            ),
            path / "candidates.parquet",
        )
    after = read_dataset(build_dataset(settings, "jakarta", cut, cut, 0.05).dataset_dir)[0]
    cols = [c for c in before.columns if c != "accepted"]
    _assert_frames_equal(after[cols], before[cols])
    assert not after["accepted"].fillna(False).any()  # the day's own labels did change
    nxt = cut + timedelta(days=1)
    later = read_dataset(build_dataset(settings, "jakarta", nxt, nxt, 0.05).dataset_dir)[0]
    old = reference_window(settings.lake_dir, "jakarta", nxt, nxt)
    _assert_frames_equal(later, old.rows)


def test_a_day_reprocessed_has_the_same_digest(settings: Settings) -> None:
    day = FIRST + timedelta(days=4)
    proc = DayProcessor(settings, "jakarta", 0.05)
    first = proc.ensure_day(day)
    data = storage.read_bytes(storage.join(first.location, "features.parquet"))
    again = DayProcessor(settings, "jakarta", 0.05).ensure_day(day)
    assert again.reused and again.location == first.location
    forced = DayProcessor(settings, "jakarta", 0.05).ensure_day(day, force=True)
    assert not forced.reused and forced.digest == first.digest
    rebuilt = storage.read_bytes(storage.join(forced.location, "features.parquet"))
    assert rebuilt == data
    assert pq.ParquetFile(Path(forced.location) / "features.parquet").num_row_groups > 1


def test_a_window_reuses_the_days_already_processed(settings: Settings) -> None:
    week = build_dataset(
        settings, "jakarta", FIRST + timedelta(days=2), FIRST + timedelta(days=6), 0.05
    )
    assert (week.days_built, week.days_reused) == (5, 0)
    shifted = build_dataset(
        settings, "jakarta", FIRST + timedelta(days=3), FIRST + timedelta(days=8), 0.05
    )
    assert (shifted.days_built, shifted.days_reused) == (2, 4)
    a = datasets.read_manifest(week.dataset_dir)["days"]
    b = datasets.read_manifest(shifted.dataset_dir)["days"]
    assert a[1:] == b[:4]  # type: ignore[index]
    rerun = build_dataset(
        settings, "jakarta", FIRST + timedelta(days=3), FIRST + timedelta(days=8), 0.05
    )
    assert (rerun.days_built, rerun.days_reused) == (0, 6)
    assert rerun.digest == shifted.digest and rerun.dataset_dir == shifted.dataset_dir


@BUCKETS
def test_a_broken_day_fails_alone(settings: Settings) -> None:
    broken = FIRST + timedelta(days=DAYS - 1)
    path = settings.raw_dir / "city=jakarta" / f"date={broken}" / "candidates.parquet"
    table = pq.read_table(path)
    df = table.to_pandas()
    df.loc[df.index[: len(df) // 5], "eta_seconds"] = -1.0
    pq.write_table(table.from_pandas(df, schema=table.schema), path)
    start = FIRST + timedelta(days=4)
    with pytest.raises(DataQualityError, match=f"jakarta {broken}: .* failed validation"):
        build_dataset(settings, "jakarta", start, broken, 0.05)
    # The days before it were published, and the next window reuses them.
    days_dir = settings.features_dir / "city=jakarta" / "days"
    done = sorted(p.name for p in days_dir.iterdir())
    assert done == [f"date={start + timedelta(days=i)}" for i in range(4)]
    shorter = build_dataset(settings, "jakarta", start, broken - timedelta(days=1), 0.05)
    assert (shorter.days_built, shorter.days_reused) == (0, 4)
    # Another city is not held back.
    generate_world(["bangkok"], FIRST, 2, 4, settings.lake_dir, 0.002, 200, progress=False)
    assert (
        build_dataset(
            settings, "bangkok", FIRST + timedelta(days=1), FIRST + timedelta(days=1), 0.05
        ).rows
        > 0
    )


@BUCKETS
def test_a_window_with_a_few_bad_rows_on_one_day_publishes_and_counts_them(
    settings: Settings,
) -> None:
    # Days with and without quarantined rows are merged into the window's quarantine table.
    dirty = FIRST + timedelta(days=DAYS - 2)
    path = settings.raw_dir / "city=jakarta" / f"date={dirty}" / "candidates.parquet"
    table = pq.read_table(path)
    df = table.to_pandas()
    df.loc[df.index[:5], "eta_seconds"] = -1.0
    pq.write_table(table.from_pandas(df, schema=table.schema), path)
    result = build_dataset(
        settings, "jakarta", dirty - timedelta(days=2), dirty + timedelta(1), 0.05
    )
    assert result.quarantined >= 5
    assert sum(result.quarantine_counts.values()) == result.quarantined
    quarantine = pd.read_parquet(Path(result.dataset_dir) / "quarantine.parquet")
    assert len(quarantine) == result.quarantined
    assert quarantine["row"].str.contains('"eta_seconds"').all()
