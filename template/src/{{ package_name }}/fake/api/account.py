"""`/v1/account`, `/v1/api-keys` and `/v1/audit-log` (`state/keys.py`, `state/base.py`)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import models
from ..deps import StateDep
from ..state import Json
from .errors import ERROR_RESPONSES
from .scopes import Admin, Cursor, Reader, limit

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.get("/audit-log", tags=["account"])
def audit_log(state: StateDep, _key: Admin, limit: int = limit(50), cursor: Cursor = None) -> Json:
    return state.list_audit(min(limit, 100), cursor)


@router.get("/account", tags=["account"])
def account(state: StateDep, _key: Reader) -> Json:
    return state.get_account()


@router.post("/api-keys", status_code=201, tags=["account"])
def create_api_key(state: StateDep, _key: Admin, body: models.ApiKeyCreate) -> Json:
    key, raw = state.create_key(body.scopes, body.name)
    return {**key.to_json(), "api_key": raw}


@router.get("/api-keys", tags=["account"])
def list_api_keys(state: StateDep, _key: Admin) -> Json:
    return state.list_keys()


@router.delete("/api-keys/{key_id}", tags=["account"])
def revoke_api_key(state: StateDep, key: Admin, key_id: str) -> Json:
    return state.revoke_key(key, key_id)
