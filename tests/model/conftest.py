"""A realistic one-city world, processed once per session, for the model tests."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from support.processed_world import CITY, HOLDOUT_DAYS, TRAIN_DAYS, ProcessedWorld

from matchmaking.config import Settings
from matchmaking.features.history import HISTORY_DAYS
from matchmaking.pipeline import windows
from matchmaking.processing.step import build_dataset
from matchmaking.world.generate import generate_world


@pytest.fixture(scope="session")
def processed_world(tmp_path_factory: pytest.TempPathFactory) -> ProcessedWorld:
    """Jakarta at the demo scale: 28 days of history, 28 to train, 7 to hold out."""
    root = tmp_path_factory.mktemp("model-world")
    settings = Settings(data_dir=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    start = date(2026, 8, 1)
    days = HISTORY_DAYS + TRAIN_DAYS + HOLDOUT_DAYS
    generate_world(
        cities=[CITY],
        start=start,
        days=days,
        seed=42,
        out=settings.lake_dir,
        scale=0.002,
        bookings_per_day=None,
        progress=False,
    )
    w = windows(start + timedelta(days=days - 1), TRAIN_DAYS, HOLDOUT_DAYS)
    train = build_dataset(settings, CITY, w.train_start, w.train_end, max_bad_share=0.05)
    holdout = build_dataset(settings, CITY, w.holdout_start, w.holdout_end, max_bad_share=0.05)
    return ProcessedWorld(settings, w, train, holdout)
