"""The serving log's lake contract: files per (city, date, hour), published whole, read back in
the contract, outcomes counted once per (booking, driver, position, stage)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from matchmaking.errors import InputError
from matchmaking.lake import serving_log
from matchmaking.schema import DECISIONS, OUTCOMES


def _outcomes(rows: list[tuple[str, str, int, str, str, datetime]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "booking_id": b,
                "driver_id": d,
                "position": p,
                "city": "jakarta",
                "stage": stage,
                "outcome": outcome,
                "occurred_at": at,
                "received_at": at,
                "request_id": None,
            }
            for b, d, p, stage, outcome, at in rows
        ],
        schema=OUTCOMES,
    )


def test_outcomes_are_partitioned_by_hour_and_counted_once(tmp_path: Path) -> None:
    t1 = datetime(2026, 9, 1, 10, 5, tzinfo=UTC)
    t2 = datetime(2026, 9, 1, 11, 7, tzinfo=UTC)
    first = _outcomes(
        [
            ("b1", "d1", 1, "offer", "accepted", t1),
            ("b1", "d1", 1, "trip", "completed", t2),
            ("b2", "d9", 1, "offer", "declined", t1),
        ]
    )
    assert serving_log.write_log(tmp_path, "outcomes", first) == 2  # hours 10 and 11
    # A repeat delivery (later, other outcome): the first stored row wins.
    serving_log.write_log(
        tmp_path, "outcomes", _outcomes([("b2", "d9", 1, "offer", "accepted", t2)])
    )
    hour10 = serving_log.hour_dir(tmp_path, "outcomes", "jakarta", date(2026, 9, 1), 10)
    assert len(list(Path(hour10).glob("part-*.parquet"))) == 1
    read = serving_log.read_log(tmp_path, "outcomes", "jakarta")
    assert read.schema == OUTCOMES
    got = sorted(
        zip(
            read["booking_id"].to_pylist(),
            read["stage"].to_pylist(),
            read["outcome"].to_pylist(),
            strict=True,
        )
    )
    assert got == [
        ("b1", "offer", "accepted"),
        ("b1", "trip", "completed"),
        ("b2", "offer", "declined"),
    ]
    assert (
        serving_log.read_log(tmp_path, "outcomes", "jakarta", since=date(2026, 9, 2)).num_rows == 0
    )
    assert serving_log.list_log_cities(tmp_path, "outcomes") == ["jakarta"]


def test_hidden_temp_files_are_never_read_and_bad_rows_are_refused(tmp_path: Path) -> None:
    at = datetime(2026, 9, 1, 10, 5, tzinfo=UTC)
    serving_log.write_log(
        tmp_path, "outcomes", _outcomes([("b1", "d1", 1, "offer", "accepted", at)])
    )
    hour = Path(serving_log.hour_dir(tmp_path, "outcomes", "jakarta", date(2026, 9, 1), 10))
    (hour / ".part-x.parquet.tmp-123").write_bytes(b"half a file")  # a killed writer's leftover
    assert serving_log.read_log(tmp_path, "outcomes", "jakarta").num_rows == 1
    assert serving_log.read_log(tmp_path, "decisions", "jakarta").schema == DECISIONS
    with pytest.raises(InputError, match="contract"):
        serving_log.write_log(tmp_path, "decisions", pa.table({"booking_id": ["b1"]}))
    with pytest.raises(InputError, match="unknown serving log table"):
        serving_log.read_log(tmp_path, "offers", "jakarta")
