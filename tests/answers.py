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
