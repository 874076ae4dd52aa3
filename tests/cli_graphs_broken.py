"""A module that compiles an invalid graph at import time, as many applications do."""

from statemachine import START, StateGraph
from tests.cli_graphs import State, prepare

graph = StateGraph(State)
graph.add_node("a", prepare)
graph.add_edge(START, "a")
graph.add_edge("a", "nowhere")
app = graph.compile()  # raises GraphValidationError
