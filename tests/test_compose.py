"""compose.yaml runs a Prefect server on PostgreSQL, a worker of the render's pool and the
webhook receiver from the project's image, with no secret in the file; `docker compose config`
validates it where Docker Compose is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Render


def compose_of(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((project / "compose.yaml").read_text())
    return loaded


@pytest.mark.parametrize("pool_type", ["process", "docker", "kubernetes"])
def test_compose_runs_prefect_on_postgres_a_worker_and_the_receiver(
    render: Render, pool_type: str
) -> None:
    project = render({"work_pool_type": pool_type, "work_pool_name": "mail-pool"})
    services = compose_of(project)["services"]
    prefect_yaml = yaml.safe_load((project / "prefect.yaml").read_text())
    pool = prefect_yaml["definitions"]["work_pools"]["default"]["name"]

    database = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database.startswith("postgresql+asyncpg://prefect:${POSTGRES_PASSWORD:?")
    assert database.endswith("@postgres:5432/prefect")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    if pool_type == "kubernetes":
        assert "worker" not in services  # the worker runs in the cluster
    else:
        command = services["worker"]["command"]
        assert command[:5] == ["prefect", "worker", "start", "--pool", pool]
        assert command[5:] == ["--type", pool_type]
        assert services["worker"]["environment"]["PREFECT_API_URL"] == (
            "http://prefect-server:4200/api"
        )
        assert "MULTIMAIL_API_KEY" not in services["worker"]["environment"]  # the block's job

    receiver = services["receiver"]
    slug = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    assert receiver["command"][:3] == [slug, "receiver", "serve"]
    for variable in ("MULTIMAIL_API_KEY", "MULTIMAIL_WEBHOOK_SECRET"):
        # Only ever interpolated from the environment or .env; empty means the Secret block.
        assert receiver["environment"][variable] == f"${{{variable}:-}}"
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # nothing listens beyond loopback
        if "build" in service:
            assert service["image"].startswith(f"{slug}:compose")
    assert (project / "Dockerfile").is_file()
    dockerignore = (project / ".dockerignore").read_text()
    assert ".env\n" in dockerignore
    assert "src/*/tests\n" in dockerignore  # the image ships the package without its tests


def docker_compose() -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("Docker is not installed: `docker compose config` cannot validate compose.yaml")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        pytest.skip(
            "the Docker Compose plugin is not installed (`docker compose version` failed: "
            f"{(version.stderr or version.stdout).strip().splitlines()[0][:200]}): compose.yaml "
            "is not validated"
        )
    return [docker, "compose"]


@pytest.mark.parametrize("pool_type", ["process", "docker", "kubernetes"])
def test_docker_compose_validates_the_file(render: Render, pool_type: str) -> None:
    compose = docker_compose()
    project = render({"work_pool_type": pool_type})
    env = {"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": "not-a-real-password"}
    checked = subprocess.run(
        [*compose, "config", "--quiet"], cwd=project, env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    missing = subprocess.run(
        [*compose, "config", "--quiet"],
        cwd=project,
        env={"PATH": env["PATH"]},
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr
