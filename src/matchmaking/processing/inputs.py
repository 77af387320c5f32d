"""Which raw days the process step reads, and the checks made before reading any row.

A window needs its own days and, for point-in-time driver history, the ``HISTORY_DAYS`` days
before it, as far back as the lake goes (the first days of a lake have a shorter history).
Every one of those partitions must exist and match its table's contract: a missing day is a
storage error, a broken file a data-quality failure of the whole step, never rows quarantined.
"""

from __future__ import annotations

from datetime import date, timedelta

from matchmaking import lake
from matchmaking.errors import StorageError
from matchmaking.features.history import HISTORY_DAYS, lookback_start
from matchmaking.lake.storage import LocationLike
from matchmaking.schema import RAW_TABLES


def history_from(start: date, available: list[date]) -> date:
    """The first day to read for a window starting ``start``: ``HISTORY_DAYS`` before it, or
    the lake's first day when the lake begins later (never after ``start``)."""
    return min(max(lookback_start(start), min(available, default=start)), start)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def require_raw(root: LocationLike, city: str, start: date, end: date) -> date:
    """Check that the window and its history are in the lake and match the raw contract.

    Returns:
        The first day to read (see ``history_from``).

    Raises:
        StorageError: days of the window or of its history have no complete partition; the
            message says which, and what the lake holds.
        DataQualityError: a partition file is unreadable or misses or mistypes a column.
    """
    available = lake.list_dates(root, city)
    first = history_from(start, available)
    have = set(available)
    missing = [d for d in _days(first, end) if d not in have]
    if missing:
        raise StorageError(_missing_message(root, city, start, end, first, missing, available))
    lake.check_partitions(root, city, RAW_TABLES, first, end)
    return first


def _missing_message(
    root: LocationLike,
    city: str,
    start: date,
    end: date,
    first: date,
    missing: list[date],
    available: list[date],
) -> str:
    in_window = [d for d in missing if d >= start]
    in_history = [d for d in missing if d < start]
    window_days = (end - start).days + 1
    history_days = (start - first).days
    parts = []
    if in_window:
        parts.append(
            f"window days {lake.describe_days(in_window)} ({len(in_window)} of {window_days})"
        )
    if in_history:
        parts.append(
            f"history days {lake.describe_days(in_history)} ({len(in_history)} of {history_days})"
        )
    holds = lake.describe_days(available) if available else "no complete partition"
    span = (missing[-1] - missing[0]).days + 1
    return (
        f"cannot process {city} {start}..{end}: besides the window's {window_days} day(s), "
        f"driver features need the {HISTORY_DAYS} days of history before it "
        f"({lookback_start(start)}..{start - timedelta(days=1)}, or from the lake's first "
        f"day if it starts later). Missing: {'; '.join(parts)}. raw/city={city} under {root} "
        f"holds {holds}. Generate the missing days (`matchmaking world generate --cities "
        f"{city} --start {missing[0]} --days {span}`) or choose a window the lake covers "
        "together with its history"
    )
