"""`matchmaking world dispatch`: the simulator serves a day through a ranking service, drivers
who accept are busy until their trip ends, the day lands in the lake with the service's
propensities and `process` takes it as it takes a generated day."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.dispatchworld import START, EtaPolicyService, busy_violations
from support.processes import free_port, wait_for_200

from matchmaking.cli import run
from matchmaking.config import Settings
from matchmaking.lake import storage
from matchmaking.processing.step import process
from matchmaking.world.generate import generate_world
from matchmaking.world.served import DispatchRequest, dispatch_day

BOOKINGS = 320
SERVED_DAY = START + timedelta(days=2)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    generate_world(["jakarta"], START, 2, 42, settings.lake_dir, 0.002, BOOKINGS, progress=False)
    return settings


def _request(settings: Settings, url: str = "in-process") -> DispatchRequest:
    return DispatchRequest(
        "jakarta", SERVED_DAY, url, settings.lake_dir, seed=42, bookings_per_day=BOOKINGS
    )


def test_a_served_day_keeps_busy_drivers_out_and_processes_like_a_generated_one(
    world: Settings,
) -> None:
    service = EtaPolicyService(version="7")
    summary = dispatch_day(_request(world), service=service)
    assert summary.bookings == BOOKINGS and summary.rank_calls == len(service.requests) > 250
    assert busy_violations(service) == []
    assert summary.accepted > 100  # drivers did get busy: the check above had work to do

    raw = Path(storage.local_path(world.lake_dir)) / "raw/city=jakarta" / f"date={SERVED_DAY}"
    bookings = pq.read_table(raw / "bookings.parquet").to_pandas()
    candidates = pq.read_table(raw / "candidates.parquet").to_pandas()
    served = bookings[bookings["n_candidates"] > 0]
    assert set(served["logging_policy"]) == {"plackett-luce"}
    assert set(served["logging_policy_version"]) == {"7"}
    # The raw candidates are the ones sent, with the answer's propensities and offer order.
    answers = {}
    for body in service.requests:
        answers[body["booking"]["booking_id"]] = {c["driver_id"] for c in body["candidates"]}
    by_booking = candidates.groupby("booking_id")["driver_id"].apply(set).to_dict()
    assert by_booking == answers
    offers = {
        (o["booking_id"], o["driver_id"], o["position"]): o["outcome"]
        for o in service.outcomes
        if o["stage"] == "offer"
    }
    offered = candidates[candidates["offered"]]
    assert len(offered) == len(offers) == summary.offers
    for row in offered.itertuples():
        outcome = offers[(row.booking_id, row.driver_id, row.offer_order)]
        assert (outcome == "accepted") == row.accepted
    assert (candidates.groupby("booking_id")["first_offer_propensity"].sum() - 1).abs().max() < 1e-9
    assert offered["offer_propensity"].between(0, 1, inclusive="right").all()

    result = process(world, "jakarta", START, SERVED_DAY, 0.05)
    assert result.quarantined == 0, result.quarantine_counts
    assert result.offered_rows > summary.offers  # the generated days and the served one


def test_a_day_already_in_the_lake_and_a_foreign_roster_are_refused(world: Settings) -> None:
    service = EtaPolicyService()
    dispatch_day(_request(world), service=service)
    calls = len(service.requests)
    with pytest.raises(Exception, match="already holds jakarta"):
        dispatch_day(_request(world), service=service)
    other = DispatchRequest(
        "jakarta",
        SERVED_DAY + timedelta(days=1),
        "x",
        world.lake_dir,
        seed=7,
        bookings_per_day=BOOKINGS,
    )
    with pytest.raises(Exception, match="roster of jakarta"):
        dispatch_day(other, service=service)
    assert len(service.requests) == calls  # refused before any request


def test_world_dispatch_refuses_a_service_that_does_not_return_the_served_propensities(
    world: Settings, remote_tracking: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real `matchmaking serve` (no model: the nearest-ETA fallback answers). Today's
    answer lacks the decision log's fields; a service with them (issue 13) answers the
    fallback greedily, with zero propensities: either way the day cannot be served, and
    nothing is written."""
    port = free_port()
    env = {
        **os.environ,
        "MATCHMAKING_SERVE_TRACKING_URI": remote_tracking,
        "MATCHMAKING_SERVE_MODEL_NAME_PREFIX": f"none-{port}",
        "MATCHMAKING_SERVE_FALLBACK_NEAREST_ETA": "true",
        "MATCHMAKING_SERVE_COMPILE_FORESTS": "false",
        "MATCHMAKING_SERVE_HOT_CITIES": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "matchmaking", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_200(proc, f"http://127.0.0.1:{port}/healthz", timeout_s=120.0)
        code = run(
            [
                "world",
                "dispatch",
                "--city",
                "jakarta",
                "--date",
                str(SERVED_DAY),
                "--url",
                f"http://127.0.0.1:{port}",
                "--bookings-per-day",
                str(BOOKINGS),
            ]
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "predates the decision log" in err or "deterministic order" in err, err
    raw = Path(storage.local_path(world.lake_dir)) / "raw/city=jakarta" / f"date={SERVED_DAY}"
    assert not raw.exists()
    assert (
        run(
            [
                "world",
                "dispatch",
                "--city",
                "atlantis",
                "--date",
                "2026-10-03",
                "--url",
                "http://127.0.0.1:1",
            ]
        )
        == 2
    )
