"""The fake's own control surface under `/_fake/` (not part of MultiMail, not in the schema)."""

from __future__ import annotations

from fastapi import APIRouter

from . import models
from .deps import StateDep
from .state import Json

router = APIRouter(prefix="/_fake", include_in_schema=False)


@router.post("/keys", status_code=201)
def create_key(state: StateDep, body: models.FakeKeyCreate) -> Json:
    key, raw = state.create_key(body.scopes, body.name)
    return {"id": key.id, "api_key": raw, "scopes": list(key.scopes), "name": key.name}


@router.post("/inbound", status_code=201)
def inbound(state: StateDep, body: models.FakeInbound) -> Json:
    return state.deliver_inbound(
        to=body.to,
        sender=body.sender,
        subject=body.subject,
        markdown=body.markdown,
        in_reply_to=body.in_reply_to,
    )


@router.get("/operator/inbox")
def operator_inbox(state: StateDep) -> Json:
    return {"messages": state.operator_inbox()}


@router.post("/faults", status_code=201)
def add_fault(state: StateDep, body: models.FakeFault) -> Json:
    return state.add_fault(body.model_dump())


@router.get("/faults")
def list_faults(state: StateDep) -> Json:
    return state.list_faults()


@router.delete("/faults")
def clear_faults(state: StateDep) -> Json:
    state.clear_faults()
    return {"status": "cleared"}


@router.get("/clock")
def clock(state: StateDep) -> Json:
    return {"now": state.advance_clock(0)}


@router.post("/clock/advance")
def advance_clock(state: StateDep, body: models.FakeClockAdvance) -> Json:
    return {"now": state.advance_clock(body.seconds)}


@router.get("/config")
def get_config(state: StateDep) -> Json:
    return state.config()


@router.post("/config")
def set_config(state: StateDep, body: models.FakeConfig) -> Json:
    return state.configure(**body.model_dump(exclude_none=True))


@router.post("/reset")
def reset(state: StateDep) -> Json:
    state.reset()
    return {"status": "reset"}
