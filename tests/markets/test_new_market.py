"""A new market in a new country, defined only in a markets file named by MATCHMAKING_MARKETS.

Manila (PH, PHP, Asia/Manila) is in no file under src/ or serving/: every step runs as a user
runs it, as a real process (`matchmaking world generate`, the chained `matchmaking pipeline` of
MLflow Projects runs, `matchmaking promote`, `matchmaking serve` on a real uvicorn) against the
session's PostgreSQL-backed tracking server, and each succeeds for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from support.processes import free_port, wait_for_200

from matchmaking import lake

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MARKETS = Path(__file__).resolve().parent / "manila.yaml"
MATCHMAKING = Path(sys.executable).parent / "matchmaking"
CITY = "manila"
CENTRE = (14.5995, 120.9842)
DAY = date(2026, 8, 1)


def _run(args: list[str], env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(
        [str(MATCHMAKING), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stderr[-8000:]}"
    return done.stdout


def _rank_body(city: str, drivers: list[str]) -> dict[str, object]:
    lat, lng = CENTRE
    return {
        "booking": {
            "booking_id": "b-mnl-1",
            "city": city,
            "pickup": {"lat": lat, "lng": lng},
            "dropoff": {"lat": lat + 0.03, "lng": lng - 0.02},
            "requested_at": "2026-08-12T08:15:00+08:00",
        },
        "candidates": [
            {
                "driver_id": d,
                "location": {"lat": lat + 0.004 * i, "lng": lng - 0.003 * i},
                "rating": 4.5,
                "home": {"lat": lat + 0.02, "lng": lng + 0.02},
            }
            for i, d in enumerate(drivers)
        ],
    }


def test_manila_defined_only_in_a_markets_file_goes_from_world_to_rank(
    remote_tracking: str, tmp_path: Path
) -> None:
    for tree in ("src", "serving"):
        for path in (REPO / tree).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".json", ".csv"}:
                assert "manila" not in path.read_text().lower(), f"{path} names the new market"

    data = tmp_path / "data"
    prefix = f"mkt{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "MATCHMAKING_MARKETS": str(MARKETS),
        "MLFLOW_TRACKING_URI": remote_tracking,
        "MATCHMAKING_TRACKING_URI": remote_tracking,
        "MATCHMAKING_DATA_DIR": str(data),
        "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
        # MLflow Projects runs entry-point commands through the shell: use this venv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for key in ("MATCHMAKING_LAKE_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)

    listed = _run(["world", "cities", "--country", "PH"], env)
    assert listed.split()[:4] == ["manila", "PH", "Manila", "Asia/Manila"], listed

    gen = ["world", "generate", "--cities", CITY, "--start", "2026-08-01", "--days", "12"]
    _run([*gen, "--seed", "3", "--bookings-per-day", "400", "--no-progress"], env)
    bookings = lake.read_partitions(data / "lake", CITY, "bookings", DAY, DAY)
    assert set(bookings.column("currency").to_pylist()) == {"PHP"}

    chain = ["pipeline", "--city", CITY, "--end", "2026-08-12", "--train-days", "8"]
    chain += ["--holdout-days", "2", "--set", "num_leaves=5", "--set", "objectives=binary"]
    _run([*chain, "--no-progress"], env)
    client = MlflowClient(tracking_uri=remote_tracking, registry_uri=remote_tracking)
    name = f"{prefix}-{CITY}"
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]

    # The packaged gate, but for the latency bound: this machine's load is not the market's.
    gate = tmp_path / "gate.yaml"
    thresholds = (REPO / "src" / "matchmaking" / "config" / "gate.yaml").read_text()
    gate.write_text(thresholds.replace("max_latency_p99_ms: 50.0", "max_latency_p99_ms: 2000.0"))
    assert "2000.0" in gate.read_text()
    _run(["promote", "--city", CITY, "--gate-config", str(gate)], env)
    assert client.get_model_version_by_alias(name, "production").version == "1"

    port = free_port()
    serve_env = {
        **env,
        "MATCHMAKING_SERVE_TRACKING_URI": remote_tracking,
        "MATCHMAKING_SERVE_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_SERVE_HOT_CITIES": CITY,
        "MATCHMAKING_SERVE_HOST": "127.0.0.1",
        "MATCHMAKING_SERVE_PORT": str(port),
        "MATCHMAKING_SERVE_COMPILE_FORESTS": "false",
    }
    proc = subprocess.Popen(
        [str(MATCHMAKING), "serve"],
        env=serve_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_200(proc, f"{url}/readyz", timeout_s=300.0, poll_s=0.3)
        drivers = lake.read_drivers(data / "lake", CITY).column("driver_id").to_pylist()[:4]
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post("/v1/rank", json=_rank_body(CITY, drivers))
            assert r.status_code == 200, r.text
            out = r.json()
            assert (out["city"], out["model"], out["version"]) == (CITY, name, "1")
            assert out["fallback"] is False
            assert {c["driver_id"] for c in out["candidates"]} == set(drivers)
            # A market the catalogue lacks is still unknown.
            r = http.post("/v1/rank", json=_rank_body("cebu", drivers))
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_city", r.text
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
