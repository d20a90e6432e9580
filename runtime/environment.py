"""What a run ran on, for the records benchmarks, soak runs and exports keep: package versions, the CPU model and its int8 dot product."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable
from pathlib import Path


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
