"""`status-digest` under a Prefect test server, against the fake MultiMail, with a human (the
operator thread) approving the digest where its audience is gated.
"""

from __future__ import annotations

import pytest

from ...fake.operator import Operator
from ...flows.status_digest import status_digest
from ...mail import connection
from ...multimail.client import MultiMailClient
from ...multimail.provision import MailboxState

pytestmark = pytest.mark.slow


def test_status_digest_reaches_the_team(
    mail_env: list[MailboxState], approving_operator: Operator, client: MultiMailClient
) -> None:
    settings = connection.current_settings()
    delivery = status_digest()
    assert delivery.outcome == "sent"
    mailbox = client.mailbox_id(settings.audience(settings.digest.audience).mailbox)
    email = client.get_email(mailbox, delivery.email_id)
    assert email.to == settings.digest.recipients
    assert "| audience | oversight |" in email.markdown
