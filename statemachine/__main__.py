"""`python -m statemachine ...`: the command line (see `statemachine.cli`)."""

from statemachine.cli import module_main

if __name__ == "__main__":
    module_main()
