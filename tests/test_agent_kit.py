"""The agent kit of a generated project: AGENTS.md and .mcp.json.

An agent trusts AGENTS.md's commands as written, so every `uv run ...` command it names is run
with `--help` appended in an installed project: the tool exists, the subcommand exists and every
option it spells parses. Neither file may hold a key: `.mcp.json` refers to the variables by
name (`${MULTIMAIL_API_KEY}`) and the client fills them in from the environment.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from .answers import DEFAULT, THREE_AUDIENCES_DOCKER
from .conftest import Render

#: Key material of any length: a value, not the name of one or a `mm_live_...` placeholder.
KEY_VALUE = re.compile(r"mm_live_[0-9A-Za-z]|whsec_[0-9A-Za-z]")
#: A whole value that is nothing but a reference to an environment variable.
REFERENCE = re.compile(r"\$\{[A-Z][A-Z0-9_]*(:-[^}]*)?\}")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`(uv run [^`]+)`")


def named_commands(markdown: str) -> list[str]:
    """Every `uv run ...` command in `markdown`: console block lines (comments dropped, `&&`
    chains split) and inline code spans, in order, each once."""
    found: list[str] = []
    for language, body in FENCE.findall(markdown):
        if language not in ("console", "shell", "sh", "bash"):
            continue
        for line in body.splitlines():
            code = line.split(" #", 1)[0].strip()
            found.extend(part.strip() for part in code.split("&&"))
    found.extend(INLINE_CODE.findall(markdown))
    commands = [c for c in found if c.startswith("uv run ")]
    return list(dict.fromkeys(commands))


@pytest.mark.parametrize("answers", [DEFAULT, THREE_AUDIENCES_DOCKER], ids=["default", "docker"])
def test_neither_file_holds_a_key(render: Render, answers: dict[str, object]) -> None:
    project = render(answers)
    for name in ("AGENTS.md", ".mcp.json"):
        text = (project / name).read_text()
        assert not KEY_VALUE.search(text), f"{name} holds key material"
    servers = json.loads((project / ".mcp.json").read_text())["mcpServers"]
    assert servers["multimail"]["url"] == "https://mcp.multimail.dev/mcp"
    local = servers["multimail-local"]
    assert local["env"]["MULTIMAIL_API_KEY"] == "${MULTIMAIL_API_KEY}"
    for server in servers.values():
        for value in [*server.get("env", {}).values(), *server.get("headers", {}).values()]:
            assert REFERENCE.fullmatch(value), f"{value!r} is a value, not a variable's name"


def test_agents_md_names_the_projects_own_command_and_audiences(render: Render) -> None:
    project = render(THREE_AUDIENCES_DOCKER)
    agents = (project / "AGENTS.md").read_text()
    commands = named_commands(agents)
    assert "uv run ops-mail provision" in commands
    assert "uv run pytest" in commands
    assert "my-mail-flows" not in agents
    assert "my_mail_flows" not in agents
    for audience in THREE_AUDIENCES_DOCKER["audiences"]:
        assert f"| `{audience['name']}` | `{audience['mailbox']}` |" in agents
    assert "message_key" in agents
    # The recipe's new module, under this project's package...
    assert "opsmail.flows.weekly_summary.weekly_summary" in agents
    # ...and every other path it names exists.
    named = set(re.findall(r"`(src/[^`]+)`", agents))
    assert "src/opsmail/mail/" in named
    for path in named - {
        "src/opsmail/flows/weekly_summary.py",
        "src/opsmail/tests/flows/test_weekly_summary.py",
    }:
        assert (project / path).exists(), path


def package_folders(project: Path, package: str) -> set[str]:
    """Every folder of the generated package, as the layout tables name it."""
    root = project / "src" / package
    return {f"src/{package}/"} | {
        f"src/{package}/{folder.name}/"
        for folder in root.iterdir()
        if folder.is_dir() and folder.name != "__pycache__"
    }


@pytest.mark.parametrize("document", ["AGENTS.md", "README.md"])
def test_the_layout_table_has_a_row_per_folder_of_the_package(
    render: Render, document: str
) -> None:
    """A reader finds every folder of the package in the layout table, and nothing else."""
    project = render(THREE_AUDIENCES_DOCKER)
    rows = re.findall(r"^\| `(src/[^`]+/)` \|", (project / document).read_text(), re.MULTILINE)
    assert len(rows) == len(set(rows))
    assert set(rows) == package_folders(project, "opsmail")


@pytest.mark.slow
def test_every_command_agents_md_names_exists(installed_project: Path) -> None:
    commands = named_commands((installed_project / "AGENTS.md").read_text())
    slug = yaml.safe_load((installed_project / ".copier-answers.yml").read_text())["project_slug"]
    assert any(c.startswith(f"uv run {slug} ") for c in commands)
    assert len(commands) >= 12, commands
    failures = []
    for command in commands:
        tool, *args = shlex.split(command)[2:]
        executable = installed_project / ".venv" / "bin" / tool
        if not executable.exists():
            failures.append(f"{command}: no `{tool}` in the project's environment")
            continue
        result = subprocess.run(
            [str(executable), *args, "--help"],
            cwd=installed_project,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            failures.append(f"{command} --help exited {result.returncode}:\n{result.stderr[-800:]}")
    assert not failures, "\n".join(failures)
