"""The registry tests' world: two cities, a weak, a one-round, a good and a shuffled-label model.

The fixtures that build them once per session (``registry_world``, ``trained``) are in
``tests/registry/conftest.py``; these are the types and the per-test helpers.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.lake.datasets import FEATURES_FILE, MANIFEST_FILE, read_dataset
from matchmaking.registry.conventions import FEATURES_URI_TAG, model_name
from matchmaking.schema import LABEL_COLUMN
from matchmaking.training.train import TrainResult, register

START = date(2026, 8, 1)
DAYS = 14
TRAIN = (date(2026, 8, 5), date(2026, 8, 10))
HOLDOUT = (date(2026, 8, 11), date(2026, 8, 14))


@dataclass(frozen=True)
class World:
    root: Path
    train_dirs: dict[str, Path]
    holdout_dirs: dict[str, Path]


@dataclass(frozen=True)
class Trained:
    world: World
    server_uri: str
    weak: TrainResult
    one_round: TrainResult
    good: TrainResult
    shuffled: TrainResult
    scratch: Path  # per-test state (lock files) goes here, never into the shared world


def truth_deleted(world: World) -> bool:
    """Whether the world's lake has no ``truth/`` tree (nor any file naming it)."""
    lake = world.root / "lake"
    return lake.is_dir() and not any(p.name == "truth" for p in lake.rglob("*"))


def shuffled_copy(dataset_dir: Path, out: Path, seed: int = 0) -> Path:
    """A published copy of a feature dataset whose labels are permuted among offered rows."""
    shutil.copytree(dataset_dir, out)
    rows, _ = read_dataset(dataset_dir)  # the copy holds its own features.parquet
    offered = rows["offered"].to_numpy(dtype=bool)
    labels = rows.loc[offered, LABEL_COLUMN].to_numpy()
    rows.loc[offered, LABEL_COLUMN] = np.random.default_rng(seed).permutation(labels)
    rows.to_parquet(out / FEATURES_FILE, index=False)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["digest"] = "shuffled-" + manifest["digest"][:40]
    manifest.pop("days", None)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


def tiny_copy(dataset_dir: Path, out: Path, bookings: int) -> Path:
    """A published copy of a feature dataset keeping only its first ``bookings`` bookings."""
    shutil.copytree(dataset_dir, out)
    rows, _ = read_dataset(dataset_dir)  # the copy holds its own features.parquet
    keep = rows["booking_id"].drop_duplicates().iloc[:bookings]
    rows[rows["booking_id"].isin(keep)].to_parquet(out / FEATURES_FILE, index=False)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["digest"] = f"tiny{bookings}-" + manifest["digest"][:40]
    manifest.pop("days", None)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


def settings_for(trained: Trained) -> Settings:
    """Settings of one test: the shared world (read only), the real server, a model prefix and
    a promotion-lock folder of its own (the default would be inside the shared world's lake)."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    return Settings(
        data_dir=trained.world.root,
        tracking_uri=trained.server_uri,
        model_name_prefix=prefix,
        experiment_prefix=prefix,
        promotion_locks_uri=str(trained.scratch / prefix / "locks"),
    )


def register_copy(
    settings: Settings, city: str, source: TrainResult, features_dir: Path | None = None
) -> str:
    """Register ``source``'s logged model as a new version of ``settings``' model of ``city``."""
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    mv = client.get_model_version(source.model_name, source.version)
    tags = dict(mv.tags)
    if features_dir is not None:
        tags[FEATURES_URI_TAG] = features_dir.resolve().as_uri()
    return register(
        client,
        model_name(settings.model_name_prefix, city),
        mv.source,
        mv.model_id or mv.source.removeprefix("models:/"),
        str(mv.run_id),
        tags,
        description=f"copy of {source.model_name} v{source.version} for a registry test",
    )
