"""A process worker that cannot import the project fails its runs saying why and what to do.

The pull steps of process deployments run in the worker's own Python: a worker started with
another environment's `prefect` (not `<project>/.venv/bin/prefect`) cannot import the package.
prefect.yaml's first pull step (Prefect's own lazy_import, which needs nothing of the project)
turns that into a message naming the cause and the fix, before the project's own step fails
with a bare ModuleNotFoundError. Here a real worker from an environment with the project's
locked dependencies but without the project runs a deployment made of prefect.yaml's pull
steps, on the session's Prefect server; and the project's own Python runs the same steps.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import run, uv
from .prefect_postgres import (
    TERMINAL,
    PrefectOnPostgres,
    prefect_env,
    prefect_on_postgres,
    start_process,
    stop_process,
)

__all__ = ["prefect_on_postgres"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

#: Runs prefect.yaml's pull steps (argv[1], JSON) with Prefect's own run_steps, as a worker does.
RUN_PULL_STEPS = (
    "import asyncio, json, sys\n"
    "from prefect.deployments.steps.core import run_steps\n"
    "print(json.dumps(asyncio.run(run_steps(json.loads(sys.argv[1])))))\n"
)


def other_environment(project: Path, root: Path) -> Path:
    """A virtualenv with the project's locked dependencies (Prefect among them), not the project:
    what a worker started with another environment's `prefect` runs in."""
    requirements = root / "requirements.txt"
    run(
        [
            uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-header",
            "--output-file",
            str(requirements),
        ],
        project,
    )
    venv = root / "other-venv"
    run(
        [uv(), "venv", "--quiet", "--python", str(project / ".venv" / "bin" / "python"), str(venv)],
        root,
    )
    run(
        [
            uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            "-r",
            str(requirements),
        ],
        root,
    )
    return venv


def test_a_worker_without_the_project_says_why_and_how_to_start_it(
    installed_project: Path, prefect_on_postgres: PrefectOnPostgres, tmp_path: Path
) -> None:
    config = yaml.safe_load((installed_project / "prefect.yaml").read_text())
    answers = yaml.safe_load((installed_project / ".copier-answers.yml").read_text())
    package = answers["package_name"]
    steps = config["pull"]
    elsewhere = tmp_path / "elsewhere"  # workers are started outside the project
    elsewhere.mkdir()

    # The project's own Python passes both steps and enters the project.
    own = run(
        [
            str(installed_project / ".venv" / "bin" / "python"),
            "-c",
            RUN_PULL_STEPS,
            json.dumps(steps),
        ],
        elsewhere,
        120,
    )
    assert Path(json.loads(own.stdout.strip().splitlines()[-1])["directory"]) == installed_project

    # A worker of another environment, on a pool of this test's own, runs a deployment with
    # prefect.yaml's pull steps.
    venv = other_environment(installed_project, tmp_path)
    pool = f"worker-import-{uuid.uuid4().hex[:8]}"
    env = prefect_env(prefect_on_postgres, tmp_path / "prefect-home")
    prefect = str(installed_project / ".venv" / "bin" / "prefect")
    run([prefect, "work-pool", "create", pool, "--type", "process"], elsewhere, 120, env)
    digest = next(d for d in config["deployments"] if d["name"] == "status-digest")
    with httpx.Client(base_url=prefect_on_postgres.api_url, timeout=30) as api:
        flow = api.post("/flows/", json={"name": f"{pool}-flow"})
        flow.raise_for_status()
        deployment = api.post(
            "/deployments/",
            json={
                "name": pool,
                "flow_id": flow.json()["id"],
                "entrypoint": digest["entrypoint"],
                "pull_steps": steps,
                "work_pool_name": pool,
            },
        )
        deployment.raise_for_status()
        created = api.post(f"/deployments/{deployment.json()['id']}/create_flow_run", json={})
        created.raise_for_status()
        flow_run_id = created.json()["id"]
        log = tmp_path / "worker.log"
        worker = start_process(
            [str(venv / "bin" / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
            elsewhere,
            env,
            log,
        )
        try:
            deadline = time.monotonic() + 180
            while (state := api.get(f"/flow_runs/{flow_run_id}").json()["state"])[
                "type"
            ] not in TERMINAL:
                assert worker.poll() is None, log.read_text(errors="replace")[-4000:]
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
                time.sleep(0.5)
            # The worker sends the step's event and the server stores it a few seconds later: wait
            # for it with the worker still up.
            deadline = time.monotonic() + 60
            while not (
                events := api.post(
                    "/events/filter",
                    json={
                        "filter": {
                            "event": {"name": ["prefect.flow-run.pull-step.failed"]},
                            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
                        }
                    },
                ).json()["events"]
            ):
                assert time.monotonic() < deadline, "no pull-step.failed event for the run"
                time.sleep(1)
        finally:
            stop_process(worker)
    output = log.read_text(errors="replace")
    assert state["type"] == "CRASHED", (state, output[-4000:])
    # The worker's output names the cause and the fix...
    assert f"No module named '{package}'.\nThis worker's Python cannot import {package}" in output
    for fix in ("another environment's prefect", "uv sync --no-dev"):
        assert fix in output, output[-4000:]
    start = f".venv/bin/prefect worker start --pool {answers['work_pool_name']} --type process"
    assert start in output, output[-4000:]
    # ... the check failed, not the project's own step, which never ran...
    assert "Executing deployment step: enter_project_directory" not in output
    # ... and the run's events show the message too (the UI lists them with the run).
    failed: list[dict[str, Any]] = [e["payload"] for e in events]
    assert [p["step_name"] for p in failed] == ["lazy_import"], failed
    assert "another environment's prefect" in failed[0]["inputs"]["help_message"]
