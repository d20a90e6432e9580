"""A build's third-party output goes to its log (export.build_log), replyrank's own lines to the terminal, and a failed
build's error names the log."""

from __future__ import annotations

import logging
import os

import pytest

from replyrank.export import ExportError
from replyrank.export.build_log import build_log, terminal


def test_what_libraries_print_goes_to_the_log_and_replyranks_notes_to_the_terminal(tmp_path, capfd):
    out = tmp_path / "bundle"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with build_log(out) as log:
        print("a library's print")
        os.write(1, b"a C library's stdout\n")
        os.write(2, b"a C library's stderr\n")
        logging.getLogger("onnxruntime.quantization").info("a library's INFO")
        print("replyrank's note", file=terminal())
        with build_log(out) as inner:  # the default build's export, inside it
            print("an inner build's print")
        assert inner == log == tmp_path / "bundle.build.log"
        out.mkdir()  # the bundle, moved into place
    text = (out / "build.log").read_text()
    for line in ("a library's print", "a C library's stdout", "a C library's stderr", "a library's INFO", "an inner build's print"):
        assert line in text
    assert "replyrank's note" not in text and not log.exists()
    captured = capfd.readouterr()
    assert captured.err.strip() == "replyrank's note" and captured.out == ""
    assert (root.handlers, root.level) == (handlers, level) and terminal() is not None


def test_a_failed_build_names_its_log_which_holds_the_traceback(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=r"the build failed \(RuntimeError: boom\); the build's log: .*bundle\.build\.log$"):
        with build_log(out):
            print("what the library said before it failed")
            raise RuntimeError("boom")
    text = (tmp_path / "bundle.build.log").read_text()
    assert "what the library said before it failed" in text and "Traceback" in text and "RuntimeError: boom" in text
    assert not out.exists()
    with pytest.raises(ExportError, match=r"^no such model; the build's log: "):  # replyrank's own errors keep their message
        with build_log(out):
            raise ExportError("no such model")


def test_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot write to"):
        with build_log(blocker / "bundle"):
            pass
