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


# An absolute path of a machine: a home folder, this project's work folder, pytest's temporary
# folders, a package index mirror, an interpreter's library. It must start a path (after a space, a
# quote, a bracket, `=`, `:` or `,`, or a file URL's slashes), so that a relative `runs/work/x`,
# `~/.cache`, `$TMPDIR/x` or `<prefix>/lib` is not one.
MACHINE_PATH = re.compile(
    r"(?:^|(?<=[\s\"'`(\[{=:,])|file://)"
    r"/(?:tmp/pytest-of-|(?:work|root|home/[\w.-]+|Users/[\w.-]+|opt|private/var/folders|usr/(?:local/)?lib/python[\d.]*)(?=[/\s\"'`)\]},:]|$))",
    re.MULTILINE,
)


def tracked_text_files() -> list[Path]:
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    files = [ROOT / name.decode() for name in listed if name]
    return [path for path in files if path.is_file() and b"\0" not in path.read_bytes()[:8192]]  # skip binaries and deleted files


def test_no_tracked_file_holds_an_absolute_machine_path() -> None:
    import pytest

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    leaks = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in MACHINE_PATH.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            leaks.append(f"{path.relative_to(ROOT)}:{line}: {text[match.start():match.start() + 60].splitlines()[0]}")
    assert not leaks, "absolute machine paths in tracked files (write them relative, or as ~ or $TMPDIR):\n" + "\n".join(leaks)
