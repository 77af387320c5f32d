"""The model tests' world: Jakarta at the demo scale, processed once per session.

The ``processed_world`` fixture that builds it is in ``tests/model/conftest.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from matchmaking.config import Settings
from matchmaking.pipeline import Windows
from matchmaking.processing.step import ProcessResult

CITY = "jakarta"
TRAIN_DAYS = 28
HOLDOUT_DAYS = 7


@dataclass(frozen=True)
class ProcessedWorld:
    settings: Settings
    windows: Windows
    train: ProcessResult
    holdout: ProcessResult
