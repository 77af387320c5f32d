"""Point-in-time driver history: offers and acceptances in the 28 days before a given day.

A row on day D only sees days D-28 .. D-1: never its own day, never the future. The same
numbers, computed as of the day after the data window, form the driver feature table that the
scoring service reads, so training and serving agree on what "history" means.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd

HISTORY_DAYS = 28


def window_counts(
    driver_id: npt.NDArray[np.object_],
    day: npt.NDArray[np.datetime64],
    accepted: npt.NDArray[np.float64],
    query_driver: npt.NDArray[np.object_],
    query_day: npt.NDArray[np.datetime64],
    days: int = HISTORY_DAYS,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Offers and acceptances of ``query_driver`` in the ``days`` days before ``query_day``."""
    sums = window_sums(driver_id, day, accepted[:, None], query_driver, query_day, days)
    return sums[:, 0], sums[:, 1]


def window_sums(
    driver_id: npt.NDArray[np.object_],
    day: npt.NDArray[np.datetime64],
    values: npt.NDArray[np.float64],
    query_driver: npt.NDArray[np.object_],
    query_day: npt.NDArray[np.datetime64],
    days: int = HISTORY_DAYS,
) -> npt.NDArray[np.float64]:
    """Per query row: the number of offers and the sums of ``values`` over the driver's offers
    in the ``days`` days before ``query_day``.

    Args:
        driver_id, day: the offer log, one row per offer (``day``: datetime64[D]).
        values: one row per offer, one column per quantity to add up (e.g. accepted, ETA).
        query_driver, query_day: the rows to compute history for (``query_day``: datetime64[D]).
        days: window length in days.

    Returns:
        An array (len(query_driver), 1 + values.shape[1]): the offer count, then the sums.
    """
    k = values.shape[1]
    if len(query_driver) == 0:
        return np.zeros((0, 1 + k))
    day = day.astype("datetime64[D]")
    query_day = query_day.astype("datetime64[D]")
    first = min(day.min(), query_day.min()) if len(day) else query_day.min()
    last = max(day.max(), query_day.max()) if len(day) else query_day.max()
    n_days = int((last - first).astype(np.int64)) + 1
    drivers = pd.Index(pd.unique(np.concatenate([driver_id, query_driver])))

    totals = np.zeros((1 + k, len(drivers), n_days + 1))
    if len(driver_id):
        d_idx = drivers.get_indexer(driver_id)
        t_idx = (day - first).astype(np.int64) + 1
        np.add.at(totals[0], (d_idx, t_idx), 1.0)
        for j in range(k):
            np.add.at(totals[1 + j], (d_idx, t_idx), values[:, j].astype(np.float64))
    # cum[..., t] = total over days first .. first+t-1
    cum = np.cumsum(totals, axis=2)
    q_d = drivers.get_indexer(query_driver)
    hi = (query_day - first).astype(np.int64)  # days strictly before the query day
    lo = np.maximum(hi - days, 0)
    return (cum[:, q_d, hi] - cum[:, q_d, lo]).T


def lookback_start(start: date, days: int = HISTORY_DAYS) -> date:
    """The first day of raw data needed to compute history for rows from ``start`` on."""
    return start - timedelta(days=days)
