"""Bad answers are refused with a message that says what is wrong and what is accepted."""

from __future__ import annotations

import re
import tomllib
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
    ("project_name", "", "one line of 1 to 60 printable characters"),
    ("project_name", "   ", "one line of 1 to 60"),
    ("project_name", "x" * 61, "1 to 60"),
    ("project_name", "Foo\n", '(got "Foo\\n")'),
    ("project_slug", "My Slug", "lowercase letters and digits"),
    ("project_slug", "-leading", "lowercase letters and digits"),
    ("project_slug", "double--dash", "lowercase letters and digits"),
    ("project_slug", "foo\n", "lowercase letters and digits"),
    ("project_slug", "prefect", "a distribution the generated project installs"),
    # Dependencies of dependencies shadow just as well (computed from the generated lock).
    ("project_slug", "packaging", "a distribution the generated project installs"),
    ("project_slug", "rich", "a distribution the generated project installs"),
    ("project_slug", "a" * 39, "at most 38 characters"),
    ("package_name", "my-package", "lowercase Python identifier"),
    ("package_name", "1pkg", "lowercase Python identifier"),
    ("package_name", "foo\n", "lowercase Python identifier"),
    ("package_name", "prefect", "would shadow it"),
    ("package_name", "pluggy", "would shadow it"),
    ("package_name", "yaml", "would shadow it"),
    ("package_name", "json", "standard library module"),
    ("package_name", "break", "Python keyword"),
    ("description", "", "one line of 1 to 200 printable characters"),
    ("description", "two\nlines", "one line of 1 to 200"),
    ("description", "one line\n", "one line of 1 to 200"),
    ("description", "nul\x00byte", "control character"),
    ("description", "x" * 201, "1 to 200"),
    ("author_name", "", "one line of 1 to 100"),
    ("author_name", "a\nb", "one line of 1 to 100"),
    ("author_name", "carriage\rreturn", "control character"),
    ("author_name", "bell\x07", "control character"),
    ("author_email", "not-an-email", "email address"),
    ("author_email", ".a..b@example.com", "without leading, trailing or double dots"),
    ("author_email", "a b@example.com", "no spaces"),
    ("author_email", "team@example.com\n", "email address"),
    ("author_email", "ü@example.com", "email address"),
    ("author_email", "team@example.com.", "email address"),
    ("python_version", "3.10", "3.11"),
    ("python_version", "2.7", "3.11"),
    ("python_version", "3.14", "3.11"),
    ("audiences", "customers", "YAML list of mappings"),
    ("audiences", [], "between 1 and 20"),
    ("audiences", ["customers"], "must be a mapping"),
    ("audiences", [_audience(name="Customers")], "lowercase Python identifier"),
    ("audiences", [_audience(name="1st")], "lowercase Python identifier"),
    ("audiences", [_audience(name="ops\n")], "lowercase Python identifier"),
    ("audiences", [_audience(mailbox="Support")], "address local part"),
    ("audiences", [_audience(mailbox="sup port")], "address local part"),
    ("audiences", [_audience(mailbox="a..b")], "address local part"),
    ("audiences", [_audience(mailbox="support.")], "address local part"),
    ("audiences", [_audience(mailbox="support\n")], "address local part"),
    ("audiences", [_audience(oversight_mode="gated")], "must be one of read_only, gated_all"),
    ("audiences", [_audience(purpose="")], "purpose must be one line of 1 to 200"),
    ("audiences", [_audience(purpose="tab\there")], "control character"),
    ("audiences", [_audience(), _audience(mailbox="other")], "names must be unique"),
    ("audiences", [_audience(), _audience(name="team")], "mailboxes must be unique"),
    ("audiences", [{"name": "x", "mailbox": "x"}], "exactly the keys"),
    ("audiences", [_audience(oversight_mode="read_only")], "at least one audience must be able"),
    ("work_pool_name", "My Pool", "lowercase letters, digits and dashes"),
    ("work_pool_name", "", "lowercase letters, digits and dashes"),
    ("work_pool_name", "pool_1", "lowercase letters, digits and dashes"),
    ("work_pool_name", "pool\n", "lowercase letters, digits and dashes"),
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
    ("digest_schedule", "0 8 * * 1-5\n", "5 fields"),
    # Valid cron that never fires (or only on 29 February).
    ("digest_schedule", "0 8 31 2 *", "never fires within a year"),
    ("digest_schedule", "0 8 31 APR,JUN,SEP,NOV *", "never fires within a year"),
    ("digest_schedule", "0 8 29 2 *", "never fires within a year"),
    ("digest_schedule", "30-10 8 * * *", "never fires within a year"),
    ("api_base_url", "api.multimail.dev", "http(s)://host"),
    ("api_base_url", "https://user:pass@api.multimail.dev", "no path, query or credentials"),
    ("api_base_url", "https://api.multimail.dev/v1", "no path"),
    ("api_base_url", "https://api.multimail.dev\n", "http(s)://host"),
    ("api_base_url", "http://127.0.0.1:70000", "the port must be 1 to 65535"),
    ("api_base_url", "http://localhost:0", "the port must be 1 to 65535"),
    ("api_base_url", "http://..:8025", "dot-separated labels"),
    ("api_base_url", "https://-api.example.com", "dot-separated labels"),
    ("api_key_block", "My Block", "Prefect block name"),
    ("api_key_block", "key_block", "Prefect block name"),
    ("api_key_block", "", "Prefect block name"),
    ("api_key_block", "key-block\n", "Prefect block name"),
    ("image_registry", "https://ghcr.io/acme", "registry host"),
    ("image_registry", "ghcr.io/acme/", "registry host"),
    ("image_registry", "ghcr.io/acme\n", "registry host"),
    ("drafting_model", "gpt-5-mini", "<provider>:<model>"),
    ("drafting_model", "openai: gpt-5-mini", "<provider>:<model>"),
    ("drafting_model", "openai:gpt-5-mini\n", "<provider>:<model>"),
    ("drafting_model", "OpenAI:gpt-5", "<provider>:<model>"),
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


def test_the_reserved_names_cannot_be_overridden_with_data(tmp_path: Path) -> None:
    """They are data read by the validator, not a question `--data` could answer."""
    answers = {"package_name": "pluggy", "reserved_import_names": [], "reserved": []}
    with pytest.raises(ValueError, match="'package_name'"):
        render_template(tmp_path / "project", answers)


# Answers that are unusual but valid: every one must render a project whose files all parse.
UNUSUAL: dict[str, Any] = {
    "project_name": "Zoë Mail 2.0",
    "description": 'Mail 📧 for "everyone" — naïve café, 日本語, back\\slash.',
    "author_name": 'Zoë "Z" Ångström 📧',
    "author_email": "o'brien+flows@example.co.uk",
    "audiences": [
        {
            "name": "customers",
            "mailbox": "help.desk",
            "oversight_mode": "gated_send",
            "purpose": "Replies | approved 👍 by a human; <b>not</b> HTML.",
        },
        {
            "name": "team",
            "mailbox": "status",
            "oversight_mode": "autonomous",
            "purpose": "Status | alerts",
        },
    ],
    "digest_schedule": "0 8 30 feb,apr *",
    "api_base_url": "http://localhost:65535/",
}


def test_unusual_valid_answers_render_files_that_parse_and_keep_every_character(
    tmp_path: Path,
) -> None:
    project = render_template(tmp_path / "project", UNUSUAL)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["description"] == UNUSUAL["description"]
    assert pyproject["project"]["authors"] == [
        {"name": UNUSUAL["author_name"], "email": UNUSUAL["author_email"]}
    ]
    (package,) = (project / "src").iterdir()
    settings = tomllib.loads((package / "settings.toml").read_text(encoding="utf-8"))
    assert settings["audiences"]["customers"]["purpose"] == UNUSUAL["audiences"][0]["purpose"]
    assert settings["api_url"] == UNUSUAL["api_base_url"]
    for path in (project / "prefect.yaml", project / ".copier-answers.yml"):
        yaml.safe_load(path.read_text(encoding="utf-8"))
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text(encoding="utf-8"))
    assert answers["audiences"] == UNUSUAL["audiences"]
    # The audience table keeps its four columns: a '|' in a purpose is escaped.
    readme = (project / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `customers`")]
    assert len(rows) == 1
    assert len(re.findall(r"(?<!\\)\|", rows[0])) == 5, rows[0]
    assert "approved 👍 by a human" in rows[0]


# The build (hatchling, through email.headerregistry.Address) decides what an author is; the
# validator must agree with it, one way or the other, on each of these. Whitespace and comments
# around an address are the one deliberate difference: the build drops them, so they are refused.
AUTHORS: list[tuple[str, str]] = [
    ("Team", "team@example.com"),
    ("Team", "a@b"),
    ("Team", '"a b"@example.com'),
    ("Team", "a@[127.0.0.1]"),
    ("Team", "a+tag@example.com"),
    ("Team", "a!#$%&'*+/=?^_`{|}~@example.com"),
    ("Team", "a@exämple.com"),
    ("Team", ".a..b@example.com"),
    ("Team", "a.@example.com"),
    ("Team", "a b@example.com"),
    ("Team", "ü@example.com"),
    ("Team", "a@example.com."),
    ("Team", "a@example..com"),
    ("Team", "a@b@example.com"),
    ("Team", "<a@example.com>"),
    ("Team", "a\\b@example.com"),
    ('Zoë "Z" 📧', "team@example.com"),
    ("A, B <c>", "team@example.com"),
    ("line\nbreak", "team@example.com"),
    ("carriage\rreturn", "team@example.com"),
]


def _build_accepts(name: str, email: str) -> bool:
    from hatchling.metadata.core import ProjectMetadata
    from hatchling.metadata.spec import get_core_metadata_constructors

    authors = [{"name": name, "email": email}]
    config = {"project": {"name": "x", "version": "0.1", "authors": authors}}
    metadata: ProjectMetadata[Any] = ProjectMetadata(str(REPO), None, config)
    try:
        metadata.core.authors  # noqa: B018 (validates the authors)
        get_core_metadata_constructors()["2.4"](metadata)
    except Exception:  # any refusal of the build counts
        return False
    return True


def _template_accepts(tmp_path: Path, name: str, email: str) -> bool:
    try:
        render_template(tmp_path / "project", {"author_name": name, "author_email": email})
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("name", "email"), AUTHORS, ids=[repr(a) for a in AUTHORS])
def test_author_answers_are_refused_exactly_when_the_build_refuses_them(
    tmp_path: Path, name: str, email: str
) -> None:
    assert _template_accepts(tmp_path, name, email) == _build_accepts(name, email)


@pytest.mark.parametrize("email", ["team@example.com ", " team@example.com", "(c)a@example.com"])
def test_spaces_and_comments_around_an_email_are_refused_though_the_build_drops_them(
    tmp_path: Path, email: str
) -> None:
    assert _build_accepts("Team", email)
    assert not _template_accepts(tmp_path, "Team", email)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Ärger Straße Mail", "aerger-strasse-mail"),
        ("Café Crème Notifications", "cafe-creme-notifications"),
        ("3M Łódź Flows", "m-lodz-flows"),
        # 59 characters: the slug is cut at its limit (38), a trailing dash dropped.
        (
            "Northwind Traders Customer Care And Billing Mail Automation",
            "northwind-traders-customer-care-and-bi",
        ),
    ],
)
def test_the_default_slug_and_package_are_valid_for_any_valid_name(
    tmp_path: Path, name: str, slug: str
) -> None:
    project = render_template(tmp_path / "project", {"project_name": name})
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["project_slug"] == slug
    assert answers["package_name"] == slug.replace("-", "_")
    assert answers["project_name"] == name


def test_a_name_with_no_latin_letters_asks_for_a_slug(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Latin letters to make one from"):
        render_template(tmp_path / "project", {"project_name": "Ярость почты"})
    project = render_template(
        tmp_path / "named", {"project_name": "Ярость почты", "project_slug": "yarost-pochty"}
    )
    assert "yarost-pochty" in (project / "pyproject.toml").read_text()
