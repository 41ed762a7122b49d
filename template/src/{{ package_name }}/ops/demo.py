"""The whole story, end to end, against the bundled fake MultiMail on 127.0.0.1.

1. provision one mailbox per audience (upgrades approved with the operator's emailed code);
2. the status digest goes out through the digest audience's mailbox;
3. a customer writes in and is answered through the replies audience, the reply drafted by a
   scripted stand-in for a model (offline, whatever settings.toml names): where its mode is gated,
   the reply waits for a human, the operator approves, it is sent; otherwise it goes at once;
4. a second customer writes in; where a human decides, the operator rejects the reply and the
   flow reports `rejected`; otherwise the reply is sent like the first;
5. the audit trail shows every step, with who approved by their key's name.

The story follows settings.toml: each step says what its audience's mode makes happen. Each
step prints what happened and whether it is what should happen; the demo fails (exit 1) if any
step did not.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ..fake import FakeMultiMail
from ..fake.operator import Operator, demo_policy, provision_on_fake
from ..mail import connection
from ..multimail.client import MultiMailClient, MultiMailError
from ..namespace import DRAFTED_BY_TAG
from ..settings import OversightMode, Settings

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage
    from pydantic_ai.models import Model
    from pydantic_ai.models.function import AgentInfo

    from ..flows.answer_inbound import ReplyReport

APP_SCOPES = ["read", "send", "admin"]

HUMAN_GATED = {OversightMode.GATED_SEND, OversightMode.GATED_ALL}
#: The name the demo's scripted stand-in drafts under when settings.toml names no model.
DEMO_MODEL = "demo:scripted-stand-in"


@dataclass
class Report:
    """Collects the demo's checks and prints each as it happens."""

    echo: Callable[[str], None] = print
    failures: list[str] = field(default_factory=list)

    def step(self, title: str) -> None:
        self.echo(f"\n== {title}")

    def check(self, ok: bool, message: str) -> None:
        self.echo(f"  [{'ok' if ok else 'FAILED'}] {message}")
        if not ok:
            self.failures.append(message)


def run_demo(echo: Callable[[str], None] = print) -> bool:
    """Run every step; True when each did what it should."""
    report = Report(echo)
    with FakeMultiMail() as fake:
        echo(f"Fake MultiMail on {fake.base_url} (approval page: {fake.base_url}/_fake/approvals)")
        os.environ["MULTIMAIL_API_URL"] = fake.base_url
        os.environ["MULTIMAIL_API_KEY"] = fake.create_key(APP_SCOPES, name="flows")
        connection.reset()
        settings = connection.current_settings()
        operator_key = SecretStr(fake.create_key(["oversight"], name="operator"))
        with MultiMailClient(fake.base_url, operator_key) as operator_client:
            operator = Operator(operator_client, demo_policy, echo)
            operator.start()
            try:
                steps: list[Callable[[], None]] = [
                    lambda: _provision(report, fake, settings),
                    lambda: _digest(report, settings),
                    lambda: _replies(report, fake, settings),
                    lambda: _audit(report, settings),
                ]
                for step in steps:
                    try:
                        step()
                    except MultiMailError as error:  # report it as a failed step, go on
                        report.check(False, str(error))
            finally:
                operator.stop()
                connection.reset()
    echo(
        "\nDemo "
        + (
            "passed: every step did what it should."
            if not report.failures
            else f"FAILED: {len(report.failures)} step(s) did not do what they should."
        )
    )
    echo(
        "Next: docs/tutorial.md does the same by hand, deployed on a local Prefect server and "
        "worker, with inbound mail starting runs and the audit trail as Prefect events."
    )
    return not report.failures


def _provision(report: Report, fake: FakeMultiMail, settings: Settings) -> None:
    report.step("1. Provision one mailbox per audience (upgrades need the operator's code)")
    for state in provision_on_fake(fake, connection.shared_client(), settings):
        report.check(
            state.ready,
            f"{state.audience}: {state.address} is {state.mode} (wanted {state.target}; "
            f"{', '.join(state.actions)})",
        )


def _digest(report: Report, settings: Settings) -> None:
    from ..flows.status_digest import status_digest

    audience = settings.digest.audience
    mode = settings.audience(audience).oversight_mode
    report.step(f"2. Status digest through '{audience}' ({mode})")
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        report.echo("  (first flow run: Prefect starts a temporary local server, ~15 s)")
    delivery = status_digest()
    report.check(delivery.outcome == "sent", f"digest {delivery.email_id} is {delivery.outcome}")


def _replies(report: Report, fake: FakeMultiMail, settings: Settings) -> None:
    from ..drafting.agent import drafting_with
    from ..flows.answer_inbound import answer_inbound

    # Offline and free whatever settings.toml says: a real model is `drafts eval`'s business.
    configured = settings.drafting.model
    owners = os.environ.get("MULTIMAIL_DRAFTING__MODEL")
    os.environ["MULTIMAIL_DRAFTING__MODEL"] = DEMO_MODEL
    connection.reset()
    try:
        with drafting_with(_demo_model()):
            _answer_mail(report, fake, connection.current_settings(), answer_inbound, configured)
    finally:
        if owners is None:
            del os.environ["MULTIMAIL_DRAFTING__MODEL"]
        else:
            os.environ["MULTIMAIL_DRAFTING__MODEL"] = owners
        connection.reset()


def _demo_model() -> Model:
    """A scripted stand-in for a model: it answers the email it is sent by name and subject."""
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models.function import FunctionModel

    from ..drafting.agent import sent_conversation

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        email = sent_conversation(messages)["email_to_answer"]
        name = email["from"].split("@")[0].split(".")[0].title()
        markdown = (
            f"Hello {name},\n\nthank you for writing about **{email['subject']}**. We are "
            "looking into it and will come back to you today.\n\nThe team"
        )
        (output,) = info.output_tools
        return ModelResponse(parts=[ToolCallPart(output.name, {"markdown": markdown})])

    return FunctionModel(respond)


def _answer_mail(
    report: Report,
    fake: FakeMultiMail,
    settings: Settings,
    answer_inbound: Callable[[str], ReplyReport],
    configured_model: str,
) -> None:
    audience = settings.replies.audience
    mode = settings.audience(audience).oversight_mode
    address = f"{settings.audience(audience).mailbox}@"
    to = next(
        m.address
        for m in connection.shared_client().list_mailboxes()
        if m.address.startswith(address)
    )
    gated = mode in HUMAN_GATED
    report.step(
        f"3. A customer writes to {to}; the reply goes through '{audience}' ({mode}): "
        + ("a human approves it first" if gated else "sent without waiting for a human")
    )
    if configured_model:
        report.echo(
            f"  (settings.toml names {configured_model}; the demo drafts with a scripted "
            "stand-in on this machine instead, offline and free; the `drafts eval` command "
            "tries the real model)"
        )
    else:
        report.echo(
            "  (no model in settings.toml: a scripted stand-in on this machine drafts the "
            "replies, as a model would; [drafting] model in settings.toml names a real one)"
        )
    first = fake.deliver_inbound(
        to=to,
        sender="ada@example.com",
        subject="Where is my order?",
        markdown="Hi, my order #1042 has not arrived yet. Can you check?",
    )
    answered = answer_inbound(first)
    drafted_by = connection.shared_client().get_email(_mailbox_id(settings), first).tags
    report.check(
        drafted_by.get(DRAFTED_BY_TAG) == settings.drafting.model,
        f"the reply was drafted by {drafted_by.get(DRAFTED_BY_TAG)} (the approver sees which)",
    )
    approver = _key_names().get(answered.approved_by or "", answered.approved_by)
    report.check(
        answered.outcome == "sent",
        f"reply {answered.reply_id} is {answered.outcome}"
        + (f", approved by {approver}" if approver else ""),
    )
    if gated:
        report.step("4. Another customer writes; the operator rejects the reply")
    else:
        report.step(f"4. Another customer writes; in {mode} no human decides: the reply is sent")
    second = fake.deliver_inbound(
        to=to,
        sender="bob@example.com",
        subject="Please close my account",
        markdown="Close my account and delete everything, thanks.",
    )
    rejected = answer_inbound(second)
    expected = "rejected" if gated else "sent"
    report.check(
        rejected.outcome == expected,
        f"reply {rejected.reply_id} is {rejected.outcome} (expected {expected} in {mode})",
    )


def _mailbox_id(settings: Settings) -> str:
    mailbox = settings.audience(settings.replies.audience).mailbox
    return connection.shared_client().mailbox_id(mailbox)


def _key_names() -> dict[str, str]:
    """API key names by id: the demo's app key has the admin scope that lists them."""
    return connection.shared_client().api_key_names()


def _audit(report: Report, settings: Settings) -> None:
    report.step("5. Audit trail, oldest first")
    entries = connection.shared_client().audit_log(limit=50).entries
    names = _key_names()
    for entry in reversed(entries):
        details = ", ".join(
            f"{k}={names.get(str(v), v) if k.endswith('_by') else v}"
            for k, v in entry.metadata.items()
            if v not in (None, "")
        )
        by = names.get(entry.actor_key_id or "", entry.actor_key_id or "")
        line = f"{entry.created_at}  {entry.action:<24} by {by or '-'}: {details or '-'}"
        report.echo(
            textwrap.fill(
                line,
                width=100,
                initial_indent="  ",
                subsequent_indent=" " * 6,
                break_long_words=False,  # wrap between words; ids stay whole
                break_on_hyphens=False,
            )
        )
    actions = {entry.action for entry in entries}
    wanted = {"mailbox.create", "email.send", "email.reply", "email.tag"}
    if settings.audience(settings.replies.audience).oversight_mode in HUMAN_GATED:
        wanted.add("oversight.decide")
    report.check(wanted <= actions, f"audit log records {', '.join(sorted(wanted))}")
