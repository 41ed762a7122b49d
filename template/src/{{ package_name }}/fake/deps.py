"""FastAPI dependencies shared by the API, the control surface and the approval page."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .state import FakeState


def get_state(request: Request) -> FakeState:
    """The `FakeState` that `create_app` attached to the application."""
    state: FakeState = request.app.state.fake
    return state


StateDep = Annotated[FakeState, Depends(get_state)]
