"""Who may call what: each route names the scope its key must hold (`Reader`, `Sender`, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..state import ApiError, ApiKey

_bearer_scheme = HTTPBearer(auto_error=False, description="`mm_live_...` API key")


def require(*any_of: str) -> Callable[..., ApiKey]:
    """A dependency that returns the caller's key if it holds one of `any_of` scopes."""

    def dependency(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
    ) -> ApiKey:
        key: ApiKey | None = request.scope.get("state", {}).get("api_key")
        if key is None:  # only reachable if the middleware was bypassed
            raise ApiError(401, "Missing, unknown or revoked API key")
        if not any(key.has_scope(scope) for scope in any_of):
            names = " or ".join(f"'{scope}'" for scope in any_of)
            raise ApiError(403, f"This API key lacks the {names} scope")
        return key

    return dependency


Reader = Annotated[ApiKey, Depends(require("read"))]
Sender = Annotated[ApiKey, Depends(require("send"))]
Admin = Annotated[ApiKey, Depends(require("admin"))]
Overseer = Annotated[ApiKey, Depends(require("oversight"))]
OverseerRead = Annotated[ApiKey, Depends(require("oversight", "oversight_read"))]
Cursor = Annotated[str | None, Query(max_length=64)]


def limit(default: int) -> Any:
    return Query(default, ge=1, description="Values above 100 are treated as 100.")
