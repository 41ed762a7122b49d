"""The operator's inbox as a page: upgrade codes, approval notices and monitored copies.

The real service mails these to the account's oversight address; the fake keeps them (JSON at
`/_fake/operator/inbox`). This page lets a person read them in the browser, for example to copy
an upgrade code, next to the approval page.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from .deps import StateDep
from .pages import escape, page, plural, when
from .state import Json

router = APIRouter(prefix="/_fake/operator", include_in_schema=False)

_KINDS = {
    "upgrade_code": "Upgrade code",
    "approval_notice": "Approval needed",
    "monitored_copy": "Monitored copy",
}


def _message(message: Json) -> str:
    code = ""
    if "code" in message:
        code = f'<p class="code">One-time code: <code>{escape(message["code"])}</code></p>'
    body = escape(message["body"]).replace(
        "/_fake/approvals", '<a href="/_fake/approvals">/_fake/approvals</a>'
    )
    return f"""<article class="card">
<p class="kicker">{escape(_KINDS.get(message["kind"], message["kind"]))} ·
{when(message["created_at"])}</p>
<h2>{escape(message["subject"])}</h2>
<dl class="meta"><div><dt>To</dt><dd>{escape(message["to"])}</dd></div></dl>
{code}
<pre class="plain">{body}</pre>
</article>"""


@router.get("", response_class=HTMLResponse)
def operator_inbox(state: StateDep) -> HTMLResponse:
    messages = state.operator_inbox()
    address = escape(state.get_account()["oversight_email"])
    if messages:
        lead = f"{plural(len(messages), 'message', 'messages')} to {address}, newest first."
        content = "\n".join(_message(m) for m in reversed(messages))
    else:
        lead = f"Mail to the operator's address, {address}."
        content = (
            '<p class="empty">No mail yet. Upgrade codes, approval notices and copies of '
            "monitored mail arrive here.</p>"
        )
    counts = {"/_fake/approvals": len(state.pending_emails()), "/_fake/operator": len(messages)}
    body = f'<h1>Operator inbox</h1>\n<p class="lead">{lead}</p>\n{content}'
    return HTMLResponse(page("Operator inbox", "/_fake/operator", body, counts))
