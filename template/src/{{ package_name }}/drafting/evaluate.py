"""`drafts eval`: a few inbound emails through the configured model, with simple checks.

Opt-in and paid (it calls the real model; the tests run it with a scripted one): run it after
changing the model or a prompt. Each case in `eval_cases.json` is drafted as `answer-inbound`
would (without sending anything) and checked: escalated when it should be (`escalate`: true,
false, or null for either), answered in the email's language, no number the email does not
contain (an invented order number, price or date), and no address but the sender's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..multimail.models import Email
from ..settings import Settings
from .draft import Draft

CASES = Path(__file__).with_name("eval_cases.json")

#: Words that show which language a draft is in (a rough check, enough to catch a reply in the
#: wrong one).
LANGUAGE_WORDS = {
    "en": {"the", "and", "you", "your", "we", "to", "thank", "thanks"},
    "de": {"und", "sie", "ihre", "wir", "der", "die", "das", "danke", "vielen", "bestellung"},
}
NUMBER = re.compile(r"\d{2,}")
ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


@dataclass(frozen=True)
class Case:
    name: str
    sender: str
    subject: str
    body: str
    language: str
    escalate: bool | None

    def email(self) -> Email:
        return Email.model_validate(
            {
                "id": f"eval-{self.name}",
                "from": self.sender,
                "to": ["support@example.com"],
                "subject": self.subject,
                "direction": "inbound",
                "status": "read",
                "markdown": self.body,
            }
        )


@dataclass(frozen=True)
class Verdict:
    case: str
    draft: Draft
    failures: list[str]


def load_cases(path: Path = CASES) -> list[Case]:
    return [Case(**case) for case in json.loads(path.read_text(encoding="utf-8"))]


def check(case: Case, draft: Draft) -> list[str]:
    """What is wrong with `draft` as an answer to `case`; empty when nothing."""
    failures = []
    escalated = draft.escalate is not None
    if case.escalate is not None and escalated != case.escalate:
        failures.append(
            "escalated, expected a reply" if escalated else "replied, expected escalation"
        )
    if escalated:
        return failures
    words = set(re.findall(r"\w+", draft.markdown.lower()))
    if len(words & LANGUAGE_WORDS[case.language]) < 2:
        failures.append(f"not written in the email's language ({case.language})")
    known = set(NUMBER.findall(f"{case.subject} {case.body}"))
    invented = sorted(set(NUMBER.findall(draft.markdown)) - known)
    if invented:
        failures.append(f"numbers the email does not contain: {', '.join(invented)}")
    strangers = sorted({a.lower() for a in ADDRESS.findall(draft.markdown)} - {case.sender})
    if strangers:
        failures.append(f"addresses other than the sender's: {', '.join(strangers)}")
    return failures


def evaluate(settings: Settings, audience: str, cases: list[Case]) -> list[Verdict]:
    """Draft each case with the configured model (never sending) and check the draft.

    A transient failure of the model (a rate limit, an outage) fails its case and the others
    still run; a refusal (`DraftingError`: a bad key, an unknown model, no quota) would be the
    same for every case, so it ends the evaluation with what to fix."""
    from pydantic_ai.exceptions import ModelAPIError

    from .agent import run_agent

    verdicts = []
    for case in cases:
        try:
            draft = run_agent(settings, audience, case.email(), [])
        except ModelAPIError as error:
            failed = Draft(markdown="", model=settings.drafting.model)
            verdicts.append(Verdict(case.name, failed, [f"the model failed: {error}"]))
            continue
        verdicts.append(Verdict(case.name, draft, check(case, draft)))
    return verdicts
