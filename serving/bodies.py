"""Request bodies in (JSON only, size-limited) and JSON answers out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import Request
from fastapi.responses import Response

from serving.errors import ServiceError

JSON_MEDIA_TYPE = "application/json"
_json = msgspec.json.Encoder()


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    """``body`` written with msgspec."""
    return Response(_json.encode(body), status_code=status, media_type=JSON_MEDIA_TYPE)


def body_schema(model: type) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its body itself: the body is ``model``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                JSON_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(content_type: str | None) -> None:
    """Refuse (415) a body not declared as JSON.

    Accepted: ``application/json`` in any letter case, with or without parameters; a
    ``charset`` parameter must say UTF-8 (RFC 8259: JSON is UTF-8). Refused: everything else,
    a missing Content-Type, and ``+json`` suffix types (``application/merge-patch+json``,
    ``application/problem+json``...), whose meaning is not this API's.
    """
    if content_type == JSON_MEDIA_TYPE:  # the common case, without parsing
        return
    media, *params = (content_type or "").split(";")
    ok = media.strip().lower() == JSON_MEDIA_TYPE
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            ok = ok and value.strip().strip('"').lower() in ("utf-8", "utf8")
    if not ok:
        given = f"Content-Type {content_type[:100]!r}" if content_type else "no Content-Type"
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"{given} is not accepted; send the body as JSON with 'Content-Type: application/json'",
        )


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body of a JSON request: 415 unless declared as JSON, 413 above ``limit`` bytes."""
    require_json(request.headers.get("content-type"))
    return await read_body(request, limit)


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
