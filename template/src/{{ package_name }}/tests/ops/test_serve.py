"""`serve` serves what prefect.yaml deploys: the same flows, schedules, concurrency and tags."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with Prefect, without stubs
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from typer.testing import CliRunner

from ...namespace import PROJECT_TAG, SERVED_DEPLOYMENT_NAME, flow_name
from ...ops import cli
from ...ops.serve import prefect_yaml, served_deployments, to_schedule


def deployed() -> list[dict[str, Any]]:
    config: list[dict[str, Any]] = yaml.safe_load(prefect_yaml().read_text())["deployments"]
    return config


def test_every_deployment_of_prefect_yaml_is_served_with_its_schedules_and_limits() -> None:
    served = {d.entrypoint: d for d in served_deployments()}
    assert set(served) == {d["entrypoint"] for d in deployed()}
    for deployment in deployed():
        local = served[deployment["entrypoint"]]
        assert local.name == SERVED_DEPLOYMENT_NAME
        # Served as `<project>-answer-inbound/local` beside the deployed
        # `<project>-answer-inbound/answer-inbound`: each deployment is named after its flow.
        assert local.flow_name == flow_name(deployment["name"])
        assert PROJECT_TAG in deployment["tags"]
        assert local.tags == deployment.get("tags", [])
        assert local.concurrency_limit == deployment.get("concurrency_limit")
        wanted = deployment.get("schedules") or []
        assert len(local.schedules or []) == len(wanted)
        for schedule, config in zip(local.schedules or [], wanted, strict=True):
            if "cron" in config:
                assert isinstance(schedule.schedule, CronSchedule)
                assert schedule.schedule.cron == config["cron"]
                assert schedule.schedule.timezone == config.get("timezone", "UTC")
            else:
                assert isinstance(schedule.schedule, IntervalSchedule)
                assert schedule.schedule.interval == timedelta(seconds=config["interval"])


def test_a_schedule_without_a_kind_is_refused_with_the_kinds() -> None:
    with pytest.raises(ValueError, match="cron, interval or rrule"):
        to_schedule({"timezone": "UTC"})


def test_the_serve_command_serves_exactly_these_deployments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefect

    captured: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments, **_: captured.extend(deployments))
    result = CliRunner().invoke(cli.app, ["serve"])
    assert result.exit_code == 0, result.output
    expected = served_deployments()
    assert [(d.flow_name, d.name, d.concurrency_limit) for d in captured] == [
        (d.flow_name, d.name, d.concurrency_limit) for d in expected
    ]
    assert [schedules(d.schedules) for d in captured] == [schedules(d.schedules) for d in expected]


def schedules(deployment_schedules: list[Any] | None) -> list[tuple[Any, ...]]:
    """What a schedule fires on (an interval's anchor is the time it was built: left out)."""
    return [
        (getattr(s.schedule, "cron", None), getattr(s.schedule, "interval", None), s.active)
        for s in deployment_schedules or []
    ]
