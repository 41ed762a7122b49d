"""The webhook receiver's work as a flow, for Prefect Cloud, where `receiver serve` is not run.

On Prefect Cloud a webhook made from prefect/cloud-webhook.json turns each MultiMail delivery
into an event about ids (labelled with this project), and two automations, the deployment
triggers in prefect/cloud-trigger.yaml, run the `receive-webhook` deployment on a worker of the
project's pool for each one:

- `message.received` (or its alias `email.received`): the email's one answer-inbound run is
  started as the receiver starts it (`inbound.InboundStarter`: the same guards, the same
  idempotency key `answer-inbound:<email id>`), so `reconcile-inbound` and `answer-run` see it;
- `oversight.approved` / `oversight.rejected`: the runs suspended on the email are resumed as
  the receiver resumes them (`inbound/receiver.py`, `decision_handler`).

A Cloud webhook cannot check MultiMail's signature: anyone who learns its URL can post to it.
So the event is trusted for its ids only. The email is read again with the project's key (an id
that is not an email of this account in that mailbox is ignored; the read marks an unread email
read, as the answer run's own read does a moment later), the guards look at that read
(direction, sender, mailbox), and the runs to resume are the ones its tags name.

What cannot be done yet fails the run, so that the flow's retries try again (`RETRIES`): a
run named in the tags that is still on its way to suspending, MultiMail or the Prefect API not
answering. Past the retries, `reconcile-inbound` starts an answer that is still missing and
`expire-approval-waits` resumes a wait whose decision was made.
"""

from __future__ import annotations

from typing import Any, Final

from prefect import flow, get_run_logger
from starlette.concurrency import run_in_threadpool

from ..inbound.receiver import DECISION_EVENTS, decision_handler
from ..inbound.starter import INBOUND_EVENTS, Answer, InboundStarter, MailboxDirectory
from ..mail.connection import current_settings, shared_client
from ..multimail.client import MultiMailAPIError
from ..multimail.models import Email, Mailbox
from ..namespace import RECEIVE_WEBHOOK, flow_name

#: What the automations put before MultiMail's event name (`multimail.oversight.approved`).
EVENT_PREFIX: Final = "multimail."
#: Retries of a run that could not act yet, and the seconds before each: 4 minutes in all, about
#: as long as MultiMail's own redeliveries to `receiver serve` (then the sweeps take over).
RETRIES: Final = 8
RETRY_DELAY_SECONDS: Final = 30


class NotActedOnYet(RuntimeError):
    """The delivery cannot be acted on now (the receiver would answer 503): retried."""


def _read_email(mailbox_id: str, email_id: str) -> Email | None:
    """The email as MultiMail has it, read with the project's key; None if it has no such
    email in that mailbox (an id from another account, or made up)."""
    try:
        return shared_client().get_email(mailbox_id, email_id)
    except MultiMailAPIError as error:
        if error.status_code == 404:
            return None
        raise


def _read_tags(mailbox_id: str, email_id: str) -> dict[str, str]:
    """The email's tags (they name the runs waiting for it); none if it is not this account's."""
    try:
        return shared_client().get_tags(mailbox_id, email_id)
    except MultiMailAPIError as error:
        if error.status_code == 404:
            return {}
        raise


def _list_mailboxes() -> list[Mailbox]:
    return shared_client().list_mailboxes()


async def act(event: str, email_id: str, mailbox_id: str) -> Answer:
    """Do what the receiver does for a verified delivery of `event` about these ids; answer what
    it would answer (an HTTP status and a body: 2xx done, 4xx nothing to do, 503 retry)."""
    name = event.removeprefix(EVENT_PREFIX)
    if not email_id or not mailbox_id:
        return 400, {"error": f"{event} without email_id/mailbox_id"}
    if name in INBOUND_EVENTS:
        email = await run_in_threadpool(_read_email, mailbox_id, email_id)
        if email is None:
            return 200, {"status": "ignored", "reason": "no such email in this account"}
        starter = InboundStarter(MailboxDirectory(current_settings(), _list_mailboxes))
        sender = {"from": email.sender, "direction": email.direction or ""}
        return await starter({"email_id": email.id, "mailbox_id": mailbox_id, **sender})
    if name in DECISION_EVENTS:
        # No `tags` in the delivery: the handler reads them from MultiMail with the key.
        on_decision = decision_handler(_read_tags)
        return await on_decision({"email_id": email_id, "mailbox_id": mailbox_id})
    return 200, {"status": "ignored", "event": event}


@flow(
    name=flow_name(RECEIVE_WEBHOOK),
    flow_run_name="{event}-{email_id}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
)
async def receive_webhook(event: str, email_id: str, mailbox_id: str) -> dict[str, Any]:
    """Act on one MultiMail webhook that Prefect Cloud turned into an event: start the answer
    to inbound mail, or resume the runs waiting for a decision. `event` is MultiMail's event
    name, with or without the `multimail.` of the Prefect event."""
    status_code, answer = await act(event, email_id, mailbox_id)
    logger = get_run_logger()
    if status_code < 300:
        logger.info("%s about %s: %s", event, email_id, answer)
        return answer
    if status_code < 500:
        logger.warning("%s about %s not acted on: %s", event, email_id, answer)
        return answer
    raise NotActedOnYet(f"{event} about {email_id}: {answer}; the flow's retries try again")
