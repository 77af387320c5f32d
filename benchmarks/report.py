"""Benchmark: ``matchmaking report`` for 79 cities and 60 days through a real tracking server.

Setup (not timed as the report): a ``mlflow server`` on PostgreSQL (SQLite where none answers)
is filled through an in-process client on the same database (faster than HTTP, the same rows):
per city a weekly model version with gate tags and a ``promote`` run (one refusal and one
rollback in every fourth city), and per day a ``process`` run (the daily holdout's metrics)
and an ``evaluate`` run (the ``model.*``, ``nearest_eta.*`` and ``drift.*`` metrics), plus a
small synthetic feature lake (a 28-day training window and one dataset per day per city).

Timed: ``build_report`` against the server over HTTP, in phases (collect, drift, model,
render, log), and the tracking calls it made. Run: ``.venv/bin/python -m benchmarks.report``
(writes benchmarks/reports/report.md). Takes about 3-5 minutes, mostly the setup.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from benchmarks.common import machine_lines
from matchmaking.config import Settings
from matchmaking.lake import storage
from matchmaking.lake.datasets import FEATURES_FILE, MANIFEST_FILE, SUCCESS_FILE
from matchmaking.markets import default_catalogue
from matchmaking.reporting.collect import collect
from matchmaking.reporting.drift import load_drift_config
from matchmaking.reporting.model import EVALUATE_METRICS, fleet, load_report_config
from matchmaking.reporting.render import render
from matchmaking.reporting.report import build_report, measure_drift
from matchmaking.schema import FEATURE_NAMES

logger = logging.getLogger("benchmarks.report")

DAYS = 60
FIRST_DAY = date(2026, 9, 1)
TRAIN_DAYS = 28
ROWS_PER_DAY = 400
VERSION_EVERY = 7
REPORT = Path(__file__).parent / "reports" / "report.md"


def _ms(day: date, minute: int = 0) -> int:
    return (
        int(datetime(day.year, day.month, day.day, 2, tzinfo=UTC).timestamp() * 1000)
        + minute * 60_000
    )


def _features(rng: np.random.Generator, days: list[date], shift: float = 0.0) -> pd.DataFrame:
    n = ROWS_PER_DAY * len(days)
    frame = pd.DataFrame({name: rng.normal(5.0, 2.0, n) for name in FEATURE_NAMES})
    frame["eta_min"] = rng.gamma(2.0, 2.0, n) + shift
    frame["day"] = np.repeat(np.array(days, dtype="datetime64[D]"), ROWS_PER_DAY)
    return frame


def _publish(lake: Path, city: str, start: date, end: date, frame: pd.DataFrame) -> Path:
    data = frame.to_parquet(index=False)
    digest = hashlib.sha256(data).hexdigest()
    out = lake / "features" / f"city={city}" / f"{start}_{end}" / digest[:16]
    out.mkdir(parents=True)
    (out / FEATURES_FILE).write_bytes(data)
    manifest = {"city": city, "start": str(start), "end": str(end), "digest": digest}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    (out / SUCCESS_FILE).write_text("")
    return out


def populate_lake(lake: Path, cities: list[str]) -> dict[str, Path]:
    """Per city: the training window (28 days before the first day) and one dataset per day;
    every fifth city's ETAs shift by 3 minutes from day 40 on."""
    training: dict[str, Path] = {}
    for i, city in enumerate(cities):
        rng = np.random.default_rng(i)
        train = [FIRST_DAY - timedelta(days=TRAIN_DAYS - k) for k in range(TRAIN_DAYS)]
        training[city] = _publish(lake, city, train[0], train[-1], _features(rng, train))
        for d in range(DAYS):
            day = FIRST_DAY + timedelta(days=d)
            shift = 3.0 if i % 5 == 0 and d >= 40 else 0.0
            _publish(lake, city, day, day, _features(rng, [day], shift))
    return training


def populate_city(client: MlflowClient, settings: Settings, city: str, i: int, train: Path) -> int:
    """One city's experiment, versions, promote/process/evaluate runs; returns runs created."""
    exp = client.create_experiment(
        f"{settings.experiment_prefix}-{city}", artifact_location=f"file:///tmp/bench-{city}"
    )
    name = f"{settings.model_name_prefix}-{city}"
    client.create_registered_model(name)
    rng = np.random.default_rng(100 + i)
    runs = 0

    def run(step: str, day: date, minute: int, params: dict, metrics: dict, tags: dict) -> str:
        nonlocal runs
        r = client.create_run(exp, start_time=_ms(day, minute), tags={"step": step, **tags})
        at = _ms(day, minute)
        client.log_batch(
            r.info.run_id,
            metrics=[Metric(k, float(v), at, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(r.info.run_id, end_time=at + 1000)
        runs += 1
        return r.info.run_id

    production: str | None = None
    for d in range(DAYS):
        day = FIRST_DAY + timedelta(days=d)
        rows = ROWS_PER_DAY * 7
        bad = int(rng.integers(0, 40))
        run(
            "process",
            day,
            0,
            {"city": city, "start": day - timedelta(days=6), "end": day},
            {
                "rows": rows,
                "offered_rows": rows // 4,
                "quarantined_rows": bad,
                "bad_share": bad / (rows + bad),
                "quarantine.candidates.bad_eta": bad,
            },
            {},
        )
        if d % VERSION_EVERY == 0:
            version = str(d // VERSION_EVERY + 1)
            tags = {"features_uri": train.as_uri(), "objective": "binary", "valid_auc": "0.81"}
            source = f"file:///tmp/bench-models/{city}/{version}"
            client.create_model_version(name, source, tags=tags)
            refused = i % 4 == 0 and version == "3"
            gate = run(
                "promote",
                day,
                5,
                {"holdout_dir": f"/lake/{day - timedelta(days=6)}_{day}/x"},
                {"candidate.auc": 0.8},
                {
                    "candidate_version": version,
                    "production_version": production or "",
                    "gate_result": "failed" if refused else "passed",
                },
            )
            reason = "acceptance dropped 0.02 > 0.01" if refused else "all checks passed"
            vtags = {
                "gate.result": "failed" if refused else "passed",
                "gate.reason": reason,
                "gate.run_id": gate,
            }
            if not refused:
                stamp = datetime.fromtimestamp(_ms(day, 6) / 1000, UTC).isoformat()
                vtags |= {
                    "production.promoted_at": stamp,
                    "production.previous": production or "",
                    "production.reason": f"passed the promotion gate (run {gate})",
                }
                production = version
            for k, v in vtags.items():
                client.set_model_version_tag(name, version, k, v)
        if i % 4 == 1 and d == 50 and production and int(production) > 1:
            back = str(int(production) - 1)
            stamp = datetime.fromtimestamp(_ms(day, 8) / 1000, UTC).isoformat()
            for k, v in {
                "production.promoted_at": stamp,
                "production.rollback_from": production,
                "production.reason": f"rollback from v{production}",
            }.items():
                client.set_model_version_tag(name, back, k, v)
            production = back
        # every evaluate metric the report reads, under the name evaluate logs it
        metrics = {name: float(rng.uniform(0.3, 0.9)) for name in EVALUATE_METRICS.values()}
        run(
            "evaluate",
            day,
            10,
            {
                "city": city,
                "model_uri": f"models:/{name}/{production}",
                "holdout_start": day - timedelta(days=6),
                "holdout_end": day,
            },
            metrics,
            {},
        )
    if production:
        client.set_registered_model_alias(name, "production", production)
    return runs


def main(report: Path = REPORT, cities: int = 79) -> None:
    from tests.support.tracking_server import TrackingServer

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    chosen = sorted(default_catalogue().ids())[:cities]
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp, TrackingServer() as server:
        server.wait_until_ready()
        root = Path(tmp)
        settings = Settings(
            data_dir=root,
            tracking_uri=server.uri,
            model_name_prefix="bench",
            experiment_prefix="bench",
        )
        t0 = time.perf_counter()
        training = populate_lake(storage.local_path(settings.lake_dir), chosen)
        lake_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        writer = MlflowClient(tracking_uri=server.backend_uri, registry_uri=server.backend_uri)
        with ThreadPoolExecutor(4) as pool:
            created = sum(
                pool.map(
                    lambda a: populate_city(writer, settings, a[1], a[0], training[a[1]]),
                    enumerate(chosen),
                )
            )
        fill_s = time.perf_counter() - t0
        logger.info("setup: lake %.0f s, %d runs in %.0f s", lake_s, created, fill_s)

        drift_cfg, report_cfg = load_drift_config(), load_report_config()
        started = time.perf_counter()
        client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
        t = time.perf_counter()
        collected = collect(client, settings, None)
        collect_s = time.perf_counter() - t
        t = time.perf_counter()
        drift = measure_drift(settings, collected, drift_cfg, None)
        drift_s = time.perf_counter() - t
        t = time.perf_counter()
        built = fleet(collected, drift, drift_cfg, report_cfg)
        model_s = time.perf_counter() - t
        t = time.perf_counter()
        html = render(built)
        render_s = time.perf_counter() - t
        phases_s = time.perf_counter() - started
        t = time.perf_counter()
        result = build_report(settings, out=root / "report")
        end_to_end_s = time.perf_counter() - t

        versions = sum(len(v) for v in collected.versions.values())
        runs = sum(len(v) for v in collected.runs.values())
        flagged = sum(1 for c in built.cities if c.last_drift and c.last_drift.flagged)
        moves = sum(len(c.events) for c in built.cities)
        lines = [
            "# Benchmark: the fleet report at 79 cities x 60 days",
            "",
            f"Run: `.venv/bin/python -m benchmarks.run --only report` on {date.today()}, "
            f"tracking server on {server.kind} (`mlflow server --workers 1`), over HTTP.",
            "",
            *machine_lines(("mlflow", "pandas", "pyarrow")),
            f"- load average before the build: {os.getloadavg()[0]:.2f} (2 cores shared)",
            "",
            "## What was read",
            "",
            f"- {len(chosen)} cities, {DAYS} data days, {versions} model versions, {runs} runs "
            f"(process, evaluate, promote) from {created} created; {moves} gate decisions and "
            f"Production moves; drift over {len(chosen) * DAYS} city-days "
            f"({ROWS_PER_DAY} feature rows a day, 28-day training windows), {flagged} cities "
            "flagged on their latest day (every fifth city's ETAs shift on day 40)",
            f"- tracking calls: {sum(collected.calls.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(collected.calls.items()))}): "
            "no call per city or per version",
            f"- report: {len(html) / 1e6:.1f} MB of HTML, one file",
            "",
            "## Time",
            "",
            "| phase | seconds |",
            "| --- | --- |",
            f"| collect (registry + runs over HTTP) | {collect_s:.1f} |",
            f"| drift (lake: {len(chosen)} training windows + daily datasets) | {drift_s:.1f} |",
            f"| model (pure) | {model_s:.2f} |",
            f"| render (HTML) | {render_s:.2f} |",
            f"| **all phases** | **{phases_s:.1f}** |",
            f"| `build_report` end to end, with the `report` run and its artifact "
            f"| {end_to_end_s:.1f} |",
            "",
            f"Bar: under 60 s. Setup (not part of the report): lake {lake_s:.0f} s, "
            f"{created} runs written in {fill_s:.0f} s.",
            "",
        ]
        verdict = "PASS" if end_to_end_s < 60 else "FAIL"
        lines.append(f"Verdict: **{verdict}** ({end_to_end_s:.1f} s; run {result.run_id}).")
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("\n".join(lines) + "\n")
        logger.info("report benchmark: %.1f s end to end (%s)", end_to_end_s, verdict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--cities", type=int, default=79)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(args.report, args.cities)
