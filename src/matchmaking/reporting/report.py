"""``matchmaking report``: collect -> model -> render, write index.html, log a report run."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import MatchmakingError, StorageError, TrackingError
from matchmaking.lake.datasets import read_dataset
from matchmaking.reporting.collect import Collected, collect
from matchmaking.reporting.drift import (
    DayDrift,
    DriftConfig,
    daily_drift,
    load_drift_config,
    published_datasets,
    reference,
)
from matchmaking.reporting.model import FleetReport, ReportConfig, fleet, load_report_config
from matchmaking.reporting.render import render

logger = logging.getLogger(__name__)

REPORT_FILE = "index.html"
REPORT_ARTIFACT_DIR = "report"
DRIFT_THREADS = 4
REPORT_EXPERIMENT = "report"  # experiment ``<prefix>-report`` (not a city id)


@dataclass(frozen=True)
class ReportResult:
    path: Path
    report: FleetReport
    run_id: str | None
    artifact_uri: str | None
    seconds: float


def city_drift(
    settings: Settings, collected: Collected, city: str, config: DriftConfig, since: date | None
) -> tuple[list[DayDrift], str | None]:
    """Drift of each later day against the training window of the city's Production version;
    nothing (with a warning) when that window is not readable from here."""
    version = collected.production.get(city)
    mv = next((v for v in collected.versions.get(city, []) if v.version == version), None)
    uri = mv.tags.get("features_uri") if mv else None
    if not uri:
        return [], None
    try:
        frame, manifest = read_dataset(uri)
        end = date.fromisoformat(str(manifest["end"]))
        days = daily_drift(
            reference(frame, config), published_datasets(settings, city), end, config, since
        )
    except (MatchmakingError, OSError, ValueError, KeyError) as exc:
        logger.warning("%s: drift not measured, cannot read %s: %s", city, uri, exc)
        return [], None
    return days, uri


def measure_drift(
    settings: Settings, collected: Collected, config: DriftConfig, since: date | None
) -> dict[str, tuple[list[DayDrift], str | None]]:
    """``city_drift`` of every collected city, a few cities at a time (parquet reads and numpy
    release the GIL)."""
    with ThreadPoolExecutor(DRIFT_THREADS) as pool:
        measured = pool.map(
            lambda c: city_drift(settings, collected, c, config, since), collected.cities
        )
        return dict(zip(collected.cities, measured, strict=True))


def build(
    settings: Settings,
    cities: list[str] | None,
    since: date | None,
    drift_config: DriftConfig,
    report_config: ReportConfig,
) -> FleetReport:
    """Read the registry, runs and lake, and build the report (no files, no run)."""
    uri = tracking.configure(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    collected = collect(client, settings, cities)
    drift = measure_drift(settings, collected, drift_config, since)
    return fleet(collected, drift, drift_config, report_config, since)


def build_report(
    settings: Settings,
    cities: list[str] | None = None,
    since: date | None = None,
    out: Path | None = None,
    drift_config: DriftConfig | None = None,
    report_config: ReportConfig | None = None,
    log_run: bool = True,
) -> ReportResult:
    """Build the report into ``out`` (default ``<data dir>/report``) and log it to MLflow as
    the artifacts of a ``report`` run in experiment ``<prefix>-report``."""
    started = time.perf_counter()
    report = build(
        settings,
        cities,
        since,
        drift_config or load_drift_config(),
        report_config or load_report_config(),
    )
    out = (out or settings.data_dir / "report").resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / REPORT_FILE
        tmp = out / f".{REPORT_FILE}.tmp"
        tmp.write_text(render(report), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise StorageError(
            f"cannot write the report to {out}: {exc.strerror or exc}; pass a writable --out"
        ) from exc
    seconds = time.perf_counter() - started
    run_id = artifact_uri = None
    if log_run:
        run_id, artifact_uri = _log(settings, report, path, cities, since, seconds)
    logger.info("report: %s (%d cities, %.1f s)", path, len(report.cities), seconds)
    return ReportResult(path, report, run_id, artifact_uri, seconds)


def _log(
    settings: Settings,
    report: FleetReport,
    path: Path,
    cities: list[str] | None,
    since: date | None,
    seconds: float,
) -> tuple[str, str]:
    try:
        tracking.use_experiment(settings, REPORT_EXPERIMENT)
        with mlflow.start_run(run_name=f"report-{report.generated_at:%Y%m%dT%H%M%S}") as run:
            mlflow.set_tags(tracking.reproducibility_tags(step="report"))
            mlflow.log_params(
                {
                    "cities": ",".join(cities) if cities else "all",
                    "since": since.isoformat() if since else "",
                    "alert_psi": report.drift.alert_psi,
                }
            )
            mlflow.log_metrics(
                {
                    "cities": len(report.cities),
                    "cities_needing_a_look": sum(1 for c in report.cities if c.attention),
                    "tracking_calls": sum(report.calls.values()),
                    "build_seconds": seconds,
                }
            )
            mlflow.log_artifact(str(path), REPORT_ARTIFACT_DIR)
            return run.info.run_id, f"{run.info.artifact_uri}/{REPORT_ARTIFACT_DIR}/{path.name}"
    except MlflowException as exc:
        raise TrackingError(
            f"the report was written to {path} but could not be logged to MLflow ({exc}); "
            "check the tracking server and rerun"
        ) from exc
