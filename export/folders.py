"""Folders written whole or not at all: built in a staging folder beside the target, then swapped into place.

An export or a training run that dies half-way leaves a hidden `.NAME.partial-*` folder beside
`out`, never a half-written `out`; a finished one replaces the previous `out` in one step where
Linux allows it (renameat2 RENAME_EXCHANGE).
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) == 0
    except (AttributeError, OSError):
        return False


def move_into_place(staging: Path, out: Path) -> None:
    """Swap a finished folder into `out`; at no moment is there no whole bundle at `out`."""
    if not out.exists():
        staging.rename(out)
        return
    if _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the previous bundle
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")  # elsewhere: two renames, a brief gap
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
