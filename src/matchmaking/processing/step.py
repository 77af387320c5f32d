"""``matchmaking process``: raw partitions -> validated, versioned feature dataset + MLflow run.

The dataset's layout, publication and readers are the lake's (``matchmaking.lake.datasets``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking import lake, tracking
from matchmaking.config import Settings
from matchmaking.errors import DataQualityError, InputError
from matchmaking.features.batch import build_features, driver_snapshot, offer_log
from matchmaking.lake import datasets, storage
from matchmaking.lake.datasets import (
    DRIVER_TABLE_FILE,
    FEATURES_FILE,
    MANIFEST_FILE,
    QUARANTINE_FILE,
)
from matchmaking.lake.storage import Location
from matchmaking.markets import get_market
from matchmaking.processing.inputs import require_raw
from matchmaking.processing.validate import validate
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


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    """The parquet file of ``df`` (the same bytes whatever the filesystem it goes to)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())


def _window(start: date, end: date) -> None:
    if end < start:
        raise InputError(f"--end {end} is before --start {start}; give a window start <= end")


def build_dataset(
    settings: Settings,
    city: str,
    start: date,
    end: date,
    max_bad_share: float,
    progress: Progress = SILENT,
) -> ProcessResult:
    """Read, validate, featurise and publish one city's window (no MLflow side effects)."""
    _window(start, end)
    info = get_market(city)
    root = settings.lake_dir
    read_from = require_raw(root, city, start, end)  # the window, its history, their schema
    days = (end - read_from).days + 1
    progress.step(f"reading {days} daily partitions ({read_from}..{end}) and the driver roster")
    bookings = lake.read_partitions(root, city, "bookings", read_from, end).to_pandas()
    candidates = lake.read_partitions(root, city, "candidates", read_from, end).to_pandas()
    drivers = lake.read_drivers(root, city).to_pandas()

    progress.step(f"validating {len(bookings):,} bookings and {len(candidates):,} candidates")
    checked = validate(bookings, candidates, drivers, centre=(info.lat, info.lng))
    logger.info(
        "%s: %d of %d raw rows quarantined (%.2f%%)",
        city,
        checked.bad_rows,
        checked.total_rows,
        100 * checked.bad_share,
    )
    progress.step("building features and the driver table")
    offers = offer_log(checked.candidates, info.tz)
    # History comes from every clean offer read; features only for the window's rows.
    lo = pd.Timestamp(start.isoformat(), tz=info.tz)
    hi = pd.Timestamp((end + timedelta(days=1)).isoformat(), tz=info.tz)
    at = checked.candidates["requested_at"]
    rows = build_features(
        checked.bookings,
        checked.candidates.loc[(at >= lo) & (at < hi)],
        checked.drivers,
        offers,
        info.tz,
        np.asarray(info.speed_kmh, dtype=np.float64),
    )
    day = rows["day"].to_numpy().astype("datetime64[D]")
    in_window = (day >= np.datetime64(start)) & (day <= np.datetime64(end))
    rows = rows.loc[in_window].reset_index(drop=True)
    snapshot = driver_snapshot(checked.drivers, offers, np.datetime64(end + timedelta(days=1)))

    progress.step(f"writing {len(rows):,} feature rows")
    parent = datasets.window_dir(settings.features_dir, city, start, end)
    files = {
        FEATURES_FILE: _parquet_bytes(rows),
        DRIVER_TABLE_FILE: _parquet_bytes(snapshot),
        QUARANTINE_FILE: _parquet_bytes(checked.quarantine),
    }
    digest = hashlib.sha256(files[FEATURES_FILE]).hexdigest()
    manifest = {
        "city": city,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "history_from": read_from.isoformat(),
        "digest": digest,
        "driver_table_digest": hashlib.sha256(files[DRIVER_TABLE_FILE]).hexdigest(),
        "rows": len(rows),
        "offered_rows": int(rows["offered"].sum()),
        "features": list(FEATURE_NAMES),
        "quarantine": dict(checked.counts),
        "bad_share": checked.bad_share,
    }
    files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if checked.bad_share > max_bad_share:
        rejected = storage.join(parent, f".rejected-{uuid.uuid4().hex}")
        datasets.write_files(rejected, files)
        raise DataQualityError(
            f"{city} {start}..{end}: {checked.bad_share:.1%} of raw rows failed validation "
            f"(limit {max_bad_share:.1%}): {dict(checked.counts)}. Nothing was published; "
            f"inspect the quarantined rows kept in {rejected} and fix the source, or raise "
            "--max-bad-share if they are expected"
        )
    final = datasets.publish(files, parent, digest)
    return ProcessResult(
        city=city,
        start=start,
        end=end,
        dataset_dir=final,
        digest=digest,
        rows=len(rows),
        offered_rows=manifest["offered_rows"],  # type: ignore[arg-type]
        quarantined=checked.bad_rows,
        bad_share=checked.bad_share,
        quarantine_counts=dict(checked.counts),
        history_from=read_from,
    )


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
