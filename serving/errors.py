"""The one table from error families to HTTP answers, and the handlers that apply it.

Every error body has the same shape (``schemas.ErrorResponse``)::

    {"error": {"code": "invalid_request", "message": "...",
               "details": [{"loc": ["candidates", 2, "rating"], "msg": "...", "type": "..."}],
               "request_id": "..."}}
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from matchmaking.errors import (
    ConfigError,
    InputError,
    MatchmakingError,
    ModelNotFoundError,
    TrackingError,
    UnknownCityError,
)
from serving.schemas import BodyError, ErrorResponse

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


class ServiceError(MatchmakingError):
    """An HTTP-level refusal decided by the service itself (size, auth, field checks)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or []
        self.headers = headers


class FieldErrors(InputError):
    """Fields of a decoded request that break what the schema cannot say (configured limits,
    duplicate ids, positions outside the city); ``details`` in the error body's shape."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(details)} invalid field(s)")
        self.details = details


# The table: most specific family first (looked up along the exception's MRO).
ERROR_TABLE: dict[type[MatchmakingError], tuple[int, str]] = {
    UnknownCityError: (404, "unknown_city"),
    ModelNotFoundError: (404, "no_production_model"),
    InputError: (422, "invalid_request"),
    TrackingError: (503, "registry_unavailable"),
    ConfigError: (500, "misconfigured"),
    MatchmakingError: (500, "internal_error"),
}


# The error answers as the OpenAPI schema documents them (routes' ``responses``).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Missing or wrong bearer token (when auth is enabled)."),
        (404, "Unknown city, or the city has no Production model."),
        (413, "Body larger than the configured limit."),
        (415, "Content-Type is not application/json."),
        (421, "The city belongs to another scoring pool (shard), named in the message."),
        (422, "Invalid body: field-level reasons in error.details."),
        (503, "The registry is unreachable and the city's model is not loaded."),
    )
}


def status_for(exc: MatchmakingError) -> tuple[int, str]:
    """HTTP status and error code of a package error, from ``ERROR_TABLE``."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "internal_error"


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The uniform JSON error answer."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": details or [],
            "request_id": request.scope.get("state", {}).get("request_id"),
        }
    }
    return Response(
        _encoder.encode(body), status_code=status, media_type="application/json", headers=headers
    )


def validation_details(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    """Field-level reasons from a pydantic error (location without the 'body' prefix)."""
    out = []
    for err in exc.errors():
        loc = [p for p in err.get("loc", ()) if p != "body"]
        out.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    return out


def to_response(request: Request, exc: Exception) -> Response | None:
    """The error answer for ``exc`` (None when it is not an error this service maps)."""
    if isinstance(exc, ServiceError):
        return error_response(request, exc.status, exc.code, str(exc), exc.details, exc.headers)
    if isinstance(exc, BodyError):
        return error_response(request, 422, "invalid_request", str(exc), exc.details)
    if isinstance(exc, MatchmakingError):
        status, code = status_for(exc)
        if status >= 500:
            logger.error("%s: %s", code, exc)
        details = exc.details if isinstance(exc, FieldErrors) else None
        return error_response(request, status, code, str(exc), details)
    if isinstance(exc, ValidationError | RequestValidationError):
        details = validation_details(exc)
        return error_response(
            request, 422, "invalid_request", f"{len(details)} invalid field(s)", details
        )
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(
            request, exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})
        )
    return None


MAPPED = (ServiceError, BodyError, MatchmakingError, ValidationError, RequestValidationError)


def install(app: FastAPI) -> None:
    """Register ``to_response`` for every mapped family (and Starlette's HTTP errors)."""

    async def handler(request: Request, exc: Exception) -> Response:
        response = to_response(request, exc)
        if response is None:  # pragma: no cover - registered only for mapped types
            raise exc
        return response

    for family in (*MAPPED, StarletteHTTPException):
        app.add_exception_handler(family, handler)
