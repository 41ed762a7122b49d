"""The FastAPI application of the fake: the middleware, the error handlers and the routers
(`api/` for `/v1/`, mirroring `state/`; `control.py`, the pages)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import ROUTERS as API_ROUTERS
from .approval import router as approval_router
from .control import router as control_router
from .operator_inbox import router as operator_router
from .state import ApiError, FakeState


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so lone surrogates from client input cannot break encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode()


class DroppedResponse(Exception):
    """Raised after a request was applied, to abort the connection without a response body."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> SafeJSONResponse:
    return SafeJSONResponse({"error": message}, status_code=status, headers=headers)


class FakeMiddleware:
    """Applies clock transitions, injected faults and API-key authentication.

    Authentication happens here rather than in a dependency so that a request without a valid
    key gets 401 before its body is even parsed. Faults never touch `/_fake/` paths.
    """

    def __init__(self, app: ASGIApp, state: FakeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        self.state.tick()
        drop = False
        if not path.startswith("/_fake"):
            rule = self.state.pick_fault(scope["method"], path)
            if rule is not None:
                if rule.latency:
                    await asyncio.sleep(rule.latency)
                if rule.status is not None:
                    headers = {}
                    if rule.retry_after is not None or rule.status == 429:
                        retry_after = 1 if rule.retry_after is None else rule.retry_after
                        headers["Retry-After"] = str(retry_after)
                    message = rule.message or f"Injected fault (HTTP {rule.status})"
                    response = _error(rule.status, message, headers)
                    await response(scope, receive, send)
                    return
                drop = rule.drop_response
        if path.startswith("/v1/") and path != "/v1/openapi.json":
            key = self.state.authenticate(_bearer(scope))
            if key is None:
                response = _error(
                    401, "Missing, unknown or revoked API key", {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["api_key"] = key
        if not drop:
            await self.app(scope, receive, send)
            return

        async def discard(message: Message) -> None:
            return None

        await self.app(scope, receive, discard)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        raise DroppedResponse


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


# ---------------------------------------------------------------- error handlers


def _field(loc: tuple[int | str, ...]) -> str:
    """`("body", "to", 1)` -> `to[1]`; a JSON decode position or an empty body -> `body`."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    if not parts or isinstance(parts[0], int):
        return str(loc[0]) if loc else "request"
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{_field(tuple(error.get('loc', ())))}: {message}")
    return _error(400, "Invalid request: " + "; ".join(problems))


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return SafeJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    message = messages.get(exc.status_code) or str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return _error(exc.status_code, message, headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route offers for this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for router in (*API_ROUTERS, control_router, approval_router, operator_router):
        for route in router.routes:
            if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE:
                methods |= route.methods or set()
    return sorted(methods)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    return _error(500, "Internal server error")


def create_app(state: FakeState | None = None) -> FastAPI:
    """Build the fake's ASGI app around `state` (a fresh `FakeState` if none is given)."""
    app = FastAPI(
        title="MultiMail (fake)",
        version="2.0.0",
        description="A stateful stand-in for the MultiMail REST API; see /_fake/ for controls.",
        openapi_url="/v1/openapi.json",
        docs_url="/_fake/docs",
        redoc_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.fake = state or FakeState()
    for router in API_ROUTERS:
        app.include_router(router)
    app.include_router(control_router)
    app.include_router(approval_router)
    app.include_router(operator_router)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(FakeMiddleware, state=app.state.fake)
    return app
