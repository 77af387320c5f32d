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
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from types import TracebackType
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking.errors import DataQualityError, InputError, StorageError
from matchmaking.lake.storage import Location, LocationLike
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


def city_dir(root: LocationLike, layer: str, city: str) -> Location:
    """``<root>/<layer>/city=<city>``."""
    return Location.of(root).joinpath(layer, f"city={city}")


def partition_dir(root: LocationLike, layer: str, city: str, day: date) -> Location:
    """``<root>/<layer>/city=<city>/date=<YYYY-MM-DD>``."""
    return city_dir(root, layer, city) / f"date={day.isoformat()}"


def is_complete(partition: LocationLike) -> bool:
    """Whether a partition directory has been published (its ``_SUCCESS`` marker exists)."""
    return (Location.of(partition) / SUCCESS_MARKER).is_file()


def _storage_error(path: LocationLike, exc: OSError, doing: str) -> StorageError:
    return StorageError(
        f"cannot {doing} {path}: {exc.strerror or exc}; choose a writable lake directory "
        "(--out or MATCHMAKING_DATA_DIR) or fix its permissions"
    )


def ensure_writable(location: LocationLike) -> None:
    """Check, without creating anything, that a local ``location`` is or can become a writable
    directory (object storage is checked by the first write).

    Raises:
        StorageError: naming the offending path and what to do.
    """
    where = Location.of(location)
    if not where.is_local:
        return
    path = where.local_path.absolute()
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


def parquet_writer(
    path: LocationLike, schema: pa.Schema, dictionary: bool | list[str] = True
) -> pq.ParquetWriter:
    """A ParquetWriter with the lake's settings (zstd; no timestamps, so bytes are stable);
    ``dictionary``: dictionary-encode every column (the default), none, or those named."""
    key, fs = Location.of(path).arrow()
    return pq.ParquetWriter(
        key, schema, compression=COMPRESSION, filesystem=fs, use_dictionary=dictionary
    )


def write_parquet(path: LocationLike, table: pa.Table, dictionary: bool | list[str] = True) -> None:
    """Write one table to ``path`` (not atomic on its own: use inside a staged partition)."""
    with parquet_writer(path, table.schema, dictionary) as writer:
        writer.write_table(table)


def write_file_atomic(
    path: LocationLike, table: pa.Table, dictionary: bool | list[str] = True
) -> None:
    """Write a single parquet file whole (``Location.write_atomic``: a hidden temp file and
    ``os.replace`` locally, one object on object storage); ``dictionary`` as for
    ``parquet_writer``.

    Raises:
        StorageError: when the directory cannot be created or written.
    """
    target = Location.of(path)
    try:
        target.write_atomic(lambda tmp: write_parquet(tmp, table, dictionary))
    except OSError as exc:
        raise _storage_error(target, exc, "write") from exc


def _is_staging(name: str) -> bool:
    return name.startswith(".") and any(tag in name for tag in _STAGING_TAGS)


def clean_stale(root: LocationLike, layer: str, city: str, prefix: str = "") -> int:
    """Remove hidden staging files and directories left by interrupted writes.

    Args:
        root: lake root.
        layer: ``"raw"``, ``"truth"`` or any other layer name.
        city: city id.
        prefix: only remove entries for this target name (e.g. ``"date=2026-10-01"``).

    Returns:
        The number of entries removed (0 on object storage, where nothing is staged).
    """
    directory = city_dir(root, layer, city)
    removed = 0
    for entry in directory.children():
        if not _is_staging(entry.name) or not entry.name.startswith(f".{prefix}"):
            continue
        entry.remove()
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

    def __init__(self, root: LocationLike, layer: str, city: str, day: date) -> None:
        self.committed = False
        self.target = partition_dir(root, layer, city, day)
        clean_stale(root, layer, city, prefix=self.target.name)
        try:
            self.path = self.target.stage(marker=SUCCESS_MARKER)
        except OSError as exc:
            raise _storage_error(self.target, exc, "prepare partition") from exc

    def file(self, name: str) -> Location:
        """Where to write the partition's file ``name`` before ``commit()``."""
        return self.path / name

    def commit(self) -> Location:
        """Write ``_SUCCESS`` and publish the staged directory (``Location.publish``).

        An existing partition is replaced: readers see either the old or the new partition,
        never a mix. On object storage the marker is written last under the final prefix.
        """
        try:
            (self.path / SUCCESS_MARKER).write_bytes(b"")
            self.target.publish(self.path)
        except OSError as exc:
            raise _storage_error(self.target, exc, "publish partition") from exc
        self.committed = True
        return self.target

    def abort(self) -> None:
        """Discard the staged directory (on object storage: the unpublished files)."""
        if self.committed:
            return
        try:
            self.path.remove()
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
    root: LocationLike, layer: str, city: str, day: date, tables: dict[str, pa.Table]
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


def subdirs(directory: LocationLike, prefix: str) -> list[str]:
    """Names of the sub-directories of ``directory`` that start with ``prefix``, sorted."""
    entries = Location.of(directory).children("directory")
    return [e.name for e in entries if e.name.startswith(prefix)]


def list_cities(root: LocationLike, layer: str = RAW) -> list[str]:
    """City ids that have a directory in ``layer``, sorted."""
    return [n.removeprefix("city=") for n in subdirs(Location.of(root) / layer, "city=")]


def list_dates(root: LocationLike, city: str, layer: str = RAW) -> list[date]:
    """Dates of the complete partitions of a city, ascending."""
    directory = city_dir(root, layer, city)
    names = [m.parent.name for m in directory.glob(f"date=*/{SUCCESS_MARKER}")]
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
    root: LocationLike,
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
        _read_file(partition_dir(root, layer, city, d) / f"{table}.parquet", columns) for d in days
    ]
    # Nullability may differ between days written by different producers: unify it.
    return pa.concat_tables(parts, promote_options="permissive")


def _unreadable(path: LocationLike, exc: Exception) -> DataQualityError:
    return DataQualityError(
        f"{path} is not a readable parquet file ({exc}): it is truncated or corrupt. Nothing "
        "was published; restore or rewrite that file from its source (for the synthetic world, "
        "rerun the `matchmaking world generate` that wrote it), then rerun"
    )


def _open(path: LocationLike, read: Callable[[pq.ParquetFile], T]) -> T:
    """Apply ``read`` to the parquet file at ``path``, mapping failures to package errors.

    Raises:
        StorageError: the file is missing or cannot be read from storage.
        DataQualityError: the file is not valid parquet (truncated, corrupt).
    """
    path = Location.of(path)
    key, fs = path.arrow()
    try:
        with pq.ParquetFile(key, filesystem=fs) as parquet:
            return read(parquet)
    except FileNotFoundError as exc:
        raise StorageError(
            f"{path} does not exist; generate the city with `matchmaking world generate`"
        ) from exc
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    except pa.ArrowInvalid as exc:
        raise _unreadable(path, exc) from exc


def _read_file(path: LocationLike, columns: list[str] | None = None) -> pa.Table:
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
    root: LocationLike, city: str, tables: Iterable[str], start: date, end: date
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
            path = partition_dir(root, layer, city, day) / f"{table}.parquet"
            try:
                problems = schema_problems(_open(path, lambda f: f.schema_arrow), contract)
            except DataQualityError as exc:
                problems = [f"not a readable parquet file ({exc.__cause__}): truncated or corrupt"]
            if problems:
                broken.append(f"{path}: {'; '.join(problems)}")
    if broken:
        raise _schema_error(city, broken)


def _read_roster(city: str, path: LocationLike, contract: pa.Schema) -> pa.Table:
    table = _read_file(path)
    problems = schema_problems(table.schema, contract)
    if problems:
        raise _schema_error(city, [f"{path}: {'; '.join(problems)}"])
    return table.select(contract.names)


def read_drivers(root: LocationLike, city: str) -> pa.Table:
    """The city's driver roster (``schema.DRIVERS``)."""
    return _read_roster(city, city_dir(root, RAW, city) / DRIVERS_FILE, DRIVERS)


def read_driver_truth(root: LocationLike, city: str) -> pa.Table:
    """The drivers' hidden acceptance propensities (``schema.DRIVER_TRUTH``)."""
    path = city_dir(root, TRUTH, city) / DRIVERS_FILE
    return _read_roster(city, path, DRIVER_TRUTH)


def read_truth(
    root: LocationLike, city: str, start: date, end: date, columns: list[str] | None = None
) -> pa.Table:
    """The true per-candidate probabilities (``schema.GROUND_TRUTH``) over ``[start, end]``."""
    return read_partitions(root, city, "ground_truth", start, end, columns)
