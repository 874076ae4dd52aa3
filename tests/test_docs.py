"""The documentation site is tested code: it builds with `mkdocs build --strict` (a broken
link, a missing include or a stale reference fails), its own scripts (docs/snippets/) run, and
every Python block on its pages is either included from a tested file (`--8<--`) or run here,
in order, after the setup its page assumes (PRELUDES: the `g`, `app` or `State` the prose
talks about)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
INCLUDE = "--8<--"

COMMON = '''
import asyncio
import operator
from typing import Annotated

from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, Command, RetryPolicy, RunContext, StateGraph
from statemachine.messages import Message


class State(BaseModel):
    count: int = 0
    log: Annotated[list[str], operator.add] = []


def work(state):
    return {"count": state.count + 1}


g = StateGraph(State)
g.add_node("work", work)
g.add_edge(START, "work")
g.add_edge("work", END)
app = g.compile(checkpointer=MemoryCheckpointer())
inp = {"count": 0}
'''

PRELUDES: dict[tuple[str, int], str] = {
    ("concepts/checkpoints.md", 1): '''
from pydantic import BaseModel
from statemachine import StateGraph

class State(BaseModel):
    total: int = 0
    price_cents: int = 0
''',
    ("concepts/compensation.md", 0): COMMON + '''
def charge(state):
    return {"log": ["charged"]}

def refund(state):
    return {"log": ["refunded"]}

def ship(state):
    raise RuntimeError("the carrier is down")

failing = StateGraph(State)
failing.add_node("charge", charge, compensate=refund)
failing.add_node("ship", ship)
failing.add_edge(START, "charge")
failing.add_edge("charge", "ship")
failing.add_edge("ship", END)
saver = MemoryCheckpointer()
app = failing.compile(checkpointer=saver)
try:
    app.invoke({}, thread_id="order-7")
except RuntimeError:
    pass
g = StateGraph(State)           # the graph the block declares its node on
g.add_edge(START, "charge")
g.add_edge("charge", END)
''',
    ("concepts/pauses.md", 0): COMMON + '''
from statemachine import wait_for

class Order(BaseModel):
    id: int = 0
    approved: bool = False

pausing = StateGraph(Order)
pausing.add_node("approve", lambda state: approve(state))  # the block defines approve
pausing.add_edge(START, "approve")
pausing.add_edge("approve", END)
app = pausing.compile(checkpointer=MemoryCheckpointer())
order = {"id": 7}
''',
    ("concepts/pauses.md", 1): COMMON + '''
from statemachine import interrupt

class Draft(BaseModel):
    draft: str = "a reply"
    approved: bool = False

asking = StateGraph(Draft)
asking.add_node("review", lambda state: review(state))  # the block defines review
asking.add_edge(START, "review")
asking.add_edge("review", END)
app = asking.compile(checkpointer=MemoryCheckpointer())
inp = {}
''',
    ("concepts/queue.md", 0): COMMON + '''
class Order(BaseModel):
    order_id: int = 0

g = StateGraph(Order)
g.add_node("work", lambda state: {})
g.add_edge(START, "work")
g.add_edge("work", END)
''',
    ("concepts/toolkit.md", 0): COMMON + '''
def fetch(state):
    return {"count": 1}

g = StateGraph(State)
g.add_edge(START, "fetch")
g.add_edge("fetch", END)
''',
    ("concepts/toolkit.md", 1): COMMON + '''
class FakeModel:
    async def stream(self, messages):
        for token in ("Hel", "lo"):
            yield token

llm = FakeModel()
text = "Hello"
''',
    ("concepts/toolkit.md", 2): COMMON + '''
class Deps(BaseModel):
    user_id: str
    model: str = "small"
''',
    ("concepts/toolkit.md", 3): COMMON + '''
m = Message(role="user", content="hi", id="m1")
''',
    ("concepts/toolkit.md", 4): COMMON + '''
def my_embed(texts):
    return [[float(len(text) % 7)] + [0.0] * 383 for text in texts]
''',
    ("get-started/diagram.md", 0): COMMON + '''
app.invoke(inp, thread_id="order-42")
''',
    ("how-to/property-testing.md", 0): '''
from pydantic import BaseModel
from statemachine import END, START, StateGraph

class State(BaseModel):
    count: int = 0

def step(state):
    return {"count": state.count + 1}

def again(state):
    return "done" if state.count >= 3 else "again"

g = StateGraph(State)
g.add_node("step", step)
g.add_edge(START, "step")
g.add_conditional_edges("step", again, {"again": "step", "done": END})
app = g.compile()
''',
    ("retention.md", 1): COMMON + '''
from checkpoints.base import Removed

first = SQLiteCheckpointer("runs.db")  # the thread the block prunes, again
g.compile(checkpointer=first).invoke(inp, thread_id="order-42")
first.close()
''',
    ("retention.md", 0): COMMON + '''
from checkpoints.base import Removed

graph = g
first = SQLiteCheckpointer("runs.db")
g.compile(checkpointer=first).invoke(inp, thread_id="order-42")
first.close()
''',
}
"""Setup run before a block, by (page, index of the block among the page's own blocks); a
page's first block gets COMMON unless it has its own, and later blocks without one continue
in the namespace of the page's previous block."""


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "snippets" not in p.parts)


def own_blocks(page: Path) -> list[str]:
    """The page's Python blocks that are not included from a file."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    return [block for block in blocks if not block.strip().startswith(INCLUDE)]


PAGES_WITH_CODE = [p for p in pages() if own_blocks(p)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_on_a_page_runs(page, tmp_path, monkeypatch, request):
    name = str(page.relative_to(DOCS))
    blocks = own_blocks(page)
    if any(key[0] == name and key[1] >= len(blocks) for key in PRELUDES):
        pytest.fail(f"a prelude of {name} names a block it no longer has")
    monkeypatch.chdir(tmp_path)
    if name == "concepts/queue.md":  # the page reads the server from DATABASE_URL
        monkeypatch.setenv("DATABASE_URL", _fresh_database(request.getfixturevalue(
            "postgres_dsn")))
    namespace: dict = {"__name__": f"docs_{name}"}
    for index, block in enumerate(blocks):
        prelude = PRELUDES.get((name, index), COMMON if index == 0 else None)
        if prelude is not None:
            namespace = {"__name__": f"docs_{name}"}
            exec(compile(prelude, f"<prelude of {name} block {index}>", "exec",
                         dont_inherit=True), namespace)
        try:
            exec(compile(block, f"<{name} block {index}>", "exec", dont_inherit=True),
                 namespace)
        except Exception as exc:
            pytest.fail(f"{name}, Python block {index} (of {len(blocks)}) fails: "
                        f"{type(exc).__name__}: {exc}\n{block}")
    for closer in ("saver", "store"):
        obj = namespace.get(closer)
        if hasattr(obj, "close"):
            obj.close()


def _fresh_database(dsn: str) -> str:
    """A database of its own on the test server (the page uses the default schema)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"docs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return make_conninfo(**{**conninfo_to_dict(dsn), "dbname": name})


@pytest.mark.parametrize("script", sorted((DOCS / "snippets").glob("*.py")), ids=lambda p: p.name)
def test_the_docs_scripts_run(script, tmp_path):
    ran = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert ran.returncode == 0, ran.stderr


PAGES_SHOWING_OUTPUT = [p for p in pages() if re.search(r"` prints:\n\n```text", p.read_text())]


@pytest.mark.parametrize("page", PAGES_SHOWING_OUTPUT, ids=lambda p: str(p.relative_to(DOCS)))
def test_what_a_page_says_an_example_prints_is_what_it_prints(page, tmp_path):
    """"`python examples/x.py` prints:" and a text block: run it, compare."""
    text = page.read_text()
    for script, shown in re.findall(r"`python (examples/\w+\.py)` prints:\n\n```text\n(.*?)```",
                                    text, re.S):
        ran = subprocess.run([sys.executable, str(ROOT / script)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == shown, f"{page.name}: {script}"


def test_the_history_the_resume_page_shows_is_what_the_command_prints(tmp_path):
    """get-started/resume.md shows `statemachine history` after the checkout's failed run."""
    page = (DOCS / "get-started" / "resume.md").read_text()
    shown = re.search(r"```text\n(.*?)```", page, re.S)[1].splitlines()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    run = [sys.executable, "-m", "statemachine", "run", "examples.resume_after_crash:graph",
           "--input", '{"order_id": "1", "items": ["lamp"], "total": 20}', "--db", "runs.db",
           "--thread", "order-1"]
    failed = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**env, "PAYMENT_GATEWAY_DOWN": "1"})
    assert failed.returncode == 1, failed.stderr
    printed = subprocess.run([sys.executable, "-m", "statemachine", "history", "--db",
                              "runs.db", "--thread", "order-1"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, env=env).stdout

    def cells(line: str) -> list[str]:  # the columns but the time
        return re.split(r"\s{2,}", line.strip())[:6]

    rows = [cells(line) for line in printed.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert rows == [cells(line) for line in shown[1:]]
    assert cells(shown[0]) == ["id", "step", "kind", "nodes", "status", "next"]


def test_the_site_builds_strictly_and_lists_every_problem_code(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    ran = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                          str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    from statemachine.errors import PROBLEM_CODES

    errors_page = (site / "reference" / "errors" / "index.html").read_text()
    listed = re.findall(r"<li><code>([a-z_]+)</code></li>", errors_page)
    assert listed == list(PROBLEM_CODES)
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    assert "statemachine resume" in cli_page and "--db" in cli_page
    assert (site / "assets" / "quickstart.svg").exists()  # the examples' diagrams are served
    _every_public_name_is_documented(site)


def _every_public_name_is_documented(site: Path) -> None:
    """Each name in a public package's `__all__` has an entry in the API or errors page."""
    import importlib

    pages = "".join((site / "reference" / name / "index.html").read_text()
                    for name in ("api", "errors"))
    anchors = set(re.findall(r'id="([A-Za-z_.]+)"', pages))
    for package in ("statemachine", "statemachine.reducers", "statemachine.messages",
                    "statemachine.runners", "statemachine.testing", "checkpoints",
                    "visualize"):
        module = importlib.import_module(package)
        missing = [name for name in module.__all__
                   if not any(a == f"{package}.{name}" or a.endswith(f".{name}")
                              for a in anchors)]
        assert missing == [], f"{package}: not in the API reference: {missing}"


def test_every_included_file_is_tested_code():
    """What pages include comes from examples/ (run by test_examples.py), docs/snippets/
    (run above) or a few documents that hold no code of their own."""
    allowed = ("examples/", "docs/snippets/")
    for page in pages():
        for path in re.findall(rf'{INCLUDE} "([^"]+)"', page.read_text()):
            assert path.startswith(allowed), f"{page.relative_to(DOCS)} includes {path}"
            assert (ROOT / path.split(":")[0]).exists(), path


# -- command lines shown on the pages --------------------------------------------------------

def _shown_command_lines() -> list[tuple[str, str]]:
    """(page, line) for every `statemachine ...` line in a bash block of the docs or the
    README, with its trailing comment and its [optional parts] taken off."""
    found = []
    for page in [*pages(), ROOT / "README.md", ROOT / "CONTRIBUTING.md"]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                line = re.sub(r"\s{2,}#.*$", "", line).strip()
                words = line.split()
                while words and "=" in words[0]:
                    words.pop(0)
                if words and words[0] == "statemachine":
                    found.append((page.name, re.sub(r"\s*\[[^\]]*\]", "", " ".join(words))))
    return found


@pytest.mark.parametrize("page,line", _shown_command_lines())
def test_every_command_line_shown_parses_with_todays_options(page, line):
    """A command or option renamed since the page was written fails here: each line is
    parsed by the real command (not run: some need a server or a cluster)."""
    import shlex

    import click

    from statemachine.cli.main import cli

    words = shlex.split(line)[1:]
    command: click.Command = cli
    context = click.Context(cli, info_name="statemachine")
    while isinstance(command, click.Group):  # the shown lines give groups no options
        name, *words = words
        sub = command.get_command(context, name)
        assert sub is not None, f"{page}: no command {name!r} in {line!r}"
        command = sub
        context = click.Context(sub, info_name=name, parent=context)
    command.make_context(context.info_name, list(words), parent=context.parent)
