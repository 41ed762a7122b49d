"""The fake's `/v1/` API, one router per part of the contract, mirroring `state/`."""

from __future__ import annotations

from . import account, emails, mailboxes, oversight, webhooks

#: In the order the app includes them (the order of the OpenAPI document).
ROUTERS = (mailboxes.router, emails.router, oversight.router, webhooks.router, account.router)
