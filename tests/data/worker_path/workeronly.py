"""A module only the clusters' worker processes can import (tests/test_runners.py puts this
directory on their path, not on the driver's): what a node returns or raises of these types
cannot be loaded in the driver."""


class WorkerOnlyError(Exception):
    pass


class WorkerOnlyValue:
    def __init__(self, n: int) -> None:
        self.n = n
