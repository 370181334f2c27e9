"""Every example under examples/ runs to completion (exit code 0)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
# Examples that need a service get its URL from the test environment (see tests/conftest.py).
SERVICE_EXAMPLES = {"postgres_simple.py", "automated_migration.py", "custom_migrations.py"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if path.name in SERVICE_EXAMPLES:
        env["DATABASE_URL"] = request.getfixturevalue("postgres_dsn")
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
