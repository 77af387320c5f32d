"""Which version is in Production, and moving it.

Production is the alias ``production``; the legacy stage ``Production`` is kept in step with it
for tools that still read stages (the previous holder is archived). ``resolve_production`` is
the one resolver: promotion, rollback, the demo and the scoring service all ask it, and it
tells "there is no Production version" (``ModelNotFoundError``) apart from "the registry did not
answer" (``TrackingError``), so a registry failure is never taken for an empty Production.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient

from matchmaking.errors import ModelNotFoundError, TrackingError
from matchmaking.registry.conventions import (
    PRODUCTION_ALIAS,
    PRODUCTION_STAGE,
    PROMOTED_AT_TAG,
    PROMOTED_BY_TAG,
    PROMOTED_REASON_TAG,
)

logger = logging.getLogger(__name__)

_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
# A tracking server answers a missing alias of an existing model with INVALID_PARAMETER_VALUE.
_NO_ALIAS = (_NOT_FOUND, ErrorCode.Name(INVALID_PARAMETER_VALUE))


def is_not_found(exc: MlflowException) -> bool:
    """Whether the registry said "no such model / version / alias" (as opposed to failing)."""
    return exc.error_code == _NOT_FOUND


@dataclass(frozen=True)
class Production:
    """The Production version of a model and how it was found."""

    version: ModelVersion
    source: str  # "alias:production" or "stage:Production"


def resolve_production(client: MlflowClient, name: str) -> Production:
    """The version behind alias ``production``, else the newest in stage Production.

    Raises:
        ModelNotFoundError: the model does not exist or has no Production version.
        TrackingError: the registry failed or could not be reached.
    """
    try:
        try:
            mv = client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
            return Production(mv, f"alias:{PRODUCTION_ALIAS}")
        except MlflowException as exc:
            if exc.error_code not in _NO_ALIAS:
                raise
        with warnings.catch_warnings():  # stages are deprecated; still the documented fallback
            warnings.simplefilter("ignore", FutureWarning)
            latest = client.get_latest_versions(name, stages=[PRODUCTION_STAGE])
    except MlflowException as exc:
        if is_not_found(exc):
            raise ModelNotFoundError(
                f"no registered model {name!r}: train and promote one for this city first"
            ) from None
        raise TrackingError(f"registry error while resolving {name}: {exc.message}") from exc
    except OSError as exc:  # connection refused, timeouts surfaced by requests
        raise TrackingError(f"registry unreachable while resolving {name}: {exc}") from exc
    if not latest:
        raise ModelNotFoundError(
            f"registered model {name!r} has no '@{PRODUCTION_ALIAS}' alias and no version "
            f"in stage {PRODUCTION_STAGE}; promote a version first"
        )
    return Production(latest[0], f"stage:{PRODUCTION_STAGE}")


def current_production(client: MlflowClient, name: str) -> ModelVersion | None:
    """The Production version (``resolve_production``), or None when there is none.

    Raises:
        TrackingError: the registry failed or could not be reached (never read as "none").
    """
    try:
        return resolve_production(client, name).version
    except ModelNotFoundError:
        return None


def list_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of ``name``."""
    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException as exc:
        raise TrackingError(f"cannot list versions of {name}: {exc}") from exc


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """Version ``version`` of ``name``; ``ModelNotFoundError`` when there is no such version."""
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"{name} has no version {version}; list them in the registry"
        ) from exc


def set_production(client: MlflowClient, name: str, version: str, reason: str, actor: str) -> None:
    """Point alias and stage at ``version``, archive the previous holder, record who and why."""
    get_version(client, name, version)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(
            name, version, PRODUCTION_STAGE, archive_existing_versions=True
        )
    for key, value in {
        PROMOTED_AT_TAG: now,
        PROMOTED_REASON_TAG: reason,
        PROMOTED_BY_TAG: actor,
    }.items():
        client.set_model_version_tag(name, version, key, value)
    logger.info("%s: version %s is now in Production (%s)", name, version, reason)


def verify_consistent(client: MlflowClient, name: str) -> str:
    """Check alias ``production`` and stage Production name the same single version.

    A check only: under the promotion lock nothing else moves them, so a mismatch means a
    half-done move or a writer that bypassed the lock, and is reported, not papered over.
    Returns the Production version.
    """
    alias = client.get_model_version_by_alias(name, PRODUCTION_ALIAS).version
    staged = sorted(
        str(mv.version)
        for mv in list_versions(client, name)
        if mv.current_stage == PRODUCTION_STAGE
    )
    if staged == [str(alias)]:
        return str(alias)
    raise TrackingError(
        f"{name}: alias {PRODUCTION_ALIAS} -> v{alias} but stage {PRODUCTION_STAGE} -> "
        f"{staged}; fix with `matchmaking rollback --city <city> --to {alias}`"
    )


def is_consistent(client: MlflowClient, name: str) -> bool:
    """``verify_consistent`` as a yes/no (the mismatch is logged)."""
    try:
        verify_consistent(client, name)
    except TrackingError as exc:
        logger.warning("%s", exc)
        return False
    return True
