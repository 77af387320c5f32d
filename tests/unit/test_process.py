"""The data step: bad raw rows are quarantined with a reason, too many fail the step, and
nothing is published then; a broken partition fails it whole; the dataset is addressed by its
content."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from matchmaking.config import Settings
from matchmaking.errors import DataQualityError, StorageError
from matchmaking.lake.datasets import day_files, read_dataset, window_digest
from matchmaking.processing.step import build_dataset, process
from matchmaking.schema import FEATURE_NAMES, LOGGED_POLICY_COLUMNS, SUCCESS_MARKER
from matchmaking.world.generate import generate_world

DAY = date(2026, 8, 3)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    generate_world(
        cities=["jakarta"],
        start=date(2026, 8, 1),
        days=3,
        seed=3,
        out=s.lake_dir,
        scale=0.002,
        bookings_per_day=300,
        progress=False,
    )
    return s


def _corrupt(settings: Settings, n_bad_eta: int, n_dupes: int) -> None:
    path = settings.raw_dir / "city=jakarta" / f"date={DAY}" / "candidates.parquet"
    table = pq.read_table(path)
    df = table.to_pandas()
    df.loc[df.index[:n_bad_eta], "eta_seconds"] = -5.0
    df.loc[df.index[n_bad_eta : n_bad_eta + 3], "eta_seconds"] = np.nan
    if n_dupes:
        df = pd.concat([df, df.iloc[-n_dupes:]], ignore_index=True)
    # A misbehaving producer: same columns, but nulls where the contract forbids them.
    loose = pa.schema([f.with_nullable(True) for f in table.schema])
    pq.write_table(pa.Table.from_pandas(df, schema=loose, preserve_index=False), path)


def test_bad_rows_are_quarantined_with_counts(settings: Settings) -> None:
    _corrupt(settings, n_bad_eta=7, n_dupes=3)
    result = build_dataset(settings, "jakarta", DAY, DAY, max_bad_share=0.05)
    assert result.quarantine_counts == {
        "candidates.bad_eta": 7,
        "candidates.null_field": 3,
        "candidates.duplicate_candidate": 3,
    }
    rows, manifest = read_dataset(result.dataset_dir)
    assert manifest["quarantine"] == result.quarantine_counts
    assert not rows.duplicated(["booking_id", "driver_id"]).any()
    assert np.isfinite(rows[list(FEATURE_NAMES)].drop(columns=["minutes_to_shift_end"])).all().all()
    quarantine = pq.read_table(result.dataset_dir / "quarantine.parquet").to_pandas()
    assert sorted(quarantine["reason"].value_counts().items()) == [
        ("bad_eta", 7),
        ("duplicate_candidate", 3),
        ("null_field", 3),
    ]


def test_too_many_bad_rows_fail_and_publish_nothing(settings: Settings) -> None:
    _corrupt(settings, n_bad_eta=400, n_dupes=0)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    with pytest.raises(DataQualityError, match="failed validation"):
        process(settings, "jakarta", DAY, DAY, max_bad_share=0.05)
    window = settings.features_dir / "city=jakarta" / f"{DAY}_{DAY}"
    published = [p for p in window.iterdir() if not p.name.startswith(".")]
    assert published == []
    failed = mlflow.search_runs(experiment_names=["matchmaking-jakarta"])
    assert list(failed["status"]) == ["FAILED"]


def test_missing_days_are_named(settings: Settings) -> None:
    with pytest.raises(StorageError, match="2026-08-09"):
        build_dataset(settings, "jakarta", date(2026, 8, 2), date(2026, 8, 9), 0.05)


def test_same_raw_data_same_digest(settings: Settings) -> None:
    a = build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    b = build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    assert a.digest == b.digest and a.dataset_dir == b.dataset_dir


def _raw(settings: Settings, day: date, table: str) -> Path:
    return settings.raw_dir / "city=jakarta" / f"date={day}" / f"{table}.parquet"


def test_changed_raw_data_gets_a_new_digest_and_dataset(settings: Settings) -> None:
    """Caught: a dataset digest that does not cover the data (a constant, the window only):
    the changed day would reuse the old dataset."""
    before = build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    path = _raw(settings, DAY, "bookings")
    original = path.read_bytes()
    table = pq.read_table(path)
    fares = pc.multiply(table["fare"], 1.1)  # a late correction: every fare 10% higher
    pq.write_table(table.set_column(table.schema.get_field_index("fare"), "fare", fares), path)

    after = build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    assert after.digest != before.digest
    assert after.dataset_dir != before.dataset_dir
    assert after.dataset_dir.name == after.digest[:16]
    # The window is the list of its days: each day's file hashes to its digest, the list of
    # (day, digest) to the window's.
    days = read_dataset(after.dataset_dir)[1]["days"]
    assert isinstance(days, list) and [d["day"] for d in days] == [str(DAY)]
    for day, features in zip(days, day_files(after.dataset_dir, {"days": days}), strict=True):
        assert hashlib.sha256(features.read_bytes()).hexdigest() == day["digest"]
    assert window_digest(days) == after.digest
    # Both versions stay published, each with its own rows.
    old, _ = read_dataset(before.dataset_dir)
    new, manifest = read_dataset(after.dataset_dir)
    assert manifest["digest"] == after.digest
    key = ["booking_id", "driver_id"]
    old, new = old.sort_values(key, ignore_index=True), new.sort_values(key, ignore_index=True)
    np.testing.assert_allclose(new["fare"], old["fare"] * 1.1)
    assert (before.dataset_dir / SUCCESS_MARKER).exists()

    # The original bytes again: the original digest, and its dataset reused.
    path.write_bytes(original)
    again = build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    assert again.digest == before.digest and again.dataset_dir == before.dataset_dir


def test_mistyped_and_missing_columns_fail_the_step_naming_each_file(settings: Settings) -> None:
    bookings = _raw(settings, DAY, "bookings")
    table = pq.read_table(bookings)
    fare = table.schema.get_field_index("fare")
    pq.write_table(table.set_column(fare, "fare", pc.cast(table["fare"], pa.string())), bookings)
    candidates = _raw(settings, date(2026, 8, 2), "candidates")  # a history day
    pq.write_table(pq.read_table(candidates).drop_columns(["accepted"]), candidates)
    with pytest.raises(DataQualityError) as err:
        build_dataset(settings, "jakarta", DAY, DAY, max_bad_share=1.0)
    message = str(err.value)
    assert f"{bookings}: column 'fare' is string, expected double" in message
    assert f"{candidates}: column 'accepted' is missing" in message
    assert not settings.features_dir.exists()


def test_nullable_columns_of_the_contract_type_are_accepted(settings: Settings) -> None:
    # Another producer may declare every field nullable: the schema still holds.
    path = _raw(settings, DAY, "bookings")
    table = pq.read_table(path)
    loose = pa.schema([f.with_nullable(True) for f in table.schema])
    pq.write_table(table.cast(loose), path)
    assert build_dataset(settings, "jakarta", DAY, DAY, 0.05).quarantined == 0


def test_roster_missing_a_column_fails_naming_it(settings: Settings) -> None:
    roster = settings.raw_dir / "city=jakarta" / "drivers.parquet"
    pq.write_table(pq.read_table(roster).drop_columns(["rating"]), roster)
    with pytest.raises(DataQualityError, match="column 'rating' is missing") as err:
        build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    assert str(roster) in str(err.value)


def test_a_gap_in_the_history_is_named(settings: Settings) -> None:
    gap = settings.raw_dir / "city=jakarta" / "date=2026-08-02" / SUCCESS_MARKER
    gap.unlink()
    with pytest.raises(StorageError, match=r"history days 2026-08-02 \(1 of 2\)") as err:
        build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    assert "window days" not in str(err.value)
    assert "holds 2026-08-01, 2026-08-03" in str(err.value)


def _rewrite(path: Path, df: pd.DataFrame) -> None:
    """Write ``df`` back as a loosely typed producer would (every field nullable)."""
    loose = pa.schema([f.with_nullable(True) for f in pq.read_schema(path)])
    pq.write_table(pa.Table.from_pandas(df, schema=loose, preserve_index=False), path)


def test_bad_logged_propensities_are_quarantined_with_counts(settings: Settings) -> None:
    """Each way the logged policy can be broken is its own reason; a booking whose first-offer
    propensities are not a distribution goes whole (its candidates follow as orphans)."""
    path = _raw(settings, DAY, "candidates")
    cand = pq.read_table(path).to_pandas()
    sizes = cand.groupby("booking_id", sort=False).size()
    # Distinct bookings with at least 3 candidates and an offer, one fault each.
    ids = [b for b in sizes.index[sizes >= 3] if cand.loc[cand["booking_id"] == b, "offered"].any()]
    zero, rescaled, missing, stray, above_one = ids[:5]
    rows = {b: cand.index[cand["booking_id"] == b] for b in ids[:5]}
    not_offered = {b: rows[b][~cand.loc[rows[b], "offered"]] for b in rows}
    offered = {b: rows[b][cand.loc[rows[b], "offered"]] for b in rows}
    cand.loc[not_offered[zero][0], "first_offer_propensity"] = 0.0
    cand.loc[rows[rescaled], "first_offer_propensity"] *= 0.9  # each fine, the sum is not
    cand.loc[offered[missing][0], "offer_propensity"] = np.nan
    cand.loc[not_offered[stray][0], "offer_propensity"] = 0.3
    cand.loc[offered[above_one][0], "offer_propensity"] = 1.5
    _rewrite(path, cand)

    result = build_dataset(settings, "jakarta", DAY, DAY, max_bad_share=0.05)
    assert result.quarantine_counts == {
        "bookings.propensity_sum": 2,
        "candidates.bad_propensity": 2,
        "candidates.propensity_inconsistent": 2,
        "candidates.orphan_booking": len(rows[zero]) - 1 + len(rows[rescaled]),
    }
    quarantine = pq.read_table(result.dataset_dir / "quarantine.parquet").to_pandas()
    by_reason = quarantine.groupby("reason")["booking_id"].agg(set)
    assert by_reason["propensity_sum"] == {zero, rescaled}
    assert by_reason["bad_propensity"] == {zero, above_one}
    assert by_reason["propensity_inconsistent"] == {missing, stray}
    published, _ = read_dataset(result.dataset_dir)
    kept = published["booking_id"].value_counts()
    assert zero not in kept and rescaled not in kept
    for b in (missing, stray, above_one):  # a row-level fault takes only its row
        assert kept[b] == len(rows[b]) - 1
    assert published["first_offer_propensity"].between(0, 1, inclusive="right").all()


def test_a_booking_without_its_policy_name_is_quarantined(settings: Settings) -> None:
    path = _raw(settings, DAY, "bookings")
    bookings = pq.read_table(path).to_pandas()
    bookings.loc[bookings.index[:2], "logging_policy_version"] = None
    _rewrite(path, bookings)
    result = build_dataset(settings, "jakarta", DAY, DAY, max_bad_share=0.05)
    assert result.quarantine_counts["bookings.null_field"] == 2


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("candidates", "first_offer_propensity"),
        ("candidates", "offer_propensity"),
        ("bookings", "logging_policy"),
        ("bookings", "logging_policy_version"),
    ],
)
def test_raw_table_without_the_logged_policy_fails_naming_it(
    settings: Settings, table: str, column: str
) -> None:
    """A source that does not log its dispatch policy cannot be evaluated off-policy: the step
    fails on the file and the column, it does not quarantine every row."""
    path = _raw(settings, DAY, table)
    pq.write_table(pq.read_table(path).drop_columns([column]), path)
    with pytest.raises(DataQualityError) as err:
        build_dataset(settings, "jakarta", DAY, DAY, max_bad_share=1.0)
    assert f"{path}: column '{column}' is missing" in str(err.value)
    assert not settings.features_dir.exists()


def test_the_dataset_carries_the_logged_policy_beside_the_features(settings: Settings) -> None:
    """Evaluation reads propensities, offer order and policy from the holdout dataset; the
    manifest's feature list (what training and serving use) does not include them."""
    result = build_dataset(settings, "jakarta", DAY, DAY, 0.05)
    rows, manifest = read_dataset(result.dataset_dir)
    assert manifest["features"] == list(FEATURE_NAMES)
    assert set(LOGGED_POLICY_COLUMNS) <= set(rows.columns)
    raw_cand = pq.read_table(_raw(settings, DAY, "candidates")).to_pandas()
    raw_book = pq.read_table(_raw(settings, DAY, "bookings")).to_pandas()
    raw = raw_cand.merge(raw_book[["booking_id", *LOGGED_POLICY_COLUMNS[3:]]], on="booking_id")
    key = ["booking_id", "driver_id"]
    got = rows.set_index(key).sort_index()
    want = raw.set_index(key).loc[got.index]
    assert len(got) == len(raw_cand)
    for column in LOGGED_POLICY_COLUMNS:
        pd.testing.assert_series_equal(
            got[column], want[column], check_dtype=False, check_names=False
        )
    assert got["offer_propensity"].isna().eq(~got["offered"]).all()
