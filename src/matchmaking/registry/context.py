"""What one ``promote`` or ``rollback`` invocation acts with, passed down as one object.

``Context`` is the registry, the settings and who acts; once a city's promotion lock is held,
``locked`` gives the same context with the lease (``guard``) that the fence checks before
Production moves. ``PromotionContext`` adds what ``promote`` was asked: the gate thresholds,
the candidate version, the holdout and whether this is a dry run.
"""

from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass, replace
from typing import Self

from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.lake.storage import Location
from matchmaking.registry.conventions import CI_TAGS
from matchmaking.registry.gate import GateThresholds
from matchmaking.registry.lock import Lease, PromotionLock

logger = logging.getLogger(__name__)


def default_actor() -> str:
    """Who acts: the GitLab user in CI, else the OS user."""
    login = os.environ.get("GITLAB_USER_LOGIN")
    if login:
        return f"{login} (ci)"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def ci_tags() -> dict[str, str]:
    """The CI ids of the running job (``ci.pipeline_id``, ...), for the tags they go into."""
    return {tag: os.environ[var] for var, tag in CI_TAGS.items() if os.environ.get(var)}


def registry_client(settings: Settings) -> MlflowClient:
    """A client of the configured tracking server, for both tracking and the registry."""
    uri = tracking.configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass(frozen=True)
class Guard:
    """The promotion lock of one model and the lease we hold on it."""

    lock: PromotionLock
    lease: Lease


@dataclass(frozen=True, kw_only=True)
class Context:
    """The registry, the settings, who acts, and (under a city's lock) the lease held."""

    client: MlflowClient
    settings: Settings
    actor: str
    guard: Guard | None = None

    def model_name(self, city: str) -> str:
        return tracking.model_name(self.settings, city)

    def lock(self, name: str) -> PromotionLock:
        """The promotion lock of the registered model ``name``."""
        return PromotionLock(
            self.settings.promotion_locks_dir, name, lease_s=self.settings.promotion_lease_s
        )

    def locked(self, lock: PromotionLock, lease: Lease) -> Self:
        """This context while holding ``lease`` on ``lock``."""
        return replace(self, guard=Guard(lock, lease))


@dataclass(frozen=True, kw_only=True)
class PromotionContext(Context):
    """A ``Context`` plus what ``promote`` was asked.

    Attributes:
        thresholds: the gate's floors and tolerances.
        version: the candidate (None: the newest registered version).
        holdout: the holdout dataset (None: found from the training windows).
        dry_run: run the gate and report, change nothing (no lock is taken).
    """

    thresholds: GateThresholds
    version: str | None = None
    holdout: Location | None = None
    dry_run: bool = False
