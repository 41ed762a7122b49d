"""`/v1/oversight`: the approval queue and decisions (`state/oversight.py`)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import models
from ..deps import StateDep
from ..state import Json
from .errors import ERROR_RESPONSES
from .scopes import Overseer, OverseerRead

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.get("/oversight/pending", tags=["oversight"])
def pending(state: StateDep, _key: OverseerRead) -> Json:
    return state.pending()


@router.post("/oversight/decide", tags=["oversight"])
def decide(state: StateDep, key: Overseer, body: models.DecideBody) -> Json:
    return state.decide(key, body.email_id, body.action, body.reason)
