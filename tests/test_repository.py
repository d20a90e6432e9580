"""The repository keeps its promises to a new user: CI runs the README's own test line."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_line() -> str:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if re.search(r"&& python -m pytest", line)]
    assert len(lines) == 1, f"the README should give one test line, found {lines}"
    return lines[0].strip()


def test_ci_runs_the_readme_test_line_in_a_fresh_virtualenv() -> None:
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_test_line() in [line.strip() for line in script]
    assert any(re.match(r"python3? -m venv ", line) for line in script), "CI must make its own virtualenv"
