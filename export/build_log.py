"""A build's third-party output goes to a log file; the terminal shows replyrank's progress bars and notes.

ONNX Runtime's MatMulNBits quantizer sets Python's root logger to INFO when it is imported and
logs every MatMul it quantizes; onnxruntime-genai's model builder prints a line for each layer it
reads and each tensor it saves; torch's and optimum's exporters warn. A user waiting for a bundle
needs none of it, and a user whose build failed needs all of it. So while a build runs, file
descriptors 1 and 2 (where Python's prints, logging and warnings and the C++ libraries' messages
all end up), `sys.stdout`, `sys.stderr` and the root logger write to the log; replyrank's own
progress bars and notes go to `terminal()`, a copy of the stderr the build started with.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from replyrank.errors import ReplyrankError

from .convert import ExportError

LOG = "build.log"  # in the bundle folder, beside the manifest (the manifest does not list it)

_active: list[tuple[TextIO, Path]] = []  # (terminal, log) of the build under way


def terminal() -> TextIO:
    """Where replyrank's progress bars and notes go: the terminal's stderr, even while a build log holds fd 2."""
    return _active[-1][0] if _active else sys.stderr


def note(message: str) -> None:
    """A line on the terminal that a progress bar being drawn there does not break (tqdm.write clears and redraws it)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=terminal())


def pending_log(out: Path) -> Path:
    """Where a build into `out` logs until the bundle is in place (then OUT/build.log): beside `out`, so a failed build's log stays."""
    return out.with_name(f"{out.name}.{LOG}")


@contextlib.contextmanager
def build_log(out: Path) -> Iterator[Path]:
    """Run a build into the bundle folder `out` with third-party output in its log; yields the log's path.

    On success the log moves into `out`; on failure it stays beside `out`, and the failure is raised
    as an ExportError that names it (the traceback is in the log). A build inside another one (the
    default build's export) writes to the outer build's log.
    """
    if _active:
        yield _active[-1][1]
        return
    path = pending_log(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "w", encoding="utf-8", buffering=1)
    except OSError as error:
        raise ExportError(f"cannot write to {out.parent} ({error.strerror}); choose a writable --out folder") from None
    with log:
        try:
            with _redirected(log, path):
                yield path
        except Exception as error:
            traceback.print_exc(file=log)
            what = str(error) if isinstance(error, ReplyrankError) else f"the build failed ({type(error).__name__}: {error})"
            raise ExportError(f"{what}; the build's log: {path}") from error
    if out.is_dir():
        path.replace(out / LOG)


def _terminal_copy() -> tuple[TextIO, bool]:
    """(a stream to what stderr is now, whether it is a new one to close): a duplicate of fd 2 where `sys.stderr` writes
    there, else `sys.stderr` itself (a test runner's capture), which pointing fd 2 elsewhere does not move."""
    try:
        on_fd_2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: a stream with no file descriptor
        on_fd_2 = False
    if not on_fd_2:
        return sys.stderr, False
    sys.stderr.flush()
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return open(os.dup(2), "w", encoding=encoding, errors="backslashreplace", buffering=1), True


@contextlib.contextmanager
def _redirected(log: TextIO, path: Path) -> Iterator[None]:
    shown, owned = _terminal_copy()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    _active.append((shown, path))
    try:
        for fd in saved:
            os.dup2(log.fileno(), fd)
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        _active.pop()
        log.flush()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # what C libraries buffered, before their descriptors change back
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        root.handlers = handlers
        root.setLevel(level)
        if owned:
            shown.close()
