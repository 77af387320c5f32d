"""Published feature datasets: their files, manifest and ``_SUCCESS``, and finding a city's.

A dataset is content-addressed: ``<features>/city=<c>/<start>_<end>/<digest[:16]>/`` holding
``features.parquet``, ``driver_table.parquet``, ``quarantine.parquet``, ``manifest.json`` and
``_SUCCESS``; the digest is the sha256 of ``features.parquet``. Locally a dataset is staged in
a hidden directory and renamed into place; on object storage its files are written under the
final prefix and ``_SUCCESS`` last. Readers require ``_SUCCESS`` either way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.parquet as pq

from matchmaking.errors import InputError, StorageError
from matchmaking.lake import storage
from matchmaking.lake.storage import Location

if TYPE_CHECKING:
    from matchmaking.config import Settings

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.parquet"
DRIVER_TABLE_FILE = "driver_table.parquet"
MANIFEST_FILE = "manifest.json"
SUCCESS_FILE = "_SUCCESS"


def window_dir(features_dir: Location, city: str, start: date, end: date) -> Location:
    """``<features>/city=<city>/<start>_<end>``: the parent of the window's datasets."""
    return storage.join(features_dir, f"city={city}", f"{start.isoformat()}_{end.isoformat()}")


def write_files(directory: Location, files: dict[str, bytes]) -> None:
    """Write each ``name: bytes`` under ``directory`` (not atomic on its own)."""
    for name, data in files.items():
        storage.write_bytes(storage.join(directory, name), data)


def publish(files: dict[str, bytes], parent: Location, digest: str) -> Location:
    """Publish the dataset's files at ``parent/<digest[:16]>``; reuse an identical one.

    Locally the files are staged in a hidden directory renamed into place (atomic); on object
    storage they are written under the final prefix and ``_SUCCESS`` last.
    """
    final = storage.join(parent, digest[:16])
    if storage.exists(storage.join(final, SUCCESS_FILE)):
        logger.info("feature dataset %s already published; reusing it", final)
        return final
    if not isinstance(final, Path) or not isinstance(parent, Path):
        fs, key = storage.filesystem(str(final))
        if fs.exists(key):  # a leftover without _SUCCESS: never readable, safe to replace
            fs.rm(key, recursive=True)
        write_files(final, files)
        storage.write_bytes(storage.join(final, SUCCESS_FILE), b"")
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write_files(tmp, files)
        if final.exists():  # a leftover without _SUCCESS: never readable, safe to replace
            shutil.rmtree(final)
        (tmp / SUCCESS_FILE).write_text("")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_manifest(dataset: Location) -> dict[str, object]:
    """The ``manifest.json`` of a dataset directory."""
    manifest: dict[str, object] = json.loads(
        storage.read_bytes(storage.join(dataset, MANIFEST_FILE))
    )
    return manifest


def read_dataset(dataset: Location) -> tuple[pd.DataFrame, dict[str, object]]:
    """Load a published feature dataset and its manifest.

    Args:
        dataset: the dataset directory: a path, a ``file://`` or an object-storage URI.

    Raises:
        StorageError: the dataset has no ``_SUCCESS`` marker (not published).
    """
    dataset = storage.location(dataset)
    if not storage.exists(storage.join(dataset, SUCCESS_FILE)):
        raise StorageError(
            f"{dataset} is not a published feature dataset (no _SUCCESS); "
            "run `matchmaking process` first and pass the directory it prints"
        )
    manifest = read_manifest(dataset)
    features = storage.join(dataset, FEATURES_FILE)
    if isinstance(features, Path):
        return pd.read_parquet(features), manifest
    fs, key = storage.filesystem(features)
    with fs.open(key, "rb") as fh:
        return pq.ParquetFile(fh).read().to_pandas(), manifest


def published_datasets(features_dir: Location, city: str) -> list[tuple[Location, float]]:
    """The city's published feature datasets and when they were published (epoch seconds)."""
    base = storage.join(features_dir, f"city={city}")
    if isinstance(base, Path):
        return [(s.parent, s.stat().st_mtime) for s in base.glob(f"*/*/{SUCCESS_FILE}")]
    fs, key = storage.filesystem(base)
    fs.invalidate_cache(key)
    out: list[tuple[Location, float]] = []
    for marker in fs.glob(f"{key}/*/*/{SUCCESS_FILE}"):
        modified = fs.modified(marker).timestamp()
        out.append((f"{base}/{str(marker)[len(key) + 1 :].rsplit('/', 1)[0]}", modified))
    return out


def find_holdout(settings: Settings, city: str, after: date) -> Location:
    """The newest published feature dataset of ``city`` whose window starts after ``after``.

    Raises:
        InputError: no such dataset, with the command that makes one.
    """
    found: list[tuple[date, date, float, str, Location]] = []
    for dataset, published in published_datasets(settings.features_dir, city):
        manifest = read_manifest(dataset)
        start = date.fromisoformat(str(manifest["start"]))
        if start > after:
            end = date.fromisoformat(str(manifest["end"]))
            found.append((end, start, published, str(dataset), dataset))
    if not found:
        raise InputError(
            f"{city}: no published feature dataset starts after {after} (the training window's "
            f"end) under {settings.features_dir}; run `matchmaking process --city {city} "
            "--start <later> --end <later>` or pass --holdout DIR"
        )
    return max(found)[4]
