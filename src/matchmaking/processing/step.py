"""``matchmaking process``: raw partitions -> validated, versioned feature dataset + MLflow run.

A window is processed a day at a time (``processing.day``) and published as the list of its
days. The dataset's layout, publication and readers are the lake's (``matchmaking.lake.datasets``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

import mlflow
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from matchmaking import lake, tracking
from matchmaking.config import Settings
from matchmaking.errors import DataQualityError, InputError
from matchmaking.lake import datasets, storage
from matchmaking.lake.datasets import DRIVER_TABLE_FILE, MANIFEST_FILE, QUARANTINE_FILE
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.processing.day import Day, DayProcessor, Summary
from matchmaking.processing.inputs import require_raw
from matchmaking.progress import SILENT, Progress
from matchmaking.schema import FEATURE_NAMES, RAW_TABLES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessResult:
    city: str
    start: date
    end: date
    dataset_dir: Location
    digest: str
    rows: int
    offered_rows: int
    quarantined: int
    bad_share: float
    quarantine_counts: dict[str, int]
    history_from: date
    run_id: str | None = None
    days_built: int = 0
    days_reused: int = 0


def _window(start: date, end: date) -> None:
    if end < start:
        raise InputError(f"--end {end} is before --start {start}; give a window start <= end")


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def build_dataset(
    settings: Settings,
    city: str,
    start: date,
    end: date,
    max_bad_share: float,
    progress: Progress = SILENT,
) -> ProcessResult:
    """Publish one city's window as the list of its days (no MLflow side effects).

    Each day is built once (``processing.day``): a day already published with the same
    inputs is reused, so a window overlapping yesterday's only builds its new days.
    """
    _window(start, end)
    root = settings.lake_dir
    read_from = require_raw(root, city, start, end)  # the window, its history, their schema
    proc = DayProcessor(settings, city, max_bad_share)
    proc.rejected_parent = datasets.window_dir(settings.features_dir, city, start, end)
    proc.progress = progress
    days_read = (end - read_from).days + 1
    progress.step(f"reading {days_read} daily partitions ({read_from}..{end}), one day at a time")
    proc.ensure_summaries(_days(read_from, start - timedelta(days=1)))
    built: list[Day] = []
    for day in proc.ensure_days(_days(start, end)):
        built.append(day)
        progress.step(f"{day.day}: {'reused' if day.reused else 'published'}")
    progress.step("writing the driver table and the window's manifest")
    summaries = [proc.ensure_summary(d) for d in _days(start, end)]
    counts: Counter[str] = Counter()
    bad = total = 0
    for i, s in enumerate(summaries):
        day_counts = dict(s.manifest["quarantine"])  # type: ignore[call-overload]
        for k, v in day_counts.items():
            if i == 0 or not k.startswith("drivers."):  # the roster once, not once a day
                counts[k] += int(v)
        bad += int(s.manifest["bad_rows"])  # type: ignore[call-overload]
        total += int(s.manifest["total_rows"])  # type: ignore[call-overload]
    roster_bad = sum(v for k, v in counts.items() if k.startswith("drivers."))
    roster = len(proc.roster())
    bad -= roster_bad * (len(summaries) - 1)
    total -= roster * (len(summaries) - 1)
    quarantine = _window_quarantine(summaries)
    snapshot = pa.Table.from_pandas(proc.driver_table(end), preserve_index=False)
    days = [
        {
            "day": b.day.isoformat(),
            "path": _relative(settings, city, b.location),
            "digest": b.digest,
            "rows": b.manifest["rows"],
            "offered_rows": b.manifest["offered_rows"],
        }
        for b in built
    ]
    digest = datasets.window_digest(days)
    files = {
        DRIVER_TABLE_FILE: _parquet_bytes(snapshot),
        QUARANTINE_FILE: _parquet_bytes(quarantine),
    }
    rows = sum(int(d["rows"]) for d in days)  # type: ignore[call-overload]
    offered = sum(int(d["offered_rows"]) for d in days)  # type: ignore[call-overload]
    bad_share = bad / total if total else 0.0
    manifest = {
        "city": city,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "history_from": read_from.isoformat(),
        "digest": digest,
        "days": days,
        "driver_table_digest": hashlib.sha256(files[DRIVER_TABLE_FILE]).hexdigest(),
        "rows": rows,
        "offered_rows": offered,
        "features": list(FEATURE_NAMES),
        "quarantine": dict(counts),
        "bad_share": bad_share,
    }
    files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    final = datasets.publish(files, proc.rejected_parent, digest)
    reused = sum(b.reused for b in built)
    logger.info(
        "%s %s..%s: %d day(s) built, %d reused; dataset %s",
        city,
        start,
        end,
        len(built) - reused,
        reused,
        final,
    )
    return ProcessResult(
        city=city,
        start=start,
        end=end,
        dataset_dir=final,
        digest=digest,
        rows=rows,
        offered_rows=offered,
        quarantined=bad,
        bad_share=bad_share,
        quarantine_counts=dict(counts),
        history_from=read_from,
        days_built=len(built) - reused,
        days_reused=reused,
    )


def _relative(settings: Settings, city: str, location: LocationLike) -> str:
    base = str(datasets.city_features_dir(settings.features_dir, city))
    return str(location)[len(base) + 1 :].replace("\\", "/")


def _window_quarantine(summaries: list[Summary]) -> pa.Table:
    """The window days' quarantined rows (the roster's once)."""
    tables = []
    for i, s in enumerate(summaries):
        table = datasets.read_table(storage.join(s.location, QUARANTINE_FILE))
        if i and table.num_rows:
            table = table.filter(pc.not_equal(table["table"], "drivers"))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())


def process(
    settings: Settings,
    city: str,
    start: date,
    end: date,
    max_bad_share: float = 0.05,
    progress: Progress = SILENT,
) -> ProcessResult:
    """The data step as an MLflow run: lineage of raw inputs, row and quarantine counts."""
    progress.step(f"opening the MLflow run of {start}..{end}")
    tracking.configure(settings)
    tracking.use_experiment(settings, city)
    with mlflow.start_run(run_name=f"process-{city}-{start}_{end}") as run:
        mlflow.set_tags(tracking.reproducibility_tags(step="process", city=city))
        mlflow.log_params(
            {"city": city, "start": start, "end": end, "max_bad_share": max_bad_share}
        )
        raw_uri = storage.as_uri(storage.join(settings.raw_dir, f"city={city}"))
        try:
            result = build_dataset(settings, city, start, end, max_bad_share, progress)
        except DataQualityError as exc:
            mlflow.set_tag("failure", str(exc)[:5000])
            raise
        progress.step("logging lineage and counts to MLflow")
        mlflow.log_input(
            tracking.lineage_dataset(
                raw_uri,
                f"raw-{city}",
                _raw_digest(settings, city, result.history_from, end),
            ),
            context="raw",
        )
        features_uri = storage.as_uri(result.dataset_dir)
        mlflow.log_input(
            tracking.lineage_dataset(features_uri, f"features-{city}", result.digest),
            context="output",
        )
        mlflow.set_tags(
            {
                "features_uri": features_uri,
                "data_digest": result.digest,
                "features_dir": str(result.dataset_dir),
            }
        )
        mlflow.log_metrics(
            {
                "rows": result.rows,
                "offered_rows": result.offered_rows,
                "quarantined_rows": result.quarantined,
                "bad_share": result.bad_share,
                **{f"quarantine.{k}": v for k, v in result.quarantine_counts.items()},
            }
        )
        mlflow.log_dict(
            json.loads(storage.read_bytes(storage.join(result.dataset_dir, MANIFEST_FILE))),
            MANIFEST_FILE,
        )
    progress.done()
    return ProcessResult(**{**result.__dict__, "run_id": run.info.run_id})


def process_day(
    settings: Settings,
    city: str,
    day: date,
    max_bad_share: float = 0.05,
    force: bool = False,
) -> Day:
    """One city-day as an MLflow run: the day's feature partition (and the summaries of the
    days before it that its history needs), reused when published with the same inputs."""
    tracking.configure(settings)
    tracking.use_experiment(settings, city)
    with mlflow.start_run(run_name=f"process-day-{city}-{day}"):
        mlflow.set_tags(tracking.reproducibility_tags(step="process_day", city=city))
        mlflow.log_params({"city": city, "day": day, "max_bad_share": max_bad_share})
        try:
            lake.check_partitions(settings.lake_dir, city, RAW_TABLES, day, day)
            result = DayProcessor(settings, city, max_bad_share).ensure_day(day, force=force)
        except DataQualityError as exc:
            mlflow.set_tag("failure", str(exc)[:5000])
            raise
        mlflow.set_tags(
            {
                "features_uri": storage.as_uri(result.location),
                "data_digest": result.digest,
                "reused": str(result.reused).lower(),
            }
        )
        mlflow.log_metrics(
            {
                "rows": float(result.manifest["rows"]),  # type: ignore[arg-type]
                "offered_rows": float(result.manifest["offered_rows"]),  # type: ignore[arg-type]
            }
        )
    return result


def _raw_digest(settings: Settings, city: str, first: date, last: date) -> str:
    """A digest of the raw files read (roster and the partitions from ``first`` to ``last``)."""
    h = hashlib.sha256()
    base = storage.join(settings.raw_dir, f"city={city}")
    names = ["drivers.parquet"]
    for i in range((last - first).days + 1):
        names += [f"date={first + timedelta(days=i)}/{t}.parquet" for t in sorted(RAW_TABLES)]
    for name in names:
        path = storage.join(base, *name.split("/"))
        if storage.exists(path):
            h.update(f"{name}:{storage.digest(path)}\n".encode())
    return h.hexdigest()
