"""The two virtual nodes every graph has."""

from typing import Final

START: Final = "__start__"
"""Where every run begins: edges from START choose the first node(s)."""

END: Final = "__end__"
"""Where a branch stops: a run ends when no node is left to run."""
