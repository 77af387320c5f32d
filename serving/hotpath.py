"""The pure ASGI shortcut to the hottest route (``POST /v1/rank``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from serving import errors
from serving.deps import Service


class HotPath:
    """Pure ASGI shortcut to one ``POST`` route (``/v1/rank`` and ``/v1/cities/{city}/rank``).

    Same handler, same auth check, same error mapping as through FastAPI, minus its routing and
    dependency machinery (about a tenth of a request's cost). The FastAPI route stays
    registered: it documents the endpoint in the OpenAPI schema.
    """

    def __init__(
        self,
        app: Any,
        route: Callable[[str], str | None],
        handler: Callable[[Request, Service], Awaitable[Response]],
        service: Service,
    ) -> None:
        self.app = app
        self.route = route  # request path -> the route template it matches, or None
        self.handler = handler
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        template = self.route(scope["path"]) if scope["type"] == "http" else None
        if template is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["route"] = template
        request = Request(scope, receive)
        try:
            self.service.check_token(request.headers.get("authorization"))
            response = await self.handler(request, self.service)
        except Exception as exc:
            mapped = errors.to_response(request, exc)
            if mapped is None:
                raise
            response = mapped
        await response(scope, receive, send)
