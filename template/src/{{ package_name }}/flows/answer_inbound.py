"""`answer-inbound`: answer one inbound email, exactly once, under its audience's oversight.

The flow names an audience, never an oversight mode: settings.toml decides whether a human
approves the reply, so changing a mode never changes the flow. It retries as a whole for minutes
after a crash or an outage longer than a task's own retries (`FLOW_RETRIES`): safe, because the
reply carries a key derived from the inbound email, and the flow records the reply and its
outcome on the inbound email's tags.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict

from ..drafting import Draft, draft_reply
from ..inbound.starter import ANSWER_RUN_NAME
from ..mail.connection import current_settings
from ..mail.events import reply_decided, reply_drafted, reply_queued
from ..mail.retry_policy import FLOW_RETRIES, FLOW_RETRY_DELAY_SECONDS
from ..mail.tasks import (
    Outcome,
    cached_mail_task,
    get_thread,
    message_key,
    own_addresses,
    read_email,
    reply_to_email,
    tag_email,
)
from ..multimail.models import Email
from ..namespace import (
    ANSWER_INBOUND,
    DRAFT_KEY_PREFIX,
    DRAFTED,
    DRAFTED_BY_TAG,
    artifact_key,
    flow_name,
)
from ..oversight.approvals import WaitMode, await_delivery

#: Tags `answer_inbound` keeps on the inbound email: what it did, so a later run (a retry, a
#: redelivered webhook, a run days later, past MultiMail's 24 h idempotency memory) reads the
#: outcome instead of answering again.
STATE_TAG = "state"
REPLY_TAG = "reply_id"
REASON_TAG = "skip_reason"
#: Outcomes after which nothing about the reply can change any more.
FINAL_OUTCOMES = frozenset(
    {"sent", "scheduled", "rejected", "cancelled", "failed", "timed_out", "skipped", "escalated"}
)


class ReplyReport(BaseModel):
    """What became of the answer to one inbound email."""

    model_config = ConfigDict(frozen=True)

    inbound_id: str
    reply_id: str | None
    outcome: Outcome
    approved_by: str | None = None
    #: Why the email was not answered (`skipped`), e.g. it came from one of our own mailboxes,
    #: or why the drafting model handed it to a human (`escalated`).
    reason: str | None = None


def _draft_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"{DRAFT_KEY_PREFIX}{parameters['email'].id}"


@cached_mail_task(_draft_key, timedelta(days=7))
def draft(audience: str, email: Email) -> Draft:
    """The draft answer to `email` (drafting/), as a task cached on the inbound email's id: a
    rerun after a resume or a retry (same email, any flow run) reuses it instead of drafting,
    and with a model billing, again. A rate-limited or failing model is retried like MultiMail
    (`retry_policy`); the draft is kept in Prefect's result storage for 7 days."""
    made = draft_reply(audience, email)
    if made.model is not None:
        usage = {
            "requests": made.requests,
            "input_tokens": made.input_tokens,
            "output_tokens": made.output_tokens,
        }
        reason = made.escalate[:200] if made.escalate else None
        reply_drafted(audience, email.id, made.model, usage, reason)
    return made


def _recorded(inbound: Email) -> ReplyReport | None:
    """The outcome an earlier run recorded on the inbound email, if it reached one."""
    state = inbound.tags.get(STATE_TAG, "")
    outcome = state.removeprefix("reply-")
    if not state.startswith("reply-") or outcome not in FINAL_OUTCOMES:
        return None
    return ReplyReport(
        inbound_id=inbound.id,
        reply_id=inbound.tags.get(REPLY_TAG),
        outcome=outcome,
        reason=inbound.tags.get(REASON_TAG),
    )


def _when(timestamp: str | None) -> datetime | None:
    """An API timestamp as an aware datetime (UTC if it names no zone), None if unreadable."""
    try:
        when = datetime.fromisoformat(timestamp or "")
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _skip_reason(audience: str, inbound: Email) -> str | None:
    """Why `inbound` must not be answered, or None: only mail from outside, and a bounded
    number of replies per conversation, so that an auto-responder cannot start a loop."""
    if inbound.direction != "inbound":
        return f"not an inbound email (direction {inbound.direction})"
    sender = parseaddr(inbound.sender)[1].lower()
    if sender in own_addresses():
        return f"sent by this project's own mailbox {sender}"
    limit = current_settings().max_replies_per_thread_per_day
    if inbound.thread_id:
        since = (_when(inbound.received_at) or datetime.now(UTC)) - timedelta(days=1)
        replies = [
            e
            for e in get_thread(audience, inbound.thread_id).emails
            if e.direction == "outbound"
            and e.status not in ("rejected", "cancelled")
            and (_when(e.received_at) or since) >= since  # undated: counted, to be safe
        ]
        if len(replies) >= limit:
            return (
                f"{len(replies)} replies in this conversation within 24 h already "
                f"(max_replies_per_thread_per_day = {limit})"
            )
    return None


def _report_draft(audience: str, email_id: str, drafted: Draft) -> None:
    """When a model wrote the draft: which one, on the inbound email (the approver sees it
    beside the reply), and what it cost, on the run (an artifact)."""
    if drafted.model is None:
        return
    tag_email(audience, email_id, {DRAFTED_BY_TAG: drafted.model})
    create_markdown_artifact(
        key=artifact_key(DRAFTED),
        markdown=(
            f"Drafted by **{drafted.model}**: {drafted.requests} request(s), "
            f"{drafted.input_tokens} tokens in, {drafted.output_tokens} out."
            + (f" Escalated to a human: {drafted.escalate}" if drafted.escalate else "")
        ),
        description="The drafting model's latest draft: model, usage, escalation.",
    )


def _escalate(audience: str, email_id: str, reason: str) -> ReplyReport:
    """Hand the email to a human: no reply, the reason on its tags and in the report."""
    tag_email(audience, email_id, {STATE_TAG: "reply-escalated", REASON_TAG: reason[:200]})
    get_run_logger().info("Escalated %s to a human: %s", email_id, reason)
    return ReplyReport(inbound_id=email_id, reply_id=None, outcome="escalated", reason=reason)


@flow(
    name=flow_name(ANSWER_INBOUND),
    flow_run_name=ANSWER_RUN_NAME,
    retries=FLOW_RETRIES,
    retry_delay_seconds=FLOW_RETRY_DELAY_SECONDS,
)
def answer_inbound(
    email_id: str,
    audience: str | None = None,
    reply_markdown: str | None = None,
    wait: WaitMode = "auto",
) -> ReplyReport:
    """Answer one inbound email and report whether the answer was sent or rejected.

    In a gated mailbox the reply waits for a human (`wait`: poll, suspend, or auto: suspend
    when Prefect allows it); `rejected` and `cancelled` are outcomes to report, not errors to
    retry. Mail that must not be answered (not inbound, from one of this project's mailboxes,
    or a conversation that had its share of replies today) is `skipped` with the reason; an
    email the drafting model hands to a human is `escalated`, with its reason, and not answered.
    Never answers twice: the reply's idempotency key comes from the inbound email's id, and the
    reply and its outcome are recorded on the inbound email's tags, which a later run (a retry,
    a redelivered webhook, days later) reads instead of answering again.
    """
    audience = audience or current_settings().replies.audience
    log = get_run_logger()
    inbound = read_email(audience, email_id)
    recorded = _recorded(inbound)
    if recorded is not None:
        log.info("%s was handled already: %s", email_id, recorded.outcome)
        return recorded
    reply_id = inbound.tags.get(REPLY_TAG)
    if reply_id is None:  # else an earlier run replied and stopped before the outcome
        reason = _skip_reason(audience, inbound)
        if reason is not None:
            tag_email(audience, email_id, {STATE_TAG: "reply-skipped", REASON_TAG: reason})
            log.info("Not answering %s: %s", email_id, reason)
            return ReplyReport(inbound_id=email_id, reply_id=None, outcome="skipped", reason=reason)
        tag_email(audience, email_id, {"workflow": "answer-inbound", STATE_TAG: "answering"})
        if reply_markdown is None:
            drafted = draft(audience, inbound)
            _report_draft(audience, email_id, drafted)
            if drafted.escalate is not None:
                return _escalate(audience, email_id, drafted.escalate)
            reply_markdown = drafted.markdown
        reply = reply_to_email(
            audience, email_id, reply_markdown, idempotency_key=message_key("reply", email_id)
        )
        reply_id = reply.id
        reply_queued(audience, email_id, reply_id, reply.status)
        tag_email(audience, email_id, {STATE_TAG: "awaiting-decision", REPLY_TAG: reply_id})
    delivery = await_delivery(audience, reply_id, wait)
    tag_email(audience, email_id, {STATE_TAG: f"reply-{delivery.outcome}"})
    reply_decided(audience, reply_id, delivery.outcome)
    create_markdown_artifact(
        key=artifact_key(ANSWER_INBOUND),
        markdown=(
            f"**Re: {inbound.subject}** from {inbound.sender}: reply `{reply_id}` "
            f"**{delivery.outcome}**"
            + (f" (by {delivery.approved_by})" if delivery.approved_by else "")
        ),
        description="Outcome of the latest answer to an inbound email.",
    )
    return ReplyReport(
        inbound_id=email_id,
        reply_id=reply_id,
        outcome=delivery.outcome,
        approved_by=delivery.approved_by,
    )
