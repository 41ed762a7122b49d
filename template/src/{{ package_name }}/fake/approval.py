"""The approval page: a person reads each pending email and approves or rejects it.

One card per pending email, oldest first, with the message it answers above it. Each decision is
its own form that posts and redirects back (post-redirect-get), so the page needs no JavaScript
and a reload never decides twice; the redirect says what was decided. Decisions go through
`FakeState.decide`, exactly like `POST /v1/oversight/decide` (which takes a reason for either
action, so Approve has an optional note and Reject an optional reason).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from ..namespace import DRAFTED_BY_TAG
from .deps import StateDep
from .pages import escape, markdown, page, plural, when
from .state import ApiError, FakeState, Json
from .state.oversight import PendingView

router = APIRouter(prefix="/_fake/approvals", include_in_schema=False)

APPROVER = "operator (approval page)"
MAX_REASON = 2000

_MODES = {
    "read_only": "nothing may be sent",
    "gated_all": "inbound and outbound mail wait for approval",
    "gated_send": "outbound mail waits for approval",
    "monitored": "sent, with a copy to the operator",
    "autonomous": "sent without review",
}


def _recipients(label: str, addresses: list[str]) -> str:
    if not addresses:
        return ""
    return f"<div><dt>{label}</dt><dd>{escape(', '.join(addresses))}</dd></div>"


def _drafted_by(answered: Json | None) -> str:
    """Which model drafted a reply, from the tag the answering flow leaves on the email it
    answers; MultiMail discloses AI-written mail in every mailbox."""
    model = (answered or {}).get("tags", {}).get(DRAFTED_BY_TAG)
    if not model:
        return ""
    return (
        f'<div class="drafted"><dt>Drafted by</dt><dd>an AI model, <code>{escape(model)}</code> '
        "(MultiMail's AI disclosure is on for every mailbox)</dd></div>"
    )


def _context(answered: Json | None) -> str:
    """The message a reply answers, collapsed above the reply."""
    if answered is None:
        return ""
    return f"""<details class="context">
<summary>In reply to <strong>{escape(answered["subject"])}</strong> from {escape(answered["from"])},
{when(answered["received_at"])}</summary>
<div class="md">{markdown(answered["markdown"])}</div>
</details>"""


def _attachments(email: Json) -> str:
    if not email["attachments"]:
        return ""
    names = ", ".join(
        f"{escape(a['name'])} ({escape(a['content_type'])}, {escape(a['size'])} bytes)"
        for a in email["attachments"]
    )
    return f'<p class="attachments">Attachments: {names}</p>'


def _card(view: PendingView) -> str:
    email, mailbox = view.email, view.mailbox
    eid = escape(email["id"])
    inbound = email["direction"] == "inbound"
    mode = mailbox["oversight_mode"]
    if inbound:
        kind, effect, verb = "Inbound email, held", "delivered to the mailbox", "deliver"
    else:
        kind = "Reply" if email.get("in_reply_to") else "New email"
        effect, verb = "sent", "send"
    approve_label = f"Approve and {verb}"
    approve_effect = f"It is {effect} at once."
    if email.get("send_at") and not inbound:
        approve_label = "Approve"
        approve_effect = f"It is sent at the scheduled time, {when(email['send_at'])}."
    return f"""<article class="card" aria-labelledby="subject-{eid}">
<p class="kicker">{kind} · waiting since {when(email["received_at"])}</p>
<h2 id="subject-{eid}">{escape(email["subject"])}</h2>
<dl class="meta">
<div><dt>Mailbox</dt><dd>{escape(mailbox["address"])}</dd></div>
<div><dt>Mode</dt><dd><span class="mode">{escape(mode)}</span> {_MODES.get(mode, "")}</dd></div>
<div><dt>From</dt><dd>{escape(email["from"])}</dd></div>
{_recipients("To", email["to"])}
{_recipients("Cc", email["cc"])}
{_recipients("Bcc", view.bcc)}
{_drafted_by(view.in_reply_to)}
</dl>
{_context(view.in_reply_to)}
<div class="body md">
{markdown(email["markdown"])}
</div>
{_attachments(email)}
<div class="decide">
<form class="approve" method="post" action="/_fake/approvals/{eid}/approve">
<fieldset><legend>Approve</legend>
<p>{approve_effect}</p>
<label for="note-{eid}">Note for the audit log (optional)</label>
<input id="note-{eid}" name="reason" type="text" maxlength="{MAX_REASON}">
<button type="submit">{approve_label}</button>
</fieldset>
</form>
<form class="reject" method="post" action="/_fake/approvals/{eid}/reject">
<fieldset><legend>Reject</legend>
<p>It is not {effect}.</p>
<label for="reason-{eid}">Reason for rejecting (optional)</label>
<input id="reason-{eid}" name="reason" type="text" maxlength="{MAX_REASON}">
<button type="submit">Reject</button>
</fieldset>
</form>
</div>
</article>"""


def _notice(state: FakeState, request: Request) -> str:
    """What the last decision did, from the redirect's query (post-redirect-get)."""
    email_id = request.query_params.get("email", "")
    result = request.query_params.get("result")
    error = request.query_params.get("error")
    if not email_id or (result is None and error is None):
        return ""
    email = state.find_email(email_id)
    if email is None:
        return '<p class="notice error" role="alert">That email no longer exists.</p>'
    subject = f"<strong>{escape(email['subject'])}</strong>"
    if error is not None:
        return (
            f'<p class="notice error" role="alert">{subject} was already decided '
            f"(its status is now {escape(email['status'])}); nothing changed.</p>"
        )
    if result == "approved_and_sent":
        text = f"Approved and sent: {subject} to {escape(', '.join(email['to']))}."
    elif result == "approved" and email["direction"] == "inbound":
        text = f"Approved: {subject} is delivered to {escape(', '.join(email['to']))}."
    elif result == "approved":
        text = f"Approved: {subject} is sent at {when(email['send_at'])}."
    else:
        effect = "delivered" if email["direction"] == "inbound" else "sent"
        text = f"Rejected: {subject} will not be {effect}."
    return f'<p class="notice" role="status">{text}</p>'


@router.get("", response_class=HTMLResponse)
def approvals(state: StateDep, request: Request) -> HTMLResponse:
    pending = state.pending_emails()
    if pending:
        verb = "waits" if len(pending) == 1 else "wait"
        lead = f"{plural(len(pending), 'email', 'emails')} {verb} for a decision, oldest first."
        cards = "\n".join(_card(view) for view in pending)
    else:
        lead = "Nothing waits for a decision."
        cards = (
            '<p class="empty">The queue is empty. Emails held for approval appear here; '
            '<a href="/_fake/approvals">reload</a> to check again.</p>'
        )
    content = f"""<h1>Pending approvals</h1>
{_notice(state, request)}
<p class="lead">{lead}</p>
{cards}"""
    counts = {"/_fake/approvals": len(pending), "/_fake/operator": len(state.operator_inbox())}
    return HTMLResponse(page("Pending approvals", "/_fake/approvals", content, counts))


async def _decide(
    state: StateDep, request: Request, email_id: str, action: str
) -> RedirectResponse:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    reason = (form.get("reason") or [""])[0].strip()[:MAX_REASON] or None
    try:
        result = state.decide(None, email_id, action, reason, approver=APPROVER)
        query = {"result": result["status"], "email": email_id}
    except ApiError as exc:
        query = {"error": str(exc.status), "email": email_id}
    return RedirectResponse(f"/_fake/approvals?{urlencode(query)}", status_code=303)


@router.post("/{email_id}/approve")
async def approve(state: StateDep, request: Request, email_id: str) -> RedirectResponse:
    return await _decide(state, request, email_id, "approve")


@router.post("/{email_id}/reject")
async def reject(state: StateDep, request: Request, email_id: str) -> RedirectResponse:
    return await _decide(state, request, email_id, "reject")
