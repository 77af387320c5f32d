"""Which holdout a promotion measures on: the newest published feature dataset of the city
whose window starts after both models' training windows (or the one given).

Finding a city's published datasets is the lake's job (``lake.datasets.find_holdout``); the
gate only calls ``resolve_holdout``.
"""

from __future__ import annotations

import json
import logging
from datetime import date

from mlflow.entities.model_registry import ModelVersion

from matchmaking.config import Settings
from matchmaking.errors import InputError
from matchmaking.lake import storage
from matchmaking.lake.datasets import MANIFEST_FILE, find_holdout
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.registry.conventions import FEATURES_URI_TAG

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


def resolve_holdout(
    settings: Settings,
    city: str,
    candidate: ModelVersion,
    production: ModelVersion | None,
    holdout: LocationLike | None,
) -> Location:
    """``holdout`` if given, else the newest dataset after both models' training windows."""
    if holdout is not None:
        return Location.of(holdout)
    ends = [training_window_end(mv) for mv in (candidate, production) if mv is not None]
    if ends[0] is None:
        raise InputError(
            f"{city}: cannot tell the training window of v{candidate.version} (tag features_uri "
            "missing or unreadable here); pass --holdout DIR"
        )
    return find_holdout(settings, city, max(e for e in ends if e is not None))
