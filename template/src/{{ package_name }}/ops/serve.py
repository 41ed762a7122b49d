"""The deployments of prefect.yaml, as `<project> serve` serves them without a work pool.

prefect.yaml is the one place that names the deployments and sets their schedules,
concurrency limits, tags and parameters: `serve` reads it, so a schedule changed there changes
for `prefect deploy` and for `serve` alike. Served deployments are named `local`
(`<project>-answer-inbound/local`, see `namespace.py`); build, push, pull steps and work pools
do not apply to them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML comes with Prefect, without stubs
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval, RRule, Schedule
from prefect.types.entrypoint import EntrypointType

from ..namespace import SERVED_DEPLOYMENT_NAME


def prefect_yaml() -> Path:
    """The project's prefect.yaml: beside src/ of this package's checkout, else in the cwd."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parents[1] / "prefect.yaml", Path.cwd() / "prefect.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "prefect.yaml not found beside this project's src/ nor in the current directory: run "
        "`serve` from the project's checkout"
    )


def to_schedule(config: dict[str, Any]) -> Schedule:
    """One `schedules:` entry of prefect.yaml (cron, interval or rrule) as Prefect's Schedule."""
    common: dict[str, Any] = {
        "timezone": config.get("timezone"),
        "active": config.get("active", True),
        "parameters": config.get("parameters"),
        "slug": config.get("slug"),
    }
    if "cron" in config:
        return Cron(config["cron"], day_or=config.get("day_or", True), **common)
    if "interval" in config:
        return Interval(config["interval"], **common)
    if "rrule" in config:
        return RRule(config["rrule"], **common)
    raise ValueError(f"prefect.yaml: a schedule needs cron, interval or rrule (got {config})")


def load_flow(entrypoint: str) -> Any:
    """The flow object of a module-path entrypoint (`package.module.function`)."""
    module, _, attribute = entrypoint.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def deployment_configs(path: Path | None = None) -> list[dict[str, Any]]:
    """The `deployments:` entries of prefect.yaml, as written there."""
    return list(yaml.safe_load((path or prefect_yaml()).read_text())["deployments"])


def deployment_config(name: str, path: Path | None = None) -> dict[str, Any]:
    """The prefect.yaml entry of deployment `name`."""
    for deployment in deployment_configs(path):
        if deployment["name"] == name:
            return deployment
    raise LookupError(f"prefect.yaml has no deployment named {name!r}")


def served_deployments(path: Path | None = None) -> list[RunnerDeployment]:
    """Every deployment of prefect.yaml, with its schedules, concurrency, tags and parameters."""
    served = []
    for deployment in deployment_configs(path):
        limit = deployment.get("concurrency_limit")
        served.append(
            RunnerDeployment.from_flow(
                load_flow(deployment["entrypoint"]),
                name=SERVED_DEPLOYMENT_NAME,
                description=deployment.get("description"),
                tags=deployment.get("tags"),
                parameters=deployment.get("parameters"),
                schedules=[to_schedule(s) for s in deployment.get("schedules") or []],
                concurrency_limit=(
                    ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit
                ),
                # Module paths, not file paths: the flows use relative imports inside the package.
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return served
