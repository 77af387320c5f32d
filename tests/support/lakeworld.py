"""A small generated lake and accessors, shared by the data tests (see conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from matchmaking import lake
from matchmaking.world.generate import WorldSummary


@dataclass(frozen=True)
class SmallWorld:
    """A generated lake and what it holds."""

    root: Path
    city: str
    start: date
    days: int
    summary: WorldSummary

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days - 1)

    def bookings(self) -> pd.DataFrame:
        return lake.read_partitions(
            self.root, self.city, "bookings", self.start, self.end
        ).to_pandas()

    def candidates(self) -> pd.DataFrame:
        return lake.read_partitions(
            self.root, self.city, "candidates", self.start, self.end
        ).to_pandas()

    def truth(self) -> pd.DataFrame:
        return lake.read_truth(self.root, self.city, self.start, self.end).to_pandas()
