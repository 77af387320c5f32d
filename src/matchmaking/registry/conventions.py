"""The registry's conventions, defined once: model names, Production, tag names, artifact paths.

Training writes them, promotion and rollback read and write them, serving and evaluation read
them; all of them import this module, so a name cannot drift between writer and reader. The
values are a contract with what is already in the registry (and with anyone reading it, the
MLflow UI included): change a value only with a migration of the tags already written.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

# -- model names ------------------------------------------------------------------------------
#
# One registered model per city: ``<prefix>-<city>`` (``Settings.model_name_prefix``, default
# ``matchmaking``). City ids contain hyphens themselves (``ho-chi-minh-city``), so a name is
# parsed back by its exact prefix and a city id the catalogue knows, never by splitting.


#: Registered-model (and version) tag: which kind of model a name holds. The driver-acceptance
#: model is the default, named ``<prefix>-<city>``; any other type ``<prefix>-<type>-<city>``.
MODEL_TYPE_TAG = "model_type"
DEFAULT_MODEL_TYPE = "acceptance"


def model_name(prefix: str, city: str, model_type: str = DEFAULT_MODEL_TYPE) -> str:
    """The registered model of ``city``: ``<prefix>-<city>`` for the acceptance model (the name
    every deployment already has), ``<prefix>-<model_type>-<city>`` for any other type."""
    if model_type == DEFAULT_MODEL_TYPE:
        return f"{prefix}-{city}"
    return f"{prefix}-{model_type}-{city}"


# -- country models ----------------------------------------------------------------------------
#
# One pooled model per country: ``<prefix>-country-<cc>`` (``cc``: the ISO 3166 alpha-2 code in
# lower case; ``<prefix>-<type>-country-<cc>`` for another model type). City ids may never
# begin with ``country-`` (``markets.RESERVED_ID_PREFIXES``), so a country model's name is never
# any city's: ``city_of_model`` refuses it by its ``scope`` tag and by its shape.

#: Registered-model (and version) tag: ``city`` (a city's own model, the default for untagged
#: models) or ``country`` (pooled over a country's cities).
SCOPE_TAG = "scope"
SCOPE_CITY = "city"
SCOPE_COUNTRY = "country"
#: Registered-model (and version) tag of a country model: its ISO 3166 alpha-2 code.
COUNTRY_TAG = "country"
#: Version tag of a country model: the comma-separated ids of the cities it was pooled from.
POOLED_CITIES_TAG = "pooled_cities"
#: Version tag: which input contract the version takes (``city``: ``schema.FEATURE_NAMES``;
#: ``country``: ``schema.COUNTRY_FEATURE_NAMES``). Untagged versions take ``city``.
FEATURE_SET_TAG = "feature_set"
COUNTRY_NAME_PART = "country"


def country_model_name(prefix: str, country: str, model_type: str = DEFAULT_MODEL_TYPE) -> str:
    """The registered model pooled over ``country``'s cities: ``<prefix>-country-<cc>``."""
    code = country.lower()
    if model_type == DEFAULT_MODEL_TYPE:
        return f"{prefix}-{COUNTRY_NAME_PART}-{code}"
    return f"{prefix}-{model_type}-{COUNTRY_NAME_PART}-{code}"


def country_of_model(name: str, prefix: str, tags: Mapping[str, str] | None = None) -> str | None:
    """The country (upper-case alpha-2) whose acceptance model ``name`` is, or None.

    Tagged models (``scope=country``, ``country=<CC>``) must be exactly
    ``country_model_name(prefix, CC)``; an untagged one must have that shape for a two-letter
    code. A city's model, another model type or another prefix is never a country's.
    """
    tags = tags or {}
    if tags.get(MODEL_TYPE_TAG, DEFAULT_MODEL_TYPE) != DEFAULT_MODEL_TYPE:
        return None
    scope = tags.get(SCOPE_TAG)
    if scope is not None and scope != SCOPE_COUNTRY:
        return None
    code = tags.get(COUNTRY_TAG)
    if code is not None:
        return code.upper() if name == country_model_name(prefix, code) else None
    head = f"{prefix}-{COUNTRY_NAME_PART}-"
    rest = name[len(head) :] if name.startswith(head) else ""
    if len(rest) == 2 and rest.isalpha() and rest.islower():
        return rest.upper()
    return None


def city_of_model(
    name: str,
    prefix: str,
    cities: Container[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str | None:
    """The city whose acceptance model ``name`` is, or None when ``name`` is not one.

    A registered model's ``city`` tag decides (``name`` must then be exactly
    ``model_name(prefix, city)`` and its ``model_type`` the acceptance model); an untagged model
    (registered before the tags) is ``<prefix>-<rest>`` with ``rest`` one of the known
    ``cities`` (the catalogue) when they are given. A name with more parts than
    ``<prefix>-<city>`` (``matchmaking-cancellation-jakarta``, a model of another prefix that
    begins with this one) is not any city's model, nor is a country model
    (``<prefix>-country-<cc>``, or ``scope`` other than ``city``).
    """
    tags = tags or {}
    head = f"{prefix}-"
    if not name.startswith(head):
        return None
    if tags.get(MODEL_TYPE_TAG, DEFAULT_MODEL_TYPE) != DEFAULT_MODEL_TYPE:
        return None
    if tags.get(SCOPE_TAG, SCOPE_CITY) != SCOPE_CITY:
        return None
    if name.startswith(f"{head}{COUNTRY_NAME_PART}-"):  # a country model, never a city's
        return None
    city = tags.get(CITY_TAG)
    if city is not None:
        return city if name == model_name(prefix, city) else None
    rest = name[len(head) :]
    if not rest or (cities is not None and rest not in cities):
        return None
    return rest


# -- Production -------------------------------------------------------------------------------

#: The registered-model alias naming the version in Production (what serving loads).
PRODUCTION_ALIAS = "production"
#: The legacy stage kept in step with the alias, for tools that still read stages.
PRODUCTION_STAGE = "Production"

# -- tags on a model version, written by training ---------------------------------------------

CITY_TAG = "city"
OBJECTIVE_TAG = "objective"
#: ``none`` or ``ipw``: the sample weighting of the kept model (TrainParams.sample_weights).
SAMPLE_WEIGHT_TAG = "sample_weight"
SCORE_KIND_TAG = "score_kind"
DATA_DIGEST_TAG = "data_digest"
#: URI of the feature dataset the version was trained on (its manifest gives the window).
FEATURES_URI_TAG = "features_uri"
GIT_COMMIT_TAG = "git_commit"
PARAMS_HASH_TAG = "params_hash"
SEED_TAG = "seed"
VALID_AUC_TAG = "valid_auc"

#: ``score_kind`` values: calibrated probabilities in [0, 1], or ranking scores (lambdarank).
SCORE_PROBABILITY = "probability"
SCORE_RANK = "rank_score"
#: What a version without the tag is taken to score (versions trained before the tag existed).
DEFAULT_SCORE_KIND = SCORE_PROBABILITY

# -- tags on a model version, written by the promotion gate -----------------------------------

GATE_TAG_PREFIX = "gate."
GATE_RESULT_TAG = "gate.result"
GATE_REASON_TAG = "gate.reason"
GATE_RUN_ID_TAG = "gate.run_id"
GATE_HOLDOUT_DIGEST_TAG = "gate.holdout_digest"
#: The Production version the candidate was compared with ("" when there was none).
GATE_COMPARED_WITH_TAG = "gate.compared_with"
GATE_CHECKED_AT_TAG = "gate.checked_at"
#: Which evidence the gate decided on: ``offline`` (the logged holdout, the default) or
#: ``online`` (the challenger's live traffic, ``promote --evidence online``).
GATE_EVIDENCE_TAG = "gate.evidence"
EVIDENCE_OFFLINE = "offline"
EVIDENCE_ONLINE = "online"
#: ``gate.result`` values.
GATE_PASSED = "passed"
GATE_FAILED = "failed"


def gate_metric_tag(metric: str) -> str:
    """The tag holding one gate metric of the candidate: ``gate.<metric>``."""
    return f"{GATE_TAG_PREFIX}{metric}"


# -- tags on a model version, written when Production moves (promotion, rollback) -------------

PROMOTED_AT_TAG = "production.promoted_at"
PROMOTED_REASON_TAG = "production.reason"
PROMOTED_BY_TAG = "production.by"
#: The version that held Production before this one moved in ("" when none did).
PREVIOUS_TAG = "production.previous"
#: On a rollback target: the version rolled back from.
ROLLBACK_FROM_TAG = "production.rollback_from"
#: The promotion-lock generation that moved this version into Production.
GENERATION_TAG = "production.lock_generation"

# -- tags on the registered model -------------------------------------------------------------

#: The highest promotion-lock generation that has moved Production (the fence reads it).
FENCE_TAG = "promotion.generation"

# -- live traffic: challengers and exploration (read by the scoring service's poller) ---------

#: The registered-model alias naming the version that gets live traffic beside Production.
CHALLENGER_ALIAS = "challenger"
#: Registered-model tag: the share of the city's bookings (0..1, by a stable hash of the
#: booking id) the challenger gets. Absent: 0 (no traffic).
CHALLENGER_SHARE_TAG = "challenger.share"
#: Registered-model tag: ``split`` (the challenger answers its share) or ``shadow`` (it scores
#: its share, logged with ``served`` false, and never answers). Absent: ``split``.
CHALLENGER_MODE_TAG = "challenger.mode"
CHALLENGER_SPLIT = "split"
CHALLENGER_SHADOW = "shadow"
CHALLENGER_MODES = (CHALLENGER_SPLIT, CHALLENGER_SHADOW)
#: Registered-model tag: the Plackett-Luce exploration temperature of the city's answers
#: (overrides ``MATCHMAKING_SERVE_EXPLORATION``; "0": the greedy order).
EXPLORATION_TAG = "serving.exploration_temperature"

# -- which model serves a city: tags on the CITY's registered model, written by ``scope`` ------
#
# ``registry.scope`` compares the city's own Production version with its country's Production
# version on the city's holdout (the gate's measurements) and records the choice on the city's
# registered model, so one paged ``search_registered_models`` returns every city's choice with
# the aliases. Serving reads ``serving.scope`` (and ``serving.model``); the rest says why. A
# city with no registered model, or no ``serving.scope`` tag, is served by its own Production
# version when it has one, else by its country's (docs/pooled.md).

#: ``city`` or ``country``: whose Production version scores the city's requests.
SERVING_SCOPE_TAG = "serving.scope"
#: The registered model that serves the city (``<prefix>-<city>`` or ``<prefix>-country-<cc>``).
SERVING_MODEL_TAG = "serving.model"
#: Why, in words, with the figures.
SERVING_REASON_TAG = "serving.reason"
#: The Production versions compared ("" when the model has none).
SERVING_CITY_VERSION_TAG = "serving.city_version"
SERVING_COUNTRY_VERSION_TAG = "serving.country_version"
SERVING_DECIDED_AT_TAG = "serving.decided_at"
#: The holdout dataset the choice was measured on (digest; "" when nothing was measured).
SERVING_HOLDOUT_DIGEST_TAG = "serving.holdout_digest"
#: Prefix of the figures: ``serving.city.<metric>``, ``serving.country.<metric>`` (``auc``,
#: ``acceptance``) and ``serving.difference.<metric>`` (country - city, paired).
SERVING_METRIC_PREFIX = "serving."


def serving_metric_tag(who: str, metric: str) -> str:
    """``serving.<who>.<metric>``: ``who`` is ``city``, ``country`` or ``difference``."""
    return f"{SERVING_METRIC_PREFIX}{who}.{metric}"


# -- CI ids, on promote runs and on the versions they move ------------------------------------

#: Environment variable (GitLab CI) -> tag.
CI_TAGS = {
    "CI_PIPELINE_ID": "ci.pipeline_id",
    "CI_PIPELINE_URL": "ci.pipeline_url",
    "CI_JOB_ID": "ci.job_id",
    "CI_COMMIT_SHA": "ci.commit_sha",
}

# -- artifact paths ---------------------------------------------------------------------------

#: Name of the logged model of a training run (``log_model(name=...)``).
MODEL_ARTIFACT = "model"
#: Folder, inside a version's model directory, of the files logged with ``extra_files``: MLflow
#: stores each under its own file name.
EXTRA_FILES_DIR = "extra_files"
#: The driver feature table a version is served with (file name, and path inside the version).
DRIVER_TABLE_NAME = "driver_table.parquet"
DRIVER_TABLE_ARTIFACT = f"{EXTRA_FILES_DIR}/{DRIVER_TABLE_NAME}"
#: Artifacts of runs: the training run's gain importance, the promote run's gate report.
FEATURE_IMPORTANCE_ARTIFACT = "feature_importance.json"
REPORT_ARTIFACT = "promotion_report.md"
#: The LightGBM model file inside a version's model directory (what ``mlflow.lightgbm`` writes
#: as its flavor's ``data``): with the driver table, the only files the scoring service fetches.
LIGHTGBM_MODEL_FILE = "model.lgb"
#: The files of a version the scoring service needs, relative to its model directory.
SERVING_ARTIFACTS = (LIGHTGBM_MODEL_FILE, DRIVER_TABLE_ARTIFACT)
