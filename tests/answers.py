"""Canonical answer sets, shared by the tests (and a good read for what the template accepts)."""

from __future__ import annotations

from typing import Any

Answers = dict[str, Any]

DEFAULT: Answers = {}

ONE_AUDIENCE: Answers = {
    "project_name": "Acme Support",
    "python_version": "3.12",
    "audiences": [
        {
            "name": "support",
            "mailbox": "help.desk",
            "oversight_mode": "gated_all",
            "purpose": "Everything in and out waits for a human.",
        }
    ],
    "digest_schedule": "*/30 8-18 * * MON-FRI",
}

THREE_AUDIENCES_DOCKER: Answers = {
    "project_name": "Ops Mail",
    "project_slug": "ops-mail",
    "package_name": "opsmail",
    "work_pool_type": "docker",
    "work_pool_name": "mail-docker",
    "api_base_url": "http://127.0.0.1:8025",
    "audiences": [
        {
            "name": "customers",
            "mailbox": "care",
            "oversight_mode": "monitored",
            "purpose": "Customer care, copied to the operator.",
        },
        {
            "name": "partners",
            "mailbox": "partners",
            "oversight_mode": "gated_send",
            "purpose": "Partner mail; a human approves.",
        },
        {
            "name": "alerts",
            "mailbox": "alerts",
            "oversight_mode": "autonomous",
            "purpose": "Alerts to on-call.",
        },
    ],
}

ANSWER_SETS: dict[str, Answers] = {
    "default": DEFAULT,
    "one-audience": ONE_AUDIENCE,
    "three-audiences-docker": THREE_AUDIENCES_DOCKER,
}

# The matrix every generated test suite must pass (tests/test_generated.py): answer sets that
# share nothing with the defaults' audiences.
AUTONOMOUS_ONLY: Answers = {
    "project_name": "Ops Alerts",
    "audiences": [
        {
            "name": "ops",
            "mailbox": "ops",
            "oversight_mode": "autonomous",
            "purpose": "Alerts to on-call; nobody approves them.",
        }
    ],
}

READ_ONLY_AND_GATED_ALL: Answers = {
    "project_name": "Records Desk",
    "audiences": [
        {
            "name": "archive",
            "mailbox": "archive",
            "oversight_mode": "read_only",
            "purpose": "Reads what arrives; never sends.",
        },
        {
            "name": "desk",
            "mailbox": "desk",
            "oversight_mode": "gated_all",
            "purpose": "Everything in and out waits for a human 🙋.",
        },
    ],
}

FIVE_UNUSUAL_AUDIENCES: Answers = {
    "project_name": "Zoë's Five",
    "project_slug": "five-audiences",
    "package_name": "five",
    # The drafting agent on (its tests script the model; the others draft with none).
    "drafting_model": "anthropic:claude-sonnet-4-5",
    "audiences": [
        {"name": "a", "mailbox": "a", "oversight_mode": "monitored", "purpose": "One | letter."},
        {
            "name": "x9",
            "mailbox": "first.last",
            "oversight_mode": "gated_send",
            "purpose": "Dotted mailbox.",
        },
        {
            "name": "customers_eu_2",
            "mailbox": "x-9_z",
            "oversight_mode": "gated_all",
            "purpose": "Underscores and dashes.",
        },
        {"name": "q_", "mailbox": "q0", "oversight_mode": "read_only", "purpose": "Trailing _."},
        {
            "name": "internal_status_and_alerts_for_the_team",
            "mailbox": "s",
            "oversight_mode": "autonomous",
            "purpose": "A long name, 40 characters at most.",
        },
    ],
}

MATRIX: dict[str, Answers] = {
    "one-autonomous-audience": AUTONOMOUS_ONLY,
    "read-only-and-gated-all": READ_ONLY_AND_GATED_ALL,
    "five-unusual-audiences": FIVE_UNUSUAL_AUDIENCES,
}

#: What an owner puts in `.env` after following the generated README, and exports in their
#: shell: neither may leak into the project's own tests (they talk to the bundled fake only).
OWNER_DOTENV = (
    "MULTIMAIL_API_KEY=mm_live_owner-personal-key-not-for-tests\n"
    "MULTIMAIL_API_URL=https://api.multimail.dev\n"
    "MULTIMAIL_RETRIES=0\n"
)
OWNER_SHELL = {
    "MULTIMAIL_API_URL": "https://api.multimail.dev",
    "MULTIMAIL_APPROVAL_TIMEOUT_SECONDS": "1",
    "MULTIMAIL_AUDIENCES__OPS__OVERSIGHT_MODE": "read_only",
    "MULTIMAIL_AUDIENCES__DESK__OVERSIGHT_MODE": "autonomous",
}
