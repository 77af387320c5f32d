"""Atomic lake writes: a crash never leaves a visible half partition; readers are strict."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from matchmaking import lake
from matchmaking.errors import DataQualityError, InputError, StorageError
from matchmaking.lake import raw
from matchmaking.schema import SUCCESS_MARKER
from matchmaking.world import generate

DAY = date(2026, 10, 1)


def _bookings(n: int, tag: str = "a") -> pa.Table:
    # Any table works for the lake mechanics; readers only care about file names.
    return pa.table({"booking_id": [f"{tag}-{i}" for i in range(n)], "fare": [1.0] * n})


def _hidden(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*")]


def test_write_and_read_back_in_date_order(tmp_path: Path) -> None:
    for i, day in enumerate([date(2026, 10, 2), date(2026, 10, 1)]):
        lake.write_partition(tmp_path, lake.RAW, "hue", day, {"bookings": _bookings(2, f"d{i}")})
    assert lake.list_dates(tmp_path, "hue") == [date(2026, 10, 1), date(2026, 10, 2)]
    got = lake.read_partitions(tmp_path, "hue", "bookings", date(2026, 10, 1), date(2026, 10, 2))
    assert got["booking_id"].to_pylist() == ["d1-0", "d1-1", "d0-0", "d0-1"]
    one = lake.read_partitions(tmp_path, "hue", "bookings", DAY, DAY, columns=["fare"])
    assert one.column_names == ["fare"]
    assert lake.list_cities(tmp_path) == ["hue"]
    assert _hidden(tmp_path) == []


def test_crash_mid_partition_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = lake.write_parquet
    calls = []

    def write_then_crash(path: Path, table: pa.Table) -> None:
        calls.append(path)
        if len(calls) > 1:
            raise RuntimeError("disk on fire")
        real_write(path, table)

    monkeypatch.setattr(raw, "write_parquet", write_then_crash)
    tables = {"bookings": _bookings(3), "candidates": _bookings(5)}
    with pytest.raises(RuntimeError, match="disk on fire"):
        lake.write_partition(tmp_path, lake.RAW, "hue", DAY, tables)
    assert len(calls) == 2 and calls[0].exists() is False  # the staged file went with its dir
    assert not lake.partition_dir(tmp_path, lake.RAW, "hue", DAY).exists()
    assert lake.list_dates(tmp_path, "hue") == []
    assert _hidden(tmp_path) == []
    with pytest.raises(StorageError, match="2026-10-01"):
        lake.read_partitions(tmp_path, "hue", "bookings", DAY, DAY)


def test_killed_before_rename_is_invisible_then_cleaned(tmp_path: Path) -> None:
    # A process killed between writing and renaming leaves only a hidden staging dir.
    staged = lake.PartitionWriter(tmp_path, lake.RAW, "hue", DAY)
    lake.write_parquet(staged.path / "bookings.parquet", _bookings(3))
    (staged.path / SUCCESS_MARKER).write_bytes(b"")
    assert staged.path.name.startswith(".date=2026-10-01.tmp-")
    # ... and a directory without _SUCCESS (e.g. copied by hand) is not a partition either.
    bare = lake.partition_dir(tmp_path, lake.RAW, "hue", date(2026, 10, 2))
    bare.mkdir()
    lake.write_parquet(bare / "bookings.parquet", _bookings(1))

    assert lake.list_dates(tmp_path, "hue") == []
    with pytest.raises(StorageError, match=r"2026-10-01\.\.2026-10-02"):
        lake.read_partitions(tmp_path, "hue", "bookings", DAY, date(2026, 10, 2))

    # The next write of that partition removes the stale staging dir and publishes.
    lake.write_partition(tmp_path, lake.RAW, "hue", DAY, {"bookings": _bookings(4)})
    assert not staged.path.exists()
    assert lake.read_partitions(tmp_path, "hue", "bookings", DAY, DAY).num_rows == 4
    assert _hidden(tmp_path) == []


def test_clean_stale_removes_every_staging_entry(tmp_path: Path) -> None:
    city = lake.city_dir(tmp_path, lake.TRUTH, "hue")
    (city / ".date=2026-10-03.tmp-abc").mkdir(parents=True)
    (city / ".date=2026-10-04.old-def").mkdir()
    (city / ".drivers.parquet.tmp-123").write_bytes(b"half")
    (city / ".keep-me").write_bytes(b"")  # not ours
    assert lake.clean_stale(tmp_path, lake.TRUTH, "hue") == 3
    assert [p.name for p in city.iterdir()] == [".keep-me"]


def test_replacing_a_partition_swaps_it_whole(tmp_path: Path) -> None:
    lake.write_partition(tmp_path, lake.RAW, "hue", DAY, {"bookings": _bookings(2, "old")})
    lake.write_partition(tmp_path, lake.RAW, "hue", DAY, {"bookings": _bookings(3, "new")})
    got = lake.read_partitions(tmp_path, "hue", "bookings", DAY, DAY)
    assert got["booking_id"].to_pylist() == ["new-0", "new-1", "new-2"]
    part = lake.partition_dir(tmp_path, lake.RAW, "hue", DAY)
    assert sorted(p.name for p in part.iterdir()) == [SUCCESS_MARKER, "bookings.parquet"]
    assert _hidden(tmp_path) == []


def test_failed_replacement_keeps_the_old_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake.write_partition(tmp_path, lake.RAW, "hue", DAY, {"bookings": _bookings(2, "old")})

    def crash(path: Path, table: pa.Table) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(raw, "write_parquet", crash)
    with pytest.raises(RuntimeError):
        lake.write_partition(tmp_path, lake.RAW, "hue", DAY, {"bookings": _bookings(3, "new")})
    got = lake.read_partitions(tmp_path, "hue", "bookings", DAY, DAY)
    assert got["booking_id"].to_pylist() == ["old-0", "old-1"]


def test_world_crash_between_truth_and_raw_publishes_no_raw_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = lake.PartitionWriter.commit

    def commit(self: lake.PartitionWriter) -> Path:
        if "/raw/" in str(self.target) and self.target.name == "date=2026-10-02":
            raise KeyboardInterrupt  # killed after the truth partition, before the raw one
        return real_commit(self)

    monkeypatch.setattr(lake.PartitionWriter, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        generate.generate_world(["hue"], DAY, 3, 1, tmp_path, 0.002, 100, progress=False)
    assert lake.list_dates(tmp_path, "hue") == [DAY]
    # Truth is written first, so a published raw day always has its truth.
    assert lake.list_dates(tmp_path, "hue", layer=lake.TRUTH) == [DAY, date(2026, 10, 2)]
    assert _hidden(tmp_path) == []

    monkeypatch.setattr(lake.PartitionWriter, "commit", real_commit)
    generate.generate_world(["hue"], DAY, 3, 1, tmp_path, 0.002, 100, progress=False)
    assert len(lake.list_dates(tmp_path, "hue")) == 3


def test_single_file_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "raw/city=hue/drivers.parquet"
    lake.write_file_atomic(target, _bookings(2, "old"))

    def crash(path: Path, table: pa.Table, *options: object) -> None:
        path.write_bytes(b"PAR1 half a file")
        raise RuntimeError("killed")

    monkeypatch.setattr(raw, "write_parquet", crash)
    with pytest.raises(RuntimeError):
        lake.write_file_atomic(target, _bookings(3, "new"))
    assert raw._read_file(target)["booking_id"].to_pylist() == ["old-0", "old-1"]
    assert _hidden(tmp_path) == []


def test_unwritable_lake_raises_storage_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not a directory") as err:
        lake.ensure_writable(blocker / "lake")
    assert str(blocker) in str(err.value)
    with pytest.raises(StorageError, match=str(blocker)):
        lake.write_file_atomic(blocker / "lake" / "drivers.parquet", _bookings(1))
    with pytest.raises(StorageError):
        generate.generate_world(["hue"], DAY, 1, 1, blocker / "lake", 0.002, None, False)


def test_reader_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown lake table"):
        lake.read_partitions(tmp_path, "hue", "trips", DAY, DAY)
    with pytest.raises(InputError, match="before"):
        lake.read_partitions(tmp_path, "hue", "bookings", DAY, date(2026, 9, 30))
    with pytest.raises(InputError, match="nope"):
        lake.read_partitions(tmp_path, "hue", "bookings", DAY, DAY, columns=["nope"])
    with pytest.raises(StorageError, match="matchmaking world generate"):
        lake.read_drivers(tmp_path, "hue")
    assert lake.list_dates(tmp_path, "nowhere") == []


def test_check_partitions_names_each_broken_file_and_column(tmp_path: Path) -> None:
    # Two of the contract's columns, one of them mistyped; the rest missing.
    wrong = pa.table({"booking_id": ["a"], "fare": ["12.5"]})
    lake.write_partition(tmp_path, lake.RAW, "hue", DAY, {"bookings": wrong})
    with pytest.raises(DataQualityError) as err:
        lake.check_partitions(tmp_path, "hue", ["bookings"], DAY, DAY)
    path = lake.partition_dir(tmp_path, lake.RAW, "hue", DAY) / "bookings.parquet"
    message = str(err.value)
    assert f"{path}: column 'city' is missing" in message
    assert "column 'fare' is string, expected double" in message
    assert "column 'booking_id'" not in message


def test_a_truncated_file_is_a_data_quality_error_naming_it(tmp_path: Path) -> None:
    lake.write_partition(tmp_path, lake.RAW, "hue", DAY, {"bookings": _bookings(50)})
    path = lake.partition_dir(tmp_path, lake.RAW, "hue", DAY) / "bookings.parquet"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataQualityError, match="truncated or corrupt") as err:
        lake.read_partitions(tmp_path, "hue", "bookings", DAY, DAY)
    assert str(path) in str(err.value)
    with pytest.raises(DataQualityError, match="truncated or corrupt"):
        lake.check_partitions(tmp_path, "hue", ["bookings"], DAY, DAY)
