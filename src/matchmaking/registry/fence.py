"""The fence: the last check before Production moves, against the registry's recorded lock
generation (the lock itself is ``registry.lock``)."""

from __future__ import annotations

import logging

from mlflow.tracking import MlflowClient

from matchmaking.errors import TrackingError
from matchmaking.lake import storage
from matchmaking.registry.conventions import FENCE_TAG
from matchmaking.registry.lock import Lease, LeaseLostError, PromotionLock

logger = logging.getLogger(__name__)


def fence(client: MlflowClient, name: str, lock: PromotionLock, lease: Lease) -> Lease:
    """The last check before Production moves; returns the renewed lease.

    Renews the lease (``LeaseLostError`` if it expired or a later generation took over), then
    compares its generation with the registered model's tag ``promotion.generation``, the
    highest generation that has moved Production so far: a higher one means a later holder has
    acted already, so this one must not. Records our generation there before the move.
    """
    renewed = lock.renew(lease)
    recorded = client.get_registered_model(name).tags.get(FENCE_TAG, "0")
    try:
        highest = int(recorded)
    except ValueError:
        raise TrackingError(
            f"{name}: registered-model tag {FENCE_TAG}={recorded!r} is not a number; delete it "
            "(it is rewritten by the next promotion)"
        ) from None
    if highest > renewed.generation:
        raise LeaseLostError(
            f"{name}: promotion lock generation {highest} has moved Production already, ours is "
            f"{renewed.generation}; nothing was moved by this process. If the lock folder "
            f"{storage.join(lock.root, name)} was deleted, delete the tag {FENCE_TAG} as well"
        )
    client.set_registered_model_tag(name, FENCE_TAG, str(renewed.generation))
    return renewed
