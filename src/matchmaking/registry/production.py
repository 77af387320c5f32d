"""Which version is in Production, and moving it.

Production is the alias ``production``; the legacy stage ``Production`` is kept in step with it
for tools that still read stages (the previous holder is archived).
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from matchmaking.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

PRODUCTION_ALIAS = "production"
PRODUCTION_STAGE = "Production"


def current_production(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version behind alias ``production``; else the newest in stage Production; else None."""
    try:
        return client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
    except MlflowException:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            versions = client.get_latest_versions(name, stages=[PRODUCTION_STAGE])
    except MlflowException:
        return None
    return versions[0] if versions else None


def set_production(client: MlflowClient, name: str, version: str, reason: str, actor: str) -> None:
    """Point alias and stage at ``version``, archive the previous holder, record who and why."""
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"{name} has no version {version}; list them in the registry"
        ) from exc
    now = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(
            name, version, PRODUCTION_STAGE, archive_existing_versions=True
        )
    for key, value in {
        "production.promoted_at": now,
        "production.reason": reason,
        "production.by": actor,
    }.items():
        client.set_model_version_tag(name, version, key, value)
    logger.info("%s: version %s is now in Production (%s)", name, version, reason)
