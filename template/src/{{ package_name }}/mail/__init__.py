"""The Prefect tasks a flow sends and reads mail with, by audience, under one retry policy.

    from <your package>.mail import send_email, send_many, read_email

Each task names an audience from settings.toml, never a mailbox or an oversight mode, and loads
the API key itself (`connection.py`), so no key is ever a parameter or a result.
"""

from .bulk import OutgoingEmail, SendOutcome, send_many
from .tasks import (
    Delivery,
    cancel_email,
    check_delivery,
    check_inbox,
    count_emails,
    get_email_status,
    get_thread,
    list_awaiting_approval,
    mail_task,
    message_key,
    read_email,
    reply_to_email,
    send_email,
    tag_email,
    wait_for_decision,
)

__all__ = [
    "Delivery",
    "OutgoingEmail",
    "SendOutcome",
    "cancel_email",
    "check_delivery",
    "check_inbox",
    "count_emails",
    "get_email_status",
    "get_thread",
    "list_awaiting_approval",
    "mail_task",
    "message_key",
    "read_email",
    "reply_to_email",
    "send_email",
    "send_many",
    "tag_email",
    "wait_for_decision",
]
