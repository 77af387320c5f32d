"""Published feature datasets: their files, manifest and ``_SUCCESS``, and finding a city's.

The process step publishes, per city (``<features>/city=<c>/``):

- ``summaries/date=<D>/<key[:16]>/``: a raw day validated: ``summary.parquet`` (per driver:
  offers, acceptances, offered ETA minutes; what history needs of the day),
  ``quarantine.parquet``, ``manifest.json``. ``key``: the day's raw files, code and params.
- ``days/date=<D>/<key[:16]>/``: the day's feature rows, ``features.parquet``, and its
  ``manifest.json`` (``digest``: the sha256 of ``features.parquet``). ``key``: the day's
  summary key and the digests of the summaries of the 28 days before it.
- ``<start>_<end>/<digest[:16]>/``: a window's dataset: ``manifest.json`` listing its days
  (path relative to the city directory, digest, rows), ``driver_table.parquet`` and
  ``quarantine.parquet``; ``digest``: the sha256 of the list of ``(day, day digest)``.

A dataset directory holding its own ``features.parquet`` (a copy made by hand or by a test) is
read as it is. Locally a directory is staged in a hidden directory and renamed into place; on
object storage its files are written under the final prefix and ``_SUCCESS`` last. Readers
require ``_SUCCESS`` either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
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
SUMMARY_FILE = "summary.parquet"
DAYS_DIR = "days"
SUMMARIES_DIR = "summaries"


def window_dir(features_dir: Location, city: str, start: date, end: date) -> Location:
    """``<features>/city=<city>/<start>_<end>``: the parent of the window's datasets."""
    return storage.join(features_dir, f"city={city}", f"{start.isoformat()}_{end.isoformat()}")


def city_features_dir(features_dir: Location, city: str) -> Location:
    """``<features>/city=<city>``: what the paths in a window's manifest are relative to."""
    return storage.join(features_dir, f"city={city}")


def day_parent(features_dir: Location, city: str, day: date) -> Location:
    """``<features>/city=<city>/days/date=<day>``: the parent of the day's feature partitions."""
    return storage.join(city_features_dir(features_dir, city), DAYS_DIR, f"date={day}")


def summary_parent(features_dir: Location, city: str, day: date) -> Location:
    """``<features>/city=<city>/summaries/date=<day>``: the parent of the day's summaries."""
    return storage.join(city_features_dir(features_dir, city), SUMMARIES_DIR, f"date={day}")


def published(directory: Location) -> bool:
    """Whether ``directory`` holds a published (``_SUCCESS``) dataset or partition."""
    return storage.exists(storage.join(directory, SUCCESS_FILE))


def write_files(directory: Location, files: dict[str, bytes]) -> None:
    """Write each ``name: bytes`` under ``directory`` (not atomic on its own)."""
    for name, data in files.items():
        storage.write_bytes(storage.join(directory, name), data)


def publish(files: dict[str, bytes], parent: Location, digest: str) -> Location:
    """Publish the dataset's files at ``parent/<digest[:16]>``; reuse an identical one.

    Locally the files are staged in a hidden directory renamed into place (atomic); on object
    storage they are written under the final prefix and ``_SUCCESS`` last.
    """
    return publish_with(parent, digest[:16], lambda directory: write_files(directory, files))


def publish_with(parent: Location, name: str, fill: Callable[[Location], None]) -> Location:
    """Publish ``parent/name``, its files written by ``fill(directory)``; reuse a published one.

    ``fill`` writes into a hidden staging directory renamed into place (locally), or straight
    under the final prefix with ``_SUCCESS`` written last (object storage). Whatever it raises
    leaves nothing readable behind.
    """
    final = storage.join(parent, name)
    if published(final):
        logger.info("%s already published; reusing it", final)
        return final
    if not isinstance(final, Path) or not isinstance(parent, Path):
        fs, key = storage.filesystem(str(final))
        if fs.exists(key):  # a leftover without _SUCCESS: never readable, safe to replace
            fs.rm(key, recursive=True)
        fill(final)
        storage.write_bytes(storage.join(final, SUCCESS_FILE), b"")
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        fill(tmp)
        if published(final):  # another task published the same content meanwhile: keep it
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        if final.exists():  # a leftover without _SUCCESS: never readable, safe to replace
            shutil.rmtree(final)
        (tmp / SUCCESS_FILE).write_text("")
        try:
            os.rename(tmp, final)
        except OSError:
            if not published(final):  # not a concurrent twin's publication: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_published(parent: Location, name: str) -> Location | None:
    """``parent/name`` when it is published, else None."""
    found = storage.join(parent, name)
    return found if published(found) else None


def read_table(path: Location, columns: list[str] | None = None, **kwargs: Any) -> pa.Table:
    """One parquet file of a dataset (local or remote), ``columns`` only when given;
    ``kwargs`` go to ``pyarrow.parquet.read_table`` (e.g. ``filters``)."""
    path = storage.location(path)
    if isinstance(path, Path):
        return pq.read_table(path, columns=columns, **kwargs)
    fs, key = storage.filesystem(path)
    with fs.open(key, "rb") as fh:
        return pq.read_table(fh, columns=columns, **kwargs)


def window_digest(days: list[dict[str, object]]) -> str:
    """A window's content address: the sha256 of its ``(day, day digest)`` list."""
    listed = [[str(d["day"]), str(d["digest"])] for d in days]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def day_files(dataset: Location, manifest: dict[str, object]) -> list[Location]:
    """The ``features.parquet`` files of a dataset, in day order: its own file, or those of
    the days its manifest lists (published by the process step)."""
    own = storage.join(dataset, FEATURES_FILE)
    days = manifest.get("days")
    if not isinstance(days, list):
        return [own]
    base = storage.location(dataset)
    city_dir = base.parent.parent if isinstance(base, Path) else base.rsplit("/", 2)[0]
    return [storage.join(city_dir, *str(d["path"]).split("/"), FEATURES_FILE) for d in days]


def read_manifest(dataset: Location) -> dict[str, object]:
    """The ``manifest.json`` of a dataset directory."""
    manifest: dict[str, object] = json.loads(
        storage.read_bytes(storage.join(dataset, MANIFEST_FILE))
    )
    return manifest


def read_published_manifest(dataset: Location) -> dict[str, object]:
    """The manifest of a published dataset (see ``read_dataset``).

    Raises:
        StorageError: the dataset has no ``_SUCCESS`` marker (not published).
    """
    if not storage.exists(storage.join(dataset, SUCCESS_FILE)):
        raise StorageError(
            f"{dataset} is not a published feature dataset (no _SUCCESS); "
            "run `matchmaking process` first and pass the directory it prints"
        )
    return read_manifest(dataset)


def read_dataset(dataset: Location) -> tuple[pd.DataFrame, dict[str, object]]:
    """Load a published feature dataset and its manifest.

    Args:
        dataset: the dataset directory: a path, a ``file://`` or an object-storage URI.

    Raises:
        StorageError: the dataset has no ``_SUCCESS`` marker (not published).
    """
    dataset = storage.location(dataset)
    manifest = read_published_manifest(dataset)
    tables = [read_table(path) for path in day_files(dataset, manifest)]
    if len(tables) == 1:
        return tables[0].to_pandas(), manifest
    return pa.concat_tables(tables).to_pandas(), manifest


def published_datasets(features_dir: Location, city: str) -> list[tuple[Location, float]]:
    """The city's published feature datasets (windows) and when they were published (epoch
    seconds)."""
    base = city_features_dir(features_dir, city)
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
