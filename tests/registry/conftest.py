"""A small two-city world, and four trained models on the real tracking server.

The world's ``truth/`` tree (the simulator's hidden probabilities) is deleted as soon as the
simulator wrote it: a real dispatch system has none, so processing, training, the gate (which
decides on the logged holdout alone) and serving run without it in every registry test.

Training is the slow part, so it happens once per session: a weak model (2 boosting rounds), a
one-round one, a good one, and one trained on shuffled labels, all on Jakarta. Each test then
registers the versions it needs under its own model-name prefix by pointing new versions at
those logged models (``register_copy``), which costs a registry call, not a training.
"""

from __future__ import annotations

import shutil
import uuid

import pytest
from support.registry_world import DAYS, HOLDOUT, START, TRAIN, Trained, World, shuffled_copy
from support.tracking_server import TrackingServer

from matchmaking.config import Settings
from matchmaking.lake import storage
from matchmaking.processing.step import build_dataset
from matchmaking.training.params import TrainParams
from matchmaking.training.train import train
from matchmaking.world.generate import generate_world


@pytest.fixture(scope="session")
def registry_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("registry-world")
    settings = Settings(data_dir=root)
    cities = ["jakarta", "bangkok"]
    generate_world(cities, START, DAYS, 11, settings.lake_dir, 0.002, 350, progress=False)
    truth = storage.local_path(settings.lake_dir) / "truth"
    assert truth.is_dir(), "the simulator wrote no truth/: nothing to delete, the test proves less"
    shutil.rmtree(truth)  # before processing: process, train, promote and serve run without it
    train_dirs, holdout_dirs = {}, {}
    for city in cities:
        train_dirs[city] = build_dataset(settings, city, *TRAIN, max_bad_share=0.05).dataset_dir
        holdout_dirs[city] = build_dataset(settings, city, *HOLDOUT, max_bad_share=0.05).dataset_dir
    return World(root, train_dirs, holdout_dirs)


@pytest.fixture(scope="session")
def trained(
    registry_world: World, tracking_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """Weak, good and shuffled-label Jakarta models, trained once on the real server."""
    settings = Settings(
        data_dir=registry_world.root,
        tracking_uri=tracking_server.uri,
        model_name_prefix=f"src-{uuid.uuid4().hex[:8]}",
        experiment_prefix=f"src-{uuid.uuid4().hex[:8]}",
    )
    base = TrainParams(objectives=["binary"], valid_days=1, num_boost_round=150)
    jakarta = registry_world.train_dirs["jakarta"]
    weak = train(settings, "jakarta", jakarta, base.model_copy(update={"num_boost_round": 2}))
    one_round = train(settings, "jakarta", jakarta, base.model_copy(update={"num_boost_round": 1}))
    good = train(settings, "jakarta", jakarta, base.model_copy(update={"seed": 7}))
    shuffled_dir = shuffled_copy(jakarta, registry_world.root / f"shuffled-{uuid.uuid4().hex}")
    shuffled = train(settings, "jakarta", shuffled_dir, base, reuse_existing=False)
    scratch = tmp_path_factory.mktemp("registry-scratch")
    return Trained(registry_world, tracking_server.uri, weak, one_round, good, shuffled, scratch)
