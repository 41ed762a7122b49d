"""The FastAPI application of the fake: the `/v1/` API, the middleware and the error handlers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import models
from .approval import router as approval_router
from .control import router as control_router
from .deps import StateDep
from .operator_inbox import router as operator_router
from .state import ApiError, ApiKey, FakeState, Json, NewAttachment

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, text in (
        (400, "Validation error"),
        (401, "Missing, unknown or revoked API key"),
        (403, "Missing scope or action not allowed"),
        (404, "Not found"),
        (409, "Conflict"),
        (429, "Rate limited"),
    )
}


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


# ---------------------------------------------------------------- dependencies

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


def _limit(default: int) -> Any:
    return Query(default, ge=1, description="Values above 100 are treated as 100.")


def _attachments(items: list[models.AttachmentBody]) -> list[NewAttachment]:
    return [NewAttachment(a.name, a.content_base64, a.content_type) for a in items]


# ---------------------------------------------------------------- /v1 routes

api = APIRouter(prefix="/v1", responses=_ERROR_RESPONSES)


@api.get("/mailboxes", tags=["mailboxes"])
def list_mailboxes(state: StateDep, _key: Reader) -> Json:
    return state.list_mailboxes()


@api.post("/mailboxes", status_code=201, tags=["mailboxes"])
def create_mailbox(state: StateDep, key: Admin, body: models.MailboxCreate) -> Json:
    local = body.address_local or body.address or body.address_local_part
    return state.create_mailbox(key, local, body.display_name, body.ai_disclosure)


@api.get("/mailboxes/{mailbox_id}", tags=["mailboxes"])
def get_mailbox(state: StateDep, _key: Reader, mailbox_id: str) -> Json:
    return state.get_mailbox(mailbox_id)


@api.patch("/mailboxes/{mailbox_id}", tags=["mailboxes"])
def update_mailbox(
    state: StateDep, key: Admin, mailbox_id: str, body: models.MailboxUpdate
) -> Json:
    return state.update_mailbox(key, mailbox_id, body.model_dump(exclude_unset=True))


@api.delete("/mailboxes/{mailbox_id}", tags=["mailboxes"])
def delete_mailbox(state: StateDep, key: Admin, mailbox_id: str) -> Json:
    return state.delete_mailbox(key, mailbox_id)


@api.post("/mailboxes/{mailbox_id}/request-upgrade", tags=["mailboxes"])
def request_upgrade(
    state: StateDep, key: Sender, mailbox_id: str, body: models.UpgradeRequestBody
) -> Json:
    return state.request_upgrade(key, mailbox_id, body.target_mode)


@api.post("/mailboxes/{mailbox_id}/upgrade", tags=["mailboxes"])
def upgrade(state: StateDep, key: Sender, mailbox_id: str, body: models.UpgradeBody) -> Json:
    return state.upgrade(key, mailbox_id, body.code)


@api.get("/mailboxes/{mailbox_id}/emails", tags=["emails"])
def list_emails(
    state: StateDep,
    _key: Reader,
    mailbox_id: str,
    status: models.EmailStatus | None = None,
    direction: Literal["inbound", "outbound"] | None = None,
    since_id: Annotated[str | None, Query(max_length=64)] = None,
    sender: Annotated[str | None, Query(max_length=254)] = None,
    subject_contains: Annotated[str | None, Query(max_length=998)] = None,
    limit: int = _limit(20),
    cursor: Cursor = None,
) -> Json:
    return state.list_emails(
        mailbox_id,
        status=status,
        direction=direction,
        since_id=since_id,
        sender=sender,
        subject_contains=subject_contains,
        limit=min(limit, 100),
        cursor=cursor,
    )


@api.get("/mailboxes/{mailbox_id}/emails/{email_id}", tags=["emails"])
def read_email(state: StateDep, _key: Reader, mailbox_id: str, email_id: str) -> Json:
    return state.read_email(mailbox_id, email_id)


@api.post("/mailboxes/{mailbox_id}/send", status_code=202, tags=["emails"])
def send(
    state: StateDep, key: Sender, mailbox_id: str, body: models.SendBody, response: Response
) -> Json:
    status, result = state.send(
        key,
        mailbox_id,
        to=body.to,
        subject=body.subject,
        markdown=body.markdown,
        cc=body.cc,
        bcc=body.bcc,
        attachments=_attachments(body.attachments),
        idempotency_key=body.idempotency_key,
        send_at=body.send_at,
        gate_timing=body.gate_timing,
    )
    response.status_code = status
    return result


@api.post("/mailboxes/{mailbox_id}/reply/{email_id}", status_code=202, tags=["emails"])
def reply(
    state: StateDep,
    key: Sender,
    mailbox_id: str,
    email_id: str,
    body: models.ReplyBody,
    response: Response,
) -> Json:
    status, result = state.reply(
        key,
        mailbox_id,
        email_id,
        markdown=body.markdown,
        cc=body.cc,
        bcc=body.bcc,
        attachments=_attachments(body.attachments),
        idempotency_key=body.idempotency_key,
    )
    response.status_code = status
    return result


@api.post("/mailboxes/{mailbox_id}/emails/{email_id}/cancel", tags=["emails"])
def cancel(state: StateDep, key: Sender, mailbox_id: str, email_id: str) -> Json:
    return state.cancel(key, mailbox_id, email_id)


@api.get("/mailboxes/{mailbox_id}/emails/{email_id}/tags", tags=["emails"])
def get_tags(state: StateDep, _key: Reader, mailbox_id: str, email_id: str) -> Json:
    return state.get_tags(mailbox_id, email_id)


@api.put("/mailboxes/{mailbox_id}/emails/{email_id}/tags", tags=["emails"])
def set_tags(
    state: StateDep, key: Sender, mailbox_id: str, email_id: str, body: models.TagsBody
) -> Json:
    return state.set_tags(key, mailbox_id, email_id, body.tags)


@api.delete("/mailboxes/{mailbox_id}/emails/{email_id}/tags/{tag}", tags=["emails"])
def delete_tag(state: StateDep, key: Sender, mailbox_id: str, email_id: str, tag: str) -> Json:
    return state.delete_tag(key, mailbox_id, email_id, tag)


@api.get("/mailboxes/{mailbox_id}/threads/{thread_id}", tags=["emails"])
def get_thread(state: StateDep, _key: Reader, mailbox_id: str, thread_id: str) -> Json:
    return state.thread(mailbox_id, thread_id)


@api.get("/oversight/pending", tags=["oversight"])
def pending(state: StateDep, _key: OverseerRead) -> Json:
    return state.pending()


@api.post("/oversight/decide", tags=["oversight"])
def decide(state: StateDep, key: Overseer, body: models.DecideBody) -> Json:
    return state.decide(key, body.email_id, body.action, body.reason)


@api.post("/webhooks", status_code=201, tags=["webhooks"])
def create_webhook(state: StateDep, key: Admin, body: models.WebhookCreate) -> Json:
    return state.create_webhook(key, body.url, body.events, body.mailbox_id)


@api.get("/webhooks", tags=["webhooks"])
def list_webhooks(state: StateDep, _key: Admin) -> Json:
    return state.list_webhooks()


@api.get("/webhooks/{webhook_id}", tags=["webhooks"])
def get_webhook(state: StateDep, _key: Admin, webhook_id: str) -> Json:
    return state.get_webhook(webhook_id)


@api.delete("/webhooks/{webhook_id}", tags=["webhooks"])
def delete_webhook(state: StateDep, key: Admin, webhook_id: str) -> Json:
    return state.delete_webhook(key, webhook_id)


@api.get("/webhook-deliveries", tags=["webhooks"])
def list_deliveries(
    state: StateDep, _key: Admin, limit: int = _limit(50), cursor: Cursor = None
) -> Json:
    return state.list_deliveries(min(limit, 100), cursor)


@api.get("/audit-log", tags=["account"])
def audit_log(state: StateDep, _key: Admin, limit: int = _limit(50), cursor: Cursor = None) -> Json:
    return state.list_audit(min(limit, 100), cursor)


@api.get("/account", tags=["account"])
def account(state: StateDep, _key: Reader) -> Json:
    return state.get_account()


@api.post("/api-keys", status_code=201, tags=["account"])
def create_api_key(state: StateDep, _key: Admin, body: models.ApiKeyCreate) -> Json:
    key, raw = state.create_key(body.scopes, body.name)
    return {**key.to_json(), "api_key": raw}


@api.get("/api-keys", tags=["account"])
def list_api_keys(state: StateDep, _key: Admin) -> Json:
    return state.list_keys()


@api.delete("/api-keys/{key_id}", tags=["account"])
def revoke_api_key(state: StateDep, key: Admin, key_id: str) -> Json:
    return state.revoke_key(key, key_id)


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
    for router in (api, control_router, approval_router, operator_router):
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
    app.include_router(api)
    app.include_router(control_router)
    app.include_router(approval_router)
    app.include_router(operator_router)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(FakeMiddleware, state=app.state.fake)
    return app
