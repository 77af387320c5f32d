"""Which holdout a promotion measures on: the newest published feature dataset of the city
whose window starts after both models' training windows (or the one given).

Finding a city's published datasets (``_published``, ``find_holdout``) is the lake's job and
moves to the lake package; the gate only calls ``resolve_holdout``.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from matchmaking import storage
from matchmaking.config import Settings
from matchmaking.errors import InputError
from matchmaking.processing.step import MANIFEST_FILE
from matchmaking.registry.conventions import FEATURES_URI_TAG
from matchmaking.storage import Location

logger = logging.getLogger(__name__)


def training_window_end(mv: ModelVersion) -> date | None:
    """Last day of the version's training window, from the manifest behind ``features_uri``."""
    uri = mv.tags.get(FEATURES_URI_TAG)
    if not uri:
        return None
    manifest = storage.join(uri, MANIFEST_FILE)
    try:
        if not storage.exists(manifest):
            return None
        return date.fromisoformat(str(json.loads(storage.read_bytes(manifest))["end"]))
    except (OSError, ImportError, ValueError):  # unreachable filesystem, no driver for it
        logger.warning("cannot read the manifest behind features_uri %s", uri)
        return None


def _published(settings: Settings, city: str) -> list[tuple[Location, float]]:
    """The city's published feature datasets and when they were published."""
    base = storage.join(settings.features_dir, f"city={city}")
    if isinstance(base, Path):
        return [(s.parent, s.stat().st_mtime) for s in base.glob("*/*/_SUCCESS")]
    fs, key = storage.filesystem(base)
    fs.invalidate_cache(key)
    out: list[tuple[Location, float]] = []
    for marker in fs.glob(f"{key}/*/*/_SUCCESS"):
        modified = fs.modified(marker).timestamp()
        out.append((f"{base}/{str(marker)[len(key) + 1 :].rsplit('/', 1)[0]}", modified))
    return out


def find_holdout(settings: Settings, city: str, after: date) -> Location:
    """The newest published feature dataset of ``city`` whose window starts after ``after``."""
    found: list[tuple[date, date, float, str, Location]] = []
    for dataset, published in _published(settings, city):
        manifest = json.loads(storage.read_bytes(storage.join(dataset, MANIFEST_FILE)))
        start = date.fromisoformat(str(manifest["start"]))
        if start > after:
            end = date.fromisoformat(str(manifest["end"]))
            found.append((end, start, published, str(dataset), dataset))
    if not found:
        raise InputError(
            f"{city}: no published feature dataset starts after {after} (the training window's "
            f"end) under {settings.features_dir}; run `matchmaking process --city {city} "
            "--start <later> --end <later>` or pass --holdout DIR"
        )
    return max(found)[4]


def resolve_holdout(
    settings: Settings,
    city: str,
    candidate: ModelVersion,
    production: ModelVersion | None,
    holdout: Location | None,
) -> Location:
    """``holdout`` if given, else the newest dataset after both models' training windows."""
    if holdout is not None:
        return holdout
    ends = [training_window_end(mv) for mv in (candidate, production) if mv is not None]
    if ends[0] is None:
        raise InputError(
            f"{city}: cannot tell the training window of v{candidate.version} (tag features_uri "
            "missing or unreadable here); pass --holdout DIR"
        )
    return find_holdout(settings, city, max(e for e in ends if e is not None))
