"""Facts about the machine and the install, each computed in one place: usable cores, installed and
missing packages, the CPU model and its int8 dot product; and the one atomic file writer."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def missing_package(names: Iterable[str]) -> str | None:
    """The first of `names` that cannot be imported, or None; nothing is imported to find out."""
    for name in names:
        try:
            if sys.modules.get(name, False) is None or importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            return name
    return None


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through `write(tmp)` beside `path`, then rename: readers (and a restart) see the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is not installed."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def int8_dot_product() -> bool | None:
    """Whether the x86 CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI; Linux: /proc/cpuinfo), None where unknown.

    Without them ONNX Runtime's u8 x s8 GEMM (DynamicQuantizeMatMul) sums pairs of products in 16 bits, which can
    saturate (its docs recommend 7-bit weights there); with them, and on ARM's dot products, it does not.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return bool(flags & {"avx512_vnni", "avx_vnni"})
    except OSError:
        pass
    return None
