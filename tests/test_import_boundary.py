"""The layout's one rule, read from the code: the runtime (`runtime/`, package `replyrank`) never
imports the build side (`replyrank.export`) or the benchmarks; the build commands reach the CLI
through entry points, and without the export extra they say how to install it."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("replyrank.export", "benchmarks")


def _imported_modules(path: Path) -> list[str]:
    """Every module `path` imports: import statements (relative ones resolved inside `replyrank`) and
    `importlib.import_module` / `__import__` / `spec_from_file_location` calls with a literal argument."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["replyrank", *([base] if base else [])])
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Call):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in ("import_module", "__import__", "spec_from_file_location", "run_path"):
                names += [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    return names


def test_the_runtime_imports_neither_the_build_side_nor_the_benchmarks():
    files = sorted((ROOT / "runtime").glob("*.py"))
    assert len(files) > 5
    found = {
        f"{path.name}: {name}"
        for path in files
        for name in _imported_modules(path)
        if any(name == f or name.startswith(f + ".") or "benchmarks" in name for f in FORBIDDEN)
    }
    assert not found, f"the runtime imports the build side: {sorted(found)}"


def test_the_import_reader_sees_what_it_must(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from .export import cli\nimport replyrank.export.train\nimport importlib\n"
        "importlib.import_module('replyrank.export')\nspec_from_file_location('x', 'benchmarks/bench.py')\n"
    )
    names = _imported_modules(probe)
    assert {"replyrank.export.cli", "replyrank.export.train", "replyrank.export", "benchmarks/bench.py"} <= set(names)


def test_every_build_command_is_an_entry_point_of_its_own_name():
    pytest.importorskip("torch")
    entries = {e.name: e for e in importlib.metadata.entry_points(group="replyrank.commands")}
    assert set(entries) == {"export", "build-default", "train", "bench"}, "reinstall: pip install -e ."
    for name, entry in entries.items():
        assert entry.module == "replyrank.export.cli" and entry.load().name == name


def _cli_without_torch(args: list[str]) -> subprocess.CompletedProcess:
    # sys.modules[name] = None makes both `import torch` and find_spec("torch") fail, as without the extra
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from replyrank.cli import main\n"
        f"main({args!r}, prog_name='replyrank')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("args", [["export", "--help"], ["train", "generator", "--help"], ["build-default"], ["bench"]])
def test_without_the_extra_a_build_command_names_the_install_command(args):
    run = _cli_without_torch(args)
    assert run.returncode == 1, run.stderr
    assert "pip install torch==2.13.0 'replyrank[export]'" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_listing_the_commands_never_imports_torch():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom replyrank.cli import main\n"
        "out = CliRunner().invoke(main, ['--help']).output\n"
        "assert 'export' in out and 'build-default' in out and 'train' in out, out\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "Usage" in _cli_without_torch(["--help"]).stdout


def test_no_test_imports_a_private_name_or_conftest():
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
                found += [f"{path.name}: {alias.name}" for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            private = [m for m in modules if m != "__future__" and any(part.startswith("_") for part in m.split("."))]
            found += [f"{path.name}: {m}" for m in modules if m.split(".")[0] == "conftest"] + [f"{path.name}: {m}" for m in private]
    assert not found, found
