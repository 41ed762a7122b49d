"""`/v1/webhooks` and their deliveries (`state/webhooks.py`)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import models
from ..deps import StateDep
from ..state import Json
from .errors import ERROR_RESPONSES
from .scopes import Admin, Cursor, limit

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.post("/webhooks", status_code=201, tags=["webhooks"])
def create_webhook(state: StateDep, key: Admin, body: models.WebhookCreate) -> Json:
    return state.create_webhook(key, body.url, body.events, body.mailbox_id)


@router.get("/webhooks", tags=["webhooks"])
def list_webhooks(state: StateDep, _key: Admin) -> Json:
    return state.list_webhooks()


@router.get("/webhooks/{webhook_id}", tags=["webhooks"])
def get_webhook(state: StateDep, _key: Admin, webhook_id: str) -> Json:
    return state.get_webhook(webhook_id)


@router.delete("/webhooks/{webhook_id}", tags=["webhooks"])
def delete_webhook(state: StateDep, key: Admin, webhook_id: str) -> Json:
    return state.delete_webhook(key, webhook_id)


@router.get("/webhook-deliveries", tags=["webhooks"])
def list_deliveries(
    state: StateDep, _key: Admin, limit: int = limit(50), cursor: Cursor = None
) -> Json:
    return state.list_deliveries(min(limit, 100), cursor)
