"""Structured (JSON) logs carrying the request id, and the ASGI middleware that sets it.

Every response carries ``X-Request-ID``: the caller's when it sent a sane one, else a new one.
Every log line written while a request is handled carries it too.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_encoder = msgspec.json.Encoder(enc_hook=str)
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


def configure_logging(level: str) -> None:
    """JSON logs on stderr for the service process (called by ``serving.main.run``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RequestContextMiddleware:
    """Pure ASGI middleware: request id in and out, and access log lines: every error and every
    slow request, and a ``sample`` share of the fast successful ones."""

    def __init__(
        self,
        app: ASGIApp,
        access_log: bool = True,
        on_response: Callable[[str, int], None] | None = None,
        sample: float = 1.0,
        slow_ms: float = 50.0,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.on_response = on_response
        self.sample = sample
        self.slow_ms = slow_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _SANE_ID.match(candidate):
                    rid = candidate
                break
        if rid is None:
            rid = os.urandom(16).hex()  # as unique as uuid4().hex, a third of the cost
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500
        header = (b"x-request-id", rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = str(getattr(route, "path", None) or scope["state"].get("route", "unmatched"))
            if self.on_response is not None:
                self.on_response(path, status)
            duration_ms = (time.perf_counter() - started) * 1000
            if self.access_log and (
                status >= 400 or duration_ms > self.slow_ms or random.random() < self.sample
            ):
                logger.info(
                    "%s %s %d",
                    scope.get("method"),
                    scope.get("path"),
                    status,
                    extra={
                        "status": status,
                        "path": scope.get("path"),
                        "route": path,
                        "duration_ms": round(duration_ms, 3),
                        **scope["state"].get("log_extra", {}),
                    },
                )
            request_id_var.reset(token)
