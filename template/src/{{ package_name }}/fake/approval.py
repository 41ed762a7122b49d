"""A plain HTML approval page for humans: list pending emails, approve or reject them.

It works without JavaScript (one form per decision, POST then 303 back to the list) and applies
decisions through `FakeState.decide`, exactly like `POST /v1/oversight/decide`.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from .deps import StateDep
from .state import ApiError, Json

router = APIRouter(prefix="/_fake/approvals", include_in_schema=False)

APPROVER = "operator (approval page)"

_RESULTS = {
    "approved_and_sent": "approved and sent",
    "approved": "approved",
    "rejected": "rejected",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; color: #111; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #999; padding: .5rem; text-align: left; vertical-align: top; }
pre { white-space: pre-wrap; margin: 0; max-height: 20rem; overflow: auto; }
.notice { padding: .5rem 1rem; border: 2px solid #06c; }
.error { border-color: #c00; }
button { padding: .3rem .8rem; margin: .2rem 0; }
"""


def _e(value: object) -> str:
    """HTML-escape, replacing characters that cannot be encoded (e.g. lone surrogates)."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    return html.escape(text, quote=True)


def _row(email: Json, mailbox: Json) -> str:
    eid = _e(email["id"])
    return f"""<tr>
<td>{_e(mailbox["address"])}<br><small>mode: {_e(mailbox["oversight_mode"])}</small></td>
<td>{_e(email["direction"])}</td>
<td>{_e(email["from"])}</td>
<td>{_e(", ".join(email["to"]))}</td>
<td>{_e(email["subject"])}</td>
<td><pre>{_e(email["markdown"])}</pre></td>
<td>
<form method="post" action="/_fake/approvals/{eid}/approve">
<button type="submit">Approve</button>
</form>
<form method="post" action="/_fake/approvals/{eid}/reject">
<label for="reason-{eid}">Reason</label>
<input id="reason-{eid}" name="reason" type="text" maxlength="2000">
<button type="submit">Reject</button>
</form>
</td>
</tr>"""


def _notice(request: Request) -> str:
    email_id = request.query_params.get("email", "")
    result = request.query_params.get("result", "")
    if result in _RESULTS:
        return f'<p class="notice" role="status">Email {_e(email_id)} {_RESULTS[result]}.</p>'
    error = request.query_params.get("error")
    if error in ("404", "409"):
        why = "no longer exists" if error == "404" else "is no longer pending"
        return f'<p class="notice error" role="alert">Email {_e(email_id)} {why}.</p>'
    return ""


@router.get("", response_class=HTMLResponse)
def approvals(state: StateDep, request: Request) -> HTMLResponse:
    pending = state.pending_emails()
    if pending:
        rows = "\n".join(_row(email, mailbox) for email, mailbox in pending)
        content = f"""<table>
<caption>{len(pending)} email(s) waiting for a decision, oldest first</caption>
<thead><tr><th scope="col">Mailbox</th><th scope="col">Direction</th><th scope="col">From</th>
<th scope="col">To</th><th scope="col">Subject</th><th scope="col">Body</th>
<th scope="col">Decision</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>"""
    else:
        content = "<p>Nothing is waiting for approval.</p>"
    page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Pending approvals - fake MultiMail</title>
<style>{_STYLE}</style></head>
<body>
<main>
<h1>Pending approvals</h1>
{_notice(request)}
{content}
<p><a href="/_fake/approvals">Refresh</a></p>
</main>
</body>
</html>"""
    return HTMLResponse(page)


async def _decide(
    state: StateDep, request: Request, email_id: str, action: str
) -> RedirectResponse:
    reason = None
    if action == "reject":
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        reason = (form.get("reason") or [""])[0].strip()[:2000] or None
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
