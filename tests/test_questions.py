"""Bad answers are refused with a message that says what is wrong and what is accepted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, render_template


def _audience(**overrides: Any) -> dict[str, Any]:
    base = {
        "name": "customers",
        "mailbox": "support",
        "oversight_mode": "gated_send",
        "purpose": "Customer mail.",
    }
    return {**base, **overrides}


BAD_ANSWERS: list[tuple[str, Any, str]] = [
    ("project_name", "", "must start with a letter"),
    ("project_name", "1st project", "must start with a letter"),
    ("project_name", "x" * 61, "1 to 60"),
    ("project_slug", "My Slug", "lowercase letters and digits"),
    ("project_slug", "-leading", "lowercase letters and digits"),
    ("project_slug", "double--dash", "lowercase letters and digits"),
    ("package_name", "my-package", "lowercase Python identifier"),
    ("package_name", "1pkg", "lowercase Python identifier"),
    ("package_name", "prefect", "a package this project imports"),
    ("package_name", "json", "standard library module"),
    ("package_name", "break", "Python keyword"),
    ("project_slug", "prefect", "depends on itself"),
    ("project_slug", "a" * 39, "at most 38 characters"),
    ("description", "", "one non-empty line"),
    ("description", "two\nlines", "one non-empty line"),
    ("description", "x" * 201, "at most 200"),
    ("author_name", "", "one non-empty line"),
    ("author_name", 'say "hi"', "without double quotes"),
    ("author_name", "a\nb", "one non-empty line"),
    ("author_email", "not-an-email", "email address"),
    ("author_email", "a@b", "email address"),
    ("author_email", "a b@example.com", "email address"),
    ("python_version", "3.10", "3.11"),
    ("python_version", "2.7", "3.11"),
    ("python_version", "3.14", "3.11"),
    ("audiences", "customers", "YAML list of mappings"),
    ("audiences", [], "between 1 and 20"),
    ("audiences", ["customers"], "must be a mapping"),
    ("audiences", [_audience(name="Customers")], "lowercase Python identifier"),
    ("audiences", [_audience(name="1st")], "lowercase Python identifier"),
    ("audiences", [_audience(mailbox="Support")], "address local part"),
    ("audiences", [_audience(mailbox="sup port")], "address local part"),
    ("audiences", [_audience(mailbox="a..b")], "address local part"),
    ("audiences", [_audience(oversight_mode="gated")], "must be one of read_only, gated_all"),
    ("audiences", [_audience(purpose="")], "purpose must be one non-empty line"),
    ("audiences", [_audience(), _audience(mailbox="other")], "names must be unique"),
    ("audiences", [_audience(), _audience(name="team")], "mailboxes must be unique"),
    ("audiences", [{"name": "x", "mailbox": "x"}], "exactly the keys"),
    ("audiences", [_audience(oversight_mode="read_only")], "at least one audience must be able"),
    ("work_pool_name", "My Pool", "lowercase letters, digits and dashes"),
    ("work_pool_name", "", "lowercase letters, digits and dashes"),
    ("work_pool_name", "pool_1", "lowercase letters, digits and dashes"),
    ("work_pool_type", "ecs", "process"),
    ("work_pool_type", "", "process"),
    ("work_pool_type", "prefect:managed", "process"),
    ("digest_schedule", "0 8 * *", "5 fields"),
    ("digest_schedule", "0 8 * * XYZ", "SUN-SAT"),
    ("digest_schedule", "0 8 * MON *", "JAN-DEC"),
    ("digest_schedule", "every day", "5 fields"),
    ("digest_schedule", "0 8 * * 1-5 *", "5 fields"),
    # In the right shape but out of range: Prefect would refuse these only at deploy time.
    ("digest_schedule", "61 8 * * *", "minute 0-59"),
    ("digest_schedule", "0 8 32 * *", "day-of-month 1-31"),
    ("digest_schedule", "0 8 * 13 *", "month 1-12"),
    ("digest_schedule", "0 8 * * */0", "5 fields"),
    ("api_base_url", "api.multimail.dev", "http(s)://host"),
    ("api_base_url", "https://user:pass@api.multimail.dev", "no path, query or credentials"),
    ("api_base_url", "https://api.multimail.dev/v1", "no path"),
    ("api_key_block", "My Block", "Prefect block name"),
    ("api_key_block", "key_block", "Prefect block name"),
    ("api_key_block", "", "Prefect block name"),
]


@pytest.mark.parametrize(
    ("question", "value", "message"),
    BAD_ANSWERS,
    ids=[f"{q}-{i}" for i, (q, _, _) in enumerate(BAD_ANSWERS)],
)
def test_bad_answer_is_refused_with_its_message(
    tmp_path: Path, question: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=f"'{question}'") as caught:
        render_template(tmp_path / "project", {question: value})
    assert message in str(caught.value)
    assert not (tmp_path / "project" / "pyproject.toml").exists()  # nothing half-written


def test_every_question_has_at_least_three_bad_answers() -> None:
    """A new question cannot slip in without validation tests."""
    config = yaml.safe_load((REPO / "copier.yml").read_text())
    questions = {
        key
        for key, spec in config.items()
        if not key.startswith("_") and not (isinstance(spec, dict) and spec.get("when") is False)
    }
    counts = Counter(question for question, _, _ in BAD_ANSWERS)
    assert set(counts) <= questions, f"tests for unknown questions: {set(counts) - questions}"
    too_few = {q: counts[q] for q in sorted(questions) if counts[q] < 3}
    assert not too_few, f"fewer than three bad answers tested: {too_few}"


@pytest.mark.parametrize(
    "schedule", ["59 23 31 12 7", "0 0 1 1 0", "*/15 8-18 * * MON-FRI", "0 8 1 JAN-MAR *"]
)
def test_cron_schedules_at_the_bounds_are_accepted(tmp_path: Path, schedule: str) -> None:
    project = render_template(tmp_path / "project", {"digest_schedule": schedule})
    assert f'cron: "{schedule}"' in (project / "prefect.yaml").read_text()


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("project_slug", "no"),
        ("project_slug", "null"),
        ("work_pool_name", "123"),
        ("work_pool_name", "yes"),
        ("api_key_block", "0777"),
        ("api_key_block", "off"),
    ],
)
def test_answers_that_look_like_yaml_scalars_stay_strings_in_prefect_yaml(
    tmp_path: Path, question: str, value: str
) -> None:
    project = render_template(tmp_path / "project", {question: value})
    config = yaml.safe_load((project / "prefect.yaml").read_text())
    pool = config["deployments"][0]["work_pool"]
    rendered = {
        "project_slug": config["name"],
        "work_pool_name": pool["name"],
        "api_key_block": pool["job_variables"]["env"]["MULTIMAIL_API_KEY_BLOCK"],
    }
    assert rendered[question] == value
