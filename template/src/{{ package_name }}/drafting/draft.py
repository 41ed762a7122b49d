"""What a draft is, the fixed one, and who writes it: the agent when a model is configured."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..mail.connection import current_settings
from ..mail.tasks import get_thread
from ..multimail.models import Email


class Draft(BaseModel):
    """A reply's body, or the reason a human must answer instead; and who wrote it."""

    model_config = ConfigDict(frozen=True)

    markdown: str
    #: Why the email goes to a human instead of getting this reply; None to reply.
    escalate: str | None = None
    #: The model that wrote it (pydantic-ai's name); None for the fixed draft.
    model: str | None = None
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def fixed_draft(email: Email) -> Draft:
    """The answer when no model is configured: an acknowledgement, offline and free."""
    return Draft(
        markdown=(
            f"Hello,\n\nthank you for your message about "
            f"**{email.subject or 'your request'}**. We have received it and will get back to "
            "you with details shortly.\n\nKind regards"
        )
    )


def draft_reply(audience: str, email: Email) -> Draft:
    """A draft answer to `email`: the model's when settings.toml names one (`[drafting] model`;
    it also reads the rest of the conversation), else the fixed one."""
    settings = current_settings()
    if not settings.drafting.enabled:
        return fixed_draft(email)
    from .agent import run_agent  # imported late: pydantic-ai only where a model drafts

    earlier = get_thread(audience, email.thread_id).emails if email.thread_id else []
    return run_agent(settings, audience, email, earlier)
