"""The codebase stays ruff clean and its type hints hold (both configured in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_reports_no_problems():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed; install the dev extra: pip install -e '.[dev]'")
    result = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_reports_no_problems():
    """The library's type hints are checked ([tool.mypy] in pyproject.toml): an annotation
    that lies fails here, in CI, not in a user's editor."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    if "No module named mypy" in result.stderr:
        pytest.fail("mypy is not installed; install the dev extra: pip install -e '.[dev]'")
    assert result.returncode == 0, result.stdout + result.stderr
