"""No secret reaches a rendered file, the answers file or Copier's output, on copy or update.

The template asks no secret; the key lives in a git-ignored `.env` or in the environment. These
tests plant fresh fake keys where a careless template would pick them up (the environment while
Copier runs, and extra `data` that `_copier_conf` exposes to templates) and then search every
rendered file and the answers file for them and for anything shaped like MultiMail key material.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import copier
import pytest
import yaml

from .answers import ANSWER_SETS, FIVE_UNUSUAL_AUDIENCES
from .conftest import REPO, render_template
from .test_update import commit_all, generate, git, init_template_repo, tree

# Anything shaped like MultiMail key material or a webhook signing secret, or a private key.
KEY_MATERIAL = re.compile(
    rb"mm_live_[0-9a-f]{8,}|whsec_[0-9A-Za-z+/=_-]{8,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


class Planted:
    """Fresh fake secrets, made at test time, that must appear nowhere."""

    def __init__(self) -> None:
        self.api_key = "mm_live_" + secrets.token_hex(16)
        self.webhook_secret = "whsec_" + secrets.token_urlsafe(24)
        self.model_key = "sk-" + secrets.token_urlsafe(24)  # a drafting model provider's

    def values(self) -> list[bytes]:
        return [self.api_key.encode(), self.webhook_secret.encode(), self.model_key.encode()]


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> Planted:
    fake = Planted()
    monkeypatch.setenv("MULTIMAIL_API_KEY", fake.api_key)
    monkeypatch.setenv("MULTIMAIL_WEBHOOK_SECRET", fake.webhook_secret)
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(variable, fake.model_key)
    return fake


def extra_data(fake: Planted) -> dict[str, Any]:
    """Values a user might pass with `--data` although no question asks for them."""
    return {
        "multimail_api_key": fake.api_key,
        "webhook_secret": fake.webhook_secret,
        "openai_api_key": fake.model_key,
        "drafting_api_key": fake.model_key,
    }


def assert_no_secret(project: Path, fake: Planted) -> None:
    files = tree(project)
    assert ".copier-answers.yml" in files
    for path, content in files.items():
        if path == ".env":
            continue  # the owner's own, git-ignored file: the one place a key may live
        for value in fake.values():
            assert value not in content, f"a planted secret leaked into {path}"
        found = KEY_MATERIAL.search(content)
        assert found is None, f"key material {found.group()[:12]!r}... in {path}"


#: The answer sets, and one with the drafting agent on (a model whose key is planted too).
SECRET_SCAN_SETS = {**ANSWER_SETS, "drafting-agent-on": FIVE_UNUSUAL_AUDIENCES}


@pytest.mark.parametrize("name", sorted(SECRET_SCAN_SETS))
def test_a_copy_holds_no_secret(
    name: str, tmp_path: Path, planted: Planted, capfd: pytest.CaptureFixture[str]
) -> None:
    answers = {**SECRET_SCAN_SETS[name], **extra_data(planted)}
    project = render_template(tmp_path / "project", answers)
    assert_no_secret(project, planted)
    out, err = capfd.readouterr()
    for value in (planted.api_key, planted.webhook_secret, planted.model_key):
        assert value not in out + err


def test_answers_file_holds_only_the_questions(tmp_path: Path, planted: Planted) -> None:
    project = render_template(tmp_path / "project", extra_data(planted))
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    config = yaml.safe_load((REPO / "copier.yml").read_text())
    asked = {
        key
        for key, spec in config.items()
        if not key.startswith("_") and not (isinstance(spec, dict) and spec.get("when") is False)
    }
    # Asked only for docker and kubernetes pools; these answers take the default process pool.
    asked.discard("image_registry")
    assert set(recorded) == asked | {"_commit", "_src_path"}


def test_no_template_file_renders_copier_conf() -> None:
    """`_copier_conf` carries every `--data` value: rendering it would leak a passed secret."""
    for path in (REPO / "template").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".png":
            text = path.read_text()
            assert "_copier_conf" not in text, path


def test_env_example_is_rendered_and_env_is_git_ignored(tmp_path: Path) -> None:
    project = render_template(tmp_path / "project", {})
    example = (project / ".env.example").read_text()
    assert re.search(r"^MULTIMAIL_API_KEY=$", example, re.MULTILINE)  # a slot, never a value
    assert not (project / ".env").exists()
    git(project, "init", "--quiet")
    (project / ".env").write_text("MULTIMAIL_API_KEY=placeholder\n")
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", ".env"], cwd=project, check=False
    ).returncode
    assert ignored == 0, ".env is not git-ignored"
    git(project, "add", "--all")
    assert ".env\n" not in git(project, "diff", "--cached", "--name-only")


def test_a_pasted_key_is_refused_as_the_block_name(tmp_path: Path, planted: Planted) -> None:
    """The one key-related question takes a block *name*; a pasted key is refused, not saved."""
    with pytest.raises(ValueError, match="'api_key_block'"):
        render_template(tmp_path / "project", {"api_key_block": planted.api_key})
    assert not (tmp_path / "project" / ".copier-answers.yml").exists()


def test_an_update_holds_no_secret_and_keeps_the_env_file(tmp_path: Path, planted: Planted) -> None:
    template = init_template_repo(tmp_path / "template", "v1.0.0")
    readme = template / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\nA line added in v1.0.1.\n")
    commit_all(template, "v1.0.1")
    git(template, "tag", "v1.0.1")

    project = generate(template, tmp_path / "project", extra_data(planted), "v1.0.0")
    dotenv = f"MULTIMAIL_API_KEY={planted.api_key}\n".encode()
    (project / ".env").write_bytes(dotenv)
    assert git(project, "status", "--porcelain") == ""  # .env is ignored, the tree is clean
    copier.run_update(
        project,
        data=extra_data(planted),
        vcs_ref="v1.0.1",
        overwrite=True,
        defaults=True,
        unsafe=True,
        quiet=True,
    )
    assert "A line added in v1.0.1." in (project / "README.md").read_text()
    assert (project / ".env").read_bytes() == dotenv
    assert_no_secret(project, planted)
    status = git(project, "status", "--porcelain", "--ignored").splitlines()
    assert "!! .env" in status  # still ignored: `git add --all` will not pick the key up
    assert ".env" not in git(project, "ls-files").splitlines()
