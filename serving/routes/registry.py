"""``POST /v1/registry/webhook``: MLflow's model-registry webhook, the optional push path.

MLflow 3 (3.3 and later) delivers registry events (``model_version_alias.created``, ...) to a
webhook URL, signed when the webhook has a secret: ``X-MLflow-Signature: v1,<base64
HMAC-SHA256 of "<delivery id>.<timestamp>.<body>">`` with ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp``. A delivery whose signature checks out with
``MATCHMAKING_SERVE_WEBHOOK_SECRET`` and whose timestamp is recent starts a registry poll at once
(one search, as every poll). Nothing else is taken from the payload: the poll reads the
registry itself, so a forged or replayed event could at most cause one extra search. Polling
every ``POLL_INTERVAL_S`` stays the fallback (a delivery lost, a pod it did not reach).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.bodies import json_response
from serving.deps import ServiceDep
from serving.errors import ERROR_RESPONSES, ServiceError

logger = logging.getLogger(__name__)

router = APIRouter(tags=["registry"])

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
SIGNATURE_VERSION = "v1"
#: Deliveries older (or newer) than this are refused: replay protection.
MAX_SKEW_S = 300
MAX_WEBHOOK_BYTES = 1_000_000


def signature(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature of a delivery: ``v1,<base64 HMAC-SHA256>``."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(secret: bytes, headers: dict[str, str], body: bytes, now: float) -> str | None:
    """Why the delivery is refused, or None when it is authentic and recent."""
    given = headers.get(SIGNATURE_HEADER)
    delivery = headers.get(DELIVERY_HEADER)
    stamp = headers.get(TIMESTAMP_HEADER)
    if not given or not delivery or not stamp:
        return (
            f"missing {SIGNATURE_HEADER}, {DELIVERY_HEADER} or {TIMESTAMP_HEADER}: create the "
            "webhook with the secret the service has (MATCHMAKING_SERVE_WEBHOOK_SECRET)"
        )
    try:
        sent_at = int(stamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a Unix timestamp"
    if abs(now - sent_at) > MAX_SKEW_S:
        return f"delivery timestamp is more than {MAX_SKEW_S} s away from now: replay refused"
    expected = signature(secret, delivery, stamp, body)
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        return "signature does not match: the webhook's secret differs from the service's"
    return None


@router.post(
    "/v1/registry/webhook",
    status_code=202,
    responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 404, 413)},
)
async def registry_webhook(request: Request, service: ServiceDep) -> Response:
    """An MLflow registry webhook delivery: authenticated by its HMAC signature, it starts a
    registry poll now. 404 when no webhook secret is configured."""
    secret = service.settings.webhook_secret
    if secret is None:
        raise ServiceError(
            404,
            "webhook_disabled",
            "registry webhooks are off: set MATCHMAKING_SERVE_WEBHOOK_SECRET to the webhook's "
            "secret to turn them on (polling keeps models current meanwhile)",
        )
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        raise ServiceError(413, "body_too_large", f"webhook body above {MAX_WEBHOOK_BYTES} bytes")
    headers = {k.lower(): v for k, v in request.headers.items()}
    problem = verify(secret.get_secret_value().encode(), headers, body, time.time())
    if problem is not None:
        service.metrics.webhooks.labels("rejected").inc()
        logger.warning("webhook delivery refused: %s", problem)
        raise ServiceError(401, "bad_signature", problem)
    service.metrics.webhooks.labels("accepted").inc()
    if service.poll_now is not None:
        service.poll_now.set()
    return json_response({"poll": "scheduled", "delivery_id": headers[DELIVERY_HEADER]}, 202)
