"""Example flows. They name an audience, never an oversight mode: settings.toml decides
whether a human approves the mail, so changing a mode never changes a flow.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from .approvals import WaitMode, await_delivery, resume_expired_waits
from .credentials import current_settings
from .models import Email
from .tasks import (
    Delivery,
    Outcome,
    count_emails,
    message_key,
    read_email,
    reply_to_email,
    send_email,
    tag_email,
)


class ReplyReport(BaseModel):
    """What became of the answer to one inbound email."""

    model_config = ConfigDict(frozen=True)

    inbound_id: str
    reply_id: str
    outcome: Outcome
    approved_by: str | None = None


def draft_reply(email: Email) -> str:
    """A first answer to `email`. Replace it with your agent's drafting step."""
    return (
        f"Hello,\n\nthank you for your message about **{email.subject or 'your request'}**. "
        "We have received it and will get back to you with details shortly.\n\n"
        "Kind regards"
    )


@flow(name="status-digest")
def status_digest(recipients: list[str] | None = None, wait: WaitMode = "auto") -> Delivery:
    """Mail the team a digest of every audience's unread inbound mail and pending approvals."""
    settings = current_settings()
    rows = []
    for name, audience in settings.audiences.items():
        unread = count_emails(name, "unread", "inbound")
        waiting = count_emails(name, "pending_send_approval", "outbound")
        rows.append(f"| {name} | {audience.oversight_mode} | {unread} | {waiting} |")
    today = datetime.now(UTC).date().isoformat()
    markdown = "\n".join(
        [
            f"# Mail status, {today}",
            "",
            "| audience | oversight | unread inbound | awaiting approval |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    sent = send_email(
        settings.digest.audience,
        recipients or settings.digest.recipients,
        f"Mail status digest {today}",
        markdown,
        # One digest per flow run: a retried run (same id) never mails twice.
        idempotency_key=message_key("status-digest", str(flow_run.id)),
    )
    delivery = await_delivery(settings.digest.audience, sent.id, wait)
    get_run_logger().info("Status digest %s: %s", delivery.email_id, delivery.outcome)
    return delivery


@flow(name="answer-inbound", flow_run_name="answer-{email_id}")
def answer_inbound(
    email_id: str,
    reply_markdown: str | None = None,
    audience: str | None = None,
    wait: WaitMode = "auto",
) -> ReplyReport:
    """Answer one inbound email and report whether the answer was sent or rejected.

    In a gated mailbox the reply waits for a human (`wait`: poll, suspend, or auto: suspend
    when deployed); `rejected` and `cancelled` are outcomes to report, not errors to retry.
    The idempotency key comes from the inbound email's id, so a retried or resumed flow or a
    redelivered webhook never answers the same email twice.
    """
    audience = audience or current_settings().replies.audience
    inbound = read_email(audience, email_id)
    tag_email(audience, email_id, {"workflow": "answer-inbound", "state": "answering"})
    reply = reply_to_email(
        audience,
        email_id,
        reply_markdown or draft_reply(inbound),
        idempotency_key=message_key("reply", email_id),
    )
    delivery = await_delivery(audience, reply.id, wait)
    tag_email(audience, email_id, {"state": f"reply-{delivery.outcome}"})
    create_markdown_artifact(
        key="answer-inbound",
        markdown=(
            f"**Re: {inbound.subject}** from {inbound.sender}: reply `{reply.id}` "
            f"**{delivery.outcome}**"
            + (f" (by {delivery.approved_by})" if delivery.approved_by else "")
        ),
        description="Outcome of the latest answer to an inbound email.",
    )
    return ReplyReport(
        inbound_id=email_id,
        reply_id=reply.id,
        outcome=delivery.outcome,
        approved_by=delivery.approved_by,
    )


@flow(name="expire-approval-waits")
async def expire_approval_waits() -> list[str]:
    """Wake the runs suspended on a decision for longer than approval_timeout_seconds.

    Each one cancels its still-pending email and reports `timed_out`. Scheduled every 15
    minutes in prefect.yaml and by `serve`.
    """
    resumed = await resume_expired_waits()
    if resumed:
        get_run_logger().info("Resumed %d expired approval wait(s): %s", len(resumed), resumed)
    return resumed
