"""Small seeded worlds shared by the data tests (generated once per session)."""

from __future__ import annotations

from datetime import date

import pytest
from support.lakeworld import SmallWorld

from matchmaking.world.generate import generate_world

START = date(2026, 10, 5)  # a Monday
DAYS = 2


@pytest.fixture(scope="session")
def jakarta_world(tmp_path_factory: pytest.TempPathFactory) -> SmallWorld:
    """Jakarta at the demo scale's volume: 2 days x 2,000 bookings."""
    root = tmp_path_factory.mktemp("lake")
    summary = generate_world(
        cities=["jakarta"],
        start=START,
        days=DAYS,
        seed=7,
        out=root,
        scale=0.002,
        bookings_per_day=2000,
        progress=False,
    )
    return SmallWorld(root=root, city="jakarta", start=START, days=DAYS, summary=summary)
