"""The suspend, fan-out and liveness tests of a generated project, N times in a row, beside a CPU
burner: a race that loses once in N runs shows here, not in CI.

Prints one line per round (passed/failed, seconds, the failing tests) and a summary; exits 1 if
any round failed.

    uv run python bench/suspend_stress.py [--rounds 20] [--burners 2] [--project DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import installed_project

#: The generated tests whose failure would be a lost or duplicated resume.
TESTS = ("oversight/test_approvals.py", "flows/test_liveness.py")


def burn() -> None:
    """Keep one core busy until terminated."""
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burners", type=int, default=2, help="busy processes (one per core)")
    parser.add_argument("--project", type=Path, help="an installed render to reuse")
    parser.add_argument("-k", dest="keyword", help="only the tests matching this pytest -k")
    args = parser.parse_args()
    project = installed_project(args.project)
    package = next(p for p in (project / "src").iterdir() if (p / "tests").is_dir())
    command = [
        str(project / ".venv" / "bin" / "pytest"),
        "-q",
        "-p",
        "no:cacheprovider",
        *(str(package / "tests" / name) for name in TESTS),
        *(["-k", args.keyword] if args.keyword else []),
    ]
    print(f"project: {project}\ncommand: {' '.join(command)}\nburners: {args.burners}")
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
    for burner in burners:
        burner.start()
    failed_rounds = 0
    try:
        for round_ in range(1, args.rounds + 1):
            started = time.monotonic()
            result = subprocess.run(command, cwd=project, capture_output=True, text=True)
            seconds = time.monotonic() - started
            lines = result.stdout.splitlines()
            summary = lines[-1] if lines else "(no output)"
            failures = [line for line in lines if line.startswith("FAILED")]
            if result.returncode != 0:
                failed_rounds += 1
                log = project / f"suspend-stress-round-{round_}.log"
                log.write_text(result.stdout + result.stderr)
                failures.append(f"(output: {log})")
            mark = "passed" if result.returncode == 0 else "FAILED"
            print(f"round {round_:2d}: {mark} in {seconds:5.0f} s  {summary}", flush=True)
            for failure in failures:
                print(f"          {failure}", flush=True)
    finally:
        for burner in burners:
            burner.terminate()
    print(f"{args.rounds - failed_rounds} of {args.rounds} rounds passed, {failed_rounds} failed")
    return 1 if failed_rounds else 0


if __name__ == "__main__":
    sys.exit(main())
