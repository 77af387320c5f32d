"""``matchmaking train``: fit a model type on a feature dataset, log everything, register a version.

A model type (``MODEL_TYPES``) says which rows and label it learns from and how it is fitted;
``train`` does the rest the same way for every type (lineage, reuse, logging, registration,
tags). Today's one type is ``acceptance``: LightGBM binary and LambdaRank on the offered
candidates, the better one kept. A second target (cancellation) or algorithm is a second entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
from mlflow.data.numpy_dataset import from_numpy
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import InputError
from matchmaking.evaluation.metrics import auc, logloss
from matchmaking.lake import storage
from matchmaking.lake.datasets import DRIVER_TABLE_FILE, read_published_manifest
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.progress import SILENT, Progress
from matchmaking.registry.conventions import (
    CITY_TAG,
    DATA_DIGEST_TAG,
    DEFAULT_MODEL_TYPE,
    FEATURE_IMPORTANCE_ARTIFACT,
    FEATURES_URI_TAG,
    GIT_COMMIT_TAG,
    MODEL_ARTIFACT,
    MODEL_TYPE_TAG,
    OBJECTIVE_TAG,
    PARAMS_HASH_TAG,
    PRODUCTION_ALIAS,
    SAMPLE_WEIGHT_TAG,
    SCORE_KIND_TAG,
    SEED_TAG,
    VALID_AUC_TAG,
    model_name,
)
from matchmaking.schema import FEATURE_NAMES, GROUP_COLUMN, LABEL_COLUMN
from matchmaking.scorer import ScoreKind
from matchmaking.training.data import (
    Candidates,
    Labelled,
    Read,
    read_candidates,
    read_labelled,
    split,
)
from matchmaking.training.params import LIST_PARAMS, Objective, SampleWeight, TrainParams
from matchmaking.training.weighting import Weights, compare, held_out_estimate, ipw_weights

logger = logging.getLogger(__name__)


@dataclass
class Fitted:
    objective: Objective
    booster: lgb.Booster
    valid_auc: float
    best_iteration: int
    seconds: float
    sample_weight: SampleWeight = "none"
    weights: Weights | None = None  # the training rows' weights when ``ipw``
    #: The booster's scores of the validation rows at its best iteration (predicted once).
    valid_scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))

    @property
    def score_kind(self) -> ScoreKind:
        return "probability" if self.objective == "binary" else "rank_score"

    @property
    def key(self) -> str:
        """``binary``, ``lambdarank``, ``binary_ipw``...: the suffix of its metrics."""
        return self.objective if self.sample_weight == "none" else f"{self.objective}_ipw"


@dataclass
class TrainResult:
    city: str
    run_id: str
    model_name: str
    version: str
    model_uri: str
    objective: str
    metrics: dict[str, float] = field(default_factory=dict)
    reused: bool = False


def split_by_day(rows: pd.DataFrame, valid_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-based split of a DataFrame: the last ``valid_days`` distinct days validate."""
    days = np.sort(rows["day"].unique())
    if len(days) <= valid_days:
        raise InputError(
            f"the feature window has {len(days)} day(s) but valid_days={valid_days}; process a "
            "longer window or lower valid_days"
        )
    cut = days[-valid_days]
    return rows.loc[rows["day"] < cut], rows.loc[rows["day"] >= cut]


def labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """Offered rows of a DataFrame (the only ones with labels), grouped by booking, in time
    order: what ``training.data.read_labelled`` reads from a dataset without the DataFrame."""
    out = rows.loc[rows["offered"]].copy()
    out[LABEL_COLUMN] = out[LABEL_COLUMN].astype("float64")
    return out.sort_values(["requested_at", GROUP_COLUMN, "eta_rank"], kind="stable")


def matrix(rows: pd.DataFrame) -> npt.NDArray[np.float64]:
    return rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)


def _as_labelled(rows: Labelled | pd.DataFrame) -> Labelled:
    return rows if isinstance(rows, Labelled) else Labelled.from_frame(rows)


def fit(
    objective: Objective,
    train: Labelled | pd.DataFrame,
    valid: Labelled | pd.DataFrame,
    params: TrainParams,
    progress: Progress = SILENT,
    sample_weight: SampleWeight = "none",
) -> Fitted:
    """Fit one objective with early stopping on the validation window (float32 matrices
    handed to LightGBM as they are; LightGBM bins them and keeps no copy).

    ``sample_weight="ipw"`` weights the training and the validation rows by their clipped
    inverse propensities (``training.weighting.ipw_weights``), so early stopping watches the
    weighted validation loss too; ``valid_auc`` is always the unweighted logged AUC."""
    train, valid = _as_labelled(train), _as_labelled(valid)
    names = list(train.names)
    w_train = w_valid = None
    if sample_weight == "ipw":
        w_train = ipw_weights(train.propensity, train.booking, objective, params.ipw_clip)
        w_valid = ipw_weights(valid.propensity, valid.booking, objective, params.ipw_clip)
    dtrain = lgb.Dataset(
        train.x,
        train.y,
        weight=w_train.values if w_train else None,
        feature_name=names,
        free_raw_data=True,
    )
    dvalid = lgb.Dataset(
        valid.x,
        valid.y,
        weight=w_valid.values if w_valid else None,
        feature_name=names,
        reference=dtrain,
    )
    if objective == "lambdarank":
        dtrain.set_group(train.group_sizes())
        dvalid.set_group(valid.group_sizes())
    started = time.perf_counter()
    label = objective if sample_weight == "none" else f"{objective} ({sample_weight} weights)"
    rounds = progress.rounds(f"fitting {label}", params.num_boost_round)
    booster = lgb.train(
        params.lgb_params(objective, train.names),
        dtrain,
        num_boost_round=params.num_boost_round,
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[
            lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False),
            rounds,
        ],
    )
    rounds.close()
    seconds = time.perf_counter() - started
    scores = np.asarray(booster.predict(valid.x, num_iteration=booster.best_iteration))
    return Fitted(
        objective,
        booster,
        auc(valid.y.astype(np.float64), scores),
        int(booster.best_iteration),
        seconds,
        sample_weight,
        w_train,
        scores,
    )


def select(fits: list[Fitted], tolerance: float) -> tuple[Fitted, str]:
    """The best validation AUC wins; within ``tolerance`` of it, the binary classifier is kept
    because its scores are calibrated probabilities (batch matching adds them up)."""
    best = max(fits, key=lambda f: f.valid_auc)
    binary = next((f for f in fits if f.objective == "binary"), None)
    if binary is not None and binary is not best and best.valid_auc - binary.valid_auc <= tolerance:
        return binary, (
            f"binary kept: validation AUC {binary.valid_auc:.4f} within {tolerance} of "
            f"{best.objective} {best.valid_auc:.4f}, and its scores are probabilities"
        )
    others = ", ".join(f"{f.objective} {f.valid_auc:.4f}" for f in fits if f is not best)
    return best, f"{best.objective} has the best validation AUC {best.valid_auc:.4f}" + (
        f" (vs {others})" if others else ""
    )


@dataclass
class Trained:
    """What a model type's trainer hands to ``train`` to log and register."""

    booster: lgb.Booster
    objective: str
    score_kind: ScoreKind
    valid_auc: float
    best_iteration: int
    reason: str  # why this model (logged as the run's model_selection tag)
    metrics: dict[str, float] = field(default_factory=dict)
    sample_weight: str = "none"  # the weighting of the kept model (``sample_weight`` tag)
    weight_reason: str = ""  # why (logged as the run's weight_selection tag)


#: Reads every candidate row of the validation days when weightings are compared.
HeldOutReader = Callable[[], Candidates]


def fit_acceptance(
    train_rows: Labelled,
    valid_rows: Labelled,
    params: TrainParams,
    progress: Progress,
    held_out: HeldOutReader | None = None,
) -> Trained:
    """Each configured objective fitted, the better one kept (``select``); then, when
    ``sample_weights`` lists both ``none`` and ``ipw``, that objective fitted with
    inverse-propensity weights too and kept only when it clearly improves the held-out doubly
    robust estimate of first-offer acceptance on the validation days (``weighting.compare``;
    the candidates from ``held_out``)."""
    weightings = params.sample_weights
    base: SampleWeight = "none" if "none" in weightings else "ipw"
    fits = [fit(obj, train_rows, valid_rows, params, progress, base) for obj in params.objectives]
    chosen, reason = select(fits, params.selection_tolerance)
    metrics: dict[str, float] = {}
    weight_reason = f"{base}: the only sample weighting configured"
    if base == "none" and "ipw" in weightings:
        if train_rows.propensity is None or valid_rows.propensity is None or held_out is None:
            weight_reason = (
                "ipw not tried: the features carry no offer_propensity (published before the "
                "decision log did); process the window again to compare"
            )
            logger.warning(weight_reason)
        else:
            progress.step(f"fitting {chosen.objective} with inverse-propensity weights")
            weighted = fit(chosen.objective, train_rows, valid_rows, params, progress, "ipw")
            fits.append(weighted)
            progress.step("comparing the weightings on the validation days' logged offers")
            cands = held_out()
            held = [
                held_out_estimate(
                    f.booster.predict(cands.x, num_iteration=f.best_iteration),
                    f.score_kind,
                    cands.booking,
                    cands.offer_order,
                    cands.first_offer_propensity,
                    cands.accepted,
                    seed=params.seed,
                )
                for f in (chosen, weighted)
            ]
            comparison = compare(held[0], held[1], params.ipw_min_gain)
            metrics |= comparison.metrics
            weight_reason = comparison.reason
            if comparison.keep_weighted:
                chosen = weighted
    for f in fits:
        metrics[f"valid_auc_{f.key}"] = f.valid_auc
        metrics[f"best_iteration_{f.key}"] = float(f.best_iteration)
        metrics[f"fit_seconds_{f.key}"] = f.seconds
        if f.weights is not None:
            metrics[f"ipw_clipped_rows_{f.objective}"] = float(f.weights.clipped)
            metrics[f"ipw_ess_share_{f.objective}"] = f.weights.ess_share
    scores = chosen.valid_scores  # of these validation rows: no second prediction
    metrics["valid_auc"] = chosen.valid_auc
    if chosen.objective == "binary":
        metrics["valid_logloss"] = logloss(valid_rows.y.astype(np.float64), scores)
    return Trained(
        chosen.booster,
        chosen.objective,
        chosen.score_kind,
        chosen.valid_auc,
        chosen.best_iteration,
        reason,
        metrics,
        chosen.sample_weight,
        weight_reason,
    )


@dataclass(frozen=True)
class ModelType:
    """One kind of model the platform trains: its rows (with ``LABEL_COLUMN`` set) and its fit."""

    name: str
    describes: str  # for the version description: "<objective> <describes> for <city>"
    rows: Callable[[Location, dict[str, object], TrainParams], Read]
    fit: Callable[[Labelled, Labelled, TrainParams, Progress, HeldOutReader | None], Trained]


MODEL_TYPES: dict[str, ModelType] = {
    DEFAULT_MODEL_TYPE: ModelType(
        DEFAULT_MODEL_TYPE, "acceptance model", read_labelled, fit_acceptance
    ),
}


def model_type(name: str) -> ModelType:
    """The registered model type ``name``.

    Raises:
        InputError: no such type (naming the known ones).
    """
    try:
        return MODEL_TYPES[name]
    except KeyError:
        raise InputError(f"unknown model type {name!r}; known: {', '.join(MODEL_TYPES)}") from None


def params_hash(params: TrainParams) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]


def find_existing_version(
    client: MlflowClient,
    name: str,
    data_digest: str,
    code: str | None,
    p_hash: str,
    kind: str = DEFAULT_MODEL_TYPE,
) -> str | None:
    """A version of model type ``kind`` trained on the same data, code and parameters (makes
    reruns idempotent)."""
    try:
        versions = client.search_model_versions(
            f"name='{name}' and tag.{DATA_DIGEST_TAG}='{data_digest}'"
        )
    except mlflow.exceptions.MlflowException:
        return None
    for mv in versions:
        if (
            mv.tags.get(GIT_COMMIT_TAG) == (code or "")
            and mv.tags.get(PARAMS_HASH_TAG) == p_hash
            and mv.tags.get(MODEL_TYPE_TAG, DEFAULT_MODEL_TYPE) == kind
        ):
            return str(mv.version)
    return None


def train(
    settings: Settings,
    city: str,
    features_dir: LocationLike,
    params: TrainParams,
    process_run_id: str | None = None,
    reuse_existing: bool = True,
    progress: Progress = SILENT,
    kind: str = DEFAULT_MODEL_TYPE,
) -> TrainResult:
    """Fit the model type ``kind`` (``MODEL_TYPES``), log it and register a new version.

    ``features_dir`` is the dataset ``process`` published: a path or a URI (``s3://...``).

    Raises:
        InputError: unknown model type, features of another city, too short a window.
    """
    spec = model_type(kind)
    features_dir = storage.location(features_dir)
    progress.step(f"reading features {features_dir}: its manifest")
    manifest = read_published_manifest(features_dir)
    if manifest.get("city") != city:
        raise InputError(f"{features_dir} holds features of {manifest.get('city')!r}, not {city!r}")
    data_digest = str(manifest["digest"])
    tracking.configure(settings)
    tracking.use_experiment(settings, city)
    client = MlflowClient()
    name = model_name(settings.model_name_prefix, city, spec.name)
    code = tracking.git_commit()
    p_hash = params_hash(params)
    if reuse_existing:
        progress.step(f"looking for a version of {name} trained on the same data, code, params")
        existing = find_existing_version(client, name, data_digest, code, p_hash, spec.name)
        if existing is not None:
            logger.info(
                "%s v%s was already trained on data %s with this code and these params: "
                "reusing it, registering nothing",
                name,
                existing,
                data_digest[:12],
            )
            run_tags = {"step": "train", "city": city, "data_digest": data_digest}
            return reuse_version(client, name, existing, city, run_tags, progress)

    progress.step(f"reading the labelled rows of {features_dir}")
    read = spec.rows(features_dir, manifest, params)
    train_rows, valid_rows = split(read.data, params.valid_days)
    features_uri = storage.as_uri(features_dir)
    progress.step(f"logging {len(train_rows):,} training and {len(valid_rows):,} validation rows")
    with mlflow.start_run(run_name=f"train-{city}") as run:
        mlflow.set_tags(
            tracking.reproducibility_tags(
                step="train",
                city=city,
                data_digest=data_digest,
                features_uri=features_uri,
                seed=params.seed,
                params_hash=p_hash,
                process_run_id=process_run_id,
            )
        )
        _log_effective_params(run, params)
        for part, context in ((train_rows, "training"), (valid_rows, "validation")):
            ds = from_numpy(
                {name: part.x[:, j] for j, name in enumerate(FEATURE_NAMES)},
                targets=part.y,
                source=tracking.dataset_source(features_uri),
                name=f"features-{city}-{context}",
                digest=f"{data_digest[:16]}-{context}",
            )
            mlflow.log_input(ds, context=context)

        valid_from = valid_rows.day.min() if len(valid_rows) else np.datetime64("NaT")

        def held_out() -> Candidates:
            return read_candidates(features_dir, manifest, valid_from)

        chosen = spec.fit(train_rows, valid_rows, params, progress, held_out)
        reason = chosen.reason
        metrics: dict[str, float] = {
            "train_rows": float(len(train_rows)),
            "valid_rows": float(len(valid_rows)),
            "labelled_rows": float(read.available_rows),
            "train_rows_available": float(read.train_rows_available),
            "train_positive_rate": float(train_rows.y.astype(np.float64).mean()),
            **chosen.metrics,
        }
        mlflow.log_metrics(metrics)
        log_choice(chosen, FEATURE_NAMES, {MODEL_TYPE_TAG: spec.name})

        progress.step(f"logging the {chosen.objective} model ({reason})")
        with tempfile.TemporaryDirectory(prefix="matchmaking-train-") as tmp:
            # MLflow copies extra files from local paths: a remote table is fetched here.
            driver_table = storage.local_file(
                storage.join(features_dir, DRIVER_TABLE_FILE), Path(tmp)
            )
            info = log_booster(chosen, valid_rows, FEATURE_NAMES, driver_table)
        progress.step(f"registering a version of {name}")
        version = register(
            client,
            name,
            info.model_uri,
            info.model_id,
            run.info.run_id,
            {
                CITY_TAG: city,
                MODEL_TYPE_TAG: spec.name,
                **version_tags(chosen, data_digest, features_uri, code, p_hash, params.seed),
            },
            model_tags={CITY_TAG: city, MODEL_TYPE_TAG: spec.name},
            description=(
                f"{chosen.objective} {spec.describes} for {city}, trained on features "
                f"{manifest['start']}..{manifest['end']} (digest {data_digest[:12]}). {reason}. "
                f"Sample weights: {chosen.weight_reason}."
            ),
        )
        mlflow.set_tag("registered_version", version)
    progress.done(f"registered {name} v{version}")
    return TrainResult(
        city, run.info.run_id, name, version, f"models:/{name}/{version}", chosen.objective, metrics
    )


def reuse_version(
    client: MlflowClient,
    name: str,
    version: str,
    label: str,
    run_tags: dict[str, str],
    progress: Progress,
) -> TrainResult:
    """Record a ``train-<label>`` run that reuses ``name`` v``version`` (a version already
    trained on the same data, code and params; ``find_existing_version``) and return it."""
    mv = client.get_model_version(name, version)
    with mlflow.start_run(run_name=f"train-{label}") as run:
        mlflow.set_tags(
            tracking.reproducibility_tags(
                **run_tags,
                registered_version=version,
                reused_version="true",
                reused_from_run=mv.run_id,
            )
        )
    progress.done(f"reusing {name} v{version}")
    objective = mv.tags.get(OBJECTIVE_TAG, "")
    uri = f"models:/{name}/{version}"
    return TrainResult(label, run.info.run_id, name, version, uri, objective, reused=True)


def log_choice(chosen: Trained, feature_names: Sequence[str], tags: dict[str, str]) -> None:
    """Log, on the active run, which model was kept and why (params and tags, plus ``tags``)
    and its per-feature gain (``FEATURE_IMPORTANCE_ARTIFACT``)."""
    mlflow.log_params({"objective": chosen.objective, "sample_weight": chosen.sample_weight})
    mlflow.set_tags(
        {
            "model_selection": chosen.reason,
            "weight_selection": chosen.weight_reason,
            SAMPLE_WEIGHT_TAG: chosen.sample_weight,
            OBJECTIVE_TAG: chosen.objective,
            SCORE_KIND_TAG: chosen.score_kind,
            **tags,
        }
    )
    gain = chosen.booster.feature_importance("gain", iteration=chosen.best_iteration)
    mlflow.log_dict(
        dict(zip(feature_names, gain.tolist(), strict=True)), FEATURE_IMPORTANCE_ARTIFACT
    )


def log_booster(
    chosen: Trained, valid_rows: Labelled, feature_names: Sequence[str], driver_table: Path
) -> ModelInfo:
    """Log the kept booster, cut at its best iteration, as the run's ``MODEL_ARTIFACT`` with
    its signature, five validation rows as input example and the driver table beside it."""
    booster = _trimmed(chosen.booster)
    example = pd.DataFrame(valid_rows.x[:5].astype(np.float64), columns=list(feature_names))
    signature = infer_signature(example, booster.predict(example.to_numpy()))
    return mlflow.lightgbm.log_model(
        booster,
        name=MODEL_ARTIFACT,
        signature=signature,
        input_example=example,
        extra_files=[str(driver_table)],
        pip_requirements=_pip_requirements(),
    )


def version_tags(
    chosen: Trained,
    data_digest: str,
    features_uri: str,
    code: str | None,
    p_hash: str,
    seed: int,
) -> dict[str, str]:
    """The tags every trained version carries: what was kept, on which data, code and params."""
    return {
        OBJECTIVE_TAG: chosen.objective,
        SAMPLE_WEIGHT_TAG: chosen.sample_weight,
        SCORE_KIND_TAG: chosen.score_kind,
        DATA_DIGEST_TAG: data_digest,
        FEATURES_URI_TAG: features_uri,
        GIT_COMMIT_TAG: code or "",
        PARAMS_HASH_TAG: p_hash,
        SEED_TAG: str(seed),
        VALID_AUC_TAG: f"{chosen.valid_auc:.5f}",
    }


def _log_effective_params(run: mlflow.ActiveRun, params: TrainParams) -> None:
    """Log the parameters in force. Under MLflow Projects the entry point already logged its
    raw ``-P`` values (empty = "file default"); where those differ, the value in force goes to
    ``effective.<key>`` because MLflow never lets a logged param change."""
    logged = mlflow.get_run(run.info.run_id).data.params
    values = {
        **params.model_dump(),
        **{key: ",".join(getattr(params, key)) for key in LIST_PARAMS},
    }
    out = {}
    for key, value in values.items():
        if key not in logged:
            out[key] = value
        elif logged[key] != str(value):
            out[f"effective.{key}"] = value
    mlflow.log_params(out)


def _trimmed(booster: lgb.Booster) -> lgb.Booster:
    """A copy of the booster cut at its best iteration, so every consumer scores the same trees."""
    text = booster.model_to_string(num_iteration=booster.best_iteration)
    return lgb.Booster(model_str=text)


def _pip_requirements() -> list[str]:
    import importlib.metadata as md

    return [
        f"{p}=={md.version(p)}" for p in ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn")
    ]


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    model_id: str | None,
    run_id: str,
    tags: dict[str, str],
    description: str,
    model_tags: dict[str, str] | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` and return the version it got.

    ``model_tags`` go on the registered model (``city`` and ``model_type``: what the name
    means, so it is never parsed back; see ``conventions.city_of_model``); missing ones are added.
    """
    try:
        existing = client.get_registered_model(name).tags
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(
            name,
            tags=model_tags,
            description=f"Driver acceptance model; Production = alias `{PRODUCTION_ALIAS}`.",
        )
    else:
        for key, value in (model_tags or {}).items():
            if existing.get(key) != value:
                client.set_registered_model_tag(name, key, value)
    mv = client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, description=description, model_id=model_id
    )
    _wait_ready(client, name, str(mv.version))
    return str(mv.version)


def _wait_ready(client: MlflowClient, name: str, version: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION":
            from matchmaking.errors import TrackingError

            raise TrackingError(
                f"registration of {name} v{version} failed; see the tracking server log"
            )
        time.sleep(0.5)


def load_feature_importance(run_id: str) -> dict[str, float]:
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=FEATURE_IMPORTANCE_ARTIFACT
    )
    return dict(json.loads(Path(path).read_text()))
