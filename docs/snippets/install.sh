python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python examples/quickstart.py
