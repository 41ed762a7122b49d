"""Schema fuzzing of the fake MultiMail (schemathesis against its /v1/openapi.json): whatever a
client sends, the fake answers like an API, never with a 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.parametrize(
    "scopes", [["read", "send", "admin"], ["oversight", "read"]], ids=["agent", "operator"]
)
def test_fuzzing_the_openapi_schema_finds_no_server_error(
    fake_url: str, scopes: list[str], tmp_path: Path
) -> None:
    key = httpx.post(f"{fake_url}/_fake/keys", json={"scopes": scopes}).json()["api_key"]
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{fake_url}/v1/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            "15",
            "--generation-deterministic",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,  # schemathesis keeps its example database in the working directory
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts, result.stdout[-2000:]
    generated, passed = int(counts[1]), int(counts[2])
    assert passed == generated
    assert generated >= 200  # every operation of the schema was really exercised
