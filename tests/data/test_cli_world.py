"""The real CLI: exit codes and messages of `matchmaking world ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MATCHMAKING_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "-m", "matchmaking.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _generate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("world", "generate", "--no-progress", *args, tmp_path=tmp_path)


def test_unknown_city_exits_2_and_suggests_a_close_match(tmp_path: Path) -> None:
    res = _generate(tmp_path, "--cities", "jakrta", "--out", str(tmp_path / "lake"))
    assert res.returncode == 2, res.stderr
    assert "jakrta" in res.stderr and "'jakarta'" in res.stderr
    assert "matchmaking world cities" in res.stderr
    assert not (tmp_path / "lake").exists()


def test_impossible_start_date_exits_2(tmp_path: Path) -> None:
    res = _generate(tmp_path, "--start", "2026-02-30", "--out", str(tmp_path / "lake"))
    assert res.returncode == 2
    assert "2026-02-30" in res.stderr and "YYYY-MM-DD" in res.stderr
    assert res.stderr.startswith("error: --start ")  # the CLI's one error style, no usage box


def test_bad_option_value_is_an_error_line_not_a_box(tmp_path: Path) -> None:
    res = _generate(tmp_path, "--days", "0", "--out", str(tmp_path / "lake"))
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "--days" in res.stderr, res.stderr
    assert "╭" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lake").exists()


def test_start_out_of_range_exits_2(tmp_path: Path) -> None:
    res = _generate(tmp_path, "--start", "1999-12-31", "--out", str(tmp_path / "lake"))
    assert res.returncode == 2
    assert "1999-12-31" in res.stderr


def test_unwritable_out_exits_3(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = _generate(tmp_path, "--cities", "hue", "--out", str(blocker / "lake"))
    assert res.returncode == 3, res.stderr
    assert str(blocker) in res.stderr and "not a directory" in res.stderr


def test_small_run_prints_the_summary(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    res = _generate(
        tmp_path,
        "--cities",
        "hue,da-nang",
        "--days",
        "2",
        "--bookings-per-day",
        "200",
        "--out",
        str(lake),
    )
    assert res.returncode == 0, res.stderr
    assert "accept%" in res.stdout and "hue" in res.stdout and "da-nang" in res.stdout
    assert str(lake) in res.stdout
    assert (lake / "raw/city=hue/date=2026-10-02/_SUCCESS").exists()


def test_cities_lists_the_catalogue(tmp_path: Path) -> None:
    res = _run("world", "cities", "--country", "vn", tmp_path=tmp_path)
    assert res.returncode == 0
    assert "ho-chi-minh-city" in res.stdout and "jakarta" not in res.stdout


def test_dispatch_temperature_reaches_the_logged_policy(tmp_path: Path) -> None:
    """--dispatch-temperature is the logging policy's parameter: it changes the logged version."""
    import pyarrow.parquet as pq

    versions = []
    for temperature in ("0.75", "2.0"):
        lake = tmp_path / f"lake-{temperature}"
        res = _generate(
            tmp_path,
            *("--cities", "hue", "--days", "1", "--bookings-per-day", "50"),
            *("--dispatch-temperature", temperature, "--out", str(lake)),
        )
        assert res.returncode == 0, res.stderr
        (bookings,) = lake.glob("raw/city=hue/date=*/bookings.parquet")
        table = pq.read_table(bookings, columns=["logging_policy", "logging_policy_version"])
        assert set(table.column("logging_policy").to_pylist()) == {"softmax-eta"}
        versions.append(set(table.column("logging_policy_version").to_pylist()))
    assert len(versions[0]) == len(versions[1]) == 1 and versions[0] != versions[1]
    res = _generate(tmp_path, "--dispatch-temperature", "0", "--out", str(tmp_path / "bad"))
    assert res.returncode == 2 and "dispatch temperature" in res.stderr, res.stderr
    assert not (tmp_path / "bad").exists()
