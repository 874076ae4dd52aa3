"""The README: its two set-up commands are the ones CI and new users run, its quick start
prints what it says, it stays short and its links lead somewhere; the command line page's
run-then-resume example works as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    demo, tests = setup_commands()
    assert demo.endswith("examples/quickstart.py")
    assert tests.endswith("-m pytest")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd ", "export CI="))]
    assert ci == [tests]


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_quick_start_prints_what_the_readme_says(tmp_path):
    import subprocess
    import sys

    quick = section("Quick start")
    code = re.search(r"```python\n(.*?)```", quick, re.S)[1]
    shown = re.search(r"prints\n\n```text\n(.*?)```", quick, re.S)[1]
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == shown


def test_every_file_the_readme_links_to_exists():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links to its docs"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []
    assert len(text.splitlines()) <= 200  # a first visit's worth; the rest is in docs/


def test_the_command_line_run_and_resume_pair_works_as_written(tmp_path):
    """The command-line page's `run` (gateway down) then `resume` of resume_after_crash, run
    verbatim from an empty directory, with `statemachine` as `python -m statemachine`."""
    import os
    import shlex
    import subprocess
    import sys

    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    block = re.search(r"```bash\n(.*?)```", page, re.S)[1]
    lines = [line.split("   #")[0].strip() for line in block.splitlines()
             if "examples.resume_after_crash:graph" in line
             and (" run " in line or line.startswith("statemachine resume"))]
    assert len(lines) == 2, lines
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    codes = []
    for line in lines:
        words = shlex.split(line)
        extra = {}
        while "=" in words[0]:
            name, value = words.pop(0).split("=", 1)
            extra[name] = value
        assert words[0] == "statemachine"
        ran = subprocess.run([sys.executable, "-m", "statemachine", *words[1:]], cwd=tmp_path,
                             env={**env, **extra}, capture_output=True, text=True, timeout=60)
        codes.append(ran.returncode)
        if ran.returncode == 0:
            assert '"tracking": "trk-1"' in ran.stdout
        else:
            assert "payment gateway unreachable" in ran.stderr
    assert codes == [1, 0]
