"""The codebase stays ruff clean and its type hints hold (both configured in pyproject.toml)."""

import re
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


def test_the_pre_commit_configuration_is_valid_and_runs_what_ci_checks():
    """`pre-commit install` (CONTRIBUTING.md) runs ruff and mypy before each commit: the same
    tools and settings as the two tests above."""
    pre_commit = shutil.which("pre-commit") or str(Path(sys.executable).with_name("pre-commit"))
    if not Path(pre_commit).exists():
        pytest.fail("pre-commit is not installed; install the dev extra: pip install -e '.[dev]'")
    config = ROOT / ".pre-commit-config.yaml"
    result = subprocess.run([pre_commit, "validate-config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    entries = re.findall(r"^\s+entry: (\S+)", config.read_text(), re.M)
    assert entries == ["ruff", "mypy"]


def test_the_version_is_written_in_one_place():
    """pyproject.toml says it; the package and the command line read it from there."""
    import statemachine

    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared and statemachine.__version__ == declared[1]
    assert "__version__ =" not in (ROOT / "statemachine" / "__init__.py").read_text().split(
        "try:")[0]  # never a literal: the package reads the installed metadata
    others = [p for p in (ROOT / "statemachine").rglob("*.py")
              if re.search(rf'["\']{re.escape(declared[1])}["\']', p.read_text())]
    assert others == []
