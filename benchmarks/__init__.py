"""Benchmarks of the statemachine engine (`python -m benchmarks`)."""
