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
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking.errors import InputError, StorageError
from matchmaking.lake.storage import Location, LocationLike

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


def window_dir(features_dir: LocationLike, city: str, start: date, end: date) -> Location:
    """``<features>/city=<city>/<start>_<end>``: the parent of the window's datasets."""
    return city_features_dir(features_dir, city) / f"{start.isoformat()}_{end.isoformat()}"


def city_features_dir(features_dir: LocationLike, city: str) -> Location:
    """``<features>/city=<city>``: what the paths in a window's manifest are relative to."""
    return Location.of(features_dir) / f"city={city}"


def day_parent(features_dir: LocationLike, city: str, day: date) -> Location:
    """``<features>/city=<city>/days/date=<day>``: the parent of the day's feature partitions."""
    return city_features_dir(features_dir, city).joinpath(DAYS_DIR, f"date={day}")


def summary_parent(features_dir: LocationLike, city: str, day: date) -> Location:
    """``<features>/city=<city>/summaries/date=<day>``: the parent of the day's summaries."""
    return city_features_dir(features_dir, city).joinpath(SUMMARIES_DIR, f"date={day}")


def published(directory: LocationLike) -> bool:
    """Whether ``directory`` holds a published (``_SUCCESS``) dataset or partition."""
    return (Location.of(directory) / SUCCESS_FILE).exists()


def write_files(directory: LocationLike, files: dict[str, bytes]) -> None:
    """Write each ``name: bytes`` under ``directory`` (not atomic on its own)."""
    for name, data in files.items():
        (Location.of(directory) / name).write_bytes(data)


def publish(files: dict[str, bytes], parent: LocationLike, digest: str) -> Location:
    """Publish the dataset's files at ``parent/<digest[:16]>``; reuse an identical one.

    Locally the files are staged in a hidden directory renamed into place (atomic); on object
    storage they are written under the final prefix and ``_SUCCESS`` last.
    """
    return publish_with(parent, digest[:16], lambda directory: write_files(directory, files))


def publish_with(parent: LocationLike, name: str, fill: Callable[[Location], None]) -> Location:
    """Publish ``parent/name``, its files written by ``fill(directory)``; reuse a published one.

    ``fill`` writes into a hidden staging directory renamed into place (locally), or straight
    under the final prefix with ``_SUCCESS`` written last (object storage). Whatever it raises
    leaves nothing readable behind.
    """
    final = Location.of(parent) / name
    if published(final):
        logger.info("%s already published; reusing it", final)
        return final
    # A leftover without _SUCCESS was never readable: staging replaces it.
    staged = final.stage(staging_prefix="")
    try:
        fill(staged)
        (staged / SUCCESS_FILE).write_bytes(b"")
        if staged != final and published(final):  # a concurrent twin published it: keep it
            staged.remove()
            return final
        try:
            final.publish(staged)
        except OSError:
            if not published(final):  # not a concurrent twin's publication: a real failure
                raise
            staged.remove()
    except BaseException:
        if staged != final:  # remotely the leftover stays unreadable (no _SUCCESS)
            staged.remove()
        raise
    return final


def find_published(parent: LocationLike, name: str) -> Location | None:
    """``parent/name`` when it is published, else None."""
    found = Location.of(parent) / name
    return found if published(found) else None


def read_table(path: LocationLike, columns: list[str] | None = None, **kwargs: Any) -> pa.Table:
    """One parquet file of a dataset (local or remote), ``columns`` only when given;
    ``kwargs`` go to ``pyarrow.parquet.read_table`` (e.g. ``filters``)."""
    key, fs = Location.of(path).arrow()
    return pq.read_table(key, columns=columns, filesystem=fs, **kwargs)


def file_columns(path: LocationLike) -> list[str]:
    """The column names of one parquet file of a dataset (its footer only)."""
    key, fs = Location.of(path).arrow()
    return list(pq.read_schema(key, filesystem=fs).names)


def window_digest(days: list[dict[str, object]]) -> str:
    """A window's content address: the sha256 of its ``(day, day digest)`` list."""
    listed = [[str(d["day"]), str(d["digest"])] for d in days]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def day_files(dataset: LocationLike, manifest: dict[str, object]) -> list[Location]:
    """The ``features.parquet`` files of a dataset, in day order: its own file, or those of
    the days its manifest lists (published by the process step)."""
    base = Location.of(dataset)
    days = manifest.get("days")
    if not isinstance(days, list):
        return [base / FEATURES_FILE]
    city_dir = base.parent.parent
    return [city_dir.joinpath(*str(d["path"]).split("/"), FEATURES_FILE) for d in days]


def read_manifest(dataset: LocationLike) -> dict[str, object]:
    """The ``manifest.json`` of a dataset directory."""
    manifest: dict[str, object] = json.loads((Location.of(dataset) / MANIFEST_FILE).read_bytes())
    return manifest


def read_published_manifest(dataset: LocationLike) -> dict[str, object]:
    """The manifest of a published dataset (see ``read_dataset``).

    Raises:
        StorageError: the dataset has no ``_SUCCESS`` marker (not published).
    """
    if not published(dataset):
        raise StorageError(
            f"{dataset} is not a published feature dataset (no _SUCCESS); "
            "run `matchmaking process` first and pass the directory it prints"
        )
    return read_manifest(dataset)


def read_dataset(dataset: LocationLike) -> tuple[pd.DataFrame, dict[str, object]]:
    """Load a published feature dataset and its manifest.

    Args:
        dataset: the dataset directory: a path, a ``file://`` or an object-storage URI.

    Raises:
        StorageError: the dataset has no ``_SUCCESS`` marker (not published).
    """
    dataset = Location.of(dataset)
    manifest = read_published_manifest(dataset)
    tables = [read_table(path) for path in day_files(dataset, manifest)]
    if len(tables) == 1:
        return tables[0].to_pandas(), manifest
    return pa.concat_tables(tables).to_pandas(), manifest


def published_datasets(features_dir: LocationLike, city: str) -> list[tuple[Location, float]]:
    """The city's published feature datasets (windows) and when they were published (epoch
    seconds)."""
    markers = city_features_dir(features_dir, city).glob(f"*/*/{SUCCESS_FILE}")
    return [(marker.parent, marker.modified()) for marker in markers]


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
