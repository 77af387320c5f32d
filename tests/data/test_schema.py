"""Every table the world writes matches the contract in matchmaking.schema exactly."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.lakeworld import SmallWorld

from matchmaking import schema
from matchmaking import lake


def _file_schema(path: Path) -> pa.Schema:
    return pq.read_schema(path).remove_metadata()


def test_raw_partition_files_match_schema(jakarta_world: SmallWorld) -> None:
    days = lake.list_dates(jakarta_world.root, "jakarta")
    assert len(days) == jakarta_world.days and days[0] == jakarta_world.start
    for day in days:
        part = lake.partition_dir(jakarta_world.root, lake.RAW, "jakarta", day)
        assert sorted(p.name for p in part.iterdir()) == [
            "_SUCCESS",
            "bookings.parquet",
            "candidates.parquet",
        ]
        for name, expected in schema.RAW_TABLES.items():
            got = _file_schema(part / f"{name}.parquet")
            assert got.equals(expected), f"{name}: {got} != {expected}"


def test_truth_partition_files_match_schema(jakarta_world: SmallWorld) -> None:
    days = lake.list_dates(jakarta_world.root, "jakarta", layer=lake.TRUTH)
    assert len(days) == jakarta_world.days
    for day in days:
        part = lake.partition_dir(jakarta_world.root, lake.TRUTH, "jakarta", day)
        for name, expected in schema.TRUTH_TABLES.items():
            assert _file_schema(part / f"{name}.parquet").equals(expected)


def test_driver_files_match_schema(jakarta_world: SmallWorld) -> None:
    raw = lake.city_dir(jakarta_world.root, lake.RAW, "jakarta") / "drivers.parquet"
    hidden = lake.city_dir(jakarta_world.root, lake.TRUTH, "jakarta") / "drivers.parquet"
    assert _file_schema(raw).equals(schema.DRIVERS)
    assert _file_schema(hidden).equals(schema.DRIVER_TRUTH)
    # The propensity is hidden: it never reaches the raw roster.
    assert "propensity" not in _file_schema(raw).names


@pytest.mark.parametrize("table", ["bookings", "candidates", "ground_truth"])
def test_readers_return_the_contract(jakarta_world: SmallWorld, table: str) -> None:
    day = jakarta_world.start
    got = lake.read_partitions(jakarta_world.root, "jakarta", table, day, day)
    expected = (schema.RAW_TABLES | schema.TRUTH_TABLES)[table]
    assert got.schema.remove_metadata().equals(expected)
    assert got.num_rows > 0
    for column in expected:
        if not column.nullable:
            assert got.column(column.name).null_count == 0, column.name


def test_statuses_and_currency_are_known_values(jakarta_world: SmallWorld) -> None:
    bookings = jakarta_world.bookings()
    assert set(bookings["status"]) <= set(schema.BOOKING_STATUSES)
    assert set(bookings["currency"]) == {"IDR"}
    assert set(bookings["city"]) == {"jakarta"}
    assert bookings["booking_id"].is_unique
