"""Finding a city's Production version in the registry and loading it for fast scoring.

A version is served by its raw LightGBM booster (no pyfunc, no pandas) plus the driver table
published with it (``extra_files/driver_table.parquet``). Production is the alias
``production``; where a model has no such alias, the latest version in stage ``Production``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient

from matchmaking.errors import ModelNotFoundError, TrackingError
from matchmaking.features.core import FloatArray, build_matrix
from matchmaking.features.online import (
    DriverTable,
    OnlineBooking,
    OnlineCandidates,
    build_online_inputs,
)
from matchmaking.markets import Market as City
from matchmaking.schema import FEATURE_NAMES

logger = logging.getLogger(__name__)

PRODUCTION_ALIAS = "production"
PRODUCTION_STAGE = "Production"
DRIVER_TABLE_FILE = "driver_table.parquet"
_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
# A tracking server answers a missing alias of an existing model with INVALID_PARAMETER_VALUE.
_NO_ALIAS = (_NOT_FOUND, ErrorCode.Name(INVALID_PARAMETER_VALUE))


@dataclass(frozen=True)
class VersionRef:
    """A registered version and how it was found (``alias`` or ``stage``)."""

    name: str
    version: str
    run_id: str | None
    source: str
    score_kind: str


Predictor = Callable[[FloatArray], FloatArray]


@dataclass
class LoadedModel:
    """One city's model, ready to score: never mutated after it is published.

    ``compiled`` is the forest compiled to native code by lleaves (when installed and enabled),
    checked against the booster at load; ``predict`` uses it, else the booster.
    """

    city: City
    ref: VersionRef
    booster: lgb.Booster
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
        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64)

    def features(self, bookings: list[OnlineBooking], candidates: OnlineCandidates) -> FloatArray:
        """The online feature matrix (``schema.FEATURE_NAMES`` order)."""
        return build_matrix(build_online_inputs(self.city, bookings, candidates, self.drivers))

    def warm(self) -> None:
        """Score a few rows once so the first real request pays no first-call cost."""
        self.predict(np.zeros((8, len(FEATURE_NAMES))))


def is_not_found(exc: MlflowException) -> bool:
    """Whether the registry said "no such model / alias" (as opposed to failing)."""
    return exc.error_code == _NOT_FOUND


def resolve_production(client: MlflowClient, name: str) -> VersionRef:
    """The version to serve: alias ``production``, else the latest in stage Production.

    Raises:
        ModelNotFoundError: the model does not exist or has no Production version.
        TrackingError: the registry failed or could not be reached.
    """
    try:
        try:
            mv = client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
            source = f"alias:{PRODUCTION_ALIAS}"
        except MlflowException as exc:
            if exc.error_code not in _NO_ALIAS:
                raise
            with warnings.catch_warnings():  # stages are deprecated; still the documented fallback
                warnings.simplefilter("ignore", FutureWarning)
                latest = client.get_latest_versions(name, stages=[PRODUCTION_STAGE])
            if not latest:
                raise ModelNotFoundError(
                    f"registered model {name!r} has no '@{PRODUCTION_ALIAS}' alias and no version "
                    f"in stage {PRODUCTION_STAGE}; promote a version first"
                ) from None
            mv = latest[0]
            source = f"stage:{PRODUCTION_STAGE}"
    except MlflowException as exc:
        if is_not_found(exc):
            raise ModelNotFoundError(
                f"no registered model {name!r}: train and promote one for this city first"
            ) from None
        raise TrackingError(f"registry error while resolving {name}: {exc.message}") from exc
    except OSError as exc:  # connection refused, timeouts surfaced by requests
        raise TrackingError(f"registry unreachable while resolving {name}: {exc}") from exc
    return VersionRef(
        name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        source=source,
        score_kind=(mv.tags or {}).get("score_kind", "probability"),
    )


def _model_file(model_dir: Path) -> Path:
    """The LightGBM model file named by the MLmodel's lightgbm flavor."""
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    flavor = (meta.get("flavors") or {}).get("lightgbm")
    if not flavor or "data" not in flavor:
        raise ModelNotFoundError(f"{model_dir} is not a LightGBM model (no lightgbm flavor)")
    return model_dir / str(flavor["data"])


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
    city: City,
    registry_uri: str,
    compile_cache: Path | None = None,
    compile_forests: bool = True,
) -> LoadedModel:
    """Download a version, load its booster and driver table, warm it; off the request path.

    Raises:
        TrackingError: the artifacts could not be downloaded.
        ModelNotFoundError: the version's artifacts are not a servable model.
    """
    import mlflow.artifacts

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"mm-serve-{city.id}-"))
    try:
        try:
            # The version's own artifact location, downloaded against our registry explicitly
            # (a models:/ URI would resolve the logged model through the global tracking URI).
            source = client.get_model_version_download_uri(ref.name, ref.version)
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source,
                    dst_path=str(tmp),
                    tracking_uri=registry_uri,
                    registry_uri=registry_uri,
                )
            )
        except (MlflowException, OSError) as exc:
            raise TrackingError(f"could not download {ref.name} v{ref.version}: {exc}") from exc
        booster = lgb.Booster(model_file=str(_model_file(local)))
        names = tuple(booster.feature_name())
        if names != FEATURE_NAMES:
            raise ModelNotFoundError(
                f"{ref.name} v{ref.version} expects features {names}, the service builds "
                f"{FEATURE_NAMES}; retrain it with this version of the feature contract"
            )
        table_path = local / "extra_files" / DRIVER_TABLE_FILE
        if table_path.exists():
            drivers = DriverTable.from_parquet(table_path)
        else:
            logger.warning(
                "%s v%s has no %s: every driver gets new-driver defaults",
                ref.name,
                ref.version,
                DRIVER_TABLE_FILE,
            )
            drivers = DriverTable.empty()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    compiled = None
    if compile_forests:
        cache = None
        if compile_cache is not None:
            cache = compile_cache / f"{ref.name}-v{ref.version}-{ref.run_id or 'run'}.so"
        compiled = compile_forest(booster, cache)
    model = LoadedModel(city=city, ref=ref, booster=booster, drivers=drivers, compiled=compiled)
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
