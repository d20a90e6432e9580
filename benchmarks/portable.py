"""What a committed result says about where it came from: the commit, and paths that name no machine's folders.

Results are read on other machines and checked in (tests/test_repository.py fails on an absolute
machine path in a tracked file), so every benchmark passes what it writes through `portable`:
the checkout becomes a relative path, the Python environment `<prefix>`, the temporary folder
`$TMPDIR` and the home folder `~`. `checkout` names the commit measured and the files that
differ from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[1]


def _prefixes() -> list[tuple[str, str]]:
    places = [(CHECKOUT, ""), (Path(sys.prefix), "<prefix>/"), (Path(sys.base_prefix), "<prefix>/"),
              (Path(tempfile.gettempdir()), "$TMPDIR/"), (Path.home(), "~/")]
    found = {}
    for place, name in places:
        for spelling in {str(place), os.path.realpath(place)}:
            if spelling != os.sep:
                found.setdefault(spelling.rstrip(os.sep) + os.sep, name)
    # the longest first: the checkout or an environment may sit inside the home folder
    return sorted(found.items(), key=lambda item: -len(item[0]))


def portable(text: str) -> str:
    """`text` with every path under the checkout, the Python prefix, the temporary folder or home written relatively."""
    for prefix, name in _prefixes():
        text = text.replace(prefix, name)
    return text


def checkout() -> dict[str, Any]:
    """The commit measured, and the files of the package and the benchmark that differ from it (a shared tree may hold edits)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "runtime", "export", "benchmarks", "pyproject.toml").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "uncommitted": sorted(line[3:] for line in changed)}
