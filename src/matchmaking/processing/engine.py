"""The out-of-core engine of one city-day: DuckDB reads the lake's parquet, holds the day's clean
rows (spilling to disk past its memory limit), joins and orders them; the features are computed
in bounded batches cut at booking boundaries (``features.batch.feature_frame``, the code
serving shares) and streamed to parquet, the digest computed while writing.

Validation keeps its one implementation (``processing.validate``): rows are handed to it in
buckets of whole bookings (``hash(booking_id)``), each in file order, so its duplicate and
orphan rules see exactly what they would over the whole day. A day that fits in one bucket
(most of a fleet's days) is read straight with pyarrow and its clean rows are handed to
DuckDB as they are, with no copy into the database; its DuckDB connection opens only when
the features need it (a day only summarised never opens one).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking.features.batch import BOOKING_COLUMNS, DRIVER_COLUMNS, feature_frame
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.processing.validate import ValidationResult, validate
from matchmaking.schema import RAW_TABLES

logger = logging.getLogger(__name__)

FILE_ROW = "file_row_number"  # DuckDB's parquet row position: file order
HISTORY_COLUMNS = ("offers_28d", "accepts_28d", "offer_eta_sum_28d")
#: What the day's feature join adds to a candidate row from its booking and its driver (the
#: candidate rows carry the keys and ``requested_at`` already).
JOINED_BOOKING_COLUMNS = tuple(
    c for c in BOOKING_COLUMNS if c not in ("booking_id", "requested_at")
)
JOINED_DRIVER_COLUMNS = tuple(c for c in DRIVER_COLUMNS if c != "driver_id")
OFFER_COLUMNS = ["driver_id", "requested_at", "accepted", "eta_seconds", "offered"]


@dataclass(frozen=True)
class EngineConfig:
    """How much the engine may hold: DuckDB's memory limit and spill directory, and the rows
    per validation bucket and per feature batch."""

    memory_limit: str = "2GB"
    temp_dir: Path | None = None
    threads: int = 2
    bucket_rows: int = 1_000_000
    batch_rows: int = 250_000


@dataclass
class Checked:
    """A day validated: counts, quarantine, the clean offers (in file order) and roster."""

    counts: Counter[str] = field(default_factory=Counter)
    total_rows: int = 0
    bookings: int = 0
    candidates: int = 0
    quarantine: list[pa.Table] = field(default_factory=list)
    offers: pd.DataFrame = field(default_factory=pd.DataFrame)
    drivers: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: A one-bucket day's clean bookings and candidates, for DuckDB to read in place (a day
    #: in buckets keeps them in the engine's database instead: tables ``clean_b``/``clean_c``).
    clean: tuple[pa.Table, pa.Table] | None = None

    @property
    def bad_rows(self) -> int:
        return sum(self.counts.values())

    @property
    def bad_share(self) -> float:
        return self.bad_rows / self.total_rows if self.total_rows else 0.0


class Engine:
    """One DuckDB database (in a scratch directory) for one day's work, opened on first use."""

    def __init__(self, connect: Callable[[], duckdb.DuckDBPyConnection], config: EngineConfig):
        self._connect = connect
        self._con: duckdb.DuckDBPyConnection | None = None
        self.config = config

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = self._connect()
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # -- reading -----------------------------------------------------------------------------

    def source(self, path: LocationLike) -> str:
        """A DuckDB ``read_parquet`` of a lake file (remote ones through fsspec)."""
        uri, fs = Location.of(path).engine_source()
        if fs is not None and not self.con.filesystem_is_registered(
            fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        ):
            self.con.register_filesystem(fs)
        return f"read_parquet('{_quoted(uri)}', file_row_number = true)"

    # -- validation --------------------------------------------------------------------------

    def validate_day(
        self,
        bookings: LocationLike,
        candidates: LocationLike,
        roster: ValidationResult,
        centre: tuple[float, float],
        keep_clean: bool = True,
    ) -> Checked:
        """Validate the day in buckets of whole bookings; keep the clean rows (for
        ``feature_batches``: in DuckDB tables ``clean_b``, ``clean_c``, or ``Checked.clean``
        for a day in one bucket, which never opens the connection; skipped when not
        ``keep_clean``: a day only summarised needs its offers alone) and return counts,
        quarantine and clean offers."""
        n_b, n_c = num_rows(bookings), num_rows(candidates)
        buckets = bucket_count(self.config, n_b + n_c)
        out = Checked(total_rows=roster.total_rows + n_b + n_c, bookings=n_b, candidates=n_c)
        if buckets == 1:  # the whole day at once, read in file order without DuckDB
            whole_b = _read_whole(bookings, RAW_TABLES["bookings"])
            whole_c = _read_whole(candidates, RAW_TABLES["candidates"])
        else:
            con = self.con
            con.execute(f"CREATE OR REPLACE VIEW raw_b AS SELECT * FROM {self.source(bookings)}")
            con.execute(f"CREATE OR REPLACE VIEW raw_c AS SELECT * FROM {self.source(candidates)}")
        # The roster is validated once by the caller (``roster``: every day of a window shares
        # it); the buckets then see only its clean drivers, which break no rule again.
        drivers = roster.drivers
        out.counts.update(roster.counts)
        out.quarantine.append(pa.Table.from_pandas(roster.quarantine, preserve_index=False))
        offers: list[pd.DataFrame] = []
        created = False
        for k in range(buckets):
            if buckets == 1:
                b, c = whole_b, whole_c
                del whole_b, whole_c
            else:
                b = self._bucket("raw_b", RAW_TABLES["bookings"], buckets, k)
                c = self._bucket("raw_c", RAW_TABLES["candidates"], buckets, k)
            checked = validate(b, c, drivers, centre)
            out.counts.update(checked.counts)
            if len(checked.quarantine):
                out.quarantine.append(
                    pa.Table.from_pandas(checked.quarantine, preserve_index=False)
                )
            clean_c = checked.candidates
            offered = clean_c.loc[clean_c["offered"].to_numpy(dtype=bool)]
            offers.append(offered[[*OFFER_COLUMNS, FILE_ROW]])
            if not keep_clean:
                continue
            clean_b = pa.Table.from_pandas(checked.bookings, preserve_index=False)
            clean_c_arrow = pa.Table.from_pandas(clean_c, preserve_index=False)
            if buckets == 1:  # read in place: a copy into the database buys nothing here
                out.clean = (clean_b, clean_c_arrow)
                break
            con.register("bucket_b", clean_b)
            con.register("bucket_c", clean_c_arrow)
            verb = "INSERT INTO {} SELECT * FROM {}" if created else "CREATE TABLE {} AS FROM {}"
            con.execute(verb.format("clean_b", "bucket_b"))
            con.execute(verb.format("clean_c", "bucket_c"))
            con.unregister("bucket_b")
            con.unregister("bucket_c")
            created = True
            del b, c, checked, clean_b, clean_c_arrow, clean_c, offered
        all_offers = pd.concat(offers, ignore_index=True)
        order = np.argsort(all_offers[FILE_ROW].to_numpy(), kind="stable")
        out.offers = all_offers.iloc[order].reset_index(drop=True)
        out.drivers = drivers
        return out

    def _bucket(self, view: str, contract: pa.Schema, buckets: int, k: int) -> pd.DataFrame:
        """Rows of one bucket of booking ids, in file order."""
        # Each bucket decodes the day's files again (hash filter). Decoding them once into a
        # DuckDB table tagged with the bucket was measured slower (part d of the scale report:
        # writing the table costs more than the decodes it saves) and 0.06 GB higher.
        table = self.con.sql(
            f"SELECT * FROM {view} WHERE hash(booking_id) % {buckets} = {k} ORDER BY {FILE_ROW}"
        ).to_arrow_table()
        return _typed(table, contract).to_pandas()

    # -- features ----------------------------------------------------------------------------

    def feature_batches(
        self, checked: Checked, history: pd.DataFrame
    ) -> Iterator[tuple[pd.DataFrame, npt.NDArray[np.float64]]]:
        """The day's clean candidates joined with booking, driver and history, in published
        order, as (rows, history) batches of whole bookings: every ``batch_rows`` rows of
        the ordered stream, extended to the end of the booking (independent of how DuckDB
        chunks its result, so the file written is the same on every run)."""
        con = self.con
        if checked.clean is not None:
            con.register("clean_b", checked.clean[0])
            con.register("clean_c", checked.clean[1])
        con.register("drivers_v", pa.Table.from_pandas(checked.drivers[list(DRIVER_COLUMNS)]))
        con.register("history_v", pa.Table.from_pandas(history, preserve_index=False))
        b_cols = ", ".join(f"b.{c}" for c in JOINED_BOOKING_COLUMNS)
        d_cols = ", ".join(f"d.{c}" for c in JOINED_DRIVER_COLUMNS)
        h_cols = ", ".join(f"h.{c}" for c in HISTORY_COLUMNS)
        reader = con.sql(
            f"""
            SELECT c.*, {b_cols}, {d_cols}, {h_cols}
            FROM clean_c c
            JOIN clean_b b USING (booking_id)
            JOIN drivers_v d USING (driver_id)
            JOIN history_v h USING (driver_id)
            ORDER BY c.requested_at, c.booking_id, c.eta_rank, c.{FILE_ROW}
            """
        ).to_arrow_reader(self.config.batch_rows)
        target = self.config.batch_rows
        pending: list[pa.RecordBatch] = []
        held = 0
        for batch in reader:
            pending.append(batch)
            held += batch.num_rows
            while held > target:
                table = pa.Table.from_batches(pending)
                cut = _booking_end(table.column("booking_id"), target)
                if cut is None:
                    break
                yield self._rows(table.slice(0, cut))
                rest = table.slice(cut)
                pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield self._rows(pa.Table.from_batches(pending))

    def _rows(self, table: pa.Table) -> tuple[pd.DataFrame, npt.NDArray[np.float64]]:
        table = _typed(table, RAW_TABLES["candidates"])
        rows = table.to_pandas()
        history = rows[list(HISTORY_COLUMNS)].to_numpy(dtype=np.float64)
        return rows, history


def _booking_end(booking_id: pa.ChunkedArray, at: int) -> int | None:
    """The first position >= ``at`` where a new booking starts, None if the table ends first."""
    ids = booking_id.slice(at - 1).to_numpy(zero_copy_only=False)
    change = np.flatnonzero(ids[1:] != ids[:-1])
    return None if len(change) == 0 else at + int(change[0])


def bucket_count(config: EngineConfig, rows: int) -> int:
    """The validation buckets of a day of ``rows`` raw rows (bookings and candidates)."""
    return max(1, math.ceil(rows / config.bucket_rows))


def num_rows(path: LocationLike) -> int:
    """A parquet file's row count, from its footer."""
    key, fs = Location.of(path).arrow()
    return int(pq.ParquetFile(key if fs is None else fs.open(key, "rb")).metadata.num_rows)


def _read_whole(path: LocationLike, contract: pa.Schema) -> pd.DataFrame:
    """A raw file whole, in file order, with its row positions (as DuckDB's ``FILE_ROW``)
    and the contract's types: what ``Engine._bucket`` gives for a single bucket."""
    key, fs = Location.of(path).arrow()
    table = pq.read_table(key, filesystem=fs)
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    table = table.append_column(FILE_ROW, rows)
    return _typed(table, contract).to_pandas()


def _typed(table: pa.Table, contract: pa.Schema) -> pa.Table:
    """Arrow cast to the raw contract's types (extra columns as they are)."""
    fields = [contract.field(f.name) if f.name in contract.names else f for f in table.schema]
    return table.cast(pa.schema([f.with_nullable(True) for f in fields]))


def _quoted(text: str) -> str:
    return text.replace("'", "''")


@contextmanager
def engine(config: EngineConfig) -> Iterator[Engine]:
    """A DuckDB database in a scratch directory (removed after), limited to
    ``config.memory_limit`` and spilling to that directory beyond it.

    A database file rather than ``:memory:``: measured at 150k bookings, an in-memory
    database peaked 0.1 GB higher for no CPU saved (benchmarks/reports/scale.md, part d)."""
    parent = config.temp_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="matchmaking-day-", dir=parent) as tmp:

        def connect() -> duckdb.DuckDBPyConnection:
            return duckdb.connect(
                str(Path(tmp) / "day.duckdb"),
                config={
                    "memory_limit": config.memory_limit,
                    "temp_directory": str(Path(tmp) / "spill"),
                    "threads": config.threads,
                },
            )

        e = Engine(connect, config)
        try:
            yield e
        finally:
            e.close()


class HashingWriter:
    """A binary sink that hashes what goes through it (sha256) on its way to ``sink``."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._sink.write(view)
        return view.nbytes

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        if not self.closed:
            self._sink.close()
            self.closed = True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def open_sink(path: LocationLike) -> IO[bytes]:
    """A binary write stream to a lake file (a multipart upload on object storage)."""
    sink: IO[bytes] = Location.of(path).open("wb")
    return sink


@dataclass
class Written:
    digest: str
    rows: int
    offered_rows: int
    outside_day: int


def write_features(
    path: LocationLike,
    batches: Iterator[tuple[pd.DataFrame, npt.NDArray[np.float64]]],
    tz: str,
    speed_by_hour: npt.NDArray[np.float64],
    day: np.datetime64,
    empty: pd.DataFrame,
) -> Written:
    """Featurise each batch and stream it into ``path`` (one row group per batch, zstd, with
    statistics); the sha256 of the file comes out of the writing. Rows whose local day is not
    ``day`` (a partition holds its local day) are counted and left out."""
    sink = HashingWriter(open_sink(path))
    writer: pq.ParquetWriter | None = None
    rows = offered = outside = 0
    try:
        for frame_rows, history in batches:
            frame = feature_frame(frame_rows, history, tz, speed_by_hour)
            inside = frame["day"].to_numpy().astype("datetime64[D]") == day
            if not inside.all():
                outside += int((~inside).sum())
                frame = frame.loc[inside].reset_index(drop=True)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = _writer(sink, table.schema)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            rows += table.num_rows
            offered += int(frame["offered"].sum())
        if writer is None:  # a day without a clean row: an empty file of the same schema
            table = pa.Table.from_pandas(empty, preserve_index=False)
            writer = _writer(sink, table.schema)
            writer.write_table(table)
        writer.close()
    finally:
        sink.close()
    return Written(sink.hexdigest(), rows, offered, outside)


def _writer(sink: HashingWriter, schema: pa.Schema) -> pq.ParquetWriter:
    """zstd with statistics; dictionary encoding for the string columns only (ids, policy):
    the float features almost never repeat, and trying a dictionary on each costs a third of
    the writer's CPU for a file 2% smaller."""
    strings = [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    return pq.ParquetWriter(
        sink, schema, compression="zstd", write_statistics=True, use_dictionary=strings
    )
