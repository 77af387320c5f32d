"""Today's (before issue 14) window-at-once processing, kept as the reference the per-day engine
is compared with: every raw row of the window and its 28-day history read into pandas,
validated together, joined and sorted over the window, history from the offer log itself.

It is test code only: ``matchmaking process`` builds the same rows day by day
(``matchmaking.processing.day``). ``tests/unit/test_day_process.py`` holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking import lake
from matchmaking.features.batch import build_features, driver_snapshot, offer_log
from matchmaking.lake.storage import LocationLike
from matchmaking.markets import get_market
from matchmaking.processing.inputs import require_raw
from matchmaking.processing.validate import validate


@dataclass(frozen=True)
class Reference:
    rows: pd.DataFrame  # the window's published rows, in published order
    driver_table: pd.DataFrame  # valid the day after the window
    quarantine_counts: dict[str, int]


def reference_window(
    root: LocationLike, city: str, start: date, end: date, round_trip: bool = True
) -> Reference:
    """The feature rows and driver table of ``city`` over ``[start, end]`` as today's code made
    them (``processing/step.py`` before the per-day engine), without publishing anything; as a
    reader gets them back from parquet, unless not ``round_trip`` (the pipeline benchmark's
    baseline, which writes them itself)."""
    info = get_market(city)
    read_from = require_raw(root, city, start, end)
    bookings = lake.read_partitions(root, city, "bookings", read_from, end).to_pandas()
    candidates = lake.read_partitions(root, city, "candidates", read_from, end).to_pandas()
    drivers = lake.read_drivers(root, city).to_pandas()
    checked = validate(bookings, candidates, drivers, centre=(info.lat, info.lng))
    offers = offer_log(checked.candidates, info.tz)
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
    if not round_trip:
        return Reference(rows, snapshot, dict(checked.counts))
    return Reference(_published(rows), _published(snapshot), dict(checked.counts))


def _published(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as the old step published it and a reader got it back (zstd parquet)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink, compression="zstd")
    return pq.read_table(pa.BufferReader(sink.getvalue())).to_pandas()
