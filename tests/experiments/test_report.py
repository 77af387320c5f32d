"""`matchmaking experiment report` on serving logs in a real lake, logged to the real tracking
server: the counts are the logs', the interval decides, small samples are flagged."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from mlflow.tracking import MlflowClient
from support.traffic import Arm, write_traffic

from matchmaking.cli import run
from matchmaking.config import Settings
from matchmaking.experiments.report import (
    PLOT_FILE,
    REPORT_FILE,
    TABLE_FILE,
    ArmStats,
    OnlineThresholds,
    build_report,
)
from matchmaking.lake import serving_log
from matchmaking.schema import OUTCOMES


def _lake() -> Path:
    return Path(str(Settings().lake_dir))


def test_a_better_challenger_is_ahead_with_the_logs_counts_and_a_logged_run(
    remote_tracking: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got = write_traffic(
        _lake(),
        [
            Arm("champion", "4", 0.70, 900),
            Arm("challenger", "5", 0.85, 900),
            Arm("fallback", None, 0.6, 40),
        ],
    )
    assert run(["experiment", "report", "--city", "jakarta"]) == 0
    out = capsys.readouterr().out
    assert "verdict: **ahead**" in out
    run_id = out.strip().splitlines()[-1].removeprefix("run_id: ")

    client = MlflowClient(tracking_uri=remote_tracking)
    logged = client.get_run(run_id)
    m, p = logged.data.metrics, logged.data.params
    for arm, version in (("champion", "4"), ("challenger", "5")):
        label = f"{arm}:{version}"
        assert m[f"{arm}.bookings"] == got.bookings[label]
        assert m[f"{arm}.offers"] == got.offers[label]
        assert m[f"{arm}.acceptance"] == pytest.approx(
            got.first_accepted[label] / got.first_offers[label]
        )
        assert m[f"{arm}.completion"] == pytest.approx(got.completed[label] / got.bookings[label])
        assert m[f"{arm}.eta_p50_min"] == pytest.approx(
            statistics.median(got.accepted_eta_s[label]) / 60.0
        )
    diff = m["challenger.acceptance"] - m["champion.acceptance"]
    assert m["difference.acceptance"] == pytest.approx(diff)
    assert 0 < m["difference.acceptance_ci_low"] < diff < m["difference.acceptance_ci_high"]
    assert m["challenger_ahead"] == 1.0 and m["decided"] == 1.0
    assert p["interval"] == "newcombe-wilson" and p["confidence"] == "0.95"
    assert (p["challenger_version"], p["champion_version"]) == ("5", "4")
    names = {f.path for f in client.list_artifacts(run_id)}
    names |= {f.path for f in client.list_artifacts(run_id, "plots")}
    assert {REPORT_FILE, TABLE_FILE, PLOT_FILE} <= names
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{TABLE_FILE}"))
    arms = {row[table["columns"].index("arm")] for row in table["data"]}
    assert arms == {"champion", "challenger", "fallback"}


def test_too_small_samples_and_intervals_on_the_margin_are_flagged(tmp_path: Path) -> None:
    lake = tmp_path / "small"
    write_traffic(lake, [Arm("champion", "1", 0.70, 60), Arm("challenger", "2", 0.95, 60)])
    settings = Settings(lake_uri=str(lake))
    report = build_report(settings, "jakarta", None, None, OnlineThresholds(min_bookings=100))
    assert report.verdict == "too small to decide" and not report.ahead
    assert any("60 first offers" in w and ">= 100" in w for w in report.warnings)

    lake = tmp_path / "tie"
    write_traffic(lake, [Arm("champion", "1", 0.80, 400), Arm("challenger", "2", 0.80, 400)])
    settings = Settings(lake_uri=str(lake))
    report = build_report(settings, "jakarta", None, None, OnlineThresholds(min_bookings=100))
    low, high = report.difference_ci_low, report.difference_ci_high
    assert low < 0 < high and report.verdict == "too small to decide"
    assert any("contains the margin" in w and "per arm would settle" in w for w in report.warnings)
    # A higher confidence widens the interval (configurable, not fixed at 95%).
    wide = build_report(settings, "jakarta", None, None, OnlineThresholds(confidence=0.99))
    assert wide.difference_ci_low < low and wide.difference_ci_high > high


def _assert_same_arms(got: list[ArmStats], want: list[ArmStats]) -> None:
    """Equal counts; the means equal to rounding (DuckDB sums in parallel, in any order)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for key, value in asdict(w).items():
            if isinstance(value, float):
                assert asdict(g)[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
            else:
                assert asdict(g)[key] == value, key


def test_answers_of_the_country_model_are_never_a_version_of_the_citys_model(
    tmp_path: Path,
) -> None:
    """A city served by its country's pooled model for a while, then by its own v1: the
    country model's answers (also v1, of another registered model) are their own row, and the
    champion compared with a challenger is the city's own v1."""
    lake = tmp_path / "mixed"
    write_traffic(
        lake,
        [
            Arm("champion", "1", 0.60, 150, scope="country"),
            Arm("champion", "1", 0.70, 200),
            Arm("challenger", "2", 0.75, 200),
        ],
    )
    settings = Settings(lake_uri=str(lake))
    report = build_report(settings, "jakarta", None, None, OnlineThresholds(min_bookings=50))
    champions = {a.version: a.bookings for a in report.arms if a.arm == "champion"}
    assert champions == {"1": 200, "mm-country-id v1": 150}
    assert report.champion is not None and report.champion.version == "1"


def test_a_repeated_outcome_and_a_retried_request_count_once(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_traffic(lake, [Arm("champion", "1", 0.7, 300), Arm("challenger", "2", 0.8, 300)])
    settings = Settings(lake_uri=str(lake))
    before = build_report(settings, "jakarta", None, None, OnlineThresholds())
    # Dispatch delivers every outcome a second time (other outcome, later), and the service
    # answered each booking of the champion arm twice (a retry under a new request id).
    outcomes = serving_log.read_log(lake, "outcomes", "jakarta")
    flipped = outcomes.set_column(
        outcomes.schema.get_field_index("outcome"),
        "outcome",
        [["declined" if o == "accepted" else o for o in outcomes["outcome"].to_pylist()]],
    )
    later = pc.add(flipped["received_at"], pa.scalar(timedelta(hours=1), pa.duration("us")))
    flipped = flipped.set_column(
        flipped.schema.get_field_index("received_at"), "received_at", later
    )
    serving_log.write_log(lake, "outcomes", flipped.cast(OUTCOMES))
    serving_log.write_log(lake, "outcomes", outcomes.slice(0, 50))  # same time: the first stored
    decisions = serving_log.read_log(lake, "decisions", "jakarta")
    retry = decisions.filter(decisions["arm"].to_numpy(zero_copy_only=False) == "champion")
    retry = retry.set_column(
        0, "request_id", [[f"retry-{r}" for r in retry["request_id"].to_pylist()]]
    )
    serving_log.write_log(lake, "decisions", retry)
    after = build_report(settings, "jakarta", None, None, OnlineThresholds())
    _assert_same_arms(after.arms, before.arms)


def test_a_shadow_challenger_is_reported_apart_and_changes_no_served_number(
    tmp_path: Path,
) -> None:
    arms = [Arm("champion", "1", 0.75, 600)]
    plain = write_traffic(tmp_path / "plain", arms)
    write_traffic(tmp_path / "shadowed", arms, shadow=Arm("shadow", "9", 0.0, 0, served=False))
    reports = [
        build_report(
            Settings(lake_uri=str(tmp_path / n)), "jakarta", None, None, OnlineThresholds()
        )
        for n in ("plain", "shadowed")
    ]
    _assert_same_arms(reports[1].arms, reports[0].arms)
    assert reports[0].shadow == []
    [shadow] = reports[1].shadow
    assert shadow.version == "9" and shadow.bookings == 600 // 3
    # It agrees with the served first offer on the bookings where its order is not reversed.
    assert 0.3 < shadow.agreement < 0.7
    assert reports[1].challenger is None
    assert any("nothing to compare" in w for w in reports[1].warnings)
    assert plain.bookings["champion:1"] == reports[1].arms[0].bookings


def test_no_logged_decision_is_a_storage_error_naming_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["experiment", "report", "--city", "jakarta"]) == 3
    err = capsys.readouterr().err
    assert "no decision of jakarta is logged" in err and "MATCHMAKING_SERVE_LAKE_URI" in err
    assert (
        run(
            [
                "experiment",
                "report",
                "--city",
                "jakarta",
                "--since",
                "2026-09-02",
                "--until",
                "2026-09-01",
            ]
        )
        == 2
    )
