"""The rows a model learns from, read in bounded memory: only the labelled (offered) rows and
only the columns training needs, a day at a time, as float32 straight into one matrix.

Memory is about ``4 x features + 16`` bytes per labelled row (the matrix, the label, the day
and the booking code), whatever the window's unlabelled rows. Beyond
``TrainParams.max_labelled_rows`` the training days' bookings are subsampled (whole bookings,
seeded by the seed and the day); the validation days are always read whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from matchmaking.errors import InputError
from matchmaking.lake import datasets
from matchmaking.lake.storage import LocationLike
from matchmaking.schema import FEATURE_NAMES, GROUP_COLUMN, LABEL_COLUMN, TIME_COLUMN
from matchmaking.training.params import TrainParams

logger = logging.getLogger(__name__)

_OFFERED = [("offered", "==", True)]
#: The logged propensity training may weight by (schema.LOGGED_POLICY_COLUMNS, never a feature).
PROPENSITY_COLUMN = "offer_propensity"
#: What the held-out comparison of weightings reads of every candidate of the validation days.
CANDIDATE_COLUMNS = ("offer_order", "first_offer_propensity")


@dataclass
class Labelled:
    """Labelled rows in time order, grouped by booking (rows of a booking are contiguous).

    Attributes:
        x: the model input, (rows, features) float32, columns in ``FEATURE_NAMES`` order.
        y: the label (1.0 accepted), float32.
        day: the row's local day (datetime64[D]).
        booking: a booking code per row (equal codes: one booking; contiguous).
        propensity: the logging policy's probability of the row's offer given the offers
            before it (``offer_propensity``; never a feature), or None for a dataset
            published before the decision log carried it.
        names: the columns of ``x`` (``FEATURE_NAMES``; a country model's pooled rows add
            the context features, ``schema.COUNTRY_FEATURE_NAMES``).
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    day: npt.NDArray[np.datetime64]
    booking: npt.NDArray[np.int64]
    propensity: npt.NDArray[np.float64] | None = None
    names: tuple[str, ...] = FEATURE_NAMES

    def __len__(self) -> int:
        return len(self.y)

    def take(self, keep: npt.NDArray[np.bool_]) -> Labelled:
        p = self.propensity[keep] if self.propensity is not None else None
        return Labelled(
            self.x[keep], self.y[keep], self.day[keep], self.booking[keep], p, self.names
        )

    def group_sizes(self) -> npt.NDArray[np.int64]:
        """Rows per booking, in order (LightGBM's query groups)."""
        b = self.booking
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        return np.diff(np.r_[starts, len(b)]).astype(np.int64)

    @classmethod
    def from_frame(cls, rows: pd.DataFrame) -> Labelled:
        """Labelled rows of a DataFrame (``train.labelled``'s output) as they are."""
        codes = pd.factorize(rows[GROUP_COLUMN])[0].astype(np.int64)
        return cls(
            rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float32),
            rows[LABEL_COLUMN].to_numpy(dtype=np.float32),
            rows["day"].to_numpy().astype("datetime64[D]"),
            codes,
            rows[PROPENSITY_COLUMN].to_numpy(dtype=np.float64)
            if PROPENSITY_COLUMN in rows.columns
            else None,
        )


def split(data: Labelled, valid_days: int) -> tuple[Labelled, Labelled]:
    """Time-based split: the last ``valid_days`` distinct days validate, the rest train."""
    days = np.unique(data.day)
    if len(days) <= valid_days:
        raise InputError(
            f"the feature window has {len(days)} day(s) but valid_days={valid_days}; process a "
            "longer window or lower valid_days"
        )
    cut = days[-valid_days]
    return data.take(data.day < cut), data.take(data.day >= cut)


def keep_probabilities(
    counts: dict[np.datetime64, int], cap: int | None, rule: str, half_life_days: float
) -> dict[np.datetime64, float]:
    """Per training day, the probability of keeping a booking so that about ``cap`` labelled
    rows are kept in all (1.0 everywhere when they fit).

    ``uniform``: the same probability every day. ``time_decay``: ``c * 0.5 ** (age /
    half_life_days)`` (age in days before the newest training day), capped at 1, ``c``
    chosen so that the expected rows are ``cap``.
    """
    total = sum(counts.values())
    if cap is None or total <= cap:
        return dict.fromkeys(counts, 1.0)
    if rule == "uniform":
        return dict.fromkeys(counts, cap / total)
    newest = max(counts)
    weight = {d: 0.5 ** (int((newest - d).astype(np.int64)) / half_life_days) for d in counts}
    lo, hi = 0.0, 1.0 / min(weight.values())
    for _ in range(100):  # bisection on c: expected kept rows grow with c
        c = (lo + hi) / 2
        kept = sum(n * min(1.0, c * weight[d]) for d, n in counts.items())
        lo, hi = (c, hi) if kept < cap else (lo, c)
    return {d: min(1.0, hi * weight[d]) for d in counts}


@dataclass(frozen=True)
class Read:
    data: Labelled
    available_rows: int  # labelled rows in the window
    train_rows_available: int  # of which on training days


def read_labelled(dataset: LocationLike, manifest: dict[str, object], params: TrainParams) -> Read:
    """The dataset's labelled rows in time order (see the module docstring).

    Raises:
        InputError: fewer distinct days than ``params.valid_days`` + 1.
    """
    files = datasets.day_files(dataset, manifest)
    counts: dict[np.datetime64, int] = {}
    for path in files:  # pass 1: labelled rows per day (one small column)
        days = datasets.read_table(path, ["day"], filters=_OFFERED)["day"]
        for d, n in _day_counts(days).items():
            counts[d] = counts.get(d, 0) + n
    ordered = sorted(counts)
    if len(ordered) <= params.valid_days:
        raise InputError(
            f"the feature window has {len(ordered)} day(s) but valid_days={params.valid_days}; "
            "process a longer window or lower valid_days"
        )
    valid_from = ordered[-params.valid_days]
    train_counts = {d: n for d, n in counts.items() if d < valid_from}
    keep = keep_probabilities(
        train_counts,
        params.max_labelled_rows,
        params.subsample,
        params.subsample_half_life_days,
    )
    keep.update(dict.fromkeys((d for d in counts if d >= valid_from), 1.0))
    columns = [*FEATURE_NAMES, LABEL_COLUMN, GROUP_COLUMN, TIME_COLUMN, "day"]
    if files and PROPENSITY_COLUMN in datasets.file_columns(files[0]):
        columns.append(PROPENSITY_COLUMN)
    parts: list[Labelled] = []
    offset = 0
    for path in files:  # pass 2: the rows, float32, a day's file at a time
        table = datasets.read_table(path, columns, filters=_OFFERED)
        for part in _by_day(table):
            d = part.day[0]
            if keep[d] < 1.0:
                part = _subsample(part, keep[d], params.seed)
            part.booking += offset
            offset = int(part.booking.max()) + 1 if len(part) else offset
            parts.append(part)
        del table
    data = _concat(parts)
    train_available = sum(train_counts.values())
    if params.max_labelled_rows is not None and train_available > params.max_labelled_rows:
        logger.info(
            "%d labelled training rows exceed max_labelled_rows=%d: %s subsampling kept %d",
            train_available,
            params.max_labelled_rows,
            params.subsample,
            int((data.day < valid_from).sum()),
        )
    return Read(data, sum(counts.values()), train_available)


def _day_counts(days: pa.ChunkedArray) -> dict[np.datetime64, int]:
    values = days.to_numpy().astype("datetime64[D]")
    uniq, n = np.unique(values, return_counts=True)
    return {u: int(c) for u, c in zip(uniq, n, strict=True)}


def _by_day(table: pa.Table) -> list[Labelled]:
    """The table's rows as one ``Labelled`` per day, each in ``train.labelled``'s order
    (request time, booking id, ETA rank; stable)."""
    if table.num_rows == 0:
        return []
    day = table["day"].to_numpy().astype("datetime64[D]")
    booking, _ = pd.factorize(table[GROUP_COLUMN].to_numpy(zero_copy_only=False), sort=True)
    at = pc.cast(table[TIME_COLUMN], pa.int64()).to_numpy()
    rank = table["eta_rank"].to_numpy()
    order = np.lexsort((rank, booking, at))
    x = np.empty((table.num_rows, len(FEATURE_NAMES)), dtype=np.float32)
    for j, name in enumerate(FEATURE_NAMES):
        x[:, j] = table[name].to_numpy()[order]
    y = pc.cast(table[LABEL_COLUMN], pa.float32()).to_numpy()[order]
    prop = (
        pc.cast(table[PROPENSITY_COLUMN], pa.float64()).to_numpy(zero_copy_only=False)[order]
        if PROPENSITY_COLUMN in table.column_names
        else None
    )
    day, booking = day[order], booking[order].astype(np.int64)
    out = []
    for d in np.unique(day):
        sel = day == d
        p = prop[sel] if prop is not None else None
        out.append(Labelled(x[sel], y[sel], day[sel], booking[sel], p))
    return out


def _subsample(part: Labelled, p: float, seed: int) -> Labelled:
    """Whole bookings of one day kept with probability ``p`` (seeded by ``seed`` and day)."""
    ordinal = int(part.day[0].astype(np.int64))
    n_bookings = int(part.booking.max()) + 1
    drawn = np.random.default_rng([seed, ordinal]).random(n_bookings) < p
    kept = part.take(drawn[part.booking])
    codes = np.unique(kept.booking, return_inverse=True)[1] if len(kept) else kept.booking
    kept.booking = np.asarray(codes, dtype=np.int64)
    return kept


def _concat(parts: list[Labelled]) -> Labelled:
    if not parts:
        empty = np.empty((0, len(FEATURE_NAMES)), dtype=np.float32)
        return Labelled(
            empty, np.empty(0, np.float32), np.empty(0, "datetime64[D]"), np.empty(0, np.int64)
        )
    props = [p.propensity for p in parts]
    return Labelled(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.day for p in parts]),
        np.concatenate([p.booking for p in parts]),
        np.concatenate([p for p in props if p is not None])
        if all(p is not None for p in props)
        else None,
    )


@dataclass
class Candidates:
    """Every candidate row (offered or not) of some days, grouped by booking in time order:
    what an off-policy estimate of a model's first offers needs (``training.weighting``).

    Attributes:
        x: the model input, (rows, features) float32.
        booking: a booking code per row (contiguous).
        offer_order: 0 not offered, 1 the booking's first offer, 2 the second...
        first_offer_propensity: the logging policy's probability of offering the row first.
        accepted: 1.0 accepted, 0.0 declined, NaN not offered.
    """

    x: npt.NDArray[np.float32]
    booking: npt.NDArray[np.int64]
    offer_order: npt.NDArray[np.int64]
    first_offer_propensity: npt.NDArray[np.float64]
    accepted: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.booking)


def has_decision_log(dataset: LocationLike, manifest: dict[str, object]) -> bool:
    """Whether the dataset carries the logged propensities (datasets published before the
    decision log did have none)."""
    files = datasets.day_files(dataset, manifest)
    wanted = {PROPENSITY_COLUMN, *CANDIDATE_COLUMNS}
    return bool(files) and wanted <= set(datasets.file_columns(files[0]))


def read_candidates(
    dataset: LocationLike, manifest: dict[str, object], from_day: np.datetime64
) -> Candidates:
    """All candidate rows of the dataset's days from ``from_day`` on (the validation days),
    in ``train.labelled``'s order. About ``4 x features + 32`` bytes per candidate row:
    read only when weightings are compared (``TrainParams.sample_weights``)."""
    wanted = [*FEATURE_NAMES, LABEL_COLUMN, GROUP_COLUMN, TIME_COLUMN, "day", "eta_rank"]
    columns = list(dict.fromkeys([*wanted, *CANDIDATE_COLUMNS]))  # eta_rank is a feature too
    parts: list[pd.DataFrame] = []
    for path in datasets.day_files(dataset, manifest):
        table = datasets.read_table(path, columns)
        day = table["day"].to_numpy().astype("datetime64[D]")
        keep = day >= from_day
        if keep.any():
            parts.append(table.filter(pa.array(keep)).to_pandas())
        del table
    if not parts:
        raise InputError(f"{dataset}: no candidate rows on or after {from_day}")
    rows = pd.concat(parts, ignore_index=True)
    rows = rows.sort_values([TIME_COLUMN, GROUP_COLUMN, "eta_rank"], kind="stable")
    return Candidates(
        rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float32),
        pd.factorize(rows[GROUP_COLUMN])[0].astype(np.int64),
        rows["offer_order"].to_numpy(dtype=np.int64),
        rows["first_offer_propensity"].to_numpy(dtype=np.float64),
        rows[LABEL_COLUMN].astype("float64").to_numpy(),
    )
