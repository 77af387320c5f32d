"""The data lake: atomic partition writes and the readers every later step uses.

Layout (see ``matchmaking.schema``)::

    <root>/raw/city=<c>/drivers.parquet
    <root>/raw/city=<c>/date=<YYYY-MM-DD>/{bookings,candidates}.parquet + _SUCCESS
    <root>/truth/city=<c>/drivers.parquet
    <root>/truth/city=<c>/date=<YYYY-MM-DD>/ground_truth.parquet + _SUCCESS

The root is a local path (or ``file://`` URI) or an object-storage URI (``s3://bucket/lake``,
any fsspec filesystem; see ``matchmaking.lake.storage``).

Locally, a partition is staged in a hidden sibling ``.date=<D>.tmp-<uuid>`` and renamed into
place once every file and its ``_SUCCESS`` marker are written, so readers never see half a
partition. Object storage has no rename: files are written under the final prefix, the
``_SUCCESS`` marker last, and a replaced partition loses its marker first. Either way readers
only see partitions with ``_SUCCESS``. Readers skip hidden directories; local writers remove
stale hidden directories left by interrupted runs. One writer per city at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking.errors import DataQualityError, InputError, StorageError
from matchmaking.lake import storage
from matchmaking.lake.storage import Location
from matchmaking.schema import (
    DRIVER_TRUTH,
    DRIVERS,
    RAW_TABLES,
    SUCCESS_MARKER,
    TRUTH_TABLES,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

RAW = "raw"
TRUTH = "truth"
DRIVERS_FILE = "drivers.parquet"
COMPRESSION = "zstd"
_STAGING_TAGS = (".tmp-", ".old-")


def city_dir(root: Location, layer: str, city: str) -> Location:
    """``<root>/<layer>/city=<city>`` (a ``Path`` for a local lake, a URI for a remote one)."""
    return storage.join(root, layer, f"city={city}")


def partition_dir(root: Location, layer: str, city: str, day: date) -> Location:
    """``<root>/<layer>/city=<city>/date=<YYYY-MM-DD>``."""
    return storage.join(city_dir(root, layer, city), f"date={day.isoformat()}")


def is_complete(partition: Location) -> bool:
    """Whether a partition directory has been published (its ``_SUCCESS`` marker exists)."""
    marker = storage.join(partition, SUCCESS_MARKER)
    if isinstance(marker, Path):
        return marker.is_file()
    return storage.exists(marker)


def _storage_error(path: Location, exc: OSError, doing: str) -> StorageError:
    return StorageError(
        f"cannot {doing} {path}: {exc.strerror or exc}; choose a writable lake directory "
        "(--out or MATCHMAKING_DATA_DIR) or fix its permissions"
    )


def ensure_writable(location: Location) -> None:
    """Check, without creating anything, that a local ``location`` is or can become a writable
    directory (object storage is checked by the first write).

    Raises:
        StorageError: naming the offending path and what to do.
    """
    if storage.is_remote(location):
        return
    path = storage.local_path(location).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(
            f"cannot write the lake to {path}: {probe} exists and is not a directory; "
            "choose another --out (or MATCHMAKING_DATA_DIR)"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(
            f"cannot write the lake to {path}: {probe} is not writable; choose a writable "
            "--out (or MATCHMAKING_DATA_DIR) or fix its permissions"
        )


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _storage_error(path, exc, "create directory") from exc


def parquet_writer(path: Location, schema: pa.Schema) -> pq.ParquetWriter:
    """A ParquetWriter with the lake's settings (zstd; no timestamps, so bytes are stable)."""
    path = storage.location(path)
    if isinstance(path, Path):
        return pq.ParquetWriter(str(path), schema, compression=COMPRESSION)
    fs, key = storage.filesystem(path)
    return pq.ParquetWriter(key, schema, compression=COMPRESSION, filesystem=fs)


def write_parquet(path: Location, table: pa.Table) -> None:
    """Write one table to ``path`` (not atomic on its own: use inside a staged partition)."""
    with parquet_writer(path, table.schema) as writer:
        writer.write_table(table)


def write_file_atomic(path: Location, table: pa.Table) -> None:
    """Write a single parquet file via a hidden temp file and ``os.replace`` (locally), or as
    one object (object storage publishes an object whole, when its upload completes).

    Raises:
        StorageError: when the directory cannot be created or written.
    """
    path = storage.location(path)
    if not isinstance(path, Path):
        try:
            write_parquet(path, table)
        except OSError as exc:
            raise _storage_error(path, exc, "write") from exc
        return
    _mkdir(path.parent)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        write_parquet(tmp, table)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _storage_error(path, exc, "write") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_staging(name: str) -> bool:
    return name.startswith(".") and any(tag in name for tag in _STAGING_TAGS)


def clean_stale(root: Location, layer: str, city: str, prefix: str = "") -> int:
    """Remove hidden staging files and directories left by interrupted writes.

    Args:
        root: lake root.
        layer: ``"raw"``, ``"truth"`` or any other layer name.
        city: city id.
        prefix: only remove entries for this target name (e.g. ``"date=2026-10-01"``).

    Returns:
        The number of entries removed (always 0 on object storage, which stages nothing).
    """
    directory = city_dir(root, layer, city)
    if not isinstance(directory, Path) or not directory.is_dir():
        return 0
    removed = 0
    for entry in directory.iterdir():
        if not _is_staging(entry.name) or not entry.name.startswith(f".{prefix}"):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
        logger.info("removed stale staging entry %s", entry)
    return removed


class PartitionWriter:
    """Stage one city-day partition in a hidden directory; ``commit()`` publishes it.

    Use as a context manager: leaving the block without ``commit()`` (an exception, a crash)
    removes the staging directory, or leaves a hidden one that the next writer cleans.

    On object storage ``path`` is the final prefix itself: an existing partition loses its
    ``_SUCCESS`` marker first (readers stop seeing it), then its files; ``commit()`` writes the
    marker last. A crash leaves the prefix without a marker, invisible to readers.

    Example::

        with PartitionWriter(root, "raw", "jakarta", day) as part:
            write_parquet(part.file("bookings.parquet"), table)
            part.commit()
    """

    path: Location
    target: Location

    def __init__(self, root: Location, layer: str, city: str, day: date) -> None:
        self.committed = False
        target = partition_dir(root, layer, city, day)
        if not isinstance(target, Path):
            self.target = self.path = target
            self._unpublish(target)
            return
        self.target = target
        parent = target.parent
        _mkdir(parent)
        clean_stale(root, layer, city, prefix=self.target.name)
        self.path = parent / f".{self.target.name}.tmp-{uuid.uuid4().hex}"
        try:
            self.path.mkdir()
        except OSError as exc:
            raise _storage_error(self.path, exc, "create directory") from exc

    @staticmethod
    def _unpublish(target: str) -> None:
        fs, key = storage.filesystem(target)
        try:
            fs.invalidate_cache(key)
            if fs.exists(f"{key}/{SUCCESS_MARKER}"):
                fs.rm_file(f"{key}/{SUCCESS_MARKER}")
            if fs.exists(key):
                fs.rm(key, recursive=True)
        except OSError as exc:
            raise _storage_error(target, exc, "replace partition") from exc

    def file(self, name: str) -> Location:
        """Where to write the partition's file ``name`` before ``commit()``."""
        return storage.join(self.path, name)

    def commit(self) -> Location:
        """Write ``_SUCCESS`` and rename the staged directory into place.

        An existing partition is replaced: it is renamed away, the new one renamed in, and
        the old one deleted; readers see either the old or the new partition, never a mix.
        On object storage the marker is written last under the final prefix.
        """
        if not isinstance(self.path, Path) or not isinstance(self.target, Path):
            try:
                storage.write_bytes(storage.join(self.target, SUCCESS_MARKER), b"")
            except OSError as exc:
                raise _storage_error(self.target, exc, "publish partition") from exc
            self.committed = True
            return self.target
        try:
            (self.path / SUCCESS_MARKER).write_bytes(b"")
            if self.target.exists():
                old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex}"
                os.rename(self.target, old)
                os.rename(self.path, self.target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.path, self.target)
        except OSError as exc:
            raise _storage_error(self.target, exc, "publish partition") from exc
        self.committed = True
        return self.target

    def abort(self) -> None:
        """Discard the staged directory (on object storage: the unpublished files)."""
        if self.committed:
            return
        if isinstance(self.path, Path):
            shutil.rmtree(self.path, ignore_errors=True)
            return
        fs, key = storage.filesystem(self.path)
        try:
            fs.invalidate_cache(key)
            if fs.exists(key):
                fs.rm(key, recursive=True)
        except OSError:
            logger.warning("could not remove the unpublished partition %s", self.path)

    def __enter__(self) -> PartitionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


def write_partition(
    root: Location, layer: str, city: str, day: date, tables: dict[str, pa.Table]
) -> Location:
    """Atomically write a whole partition: ``{name}.parquet`` for each table.

    Returns:
        The published partition directory.
    """
    with PartitionWriter(root, layer, city, day) as part:
        for name, table in tables.items():
            try:
                write_parquet(part.file(f"{name}.parquet"), table)
            except OSError as exc:
                raise _storage_error(part.path, exc, "write") from exc
        return part.commit()


# ----------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------


def _layer_of(table: str) -> str:
    if table in RAW_TABLES:
        return RAW
    if table in TRUTH_TABLES:
        return TRUTH
    known = ", ".join([*RAW_TABLES, *TRUTH_TABLES])
    raise InputError(f"unknown lake table {table!r}; expected one of: {known}")


def _remote_dirs(directory: str, prefix: str) -> list[str]:
    """Names of the sub-prefixes of a remote directory that start with ``prefix``."""
    fs, key = storage.filesystem(directory)
    fs.invalidate_cache(key)
    try:
        entries = fs.ls(key, detail=True)
    except FileNotFoundError:
        return []
    names = [
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
    ]
    return [n for n in names if n.startswith(prefix)]


def list_cities(root: Location, layer: str = RAW) -> list[str]:
    """City ids that have a directory in ``layer``, sorted."""
    base = storage.join(root, layer)
    if not isinstance(base, Path):
        return sorted(n.removeprefix("city=") for n in _remote_dirs(base, "city="))
    if not base.is_dir():
        return []
    return sorted(
        p.name.removeprefix("city=")
        for p in base.iterdir()
        if p.is_dir() and p.name.startswith("city=")
    )


def list_dates(root: Location, city: str, layer: str = RAW) -> list[date]:
    """Dates of the complete partitions of a city, ascending."""
    directory = city_dir(root, layer, city)
    if isinstance(directory, Path):
        if not directory.is_dir():
            return []
        names = [
            p.name
            for p in directory.iterdir()
            if p.name.startswith("date=") and p.is_dir() and is_complete(p)
        ]
    else:
        fs, key = storage.filesystem(directory)
        fs.invalidate_cache(key)
        markers = fs.glob(f"{key}/date=*/{SUCCESS_MARKER}")
        names = [str(m).rsplit("/", 2)[-2] for m in markers]
    days = []
    for name in names:
        try:
            days.append(date.fromisoformat(name.removeprefix("date=")))
        except ValueError:
            logger.warning("ignoring malformed partition directory %s in %s", name, directory)
    return sorted(days)


def _date_range(start: date, end: date) -> Iterable[date]:
    for i in range((end - start).days + 1):
        yield start + timedelta(days=i)


def describe_days(days: Iterable[date]) -> str:
    """Sorted days as compact ranges: ``2026-08-01..2026-08-03, 2026-08-09``."""
    runs: list[tuple[date, date]] = []
    for d in days:
        if runs and (d - runs[-1][1]).days == 1:
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return ", ".join(a.isoformat() if a == b else f"{a}..{b}" for a, b in runs)


def read_partitions(
    root: Location,
    city: str,
    table: str,
    start: date,
    end: date,
    columns: list[str] | None = None,
) -> pa.Table:
    """Read one table over ``[start, end]`` (inclusive), concatenated in date order.

    Args:
        root: lake root (holding ``raw/`` and ``truth/``).
        city: city id.
        table: ``"bookings"``, ``"candidates"`` or ``"ground_truth"``.
        start: first day.
        end: last day.
        columns: subset of columns to read; all when None.

    Raises:
        InputError: unknown table or columns, or ``end`` before ``start``.
        StorageError: some asked dates have no complete partition (they are listed).
        DataQualityError: a partition file is not valid parquet (named).

    Columns are not checked against the contract here (days of a test lake may hold any
    table): readers that depend on it call ``check_partitions`` first, as the process step does.
    """
    layer = _layer_of(table)
    schema = RAW_TABLES.get(table) or TRUTH_TABLES[table]
    if end < start:
        raise InputError(f"end date {end} is before start date {start}")
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise InputError(
                f"unknown column(s) {unknown} for table {table!r}; it has {schema.names}"
            )
    days = list(_date_range(start, end))
    missing = [d for d in days if not is_complete(partition_dir(root, layer, city, d))]
    if missing:
        raise StorageError(
            f"{layer}/city={city} has no complete partition for {describe_days(missing)} "
            f"({len(missing)} of {len(days)} asked days) under {root}; generate them "
            f"with `matchmaking world generate --cities {city} --start {missing[0]} "
            f"--days {(missing[-1] - missing[0]).days + 1}`"
        )
    parts = [
        _read_file(storage.join(partition_dir(root, layer, city, d), f"{table}.parquet"), columns)
        for d in days
    ]
    # Nullability may differ between days written by different producers: unify it.
    return pa.concat_tables(parts, promote_options="permissive")


def _unreadable(path: Location, exc: Exception) -> DataQualityError:
    return DataQualityError(
        f"{path} is not a readable parquet file ({exc}): it is truncated or corrupt. Nothing "
        "was published; restore or rewrite that file from its source (for the synthetic world, "
        "rerun the `matchmaking world generate` that wrote it), then rerun"
    )


def _open(path: Location, read: Callable[[pq.ParquetFile], T]) -> T:
    """Apply ``read`` to the parquet file at ``path``, mapping failures to package errors.

    Raises:
        StorageError: the file is missing or cannot be read from storage.
        DataQualityError: the file is not valid parquet (truncated, corrupt).
    """
    path = storage.location(path)
    try:
        if isinstance(path, Path):
            return read(pq.ParquetFile(path))
        fs, key = storage.filesystem(path)
        with fs.open(key, "rb") as fh:
            return read(pq.ParquetFile(fh))
    except FileNotFoundError as exc:
        raise StorageError(
            f"{path} does not exist; generate the city with `matchmaking world generate`"
        ) from exc
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    except pa.ArrowInvalid as exc:
        raise _unreadable(path, exc) from exc


def _read_file(path: Location, columns: list[str] | None = None) -> pa.Table:
    return _open(path, lambda f: f.read(columns=columns))


def schema_problems(found: pa.Schema, contract: pa.Schema) -> list[str]:
    """How ``found`` breaks ``contract``: each missing or mistyped column (nullability may
    differ between producers; extra columns are ignored)."""
    problems = []
    for field in contract:
        if field.name not in found.names:
            problems.append(f"column {field.name!r} is missing")
        elif not found.field(field.name).type.equals(field.type):
            problems.append(
                f"column {field.name!r} is {found.field(field.name).type}, expected {field.type}"
            )
    return problems


def _schema_error(city: str, broken: list[str]) -> DataQualityError:
    listed = "\n".join(f"  - {line}" for line in broken)
    return DataQualityError(
        f"{len(broken)} lake file(s) of {city} break the data contract "
        f"(matchmaking.schema, docs/data.md); nothing was published:\n{listed}\n"
        "Rewrite those files from their source so they match the contract "
        "(a partition is never partly quarantined for its schema), then rerun"
    )


def check_partitions(
    root: Location, city: str, tables: Iterable[str], start: date, end: date
) -> None:
    """Check every partition file of ``tables`` over ``[start, end]`` against its contract,
    reading only the footers: each must be valid parquet with every contract column, of the
    contract's type.

    Raises:
        DataQualityError: naming each broken file and its missing or mistyped columns, or why
            it is not readable.
        StorageError: a file cannot be read from storage.
    """
    broken = []
    for table in tables:
        layer = _layer_of(table)
        contract = RAW_TABLES.get(table) or TRUTH_TABLES[table]
        for day in _date_range(start, end):
            path = storage.join(partition_dir(root, layer, city, day), f"{table}.parquet")
            try:
                problems = schema_problems(_open(path, lambda f: f.schema_arrow), contract)
            except DataQualityError as exc:
                problems = [f"not a readable parquet file ({exc.__cause__}): truncated or corrupt"]
            if problems:
                broken.append(f"{path}: {'; '.join(problems)}")
    if broken:
        raise _schema_error(city, broken)


def _read_roster(city: str, path: Location, contract: pa.Schema) -> pa.Table:
    table = _read_file(path)
    problems = schema_problems(table.schema, contract)
    if problems:
        raise _schema_error(city, [f"{path}: {'; '.join(problems)}"])
    return table.select(contract.names)


def read_drivers(root: Location, city: str) -> pa.Table:
    """The city's driver roster (``schema.DRIVERS``)."""
    return _read_roster(city, storage.join(city_dir(root, RAW, city), DRIVERS_FILE), DRIVERS)


def read_driver_truth(root: Location, city: str) -> pa.Table:
    """The drivers' hidden acceptance propensities (``schema.DRIVER_TRUTH``)."""
    path = storage.join(city_dir(root, TRUTH, city), DRIVERS_FILE)
    return _read_roster(city, path, DRIVER_TRUTH)


def read_truth(
    root: Location, city: str, start: date, end: date, columns: list[str] | None = None
) -> pa.Table:
    """The true per-candidate probabilities (``schema.GROUND_TRUTH``) over ``[start, end]``."""
    return read_partitions(root, city, "ground_truth", start, end, columns)
