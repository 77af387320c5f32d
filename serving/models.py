"""Finding a city's Production version in the registry and loading it for fast scoring.

A version is loaded through the platform's model seam (``matchmaking.scorer.load_scorer``: the
raw booster, no pyfunc, no pandas), then compiled to native code by lleaves when available and
warmed; the driver table published with it (``conventions.DRIVER_TABLE_ARTIFACT``) comes along.
Which version is in Production is ``registry.production.resolve_production``'s answer, the one
resolver promotion uses too: the alias ``production``, else the latest version in stage
``Production``. What the scores are (``score_kind``) is the version's tag.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.errors import ModelNotFoundError, TrackingError
from matchmaking.features.core import FloatArray, build_matrix
from matchmaking.features.online import (
    DriverTable,
    OnlineBooking,
    OnlineCandidates,
    build_online_inputs,
)
from matchmaking.markets import Market
from matchmaking.registry.conventions import (
    CITY_TAG,
    DRIVER_TABLE_ARTIFACT,
    DRIVER_TABLE_NAME,
    SCORE_KIND_TAG,
)
from matchmaking.registry.production import resolve_production as resolve
from matchmaking.schema import FEATURE_NAMES
from matchmaking.scorer import (
    LightGBMScorer,
    ScoreKind,
    load_scorer,
    score_kind_of,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRef:
    """A registered version and how it was found (``alias`` or ``stage``)."""

    name: str
    version: str
    run_id: str | None
    source: str
    score_kind: ScoreKind
    tags: dict[str, str] = field(default_factory=dict)


Predictor = Callable[[FloatArray], FloatArray]


@dataclass
class LoadedModel:
    """One city's model, ready to score: never mutated after it is published.

    ``compiled`` is the forest compiled to native code by lleaves (when installed and enabled),
    checked against the booster at load; ``predict`` uses it, else the booster.
    """

    city: Market
    ref: VersionRef
    scorer: LightGBMScorer
    drivers: DriverTable
    compiled: Predictor | None = None
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def version(self) -> str:
        return self.ref.version

    @property
    def engine(self) -> str:
        return "lleaves" if self.compiled is not None else "lightgbm"

    def predict(self, matrix: FloatArray) -> FloatArray:
        """Scores of a feature matrix (equal to ``Booster.predict``), single-threaded."""
        if self.compiled is not None:
            return self.compiled(matrix)
        return self.scorer.predict(matrix)

    def features(self, bookings: list[OnlineBooking], candidates: OnlineCandidates) -> FloatArray:
        """The online feature matrix (``schema.FEATURE_NAMES`` order)."""
        return build_matrix(build_online_inputs(self.city, bookings, candidates, self.drivers))

    def warm(self) -> None:
        """Score a few rows once so the first real request pays no first-call cost."""
        self.predict(np.zeros((8, len(FEATURE_NAMES))))


def resolve_production(client: MlflowClient, name: str) -> VersionRef:
    """The version to serve (``registry.production.resolve_production``).

    Raises:
        ModelNotFoundError: the model does not exist or has no Production version.
        TrackingError: the registry failed or could not be reached.
    """
    found = resolve(client, name)
    mv = found.version
    tags = dict(mv.tags or {})
    return VersionRef(
        name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        source=found.source,
        score_kind=score_kind_of(tags, f"{name} v{mv.version}"),
        tags=tags,
    )


# Rows spanning each feature's range, to check a compiled forest against the booster.
_CHECK_ROWS = 256
_CHECK_TOLERANCE = 1e-9


def compile_forest(booster: lgb.Booster, cache: Path | None) -> Predictor | None:
    """The forest compiled by lleaves (``None`` when lleaves is not installed or disagrees).

    The object file is cached at ``cache`` when given (compiling takes a second or two).
    """
    try:
        import lleaves
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="mm-lleaves-") as tmp:
        path = Path(tmp) / "model.txt"
        booster.save_model(str(path))
        model = lleaves.Model(model_file=str(path))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
        model.compile(cache=None if cache is None else str(cache))

    def predict(matrix: FloatArray) -> FloatArray:
        return np.asarray(model.predict(matrix, n_jobs=1), dtype=np.float64)

    rng = np.random.default_rng(0)
    rows = rng.normal(0.0, 1.0, (_CHECK_ROWS, booster.num_feature())) * rng.choice(
        [0.1, 1.0, 10.0, 1000.0, 100_000.0], (_CHECK_ROWS, booster.num_feature())
    )
    rows[::5, ::3] = np.nan
    gap = float(np.max(np.abs(predict(rows) - booster.predict(rows, num_threads=1))))
    if gap > _CHECK_TOLERANCE:
        logger.error("compiled forest differs from the booster by %.3g: not using it", gap)
        return None
    return predict


def load_version(
    client: MlflowClient,
    ref: VersionRef,
    city: Market,
    registry_uri: str,
    compile_cache: Path | None = None,
    compile_forests: bool = True,
) -> LoadedModel:
    """Download a version, load its booster and driver table, warm it; off the request path.

    Raises:
        TrackingError: the artifacts could not be downloaded.
        ModelNotFoundError: the version's artifacts are not a servable model.
    """
    tagged = ref.tags.get(CITY_TAG)
    if tagged is not None and tagged != city.id:
        raise ModelNotFoundError(
            f"{ref.name} v{ref.version} is a model of {tagged!r} (its city tag), not "
            f"{city.id!r}: not serving it; promote a {city.id} model to {ref.name}"
        )
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"mm-serve-{city.id}-"))
    try:
        try:
            # The version's own artifact location, downloaded against our registry explicitly
            # (a models:/ URI would resolve the logged model through the global tracking URI).
            source = client.get_model_version_download_uri(ref.name, ref.version)
            tags = {**ref.tags, SCORE_KIND_TAG: ref.score_kind}  # as resolved (and warned)
            scorer = load_scorer(
                source, tags, version=ref.version, tracking_uri=registry_uri, dst=tmp
            )
        except (MlflowException, OSError) as exc:
            raise TrackingError(f"could not download {ref.name} v{ref.version}: {exc}") from exc
        scorer = replace(scorer, num_threads=1)
        local = scorer.files or tmp
        names = scorer.feature_names
        if names != FEATURE_NAMES:
            raise ModelNotFoundError(
                f"{ref.name} v{ref.version} expects features {names}, the service builds "
                f"{FEATURE_NAMES}; retrain it with this version of the feature contract"
            )
        table_path = local / DRIVER_TABLE_ARTIFACT
        if table_path.exists():
            drivers = DriverTable.from_parquet(table_path)
        else:
            logger.warning(
                "%s v%s has no %s: every driver gets new-driver defaults",
                ref.name,
                ref.version,
                DRIVER_TABLE_NAME,
            )
            drivers = DriverTable.empty()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    compiled = None
    if compile_forests:
        cache = None
        if compile_cache is not None:
            cache = compile_cache / f"{ref.name}-v{ref.version}-{ref.run_id or 'run'}.so"
        compiled = compile_forest(scorer.booster, cache)  # type: ignore[arg-type]
    model = LoadedModel(city=city, ref=ref, scorer=scorer, drivers=drivers, compiled=compiled)
    model.warm()
    model.load_seconds = time.perf_counter() - started
    logger.info(
        "loaded %s v%s (%s, %s, %d drivers) in %.2f s",
        ref.name,
        ref.version,
        ref.source,
        model.engine,
        len(drivers),
        model.load_seconds,
    )
    return model
