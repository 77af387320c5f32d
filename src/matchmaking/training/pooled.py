"""``matchmaking train-country``: one model pooled over the features of a country's cities.

A small or new market has too little data for a model of its own; Michelangelo's partitioned
models fall back to the parent level. Here the parent is the country: its cities' labelled rows
(each read in bounded memory by ``training.data.read_labelled``) are stacked, each with the
context features of its city (``features.context``: size and speed profile, from the market
catalogue), and fitted exactly as a city model is (``train.fit_acceptance``: binary and
LambdaRank, the better one kept). The version is registered as ``<prefix>-country-<cc>``
(``registry.conventions.country_model_name``) with ``scope=country``, ``country``,
``pooled_cities`` and ``feature_set=country`` tags; its driver table is the union of its
cities' (driver ids are unique per city). Every pooled dataset must cover the same window, so
the version has one training window (``features_uri`` names the first city's dataset, which
the gate reads the window from).

Memory: with ``max_labelled_rows`` set, each of the N cities reads at most
``max_labelled_rows / N`` labelled training rows (a small city under its share reads all of
its rows; the share left over is not handed on), so the pooled matrix stays under the cap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import InputError
from matchmaking.features.context import context_columns
from matchmaking.lake import storage
from matchmaking.lake.datasets import (
    DRIVER_TABLE_FILE,
    published_datasets,
    read_manifest,
    read_published_manifest,
    read_table,
)
from matchmaking.lake.storage import Location
from matchmaking.markets import catalogue
from matchmaking.progress import SILENT, Progress
from matchmaking.registry.conventions import (
    COUNTRY_TAG,
    DEFAULT_MODEL_TYPE,
    FEATURE_SET_TAG,
    MODEL_TYPE_TAG,
    POOLED_CITIES_TAG,
    SCOPE_COUNTRY,
    SCOPE_TAG,
    country_model_name,
)
from matchmaking.schema import COUNTRY_FEATURE_NAMES, FEATURE_NAMES
from matchmaking.training.data import (
    Candidates,
    Labelled,
    Read,
    read_candidates,
    read_labelled,
    split,
)
from matchmaking.training.params import TrainParams
from matchmaking.training.train import (
    TrainResult,
    _log_effective_params,
    find_existing_version,
    fit_acceptance,
    log_booster,
    log_choice,
    params_hash,
    register,
    reuse_version,
    version_tags,
)

logger = logging.getLogger(__name__)

_HOUR = FEATURE_NAMES.index("hour_local")
_FARE = FEATURE_NAMES.index("fare")


def experiment_label(country: str) -> str:
    """What stands for the city in a country model's experiment name: ``country-<cc>``."""
    return f"country-{country.lower()}"


@dataclass(frozen=True)
class Pooled:
    """The pooled rows and where they came from."""

    read: Read
    manifests: dict[str, dict[str, object]]  # city -> its dataset's manifest
    rows: dict[str, int]  # city -> labelled rows read
    digest: str  # sha256 of the sorted (city, dataset digest) list
    start: str
    end: str


def country_datasets(
    settings: Settings, country: str, start: str | None = None, end: str | None = None
) -> dict[str, Location]:
    """Each city of ``country`` with a published dataset: its newest one (or the newest one
    of exactly ``start``..``end``), found under ``settings.features_dir``."""
    out: dict[str, Location] = {}
    for city in catalogue().cities_of(country):
        found = []
        for dataset, published in published_datasets(settings.features_dir, city):
            m = read_manifest(dataset)
            if (start is None or str(m["start"]) == start) and (
                end is None or str(m["end"]) == end
            ):
                found.append((str(m["end"]), published, str(dataset), dataset))
        if found:
            out[city] = max(found)[3]
    return out


def read_pooled(country: str, datasets: dict[str, Location], params: TrainParams) -> Pooled:
    """The labelled rows of every city's dataset, context features appended, stacked.

    Raises:
        InputError: no dataset, a dataset of another city or country, or windows that differ.
    """
    if not datasets:
        raise InputError(
            f"{country}: no published feature dataset of any of its cities; run "
            "`matchmaking process` for them first"
        )
    known = catalogue()
    manifests: dict[str, dict[str, object]] = {}
    for city, dataset in sorted(datasets.items()):
        market = known.get(city)
        if market.country != country.upper():
            raise InputError(f"{city} is a city of {market.country}, not of {country.upper()}")
        manifest = read_published_manifest(storage.location(dataset))
        if manifest.get("city") != city:
            raise InputError(f"{dataset} holds features of {manifest.get('city')!r}, not {city!r}")
        manifests[city] = manifest
    windows = {(str(m["start"]), str(m["end"])) for m in manifests.values()}
    if len(windows) != 1:
        raise InputError(
            f"{country}: the pooled datasets cover different windows {sorted(windows)}; pool "
            "datasets of one window (process every city on the same --start/--end)"
        )
    ((start, end),) = windows
    share = params
    if params.max_labelled_rows is not None:
        cap = max(1, math.ceil(params.max_labelled_rows / len(datasets)))
        share = params.model_copy(update={"max_labelled_rows": cap})
    parts: list[Labelled] = []
    rows: dict[str, int] = {}
    available = train_available = offset = 0
    for city in sorted(manifests):
        read = read_labelled(storage.location(datasets[city]), manifests[city], share)
        data = read.data
        extra = context_columns(
            known.get(city),
            data.x[:, _HOUR].astype(np.float64),
            data.x[:, _FARE].astype(np.float64),
        )
        x = np.hstack([data.x, extra.astype(np.float32)])
        booking = data.booking + offset
        offset = int(booking.max()) + 1 if len(booking) else offset
        parts.append(Labelled(x, data.y, data.day, booking, data.propensity, COUNTRY_FEATURE_NAMES))
        rows[city] = len(data)
        available += read.available_rows
        train_available += read.train_rows_available
        logger.info("%s: %d labelled rows pooled from %s", city, len(data), datasets[city])
    listed = sorted([c, str(m["digest"])] for c, m in manifests.items())
    digest = hashlib.sha256(json.dumps(listed).encode()).hexdigest()
    props = [p.propensity for p in parts]
    pooled = Labelled(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.day for p in parts]),
        np.concatenate([p.booking for p in parts]),
        np.concatenate([p for p in props if p is not None])
        if all(p is not None for p in props)
        else None,
        COUNTRY_FEATURE_NAMES,
    )
    return Pooled(Read(pooled, available, train_available), manifests, rows, digest, start, end)


def pooled_candidates(
    datasets: dict[str, Location], manifests: dict[str, dict[str, object]], from_day: np.datetime64
) -> Candidates:
    """Every candidate row of the cities' validation days (``read_candidates``, city by city),
    context columns appended as ``read_pooled`` appends them, booking codes made distinct:
    what ``sample_weights: [none, ipw]`` compares the two weightings on.

    Raises:
        InputError: no city has a candidate row on or after ``from_day``.
    """
    known = catalogue()
    parts: list[Candidates] = []
    offset = 0
    for city in sorted(datasets):
        try:
            c = read_candidates(storage.location(datasets[city]), manifests[city], from_day)
        except InputError as exc:
            logger.info("%s: no validation candidates (%s)", city, exc)
            continue
        x = c.x.astype(np.float64)
        extra = context_columns(known.get(city), x[:, _HOUR], x[:, _FARE])
        booking = c.booking + offset
        offset = int(booking.max()) + 1 if len(booking) else offset
        parts.append(
            Candidates(
                np.hstack([c.x, extra.astype(np.float32)]),
                booking,
                c.offer_order,
                c.first_offer_propensity,
                c.accepted,
            )
        )
    if not parts:
        raise InputError(f"no candidate rows of {sorted(datasets)} on or after {from_day}")
    return Candidates(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.booking for p in parts]),
        np.concatenate([p.offer_order for p in parts]),
        np.concatenate([p.first_offer_propensity for p in parts]),
        np.concatenate([p.accepted for p in parts]),
    )


def _driver_table(datasets: dict[str, Location], out: Path) -> Path:
    """The union of the cities' driver tables, written to ``out``."""
    tables = [read_table(storage.join(datasets[c], DRIVER_TABLE_FILE)) for c in sorted(datasets)]
    path = out / DRIVER_TABLE_FILE
    pq.write_table(pa.concat_tables(tables, promote_options="default"), path)
    return path


def train_country(
    settings: Settings,
    country: str,
    datasets: dict[str, Location],
    params: TrainParams,
    reuse_existing: bool = True,
    progress: Progress = SILENT,
) -> TrainResult:
    """Fit the country's acceptance model on its cities' pooled ``datasets``, log it and
    register a version of ``<prefix>-country-<cc>`` (reusing one trained on the same data,
    code and params).

    Raises:
        InputError: see ``read_pooled``; too short a window.
    """
    code_cc = country.upper()
    label = experiment_label(code_cc)
    progress.step(f"reading the manifests of {len(datasets)} dataset(s) of {code_cc}")
    tracking.configure(settings)
    client = MlflowClient()
    name = country_model_name(settings.model_name_prefix, code_cc)
    code = tracking.git_commit()
    p_hash = params_hash(params)
    cities = sorted(datasets)
    listed = sorted(
        [c, str(read_published_manifest(storage.location(datasets[c]))["digest"])] for c in cities
    )
    data_digest = hashlib.sha256(json.dumps(listed).encode()).hexdigest()
    tracking.use_experiment(settings, label)
    if reuse_existing:
        existing = find_existing_version(client, name, data_digest, code, p_hash)
        if existing is not None:
            logger.info(
                "%s v%s was trained on the same data, code, params: reusing it", name, existing
            )
            run_tags = {"step": "train_country", "country": code_cc, "data_digest": data_digest}
            return reuse_version(client, name, existing, label, run_tags, progress)

    progress.step(f"reading the labelled rows of {', '.join(cities)}")
    pooled = read_pooled(code_cc, datasets, params)
    train_rows, valid_rows = split(pooled.read.data, params.valid_days)
    first_uri = storage.as_uri(storage.location(datasets[cities[0]]))
    with mlflow.start_run(run_name=f"train-{label}") as run:
        mlflow.set_tags(
            tracking.reproducibility_tags(
                step="train_country",
                country=code_cc,
                data_digest=data_digest,
                features_uri=first_uri,
                seed=params.seed,
                params_hash=p_hash,
            )
        )
        mlflow.set_tag(POOLED_CITIES_TAG, ",".join(cities))
        _log_effective_params(run, params)
        mlflow.log_dict(
            {c: storage.as_uri(storage.location(datasets[c])) for c in cities},
            "pooled_datasets.json",
        )
        valid_from = valid_rows.day.min() if len(valid_rows) else np.datetime64("NaT")

        def held_out() -> Candidates:
            return pooled_candidates(datasets, pooled.manifests, valid_from)

        chosen = fit_acceptance(train_rows, valid_rows, params, progress, held_out)
        metrics: dict[str, float] = {
            "train_rows": float(len(train_rows)),
            "valid_rows": float(len(valid_rows)),
            "labelled_rows": float(pooled.read.available_rows),
            "train_rows_available": float(pooled.read.train_rows_available),
            "pooled_cities": float(len(cities)),
            **{f"rows.{c}": float(n) for c, n in pooled.rows.items()},
            **chosen.metrics,
        }
        mlflow.log_metrics(metrics)
        log_choice(
            chosen,
            COUNTRY_FEATURE_NAMES,
            {MODEL_TYPE_TAG: DEFAULT_MODEL_TYPE, SCOPE_TAG: SCOPE_COUNTRY},
        )
        progress.step(f"logging the {chosen.objective} model ({chosen.reason})")
        with tempfile.TemporaryDirectory(prefix="matchmaking-train-country-") as tmp:
            table = _driver_table(datasets, Path(tmp))
            info = log_booster(chosen, valid_rows, COUNTRY_FEATURE_NAMES, table)
        progress.step(f"registering a version of {name}")
        scope_tags = {
            SCOPE_TAG: SCOPE_COUNTRY,
            COUNTRY_TAG: code_cc,
            MODEL_TYPE_TAG: DEFAULT_MODEL_TYPE,
        }
        version = register(
            client,
            name,
            info.model_uri,
            info.model_id,
            run.info.run_id,
            {
                **scope_tags,
                POOLED_CITIES_TAG: ",".join(cities),
                FEATURE_SET_TAG: SCOPE_COUNTRY,
                **version_tags(chosen, data_digest, first_uri, code, p_hash, params.seed),
            },
            model_tags=scope_tags,
            description=(
                f"{chosen.objective} acceptance model of {code_cc}, pooled over "
                f"{', '.join(cities)} on features {pooled.start}..{pooled.end} (digest "
                f"{data_digest[:12]}). {chosen.reason}. Sample weights: {chosen.weight_reason}."
            ),
        )
        mlflow.set_tag("registered_version", version)
    progress.done(f"registered {name} v{version}")
    return TrainResult(
        label,
        run.info.run_id,
        name,
        version,
        f"models:/{name}/{version}",
        chosen.objective,
        metrics,
    )
