"""`python -m <package>`: the project's command line (`ops/cli.py`), as the script is."""

from .ops.cli import app

app()
