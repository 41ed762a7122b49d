"""Drafting replies to inbound mail: the fixed draft, or an AI agent when settings.toml names a
model (`[drafting] model`). The agent only writes text; the reply goes out through the mail
tasks, to the thread's sender, from the audience's mailbox, under its oversight mode.
"""

from .draft import Draft, draft_reply, fixed_draft

__all__ = ["Draft", "draft_reply", "fixed_draft"]
