"""Both packages import on their own, in either order; storage (`checkpoints`) is a leaf."""

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


def test_storage_is_a_leaf_it_loads_no_engine_module():
    """`checkpoints` imports nothing of the engine (nor networkx, which the compiler needs):
    storage keeps text, leases and fences; states, reducers and graphs are above it."""
    code = ("import sys, checkpoints, checkpoints.sqlite, checkpoints.memory, "
            "checkpoints.retention, checkpoints.rows, checkpoints.redaction\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('statemachine', 'networkx', 'visualize', 'pydantic'))\n"
            "print(loaded)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_storage_errors_are_the_ones_the_package_exports():
    import checkpoints.errors
    import statemachine

    for name in ("StateMachineError", "ThreadBusyError", "ThreadNotFoundError",
                 "CheckpointError", "StorageUnavailableError"):
        assert getattr(statemachine, name) is getattr(checkpoints.errors, name), name
    assert issubclass(statemachine.GraphValidationError, checkpoints.errors.StateMachineError)
