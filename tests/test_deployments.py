"""The generated prefect.yaml deploys with the real Prefect CLI, offline, against a throwaway
Prefect server: every deployment lands on the work pool with its schedule, its entrypoint
imports, and the deployment carries the Secret block's name, never a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .conftest import run

pytestmark = pytest.mark.slow

# Runs with the generated project's interpreter, inside its folder.
DEPLOY = """
import json, os, subprocess, sys
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

pool = sys.argv[1]
prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
with prefect_test_harness(server_startup_timeout=120):
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    for command in (["work-pool", "create", pool, "--type", "process"],
                    ["--no-prompt", "deploy", "--all"]):
        done = subprocess.run([prefect, *command], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"prefect {' '.join(command)} failed:\\n{done.stdout}\\n{done.stderr}")
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    print(json.dumps([
        {
            "name": f"{flows[d.flow_id]}/{d.name}",
            "entrypoint": d.entrypoint,
            "pool": d.work_pool_name,
            "crons": [s.schedule.cron for s in d.schedules if hasattr(s.schedule, "cron")],
            "intervals": [
                s.schedule.interval.total_seconds()
                for s in d.schedules
                if hasattr(s.schedule, "interval")
            ],
            "job_variables": d.job_variables,
            "parameters": d.parameters,
        }
        for d in deployments
    ]))
"""


def test_prefect_deploys_every_deployment_as_configured(installed_project: Path) -> None:
    answers = yaml.safe_load((installed_project / ".copier-answers.yml").read_text())
    python = installed_project / ".venv" / "bin" / "python"
    result = run(
        [str(python), "-c", DEPLOY, answers["work_pool_name"]], cwd=installed_project, timeout=300
    )
    deployed = {d["name"]: d for d in json.loads(result.stdout.strip().splitlines()[-1])}
    assert set(deployed) == {
        "status-digest/status-digest",
        "answer-inbound/answer-inbound",
        "expire-approval-waits/expire-approval-waits",
    }
    package = answers["package_name"]
    assert deployed["status-digest/status-digest"]["entrypoint"] == f"{package}.flows.status_digest"
    assert deployed["status-digest/status-digest"]["crons"] == [answers["digest_schedule"]]
    assert deployed["expire-approval-waits/expire-approval-waits"]["intervals"] == [900.0]
    for deployment in deployed.values():
        assert deployment["pool"] == answers["work_pool_name"]
        assert deployment["job_variables"] == {
            "env": {"MULTIMAIL_API_KEY_BLOCK": answers["api_key_block"]}
        }
        assert deployment["parameters"] == {}
