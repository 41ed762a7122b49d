"""`status-digest`: mail the team what waits in every audience's mailbox.

An example of a scheduled mail flow. It names an audience, never an oversight mode: settings.toml
decides whether a human approves the digest, so changing a mode never changes the flow. It retries
as a whole for minutes after a crash or a long outage (`FLOW_RETRIES`): safe, because the digest
carries an idempotency key derived from the flow run.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from ..mail.connection import current_settings
from ..mail.retry_policy import FLOW_RETRIES, FLOW_RETRY_DELAY_SECONDS
from ..mail.tasks import Delivery, count_emails, message_key, send_email
from ..namespace import STATUS_DIGEST, flow_name
from ..oversight.approvals import WaitMode, await_delivery


@flow(
    name=flow_name(STATUS_DIGEST),
    retries=FLOW_RETRIES,
    retry_delay_seconds=FLOW_RETRY_DELAY_SECONDS,
)
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
