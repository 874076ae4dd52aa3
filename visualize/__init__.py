"""Diagrams of compiled graphs: Graphviz DOT, SVG/PNG/PDF, and Mermaid.

    visualize.to_dot(app)                      # DOT text, no Graphviz needed
    visualize.to_mermaid(app, thread_id="t1")  # Mermaid, with that thread's run highlighted
    visualize.render(app, "flow.svg")          # needs Graphviz's `dot` program

Reads the compiled graph (and the checkpointer, for a thread's run path); never changes them.
"""

from .dot import GraphvizNotFoundError, render, render_bytes, to_dot
from .mermaid import to_mermaid

__all__ = ["GraphvizNotFoundError", "render", "render_bytes", "to_dot", "to_mermaid"]
