"""``matchmaking process``: raw partitions -> validated, versioned feature dataset + MLflow run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import DataQualityError, InputError, StorageError
from matchmaking.features.batch import build_features, driver_snapshot, offer_log
from matchmaking.features.history import lookback_start
from matchmaking.processing.validate import validate
from matchmaking.schema import FEATURE_NAMES
from matchmaking.world import lake
from matchmaking.world.cities import get_city

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.parquet"
DRIVER_TABLE_FILE = "driver_table.parquet"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class ProcessResult:
    city: str
    start: date
    end: date
    dataset_dir: Path
    digest: str
    rows: int
    offered_rows: int
    quarantined: int
    bad_share: float
    quarantine_counts: dict[str, int]
    history_from: date
    run_id: str | None = None


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path, compression="zstd", write_statistics=True)


def _publish(tmp: Path, parent: Path, digest: str) -> Path:
    """Move a finished temp dir to ``parent/<digest>`` atomically; reuse an identical one."""
    final = parent / digest[:16]
    if (final / "_SUCCESS").exists():
        shutil.rmtree(tmp)
        logger.info("feature dataset %s already published; reusing it", final)
        return final
    if final.exists():  # a leftover without _SUCCESS: never readable, safe to replace
        shutil.rmtree(final)
    (tmp / "_SUCCESS").write_text("")
    os.rename(tmp, final)
    return final


def _window(start: date, end: date) -> None:
    if end < start:
        raise InputError(f"--end {end} is before --start {start}; give a window start <= end")


def build_dataset(
    settings: Settings, city: str, start: date, end: date, max_bad_share: float
) -> ProcessResult:
    """Read, validate, featurise and publish one city's window (no MLflow side effects)."""
    _window(start, end)
    info = get_city(city)
    root = settings.lake_dir
    available = lake.list_dates(root, city)
    # History needs up to 28 days before the window; use what exists of them.
    read_from = max(lookback_start(start), min(available, default=start))
    if read_from > start:
        read_from = start
    bookings = lake.read_partitions(root, city, "bookings", read_from, end).to_pandas()
    candidates = lake.read_partitions(root, city, "candidates", read_from, end).to_pandas()
    drivers = lake.read_drivers(root, city).to_pandas()

    checked = validate(bookings, candidates, drivers, centre=(info.lat, info.lng))
    logger.info(
        "%s: %d of %d raw rows quarantined (%.2f%%)",
        city,
        checked.bad_rows,
        checked.total_rows,
        100 * checked.bad_share,
    )
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

    parent = settings.features_dir / f"city={city}" / f"{start.isoformat()}_{end.isoformat()}"
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_parquet(rows, tmp / FEATURES_FILE)
        _write_parquet(snapshot, tmp / DRIVER_TABLE_FILE)
        _write_parquet(checked.quarantine, tmp / QUARANTINE_FILE)
        digest = tracking.file_digest(tmp / FEATURES_FILE)
        manifest = {
            "city": city,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "history_from": read_from.isoformat(),
            "digest": digest,
            "driver_table_digest": tracking.file_digest(tmp / DRIVER_TABLE_FILE),
            "rows": len(rows),
            "offered_rows": int(rows["offered"].sum()),
            "features": list(FEATURE_NAMES),
            "quarantine": dict(checked.counts),
            "bad_share": checked.bad_share,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if checked.bad_share > max_bad_share:
            raise DataQualityError(
                f"{city} {start}..{end}: {checked.bad_share:.1%} of raw rows failed validation "
                f"(limit {max_bad_share:.1%}): {dict(checked.counts)}. Nothing was published; "
                f"inspect the quarantined rows kept in {tmp} and fix the source, or raise "
                "--max-bad-share if they are expected"
            )
        final = _publish(tmp, parent, digest)
    except DataQualityError:
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    settings: Settings, city: str, start: date, end: date, max_bad_share: float = 0.05
) -> ProcessResult:
    """The data step as an MLflow run: lineage of raw inputs, row and quarantine counts."""
    tracking.configure(settings)
    tracking.use_experiment(settings, city)
    with mlflow.start_run(run_name=f"process-{city}-{start}_{end}") as run:
        mlflow.set_tags(tracking.reproducibility_tags(step="process", city=city))
        mlflow.log_params(
            {"city": city, "start": start, "end": end, "max_bad_share": max_bad_share}
        )
        raw_uri = (settings.raw_dir / f"city={city}").resolve().as_uri()
        try:
            result = build_dataset(settings, city, start, end, max_bad_share)
        except DataQualityError as exc:
            mlflow.set_tag("failure", str(exc)[:5000])
            raise
        mlflow.log_input(
            tracking.lineage_dataset(
                raw_uri,
                f"raw-{city}",
                _raw_digest(settings, city, result.history_from, end),
            ),
            context="raw",
        )
        features_uri = result.dataset_dir.resolve().as_uri()
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
        mlflow.log_artifact(str(result.dataset_dir / MANIFEST_FILE))
    return ProcessResult(**{**result.__dict__, "run_id": run.info.run_id})


def _raw_digest(settings: Settings, city: str, first: date, last: date) -> str:
    """A digest of the raw files read (roster and the partitions from ``first`` to ``last``)."""
    import hashlib

    h = hashlib.sha256()
    base = settings.raw_dir / f"city={city}"
    paths = [base / "drivers.parquet"]
    for i in range((last - first).days + 1):
        paths += sorted((base / f"date={first + timedelta(days=i)}").glob("*.parquet"))
    for path in paths:
        if path.exists():
            h.update(f"{path.relative_to(base)}:{tracking.file_digest(path)}\n".encode())
    return h.hexdigest()


def read_dataset(dataset_dir: Path) -> tuple[pd.DataFrame, dict[str, object]]:
    """Load a published feature dataset and its manifest."""
    if not (dataset_dir / "_SUCCESS").exists():
        raise StorageError(
            f"{dataset_dir} is not a published feature dataset (no _SUCCESS); "
            "run `matchmaking process` first and pass the directory it prints"
        )
    manifest = json.loads((dataset_dir / MANIFEST_FILE).read_text())
    return pd.read_parquet(dataset_dir / FEATURES_FILE), manifest
