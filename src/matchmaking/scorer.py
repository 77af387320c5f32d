"""How the platform sees a trained model: the ``Scorer`` protocol and the one loader.

Evaluation, the promotion gate and the scoring service all load a version with
``load_scorer(uri, tags)`` and score a feature matrix (``schema.FEATURE_NAMES`` order) with
``Scorer.predict``. Whether the scores are probabilities is the version's ``score_kind`` tag
(written by ``matchmaking train``), never guessed from the values: a version without it falls
back to its ``objective`` tag, then to ``probability`` with a warning (the reading under which
the promotion gate checks the scores lie in [0, 1], so a mislabelled ranker is refused there).

A loader is chosen by the MLflow flavor of the logged model (``LOADERS``): a second algorithm
is a second entry. Registered models are named ``<prefix>-<city>`` and carry ``city`` and
``model_type`` tags (``registry.conventions``: ``model_name``; ``city_of_model`` reads a name
back into its city only when it is exactly that form for one city, so a longer name such as
``<prefix>-cancellation-jakarta`` never turns into a wrong city).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
import yaml

from matchmaking.errors import ModelNotFoundError
from matchmaking.registry.conventions import (
    OBJECTIVE_TAG,
    SCORE_KIND_TAG,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
ScoreKind = Literal["probability", "rank_score"]
SCORE_KINDS: tuple[ScoreKind, ...] = get_args(ScoreKind)
DEFAULT_SCORE_KIND: ScoreKind = "probability"

# What a LightGBM objective's scores are, for versions logged before the score_kind tag.
_KIND_OF_OBJECTIVE: dict[str, ScoreKind] = {"binary": "probability", "lambdarank": "rank_score"}


class Scorer(Protocol):
    """A loaded model version, as every consumer of models sees it."""

    @property
    def score_kind(self) -> ScoreKind:
        """``probability`` (calibrated, in [0, 1], can be added up) or ``rank_score``."""
        ...

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns ``predict`` expects, in order."""
        ...

    @property
    def version(self) -> str | None:
        """The registered version (None for a run or path URI)."""
        ...

    def predict(self, matrix: FloatArray) -> FloatArray:
        """One score per row of ``matrix``."""
        ...

    def feature_importance(self) -> FloatArray | None:
        """Gain per feature (``feature_names`` order), when the algorithm has one."""
        ...


# What has been warned about already (the service resolves every version once per poll).
_warned: set[str] = set()


def score_kind_of(tags: Mapping[str, str], what: str = "the model") -> ScoreKind:
    """The ``score_kind`` tag of a version (or run), else what its ``objective`` tag implies,
    else ``probability`` with a warning naming ``what`` (once per ``what``)."""
    kind = tags.get(SCORE_KIND_TAG)
    if kind in SCORE_KINDS:
        return kind
    warn = logger.warning if what not in _warned else logger.debug
    _warned.add(what)
    if kind is not None:
        warn(
            "%s has score_kind=%r (not one of %s): read as %s",
            what,
            kind,
            ", ".join(SCORE_KINDS),
            DEFAULT_SCORE_KIND,
        )
        return DEFAULT_SCORE_KIND
    implied = _KIND_OF_OBJECTIVE.get(tags.get(OBJECTIVE_TAG, ""))
    if implied is not None:
        return implied
    warn(
        "%s has no %s tag (nor a known objective): its scores are read as %s; retrain it "
        "with `matchmaking train` to record what they are",
        what,
        SCORE_KIND_TAG,
        DEFAULT_SCORE_KIND,
    )
    return DEFAULT_SCORE_KIND


@dataclass(frozen=True)
class LightGBMScorer:
    """A LightGBM booster behind the ``Scorer`` protocol.

    ``num_threads`` is passed to every ``predict`` when set (the service scores single-threaded);
    None keeps LightGBM's default.
    """

    booster: object  # lightgbm.Booster (kept untyped: lightgbm ships no stubs for it)
    score_kind: ScoreKind
    version: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    num_threads: int | None = None
    files: Path | None = None  # the model's folder, when the caller kept it (``load_scorer(dst=)``)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.booster.feature_name())  # type: ignore[attr-defined]

    def predict(self, matrix: FloatArray) -> FloatArray:
        kwargs = {} if self.num_threads is None else {"num_threads": self.num_threads}
        return np.asarray(self.booster.predict(matrix, **kwargs), dtype=np.float64)  # type: ignore[attr-defined]

    def feature_importance(self) -> FloatArray | None:
        gain = self.booster.feature_importance("gain")  # type: ignore[attr-defined]
        return np.asarray(gain, dtype=np.float64)


def _load_lightgbm(model_dir: Path, flavor: Mapping[str, object]) -> object:
    import lightgbm as lgb

    return lgb.Booster(model_file=str(model_dir / str(flavor["data"])))


def open_lightgbm_file(
    model_file: Path,
    tags: Mapping[str, str] | None = None,
    *,
    version: str | None = None,
    what: str | None = None,
    num_threads: int | None = None,
) -> LightGBMScorer:
    """The scorer of a LightGBM model file on local disk (``registry.conventions.
    LIGHTGBM_MODEL_FILE`` of a logged model), for callers that fetched only that file.

    Raises:
        ModelNotFoundError: the file is not a LightGBM model.
    """
    import lightgbm as lgb

    tags = dict(tags or {})
    what = what or str(model_file)
    try:
        booster = lgb.Booster(model_file=str(model_file))
    except lgb.basic.LightGBMError as exc:
        raise ModelNotFoundError(f"{what} is not a LightGBM model file: {exc}") from exc
    return LightGBMScorer(
        booster=booster,
        score_kind=score_kind_of(tags, what),
        version=version,
        tags=tags,
        num_threads=num_threads,
    )


# MLflow flavor -> how its logged model is opened (the flavor's ``data`` file).
LOADERS: dict[str, Callable[[Path, Mapping[str, object]], object]] = {
    "lightgbm": _load_lightgbm,
}


def open_scorer(
    model_dir: Path,
    tags: Mapping[str, str] | None = None,
    *,
    version: str | None = None,
    what: str | None = None,
) -> LightGBMScorer:
    """The scorer of a logged model already on local disk (its ``MLmodel`` folder).

    Raises:
        ModelNotFoundError: the folder holds no model of a flavor in ``LOADERS``.
    """
    tags = dict(tags or {})
    what = what or str(model_dir)
    meta_file = model_dir / "MLmodel"
    if not meta_file.is_file():
        raise ModelNotFoundError(f"{what} is not an MLflow model (no MLmodel file)")
    flavors = (yaml.safe_load(meta_file.read_text()) or {}).get("flavors") or {}
    for flavor, load in LOADERS.items():
        spec = flavors.get(flavor)
        if spec and "data" in spec:
            return LightGBMScorer(
                booster=load(model_dir, spec),
                score_kind=score_kind_of(tags, what),
                version=version,
                tags=tags,
            )
    raise ModelNotFoundError(
        f"{what} is not a model this platform can load (flavors {sorted(flavors)}; "
        f"supported: {', '.join(LOADERS)})"
    )


def load_scorer(
    model_uri: str,
    tags: Mapping[str, str] | None = None,
    *,
    version: str | None = None,
    tracking_uri: str | None = None,
    dst: Path | None = None,
) -> LightGBMScorer:
    """Download the model at ``model_uri`` and open it; ``tags`` are its version's (or run's).

    ``tracking_uri`` names the store to download from (default: MLflow's current one). With
    ``dst``, the artifacts stay there for the caller (the service reads the driver table
    next to the model); otherwise they are removed once the model is in memory.

    Raises:
        MlflowException, OSError: the download failed (callers map these to their errors).
        ModelNotFoundError: what was downloaded is not a loadable model.
    """
    import mlflow.artifacts

    target = Path(tempfile.mkdtemp(prefix="mm-model-")) if dst is None else dst
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri,
                dst_path=str(target),
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
        )
        scorer = open_scorer(local, tags, version=version, what=model_uri)
        return scorer if dst is None else replace(scorer, files=local)
    finally:
        if dst is None:
            shutil.rmtree(target, ignore_errors=True)
