"""The scoring service's logs in the lake: its decisions and the outcomes dispatch reports.

Layout (contracts ``DECISIONS`` and ``OUTCOMES`` in ``matchmaking.schema``)::

    <root>/serving/<table>/city=<c>/date=<YYYY-MM-DD>/hour=<HH>/part-<stamp>-<sequence>-<uuid>.parquet

``table`` is ``decisions`` or ``outcomes``; date and hour are those of ``decided_at`` /
``received_at`` in UTC. Each flush of a writer publishes one new file per (city, date, hour)
it holds rows for, atomically (``write_file_atomic``: a hidden temp file renamed into place
locally, one whole object on object storage), so a reader sees whole files or nothing and a
killed writer leaves at most a hidden temp file, which readers skip. Files are never rewritten:
a partition is the union of its files.

Outcomes are idempotent on ``OUTCOME_KEY`` (booking, driver, position, stage): ``read_log``
keeps the first stored row of each key (by ``received_at``), so a repeat delivery, even one
that reached two replicas, counts once.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from matchmaking.errors import InputError
from matchmaking.lake.raw import _open, subdirs, write_file_atomic
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.schema import OUTCOME_KEY, SERVING_TABLES

SERVING = "serving"
_SEQUENCE = itertools.count()
_TIME_COLUMN = {"decisions": "decided_at", "outcomes": "received_at"}
_MICROS_PER_HOUR = 3_600_000_000.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _schema(table: str) -> pa.Schema:
    try:
        return SERVING_TABLES[table]
    except KeyError:
        known = ", ".join(SERVING_TABLES)
        raise InputError(f"unknown serving log table {table!r}; expected one of: {known}") from None


def hour_dir(root: LocationLike, table: str, city: str, day: date, hour: int) -> Location:
    """``<root>/serving/<table>/city=<c>/date=<D>/hour=<HH>``."""
    _schema(table)
    return Location.of(root).joinpath(
        SERVING, table, f"city={city}", f"date={day.isoformat()}", f"hour={hour:02d}"
    )


def write_log(root: LocationLike, table: str, rows: pa.Table, now: datetime | None = None) -> int:
    """Publish ``rows`` (in the table's contract) as one new file per (city, date, hour).

    Returns:
        The number of files written.

    Raises:
        InputError: unknown table, or ``rows`` does not follow the contract.
        StorageError: the lake cannot be written (nothing of that file is visible).
    """
    schema = _schema(table)
    if rows.num_rows == 0:
        return 0
    try:
        rows = _conform(rows, schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"rows for serving log {table!r} break its contract: {exc}") from exc
    # Names sort in write order (to the microsecond, then a per-process sequence): a repeat
    # outcome with the same received_at as the first one sorts after it, so "first stored
    # wins" is the order of the writes, not of random suffixes.
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f") + f"-{next(_SEQUENCE):08d}"
    # The UTC hour of each row, as hours since the epoch: integer arithmetic on the
    # microseconds (the column is UTC by contract), far cheaper than formatting every time.
    micros = pc.cast(rows.column(_TIME_COLUMN[table]), pa.int64())
    hours = pc.floor(pc.divide(pc.cast(micros, pa.float64()), _MICROS_PER_HOUR))
    city = rows.column("city")
    if pa.types.is_dictionary(city.type):  # group on values, not on dictionary positions
        city = city.cast(city.type.value_type)
    keyed = pa.table({"city": city, "hour": pc.cast(hours, pa.int64())})
    pairs = keyed.group_by(["city", "hour"], use_threads=False).aggregate([]).to_pylist()
    # Parquet dictionary-encodes the string columns only (ids and labels repeat; the floats
    # rarely do, and trying costs the writer CPU).
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    written = 0
    for pair in pairs:
        city, hour_no = pair["city"], pair["hour"]
        if len(pairs) == 1:
            part = rows
        else:
            mask = pc.and_(
                pc.equal(keyed.column("city"), city), pc.equal(keyed.column("hour"), hour_no)
            )
            part = rows.filter(mask)
        when = _EPOCH + timedelta(hours=hour_no)
        directory = hour_dir(root, table, city, when.date(), when.hour)
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        write_file_atomic(directory / name, part, dictionary=strings)
        written += 1
    return written


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` in the contract's columns, order and types; a dictionary column of the
    contract's type is kept as it is (a writer's cheap form of repeated values; parquet
    stores the same bytes either way, and readers cast it back with ``read_log``)."""
    fields, columns = [], []
    for field in schema:
        column = rows.column(field.name)
        kind = column.type
        if pa.types.is_dictionary(kind) and kind.value_type == field.type:
            fields.append(field.with_type(kind))
        else:
            column = column.cast(field.type)
            fields.append(field)
        columns.append(column)
    return pa.table(columns, schema=pa.schema(fields))


def _files(directory: Location) -> list[Location]:
    """The published parquet files of one hour directory (hidden temp files skipped)."""
    return [
        f
        for f in directory.children("file")
        if f.name.endswith(".parquet") and not f.name.startswith(".")
    ]


def list_log_cities(root: LocationLike, table: str) -> list[str]:
    """Cities with any partition of ``table``, sorted."""
    base = Location.of(root).joinpath(SERVING, table)
    return [n.removeprefix("city=") for n in subdirs(base, "city=")]


def _days(start: date, end: date) -> Iterable[date]:
    for i in range((end - start).days + 1):
        yield start + timedelta(days=i)


def read_log(
    root: LocationLike,
    table: str,
    city: str,
    since: date | None = None,
    until: date | None = None,
) -> pa.Table:
    """Every published row of ``table`` for ``city`` with a UTC date in ``[since, until]``
    (both inclusive, either open), in the table's contract; outcomes deduplicated on
    ``OUTCOME_KEY`` (first received wins). An empty table when nothing was logged.

    Raises:
        InputError: unknown table, or ``until`` before ``since``.
        DataQualityError: a published file is not valid parquet (named).
    """
    schema = _schema(table)
    found = [
        _open(path, lambda f: f.read()).select(schema.names).cast(schema)
        for path in log_files(root, table, city, since, until)
    ]
    if not found:
        return schema.empty_table()
    rows = pa.concat_tables(found, promote_options="permissive").cast(schema)
    if table == "outcomes":
        rows = first_per_key(rows, list(OUTCOME_KEY), "received_at")
    return rows


def log_files(
    root: LocationLike,
    table: str,
    city: str,
    since: date | None = None,
    until: date | None = None,
) -> list[Location]:
    """The published files of ``table`` for ``city`` with a UTC date in ``[since, until]``
    (both inclusive, either open), in partition order: for readers that scan them out of core
    (DuckDB) instead of loading them with ``read_log``.

    Raises:
        InputError: unknown table, or ``until`` before ``since``.
    """
    _schema(table)
    if since and until and until < since:
        raise InputError(f"until {until} is before since {since}")
    city_base = Location.of(root).joinpath(SERVING, table, f"city={city}")
    found: list[Location] = []
    for name in subdirs(city_base, "date="):
        try:
            day = date.fromisoformat(name.removeprefix("date="))
        except ValueError:
            continue
        if (since and day < since) or (until and day > until):
            continue
        for hour in subdirs(city_base / name, "hour="):
            found.extend(_files(city_base.joinpath(name, hour)))
    return found


def first_per_key(rows: pa.Table, key: list[str], order: str) -> pa.Table:
    """One row per ``key``: the earliest by ``order`` (ties: the first stored)."""
    if rows.num_rows == 0:
        return rows
    indexed = rows.append_column("_i", pa.array(range(rows.num_rows), pa.int64()))
    ordered = indexed.sort_by([(order, "ascending"), ("_i", "ascending")])
    first = ordered.group_by(key, use_threads=False).aggregate([("_i", "first")])
    keep = pc.sort_indices(first.column("_i_first"))
    return rows.take(pc.take(first.column("_i_first"), keep))
