"""The generated prefect.yaml deploys with the real Prefect CLI against the session's
PostgreSQL-backed Prefect server, for every work pool type, and the deployments read back as
configured: names, pool, schedules, concurrency, pull steps; no secret and no path of the
deploying machine anywhere in them.

Docker and kubernetes renders build and push an image at deploy time, which needs a Docker
engine (none here): their test checks the build and push steps as rendered, then deploys a copy
of prefect.yaml without them (`--prefect-file`), the image named literally, and with the pool
type in the deployment names so the three renders can share one server.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import Render, run
from .prefect_postgres import PrefectOnPostgres, prefect_env, prefect_on_postgres

__all__ = ["prefect_on_postgres"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

#: Set while deploying: if Prefect stored any of it, the test finds it.
SENTINELS = {
    "MULTIMAIL_API_KEY": "mm_live_" + "de9107" * 6,
    "MULTIMAIL_WEBHOOK_SECRET": "whsec_" + "deploysentinel" * 3,
}
#: Deployments every render has (others may be added to prefect.yaml; they are checked too).
FLOWS = ("status-digest", "answer-inbound", "expire-approval-waits")


def deploy(
    project: Path,
    venv: Path,
    server: PrefectOnPostgres,
    pool: str,
    pool_type: str,
    prefect_file: str = "prefect.yaml",
) -> None:
    """`prefect work-pool create` and `prefect --no-prompt deploy --all`, as a user runs them."""
    prefect = str(venv / "bin" / "prefect")
    env = prefect_env(server, project / ".prefect-home", **SENTINELS)
    run(
        [prefect, "work-pool", "create", pool, "--type", pool_type, "--overwrite"],
        project,
        120,
        env,
    )
    run(
        [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file],
        project,
        300,
        env,
    )


def read_back(server: PrefectOnPostgres, pool: str) -> dict[str, dict[str, Any]]:
    """Every deployment on `pool`, by `<flow>/<deployment>`, as the API returns it."""
    with httpx.Client(base_url=server.api_url, timeout=30) as api:
        found = api.post("/deployments/filter", json={"work_pools": {"name": {"any_": [pool]}}})
        found.raise_for_status()
        flows = api.post("/flows/filter", json={}).json()
    names = {f["id"]: f["name"] for f in flows}
    return {f"{names[d['flow_id']]}/{d['name']}": d for d in found.json()}


def check_common(
    deployed: dict[str, dict[str, Any]], project: Path, prefect_file: str, suffix: str = ""
) -> None:
    """Every deployment of `prefect_file` is on the server as written there, and nothing else."""
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    config = yaml.safe_load((project / prefect_file).read_text())
    by_name = {name.split("/")[1]: d for name, d in deployed.items()}
    # Each flow carries the project, so that another project on the server keeps its own.
    for name in deployed:
        flow, deployment_name = name.split("/")
        assert flow == f"{answers['project_slug']}-{deployment_name.removesuffix(suffix)}"
    assert {f"{flow}{suffix}" for flow in FLOWS} <= set(by_name)
    assert set(by_name) == {d["name"] for d in config["deployments"]}
    for written in config["deployments"]:
        deployment = by_name[written["name"]]
        assert deployment["entrypoint"] == written["entrypoint"]
        assert deployment["tags"] == written.get("tags", [])
        schedules = [s["schedule"] for s in deployment["schedules"]]
        assert [s.get("cron") or s.get("interval") for s in schedules] == [
            s.get("cron") or s.get("interval") for s in written.get("schedules") or []
        ]
        assert [s["timezone"] for s in schedules] == [
            s.get("timezone", "UTC") for s in written.get("schedules") or []
        ]
        # No deployment concurrency limit: its leases leak across a server restart.
        assert deployment["global_concurrency_limit"] is None
        assert deployment["work_pool_name"] == answers["work_pool_name"]
        assert deployment["work_queue_name"] == written["work_pool"].get(
            "work_queue_name", "default"
        )
        assert deployment["job_variables"]["env"] == {
            "MULTIMAIL_API_KEY_BLOCK": answers["api_key_block"],
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        }
        assert deployment["parameters"] == written.get("parameters", {})
        stored = json.dumps(deployment)
        for value in SENTINELS.values():
            assert value not in stored
        assert str(project) not in stored  # nothing of the deploying machine's paths
    # What the answers chose, as the server stores it.
    package = answers["package_name"]
    digest = by_name[f"status-digest{suffix}"]
    assert digest["entrypoint"] == f"{package}.flows.status_digest.status_digest"
    assert [s["schedule"]["cron"] for s in digest["schedules"]] == [answers["digest_schedule"]]
    expire = by_name[f"expire-approval-waits{suffix}"]
    assert [s["schedule"]["interval"] for s in expire["schedules"]] == [120.0]
    reconcile = by_name[f"reconcile-inbound{suffix}"]
    assert [s["schedule"]["interval"] for s in reconcile["schedules"]] == [120.0]
    answer = by_name[f"answer-inbound{suffix}"]
    assert answer["work_queue_name"] == f"{answers['project_slug']}-answer-inbound"


def test_process_deployments_record_no_path_and_read_back(
    installed_project: Path, prefect_on_postgres: PrefectOnPostgres
) -> None:
    answers = yaml.safe_load((installed_project / ".copier-answers.yml").read_text())
    pool = answers["work_pool_name"]
    deploy(installed_project, installed_project / ".venv", prefect_on_postgres, pool, "process")
    deployed = read_back(prefect_on_postgres, pool)
    check_common(deployed, installed_project, "prefect.yaml")
    pull = yaml.safe_load((installed_project / "prefect.yaml").read_text())["pull"]
    # An import check of the package (test_worker_import), then the step that enters the project.
    assert pull[-1] == {f"{answers['package_name']}.ops.pull_steps.enter_project_directory": {}}
    for deployment in deployed.values():
        assert deployment["pull_steps"] == pull
    assert not (installed_project / "Dockerfile.generated").exists()


@pytest.mark.parametrize("pool_type", ["docker", "kubernetes"])
def test_image_deployments_build_push_and_read_back(
    pool_type: str,
    render: Render,
    installed_project: Path,
    prefect_on_postgres: PrefectOnPostgres,
) -> None:
    registry = "registry.example.com:5000/mail-team"
    project = render(
        {
            "work_pool_type": pool_type,
            "work_pool_name": f"flows-{pool_type}",
            "image_registry": registry,
        }
    )
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    slug, image = answers["project_slug"], f"{registry}/{answers['project_slug']}"
    config = yaml.safe_load((project / "prefect.yaml").read_text())

    # What `prefect deploy` would build and push: this project's Dockerfile, to the registry.
    (build,) = config["build"]
    assert build["prefect_docker.deployments.steps.build_docker_image"] == {
        "id": "build-image",
        "image_name": image,
        "dockerfile": "Dockerfile",
    }
    (push,) = config["push"]
    assert push["prefect_docker.deployments.steps.push_docker_image"] == {
        "image_name": "{{ build-image.image_name }}",
        "tag": "{{ build-image.tag }}",
    }
    workdir = f"/opt/{slug}"
    assert config["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": workdir}}
    ]
    dockerfile = (project / "Dockerfile").read_text()
    assert f"WORKDIR {workdir}\n" in dockerfile
    assert "uv sync --locked --no-dev" in dockerfile
    assert ".env\n" in (project / ".dockerignore").read_text()
    extras = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ][pool_type]
    assert any(e.startswith("prefect-docker") for e in extras)
    assert pool_type == "docker" or any(e.startswith("prefect-kubernetes") for e in extras)
    for deployment in config["deployments"]:
        assert deployment["work_pool"]["job_variables"]["image"] == "{{ build-image.image }}"

    # Deploy without build and push (no Docker engine here); the image as a build would name it.
    del config["build"], config["push"]
    for deployment in config["deployments"]:
        deployment["name"] += f"-{pool_type}"
        deployment["work_pool"]["job_variables"]["image"] = f"{image}:test"
    (project / "prefect.no-build.yaml").write_text(yaml.safe_dump(config))
    # The flows import from the default render's environment: the same code, another render.
    deploy(
        project,
        installed_project / ".venv",
        prefect_on_postgres,
        answers["work_pool_name"],
        pool_type,
        "prefect.no-build.yaml",
    )
    deployed = read_back(prefect_on_postgres, answers["work_pool_name"])
    check_common(deployed, project, "prefect.no-build.yaml", suffix=f"-{pool_type}")
    for deployment in deployed.values():
        assert deployment["pull_steps"] == config["pull"]
        assert deployment["job_variables"]["image"] == f"{image}:test"
    pools = httpx.get(f"{prefect_on_postgres.api_url}/work_pools/{answers['work_pool_name']}")
    assert pools.json()["type"] == pool_type
