"""Both packages import on their own, in either order (they depend on each other's leaves)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("statement", [
    "import checkpoints; import statemachine",
    "import statemachine; import checkpoints",
    "from checkpoints import SQLiteCheckpointer, MemoryCheckpointer",
    "from statemachine import StateGraph, START, END, StateMachineError, GraphValidationError, "
    "InvalidUpdateError, InvalidRouteError, StepLimitError, ThreadBusyError, ThreadNotFoundError",
])
def test_public_names_import_in_a_fresh_interpreter(statement):
    result = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
