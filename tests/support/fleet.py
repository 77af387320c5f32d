"""The report tests' fleet: two cities over a few simulated pipeline days.

The ``fleet`` fixture that runs those days once per session is in
``tests/reporting/conftest.py``; these are its dates, its result type and its helpers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa

from matchmaking import lake
from matchmaking.config import Settings
from matchmaking.registry.fleet import CityOutcome
from matchmaking.reporting.report import ReportResult

CITIES = ("jakarta", "bangkok")
START = date(2026, 8, 1)
DAYS = 16
# (training window, holdout window) of each simulated pipeline day
PIPELINE_DAYS = (
    ((date(2026, 8, 3), date(2026, 8, 10)), (date(2026, 8, 11), date(2026, 8, 12))),
    ((date(2026, 8, 5), date(2026, 8, 12)), (date(2026, 8, 13), date(2026, 8, 14))),
)
LAST_HOLDOUT = (date(2026, 8, 15), date(2026, 8, 16))


BAD_ETA_DAY = date(2026, 8, 14)  # a few raw rows with a negative ETA: quarantined as bad_eta


def corrupt_etas(settings: Settings, city: str, day: date, rows: int) -> None:
    """Rewrite the first ``rows`` candidate ETAs of a raw partition as -1 s."""
    bookings = lake.read_partitions(settings.lake_dir, city, "bookings", day, day)
    candidates = lake.read_partitions(settings.lake_dir, city, "candidates", day, day)
    eta = candidates.column("eta_seconds").to_numpy().copy()
    eta[:rows] = -1.0
    index = candidates.schema.get_field_index("eta_seconds")
    candidates = candidates.set_column(index, candidates.schema.field(index), pa.array(eta))
    tables = {"bookings": bookings, "candidates": candidates}
    lake.write_partition(settings.lake_dir, "raw", city, day, tables)


@dataclass
class Fleet:
    settings: Settings
    outcomes: list[CityOutcome] = field(default_factory=list)
    evaluate_runs: dict[str, list[str]] = field(default_factory=dict)
    process_runs: dict[str, list[str]] = field(default_factory=dict)
    report: ReportResult | None = None


def fleet_settings(root: Path, server_uri: str) -> Settings:
    prefix = f"rep-{uuid.uuid4().hex[:8]}"
    return Settings(
        data_dir=root,
        tracking_uri=server_uri,
        model_name_prefix=prefix,
        experiment_prefix=prefix,
        promotion_locks_uri=str(root / "locks"),
    )
