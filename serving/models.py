"""Finding a city's Production version in the registry and loading it for fast scoring.

A version is loaded through the platform's model seam (``matchmaking.scorer.open_lightgbm_file``:
the raw booster, no pyfunc, no pandas) from the two files serving needs
(``conventions.SERVING_ARTIFACTS``: the LightGBM model file and the driver table published with
it), and warmed. It serves with LightGBM's predict at once; the forest compiled to native code
by lleaves is built later, off the request path (``serving.compile``), and swapped in.
Which version is in Production is ``registry.production.resolve_production``'s answer, the one
resolver promotion uses too: the alias ``production``, else the latest version in stage
``Production``. What the scores are (``score_kind``) is the version's tag.

A loaded model is a city's own (``<prefix>-<city>``: input ``schema.FEATURE_NAMES``) or a
country's pooled model (``<prefix>-country-<cc>``: input ``schema.COUNTRY_FEATURE_NAMES``, the
city contract plus the context columns that ``features.context.with_context`` computes from the
request's ``Market``, as training and the gate do). One country model serves any number of its
cities; which model serves which city is the model store's routing (``registry_watch``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.errors import ModelNotFoundError, TrackingError
from matchmaking.features.context import with_context
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
    COUNTRY_TAG,
    DRIVER_TABLE_NAME,
    LIGHTGBM_MODEL_FILE,
    SCOPE_CITY,
    SCOPE_COUNTRY,
    SCOPE_TAG,
    SCORE_KIND_TAG,
    SERVING_ARTIFACTS,
)
from matchmaking.registry.production import is_not_found
from matchmaking.registry.production import resolve_production as resolve
from matchmaking.schema import COUNTRY_FEATURE_NAMES, FEATURE_NAMES
from matchmaking.scorer import LightGBMScorer, ScoreKind, open_lightgbm_file, score_kind_of

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
    """One registered model's version, ready to score: never mutated after it is published.

    ``city`` is the market a city model serves; a country model (``country`` set, ``city``
    None) serves the request's market, whichever of its country's cities that is.

    ``compiled`` is the forest compiled to native code by lleaves, checked against the booster;
    ``predict`` uses it when present, else the booster. A model is first published without it
    (``engine`` ``lightgbm``) and republished with it (``with_compiled``) once the background
    compilation is done.
    """

    city: Market | None
    ref: VersionRef
    scorer: LightGBMScorer
    drivers: DriverTable
    compiled: Predictor | None = None
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    compile_seconds: float | None = None
    country: str | None = None  # alpha-2 code of a country model

    def with_compiled(self, compiled: Predictor, seconds: float) -> LoadedModel:
        """A copy that predicts with ``compiled`` (the published object stays as it was)."""
        return replace(self, compiled=compiled, compile_seconds=seconds)

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def version(self) -> str:
        return self.ref.version

    @property
    def engine(self) -> str:
        return "lleaves" if self.compiled is not None else "lightgbm"

    @property
    def scope(self) -> str:
        """``city`` (the city's own model) or ``country`` (its country's pooled model): the
        answers' ``model_scope``."""
        return SCOPE_COUNTRY if self.country is not None else SCOPE_CITY

    @property
    def label(self) -> str:
        """The ``city`` label of the per-model metrics: the city id, or ``country:<CC>``."""
        if self.city is not None:
            return self.city.id
        return f"{SCOPE_COUNTRY}:{self.country}"

    def predict(self, matrix: FloatArray) -> FloatArray:
        """Scores of a feature matrix (equal to ``Booster.predict``), single-threaded."""
        if self.compiled is not None:
            return self.compiled(matrix)
        return self.scorer.predict(matrix)

    def features(
        self, market: Market, bookings: list[OnlineBooking], candidates: OnlineCandidates
    ) -> FloatArray:
        """The online feature matrix of requests in ``market``'s city: ``schema.FEATURE_NAMES``
        order, with the market's context columns appended for a country model
        (``COUNTRY_FEATURE_NAMES``, computed by ``features.context.with_context`` as in
        training and evaluation)."""
        matrix = build_matrix(build_online_inputs(market, bookings, candidates, self.drivers))
        return matrix if self.country is None else with_context(matrix, market)

    def warm(self) -> None:
        """Score a few rows once so the first real request pays no first-call cost."""
        self.predict(np.zeros((8, len(self.scorer.feature_names))))


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


def check_rows(num_feature: int) -> FloatArray:
    """Rows spanning every feature's range (and missing values), for compiled-vs-booster checks."""
    rng = np.random.default_rng(0)
    rows = rng.normal(0.0, 1.0, (_CHECK_ROWS, num_feature)) * rng.choice(
        [0.1, 1.0, 10.0, 1000.0, 100_000.0], (_CHECK_ROWS, num_feature)
    )
    rows[::5, ::3] = np.nan
    return rows


def _missing(exc: MlflowException) -> bool:
    """Whether a download failed because the file is not there (not because the store failed):
    the artifact repositories wrap the server's RESOURCE_DOES_NOT_EXIST in their own error."""
    text = str(exc)
    return is_not_found(exc) or "RESOURCE_DOES_NOT_EXIST" in text or "No such" in text


def fetch_serving_files(
    client: MlflowClient, ref: VersionRef, registry_uri: str, dst: Path
) -> tuple[Path, Path | None]:
    """Download only the model file and the driver table of a version (``SERVING_ARTIFACTS``),
    never the whole model directory (environment files, input examples, signature).

    Returns the local model file and driver table (None when the version has no table).

    Raises:
        TrackingError: the registry or the artifact store failed.
        ModelNotFoundError: the version has no ``LIGHTGBM_MODEL_FILE``.
    """
    import mlflow.artifacts

    try:
        # The version's own artifact location, resolved against our registry explicitly (a
        # models:/ URI would resolve the logged model through the global tracking URI).
        root = client.get_model_version_download_uri(ref.name, ref.version).rstrip("/")
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"could not locate {ref.name} v{ref.version}: {exc}") from exc
    local: list[Path | None] = []
    for path in SERVING_ARTIFACTS:
        try:
            got = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{root}/{path}",
                dst_path=str(dst / Path(path).parent),
                tracking_uri=registry_uri,
                registry_uri=registry_uri,
            )
            local.append(Path(got))
        except MlflowException as exc:
            if _missing(exc):
                local.append(None)
                continue
            raise TrackingError(f"could not download {ref.name} v{ref.version}: {exc}") from exc
        except FileNotFoundError:
            local.append(None)
        except OSError as exc:
            raise TrackingError(f"could not download {ref.name} v{ref.version}: {exc}") from exc
    model_file, table = local
    if model_file is None or not model_file.is_file():
        raise ModelNotFoundError(
            f"{ref.name} v{ref.version} has no {LIGHTGBM_MODEL_FILE} in its model directory: "
            "not a LightGBM model logged with mlflow.lightgbm; retrain it with `matchmaking train`"
        )
    return model_file, table if table is not None and table.is_file() else None


def _check_tags(ref: VersionRef, city: Market | None, country: str | None) -> None:
    """Refuse a version tagged for another city, country or scope than it would serve."""
    what = f"{ref.name} v{ref.version}"
    if country is None and city is not None:
        tagged = ref.tags.get(CITY_TAG)
        if tagged is not None and tagged != city.id:
            raise ModelNotFoundError(
                f"{what} is a model of {tagged!r} (its city tag), not {city.id!r}: not serving "
                f"it; promote a {city.id} model to {ref.name}"
            )
        if ref.tags.get(SCOPE_TAG, SCOPE_CITY) != SCOPE_CITY:
            raise ModelNotFoundError(
                f"{what} has scope {ref.tags[SCOPE_TAG]!r}, not a city model: not serving it"
            )
    elif country is not None:
        tagged = ref.tags.get(COUNTRY_TAG)
        if ref.tags.get(SCOPE_TAG) != SCOPE_COUNTRY or (tagged is not None and tagged != country):
            raise ModelNotFoundError(
                f"{what} is not a country model of {country} (tags scope="
                f"{ref.tags.get(SCOPE_TAG)!r}, country={tagged!r}): not serving it; train one "
                f"with `matchmaking train-country --country {country}`"
            )
    else:
        raise ValueError("load_version needs the city of a city model or a country's code")


def load_version(
    client: MlflowClient,
    ref: VersionRef,
    city: Market | None,
    registry_uri: str,
    country: str | None = None,
) -> LoadedModel:
    """Fetch a version's model file and driver table, open the booster, warm it.

    ``city`` for a city's own model; ``country`` (and no city) for a country's pooled model,
    whose input must be ``COUNTRY_FEATURE_NAMES``.

    No compilation here: the model serves with LightGBM's own predict as soon as this returns;
    ``serving.compile.Compiler`` builds the native forest in the background and swaps it in.

    Raises:
        TrackingError: the artifacts could not be downloaded.
        ModelNotFoundError: the version's artifacts are not a servable model.
    """
    _check_tags(ref, city, country)
    expected = FEATURE_NAMES if country is None else COUNTRY_FEATURE_NAMES
    started = time.perf_counter()
    label = city.id if city is not None else f"country-{country}"
    tmp = Path(tempfile.mkdtemp(prefix=f"mm-serve-{label}-"))
    try:
        model_file, table_path = fetch_serving_files(client, ref, registry_uri, tmp)
        tags = {**ref.tags, SCORE_KIND_TAG: ref.score_kind}  # as resolved (and warned)
        scorer = open_lightgbm_file(
            model_file, tags, version=ref.version, what=f"{ref.name} v{ref.version}", num_threads=1
        )
        names = scorer.feature_names
        if names != expected:
            raise ModelNotFoundError(
                f"{ref.name} v{ref.version} expects features {names}, the service builds "
                f"{expected}; retrain it with this version of the feature contract"
            )
        if table_path is not None:
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
    model = LoadedModel(city=city, ref=ref, scorer=scorer, drivers=drivers, country=country)
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
