"""A module that fails while it is imported (a bug in user code, not in the graph)."""

SETTINGS = {"region": "eu"}
endpoint = SETTINGS["endpoint"]  # KeyError at import time
