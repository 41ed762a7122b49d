"""`copier update` across template versions, offline, the way a project owner runs it.

A throwaway git repository holds three tagged versions of the template: `v1.0.0` is this working
tree as it is; `v1.0.1` only rewords the README (an update to it needs no `--trust`); `v1.1.0`
adds a file (and a `.env`), changes two shared files and renames the question `author_name` to
`maintainer_name`, with a `_migrations` entry that carries the answer over (migrations make
Copier ask for `--trust`, so those updates pass `unsafe=True`). Projects are generated from
`v1.0.0`, committed, edited by their owner, then updated. A second repository has a `v0.9.0`
with `_tasks`, as versions before 0.2.0 had, to show how such a project reaches this version.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Literal

import copier
import pytest
import yaml
from copier.errors import UnsafeTemplateError

from .conftest import REPO

OLD = "v1.0.0"
PATCH = "v1.0.1"
NEW = "v1.1.0"
PATCH_README_LINE = "Reworded in v1.0.1."
PACKAGE = "owner_flows"
OWNER_ANSWERS: dict[str, Any] = {
    "project_name": "Owner Flows",
    "author_name": "Owner Team",
    "audiences": [
        {
            "name": "customers",
            "mailbox": "care",
            "oversight_mode": "gated_send",
            "purpose": "Customer replies, approved by a human.",
        },
        {
            "name": "internal",
            "mailbox": "status",
            "oversight_mode": "autonomous",
            "purpose": "Status mail to the team.",
        },
    ],
}
# The same answers under v1.1.0's question names.
NEW_ANSWERS: dict[str, Any] = {
    **{k: v for k, v in OWNER_ANSWERS.items() if k != "author_name"},
    "maintainer_name": OWNER_ANSWERS["author_name"],
}
# What v1.1.0 brings: a new file and a new section in two files every project has.
NEW_FILE = "docs/operations.md"
NEW_README_SECTION = "## Operations (added in v1.1.0)"
NEW_SETTINGS_COMMENT = "# Since v1.1.0: see docs/operations.md before changing an oversight mode."
NEW_DOTENV = "# Local settings (git-ignored).\nMULTIMAIL_API_KEY=\n"
RENAME_MIGRATION = """\
\"\"\"v1.1.0: the answer `author_name` is now `maintainer_name`.\"\"\"

import pathlib
import re

answers = pathlib.Path(".copier-answers.yml")
answers.write_text(re.sub(r"^author_name:", "maintainer_name:", answers.read_text(), flags=re.M))
"""
# Git identity and no signing, whatever the machine's git config says.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "tests@localhost",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "tests@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}
IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".venv"
)


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **GIT_ENV},
    )
    if result.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed in {cwd}:\n{result.stderr}")
    return result.stdout


def commit_all(cwd: Path, message: str) -> None:
    git(cwd, "add", "--all")
    git(cwd, "commit", "--quiet", "--no-verify", "-m", message)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` but git's own, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def copy_working_template(repo: Path) -> None:
    """This working tree's template (copier.yml, template/, hooks/) into `repo`, replacing any."""
    shutil.copy2(REPO / "copier.yml", repo / "copier.yml")
    for folder in ("template", "hooks"):
        shutil.rmtree(repo / folder, ignore_errors=True)
        shutil.copytree(REPO / folder, repo / folder, ignore=IGNORED)


def init_template_repo(repo: Path, tag: str) -> Path:
    """Copy this working tree's template into `repo`, commit it and tag the clean commit."""
    repo.mkdir(parents=True, exist_ok=True)
    copy_working_template(repo)
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit_all(repo, "template as in the working tree")
    git(repo, "tag", tag)
    return repo


def _make_v1_1_0(repo: Path) -> None:
    config = (repo / "copier.yml").read_text()
    assert "\nauthor_name:" in config
    config = config.replace("author_name", "maintainer_name")
    config += textwrap.dedent(
        """
        _migrations:
          - version: v1.1.0
            when: "{{ _stage == 'before' }}"
            command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/migrations/rename.py"]
        """
    )
    (repo / "copier.yml").write_text(config)
    (repo / "migrations").mkdir()
    (repo / "migrations" / "rename.py").write_text(RENAME_MIGRATION)
    pyproject = repo / "template" / "pyproject.toml.jinja"
    pyproject.write_text(pyproject.read_text().replace("author_name", "maintainer_name"))
    # A version that starts rendering a .env: `_skip_if_exists` must keep the owner's.
    (repo / "template" / ".env.jinja").write_text(NEW_DOTENV)
    (repo / "template" / NEW_FILE).parent.mkdir(parents=True, exist_ok=True)
    (repo / "template" / NEW_FILE).write_text("# Operations\n\nHow to run these flows.\n")
    readme = repo / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + f"\n{NEW_README_SECTION}\n\nSee {NEW_FILE}.\n")
    settings = repo / "template" / "src" / "{{ package_name }}" / "settings.toml.jinja"
    lines = settings.read_text().splitlines(keepends=True)
    lines.insert(1, NEW_SETTINGS_COMMENT + "\n")  # near the top, far from the values
    settings.write_text("".join(lines))


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository of the template with clean, tagged commits v1.0.0 and v1.1.0."""
    repo = init_template_repo(tmp_path_factory.mktemp("template-repo"), OLD)
    readme = repo / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + f"\n{PATCH_README_LINE}\n")
    commit_all(repo, "v1.0.1: README only")
    git(repo, "tag", PATCH)
    _make_v1_1_0(repo)
    commit_all(repo, "v1.1.0: docs/operations.md, a .env, rename author_name")
    git(repo, "tag", NEW)
    assert git(repo, "status", "--porcelain") == ""
    return repo


def generate(template: Path, dst: Path, answers: dict[str, Any], version: str) -> Path:
    """A project from `version`, as its owner would have it: in git, committed, clean."""
    copier.run_copy(
        str(template),
        dst,
        data=answers,
        defaults=True,
        vcs_ref=version,
        skip_tasks=True,
        quiet=True,
    )
    git(dst, "init", "--quiet", "--initial-branch=main")
    commit_all(dst, f"generated from {version}")
    return dst


def update(project: Path, version: str) -> None:
    copier.run_update(
        project,
        vcs_ref=version,
        overwrite=True,
        defaults=True,
        unsafe=True,  # v1.1.0 has a migration
        quiet=True,
    )


def answers_of(project: Path) -> dict[str, Any]:
    loaded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def owned_project(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated from v1.0.0, edited and committed by its owner, then updated to v1.1.0."""
    project = generate(
        template_repo, tmp_path_factory.mktemp("owned") / "owner-flows", OWNER_ANSWERS, OLD
    )
    package = project / "src" / PACKAGE
    (package / "weekly_report.py").write_text(OWNER_FLOW)
    settings = package / "settings.toml"
    text = settings.read_text()
    assert "approval_timeout_seconds = 3600.0\n" in text
    settings.write_text(
        text.replace("approval_timeout_seconds = 3600.0\n", "approval_timeout_seconds = 900.0\n")
    )
    commit_all(project, "owner: weekly report flow, shorter approval timeout")
    (project / ".env").write_bytes(OWNER_DOTENV)  # git-ignored, so the tree stays clean
    assert git(project, "status", "--porcelain") == ""
    update(project, NEW)
    return project


OWNER_FLOW = '''\
"""The owner's own flow; no template version knows about it."""

from prefect import flow


@flow
def weekly_report() -> str:
    return "weekly"
'''
OWNER_DOTENV = b"MULTIMAIL_API_KEY=owner-local-test-value\n"


def test_owner_edits_survive_the_update(owned_project: Path) -> None:
    package = owned_project / "src" / PACKAGE
    assert (package / "weekly_report.py").read_text() == OWNER_FLOW
    settings = (package / "settings.toml").read_text()
    assert "approval_timeout_seconds = 900.0\n" in settings
    assert "3600.0" not in settings
    assert NEW_SETTINGS_COMMENT in settings  # the template's change to the same file arrived too


def test_dotenv_is_left_alone(owned_project: Path, template_repo: Path) -> None:
    assert (template_repo / "template" / ".env.jinja").is_file()  # v1.1.0 renders a .env ...
    assert (owned_project / ".env").read_bytes() == OWNER_DOTENV  # ... but never over the owner's


def test_new_file_and_changed_files_arrive_without_conflicts(owned_project: Path) -> None:
    assert (owned_project / NEW_FILE).is_file()
    assert NEW_README_SECTION in (owned_project / "README.md").read_text()
    for path, content in tree(owned_project).items():
        assert not path.endswith(".rej"), path
        for line in content.splitlines():
            assert not line.startswith((b"<<<<<<<", b">>>>>>>")), f"conflict marker in {path}"


def test_renamed_question_keeps_its_answer(owned_project: Path) -> None:
    answers = answers_of(owned_project)
    assert answers["_commit"] == NEW
    assert answers["maintainer_name"] == OWNER_ANSWERS["author_name"]
    assert "author_name" not in answers
    pyproject = (owned_project / "pyproject.toml").read_text()
    assert f'name = "{OWNER_ANSWERS["author_name"]}"' in pyproject


def test_updating_gives_the_same_files_as_a_fresh_copy(template_repo: Path, tmp_path: Path) -> None:
    updated = generate(template_repo, tmp_path / "updated", OWNER_ANSWERS, OLD)
    update(updated, NEW)
    fresh = generate(template_repo, tmp_path / "fresh", NEW_ANSWERS, NEW)
    assert tree(updated).keys() == tree(fresh).keys()
    assert tree(updated) == tree(fresh)


def test_updating_to_the_same_version_changes_nothing(template_repo: Path, tmp_path: Path) -> None:
    project = generate(template_repo, tmp_path / "project", NEW_ANSWERS, NEW)
    before = tree(project)
    update(project, NEW)
    assert tree(project) == before
    assert git(project, "status", "--porcelain") == ""


def test_an_update_without_migrations_needs_no_trust(template_repo: Path, tmp_path: Path) -> None:
    """The template has no tasks: a plain `copier update` works, as a plain `copier copy` does."""
    project = generate(template_repo, tmp_path / "project", OWNER_ANSWERS, OLD)
    copier.run_update(project, vcs_ref=PATCH, overwrite=True, defaults=True, quiet=True)
    assert PATCH_README_LINE in (project / "README.md").read_text()
    assert answers_of(project)["_commit"] == PATCH


OWNER_README_LINE = "The owner's own closing line."


@pytest.mark.parametrize("mode", ["inline", "rej"])
def test_a_conflict_is_left_where_the_upgrade_guide_says(
    template_repo: Path, tmp_path: Path, mode: Literal["inline", "rej"]
) -> None:
    """docs/upgrading.md tells the owner where each `--conflict` mode leaves their edit: inline,
    both versions between markers and git lists the file as unmerged; rej, the file takes the
    template's version and the owner's edit is in the `.rej` file (so deleting it loses it)."""
    project = generate(template_repo, tmp_path / "project", OWNER_ANSWERS, OLD)
    readme = project / "README.md"
    readme.write_text(readme.read_text() + f"\n{OWNER_README_LINE}\n")  # v1.0.1 adds a line too
    commit_all(project, "owner: a closing line in the README")
    copier.run_update(
        project, vcs_ref=PATCH, overwrite=True, defaults=True, quiet=True, conflict=mode
    )
    text = readme.read_text()
    status = git(project, "status", "--porcelain").splitlines()
    if mode == "inline":
        assert "<<<<<<< before updating" in text
        assert OWNER_README_LINE in text
        assert PATCH_README_LINE in text
        assert "UU README.md" in status  # `git status`: "both modified"
    else:
        assert PATCH_README_LINE in text
        assert OWNER_README_LINE not in text
        assert f"+{OWNER_README_LINE}" in (project / "README.md.rej").read_text()
        assert "?? README.md.rej" in status


def test_an_update_across_a_migration_without_trust_is_refused_and_changes_nothing(
    template_repo: Path, tmp_path: Path
) -> None:
    """Why docs/upgrading.md says `--trust` for some releases: v1.1.0 has a migration."""
    project = generate(template_repo, tmp_path / "project", OWNER_ANSWERS, OLD)
    before = tree(project)
    with pytest.raises(UnsafeTemplateError, match="migrations"):
        copier.run_update(project, vcs_ref=NEW, overwrite=True, defaults=True, quiet=True)
    assert tree(project) == before


LEGACY = "v0.9.0"
LEGACY_TASK = """
_tasks:
  - command: ["{{ _copier_python }}", "-c", "open('TASK_RAN', 'w').close()"]
    when: "{{ _copier_operation == 'copy' }}"
"""


@pytest.fixture(scope="module")
def legacy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v0.9.0 with `_tasks` (as versions before 0.2.0 had), then v1.0.0: this working tree."""
    repo = tmp_path_factory.mktemp("legacy-repo")
    init_template_repo(repo, LEGACY)
    config = repo / "copier.yml"
    config.write_text(config.read_text() + LEGACY_TASK)
    commit_all(repo, "v0.9.0 had tasks")
    git(repo, "tag", "-f", LEGACY)
    (repo / "copier.yml").write_text((REPO / "copier.yml").read_text())
    commit_all(repo, "v1.0.0: no tasks")
    git(repo, "tag", OLD)
    return repo


def test_a_project_made_with_the_old_tasks_updates_with_trust_once(
    legacy_repo: Path, tmp_path: Path
) -> None:
    """Copier checks the *old* version's tasks too, so the first update away from one needs
    `--trust` (docs/upgrading.md); it runs no task and gives a fresh copy's files.
    """
    project = generate(legacy_repo, tmp_path / "legacy", OWNER_ANSWERS, LEGACY)
    with pytest.raises(UnsafeTemplateError, match="tasks"):
        copier.run_update(project, vcs_ref=OLD, overwrite=True, defaults=True, quiet=True)
    copier.run_update(
        project,
        vcs_ref=OLD,
        overwrite=True,
        defaults=True,
        quiet=True,
        unsafe=True,
    )
    assert not (project / "TASK_RAN").exists()
    fresh = generate(legacy_repo, tmp_path / "fresh", OWNER_ANSWERS, OLD)
    assert tree(project) == tree(fresh)
    commit_all(project, "updated to v1.0.0")
    before = tree(project)
    copier.run_update(project, vcs_ref=OLD, overwrite=True, defaults=True, quiet=True)
    assert tree(project) == before  # from now on, no --trust


def test_the_upgrade_guide_is_linked_and_every_release_has_an_upgrading_note() -> None:
    guide = (REPO / "docs" / "upgrading.md").read_text()
    assert "uv run copier update --defaults" in guide
    assert "uv run copier update --trust --defaults" in guide
    assert "<<<<<<< before updating" in guide
    assert "(docs/upgrading.md)" in (REPO / "README.md").read_text()
    changelog = (REPO / "CHANGELOG.md").read_text()
    releases = re.split(r"^## ", changelog, flags=re.MULTILINE)[1:]
    versions = [r for r in releases if re.match(r"\[?\d+\.\d+\.\d+", r)]
    assert versions, "no release in CHANGELOG.md"
    for release in versions:
        assert "### Upgrading" in release, release.splitlines()[0]


#: The last commit of the flat package, before the regrouping into folders.
FLAT_LAYOUT_COMMIT = "85c3fc20024fa4538cd53e255632fa4ef8af5916"
FLAT, GROUPED = "v0.9.8", "v0.9.9"
OWNER_DRAFT_LINE = "        # Owner: sign every reply with the team's name.\n"
OWNER_TASK_LINE = "# Owner: the mailbox lookup is cached by the client.\n"
OWNER_MODULE = '''\
"""The owner's own module, next to the template's."""

WEEKLY = "weekly"
'''


#: Where the fixed draft's docstring starts: in `draft_reply` of the flat package's flows.py,
#: and in `fixed_draft` of drafting/draft.py since the drafting agent.
DRAFT_DOCSTRINGS = (
    '    """A first answer to `email`.',
    '    """The answer when no model is configured',
)


def add_owner_draft_line(module: Path) -> None:
    """The owner's comment in the fixed draft, wherever the module holding it is."""
    text = module.read_text()
    (anchor,) = [docstring for docstring in DRAFT_DOCSTRINGS if docstring in text]
    module.write_text(text.replace(anchor, OWNER_DRAFT_LINE + anchor))


@pytest.fixture(scope="module")
def regrouping_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template at its last flat commit, then as in this working tree."""
    shallow = git(REPO, "rev-parse", "--is-shallow-repository").strip() == "true"
    if shallow:
        pytest.skip("a shallow clone lacks the flat layout's commit; clone in full to run this")
    repo = tmp_path_factory.mktemp("regrouping-repo")
    archive = subprocess.run(
        ["git", "archive", FLAT_LAYOUT_COMMIT, "copier.yml", "template", "hooks"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x"], input=archive, cwd=repo, check=True)
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit_all(repo, "the flat package")
    git(repo, "tag", FLAT)
    copy_working_template(repo)
    commit_all(repo, "the package in folders")
    git(repo, "tag", GROUPED)
    return repo


def test_an_update_across_the_regrouping_loses_no_edit_of_the_owner(
    regrouping_repo: Path, tmp_path: Path
) -> None:
    """Copier deletes a file the template no longer has, edited or not: the regrouping leaves a
    notice at each old path, so an edited module becomes a conflict `git status` lists (the
    owner's code on one side), an untouched one becomes the notice, and the tests fail until
    both are dealt with (docs/upgrading.md)."""
    project = generate(regrouping_repo, tmp_path / "owner-flows", OWNER_ANSWERS, FLAT)
    package = project / "src" / PACKAGE
    flows = package / "flows.py"
    add_owner_draft_line(flows)
    tasks = package / "tasks.py"
    tasks.write_text(tasks.read_text() + "\n" + OWNER_TASK_LINE)
    settings = package / "settings.toml"
    settings.write_text(
        settings.read_text().replace(
            "approval_timeout_seconds = 3600.0\n", "approval_timeout_seconds = 900.0\n"
        )
    )
    (package / "weekly.py").write_text(OWNER_MODULE)
    commit_all(project, "owner: a draft comment, a task note, a shorter timeout, own module")

    copier.run_update(project, vcs_ref=GROUPED, overwrite=True, defaults=True, quiet=True)

    status = git(project, "status", "--porcelain")
    unmerged = {line[3:] for line in status.splitlines() if line.startswith("UU ")}
    assert unmerged == {f"src/{PACKAGE}/flows.py", f"src/{PACKAGE}/tasks.py"}, status
    assert OWNER_DRAFT_LINE in flows.read_text()
    assert "<<<<<<< before updating" in flows.read_text()
    assert "is now `owner_flows.flows.answer_inbound`" in flows.read_text()
    assert OWNER_TASK_LINE in tasks.read_text()
    assert "approval_timeout_seconds = 900.0\n" in settings.read_text()
    assert (package / "weekly.py").read_text() == OWNER_MODULE
    untouched = (package / "client.py").read_text()
    assert untouched.startswith(
        '"""MOVED: `owner_flows.client` is now `owner_flows.multimail.client`'
    )
    assert (package / "multimail" / "client.py").is_file()
    assert (package / "flows" / "answer_inbound.py").is_file()
    # The project's own test names every file left to deal with, and passes once they are gone.
    layout_test = runpy.run_path(str(package / "tests" / "test_layout.py"))
    check_layout = layout_test["test_no_update_left_a_conflict_or_a_moved_module_behind"]
    with pytest.raises(AssertionError) as left:
        check_layout()
    assert f"src/{PACKAGE}/flows.py: conflict markers" in str(left.value)
    assert f"src/{PACKAGE}/client.py: moved" in str(left.value)
    assert f"src/{PACKAGE}/tests/test_flows.py: moved" in str(left.value)
    # Once the owner moved their changes and deleted the notices, a fresh copy's files remain.
    for path in package.rglob("*.py"):
        if path.read_text().startswith(('"""MOVED', "<<<<<<<")):
            path.unlink()
    check_layout()
    fresh = generate(regrouping_repo, tmp_path / "fresh", OWNER_ANSWERS, GROUPED)
    owner_only = {f"src/{PACKAGE}/weekly.py", f"src/{PACKAGE}/settings.toml"}
    mine, theirs = tree(project), tree(fresh)
    assert {k for k in mine if k not in owner_only} == {k for k in theirs if k not in owner_only}


def _owner_changes_the_draft(project: Path, package: str) -> None:
    add_owner_draft_line(project / "src" / package / "drafting" / "draft.py")
    (project / "src" / package / "weekly.py").write_text(OWNER_MODULE)
    commit_all(project, "owner: a draft comment and an own module")


def test_a_package_rename_keeps_every_edit_the_way_the_upgrade_guide_says(
    template_repo: Path, tmp_path: Path
) -> None:
    """`--data package_name=` alone drops the owner's changes to template files (Copier deletes
    the old folder's files); renaming with git first, as docs/upgrading.md says, keeps them."""
    new = "renamed_flows"
    direct = generate(template_repo, tmp_path / "direct", OWNER_ANSWERS, OLD)
    _owner_changes_the_draft(direct, PACKAGE)
    copier.run_update(
        direct, vcs_ref=OLD, overwrite=True, defaults=True, quiet=True, data={"package_name": new}
    )
    assert OWNER_DRAFT_LINE not in (direct / "src" / new / "drafting" / "draft.py").read_text()
    assert not (direct / "src" / PACKAGE / "flows").exists()
    assert (direct / "src" / PACKAGE / "weekly.py").is_file()  # orphaned in the old folder

    project = generate(template_repo, tmp_path / "recipe", OWNER_ANSWERS, OLD)
    _owner_changes_the_draft(project, PACKAGE)
    git(project, "mv", f"src/{PACKAGE}", f"src/{new}")
    for name in git(project, "grep", "-l", PACKAGE).split():
        path = project / name
        path.write_text(path.read_text().replace(PACKAGE, new))
    commit_all(project, f"rename the package to {new}")
    before = tree(project)
    copier.run_update(project, vcs_ref=OLD, overwrite=True, defaults=True, quiet=True)
    assert tree(project) == before  # nothing left to change, nothing lost
    assert OWNER_DRAFT_LINE in (project / "src" / new / "drafting" / "draft.py").read_text()
    fresh = generate(template_repo, tmp_path / "fresh", {**OWNER_ANSWERS, "package_name": new}, OLD)
    owner_only = {f"src/{new}/weekly.py", f"src/{new}/drafting/draft.py"}
    assert {k: v for k, v in tree(project).items() if k not in owner_only} == {
        k: v for k, v in tree(fresh).items() if k not in owner_only
    }
