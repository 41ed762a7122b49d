"""Rendering with several answer sets: the tree, the settings, the deployments, lint."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .answers import ANSWER_SETS, DEFAULT, MATRIX
from .conftest import Render, run, uv

# `{{ name`, `{%` + keyword: unrendered Jinja (not Python braces, not GitHub `${{ }}`).
#: Files that keep Prefect's own Jinja beside what Copier rendered in them: a Cloud webhook
#: template over MultiMail's `body`, automations' parameters over the `event` (prefect.yaml
#: carries the automations commented out).
PREFECT_CLOUD_TEMPLATES = {"prefect/cloud-webhook.json", "prefect/cloud-trigger.yaml"}
PREFECT_JINJA_FILES = {*PREFECT_CLOUD_TEMPLATES, "prefect.yaml"}
PREFECT_JINJA = re.compile(r"\{\{ (body|event)\b[^{}]*\}\}")
JINJA_LEFTOVER = re.compile(r"(?<!\$)\{\{-?\s*[A-Za-z_][\w.]*\s*(\||\}\})|\{%-?\s*[a-z]+")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]


#: Every answer set the suite uses, the generated-suite matrix's included: each render is checked
#: here in seconds, before (and, with `scripts/test --quick`, instead of) installing it.
EVERY_ANSWER_SET = {**ANSWER_SETS, **MATRIX}


@pytest.fixture(params=sorted(EVERY_ANSWER_SET), ids=sorted(EVERY_ANSWER_SET))
def rendered(request: pytest.FixtureRequest, render: Render) -> tuple[Path, dict[str, Any]]:
    answers = EVERY_ANSWER_SET[request.param]
    project = render(answers)
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return project, recorded


def test_no_template_syntax_or_suffix_is_left(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, _ = rendered
    for path in _files(project):
        assert not path.name.endswith(".jinja"), path
        assert "{{" not in str(path), path
        assert "{%" not in str(path), path
        if path.suffix == ".png":  # images (docs/images) are copied byte for byte
            continue
        relative = path.relative_to(project).as_posix()
        text = path.read_text()
        if relative in PREFECT_CLOUD_TEMPLATES:  # Prefect's Jinja stays, Copier's is rendered
            assert PREFECT_JINJA.search(text), relative
            assert "{%" not in PREFECT_JINJA.sub("", text), relative
        if relative in PREFECT_JINJA_FILES:
            text = PREFECT_JINJA.sub("", text)
        assert not JINJA_LEFTOVER.search(text), f"leftover Jinja in {path}"


def test_package_and_command_are_named_from_the_answers(
    rendered: tuple[Path, dict[str, Any]],
) -> None:
    project, answers = rendered
    package = project / "src" / answers["package_name"]
    for module in ("multimail/client", "mail/tasks", "flows/answer_inbound", "settings", "ops/cli"):
        assert (package / f"{module}.py").is_file()
    assert (package / "fake" / "__init__.py").is_file()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == answers["project_slug"]
    assert pyproject["project"]["requires-python"] == f">={answers['python_version']}"
    assert pyproject["project"]["scripts"] == {
        answers["project_slug"]: f"{answers['package_name']}.ops.cli:app"
    }


def test_audiences_land_in_the_one_settings_file(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, answers = rendered
    settings = tomllib.loads(
        (project / "src" / answers["package_name"] / "settings.toml").read_text()
    )
    assert settings["api_url"] == answers["api_base_url"]
    assert settings["api_key_block"] == answers["api_key_block"]
    assert settings["audiences"] == {
        a["name"]: {k: a[k] for k in ("mailbox", "oversight_mode", "purpose")}
        for a in answers["audiences"]
    }
    assert settings["digest"]["audience"] in settings["audiences"]
    assert settings["replies"]["audience"] in settings["audiences"]
    # Flows and tasks name audiences, never a mode or a mailbox: settings.toml decides those.
    package = project / "src" / answers["package_name"]
    mail_flows = ("answer_inbound", "status_digest", "expire_approval_waits")
    for module in [*(package / "flows" / f"{f}.py" for f in mail_flows), package / "mail/tasks.py"]:
        text = module.read_text()
        for mode in ("read_only", "gated_all", "gated_send", "monitored", "autonomous"):
            assert f'"{mode}"' not in text, f"{module} names the oversight mode {mode}"
        for audience in answers["audiences"]:
            assert f'"{audience["mailbox"]}"' not in text


def test_deployments_use_the_pool_schedule_and_only_the_block_name(
    rendered: tuple[Path, dict[str, Any]],
) -> None:
    project, answers = rendered
    config = yaml.safe_load((project / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {
        "status-digest",
        "answer-inbound",
        "receive-webhook",
        "expire-approval-waits",
        "reconcile-inbound",
        "export-audit-log",
    }
    digest = deployments["status-digest"]
    assert digest["schedules"] == [{"cron": answers["digest_schedule"], "timezone": "UTC"}]
    answer_queue = deployments["answer-inbound"]["work_pool"]["work_queue_name"]
    assert answer_queue == f"{answers['project_slug']}-answer-inbound"
    for deployment in deployments.values():
        assert deployment["work_pool"]["name"] == answers["work_pool_name"]
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env == {
            "MULTIMAIL_API_KEY_BLOCK": answers["api_key_block"],
            # Heartbeats every 30 s: reconcile-inbound tells a dead run from a slow one by them.
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        }
        # No deployment concurrency limit: Prefect keeps its leases in memory, and a server
        # restart leaves the slots held for good.
        assert "concurrency_limit" not in deployment
        # The project's tag: its runs are found by it on a server that other projects share.
        assert deployment["tags"] == ["multimail", answers["project_slug"]]
        module, _, function = deployment["entrypoint"].rpartition(".")
        source = project / "src" / Path(*module.split(".")).with_suffix(".py")
        assert f"def {function}(" in source.read_text()


def test_answers_file_records_answers_and_nothing_else(
    rendered: tuple[Path, dict[str, Any]],
) -> None:
    project, answers = rendered
    text = (project / ".copier-answers.yml").read_text()
    assert "_copier_conf" not in text
    assert not re.search(r"mm_live_|whsec_|api_key:", text)
    assert answers["_src_path"]


def test_rendered_project_is_ruff_clean(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, _ = rendered
    ruff = [sys.executable, "-m", "ruff"]
    run([*ruff, "check", "--no-cache", "."], cwd=project)
    run([*ruff, "format", "--check", "--no-cache", "."], cwd=project)


def test_default_answers_match_the_issue(render: Render) -> None:
    project = render(DEFAULT)
    settings = tomllib.loads((project / "src/my_mail_flows/settings.toml").read_text())
    assert {n: a["oversight_mode"] for n, a in settings["audiences"].items()} == {
        "customers": "gated_send",
        "internal": "autonomous",
    }


@pytest.mark.slow
def test_the_wheel_ships_the_package_without_its_tests(
    installed_project: Path, tmp_path: Path
) -> None:
    """The tests run from the checkout; what is installed elsewhere is the package alone."""
    run([uv(), "build", "--wheel", "--quiet", "--out-dir", str(tmp_path)], cwd=installed_project)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "my_mail_flows/mail/tasks.py" in names
    assert "my_mail_flows/fake/pytest_plugin.py" in names
    assert "my_mail_flows/settings.toml" in names
    assert not [name for name in names if "/tests/" in name]


#: The package's folders, lowest first: a module imports from its own folder or a lower one.
#: The root modules (settings, namespace) are the lowest; `fake/` stands beside the stack and
#: uses only the Prefect-free bottom of it; `__main__` is the command's entry point.
LAYERS = ("", "multimail", "mail", "drafting", "oversight", "inbound", "flows", "ops")
FAKE_MAY_IMPORT = {"", "multimail", "fake"}


def _imports(package: Path) -> list[tuple[str, str]]:
    """Every relative import of the package (tests aside) as (module, imported module)."""
    found = []
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[0] == "tests":
            continue
        folder = list(parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = folder[: len(folder) - node.level + 1]
                found.append((".".join(parts), ".".join([*base, *filter(None, [node.module])])))
    return found


def _folder(module: str) -> str:
    top = module.split(".")[0]
    return "" if top in ("settings", "namespace", "__init__", "") else top


def test_imports_point_down_the_package_never_up(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, answers = rendered
    imports = _imports(project / "src" / answers["package_name"])
    assert len(imports) > 100
    upward = []
    for module, imported in imports:
        here, there = _folder(module), _folder(imported)
        if module == "__main__":
            assert imported == "ops.cli"
        elif here == "fake":
            if there not in FAKE_MAY_IMPORT:
                upward.append(f"{module} imports {imported}")
        elif there == "fake":
            if here != "ops":
                upward.append(f"{module} imports {imported}")
        elif LAYERS.index(there) > LAYERS.index(here):
            upward.append(f"{module} imports {imported}")
    assert not upward
