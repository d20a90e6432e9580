"""Paths in a committed result, written so that they name no machine's folders.

Results are read on other machines and checked in (tests/test_repository.py fails on an absolute
machine path in a tracked file), so every benchmark passes what it writes through `portable`:
the checkout becomes a relative path, the Python environment `<prefix>`, the temporary folder
`$TMPDIR` and the home folder `~`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

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
