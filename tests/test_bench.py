"""The benchmark's own arithmetic: the bandwidth floor, the bytes a decode step reads, the time inside the kernels."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench import decode_floor  # noqa: E402
from systems.common import KernelClock, StepBytes, onnx_step_bytes  # noqa: E402


def test_floor_is_weights_plus_the_prompts_cache_once_and_each_rows_new_tokens_over_bandwidth():
    floor = decode_floor({"weights": 100_000_000, "kv_per_token": 1_000, "how": "x"}, prompt_tokens=90, t=20, ns=[1, 8], bandwidth_gbs=10.0)
    assert floor["kv_cache_prompt_bytes"] == 90_000 and floor["kv_cache_bytes_per_candidate"] == 10_000  # 20 / 2 tokens
    assert floor["floor_ms_per_step"]["1"] == pytest.approx((100e6 + 90e3 + 10e3) / 10e9 * 1e3)
    assert floor["floor_ms_per_step"]["8"] == pytest.approx((100e6 + 90e3 + 8 * 10e3) / 10e9 * 1e3)


def test_onnx_step_bytes_leave_out_the_gathered_embedding(llama_bundle):
    import onnx

    folder = Path(llama_bundle) / "generator"
    found = onnx_step_bytes(folder)
    files = sum(p.stat().st_size for p in folder.glob("model.onnx*"))
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    past = [i for i in model.graph.input if i.name.startswith("past_key_values.")]
    dims = past[0].type.tensor_type.shape.dim
    assert isinstance(found, StepBytes) and 0 < found.weights < files
    assert found.kv_per_token == len(past) * dims[1].dim_value * dims[3].dim_value * 4


def test_kernel_clock_counts_only_the_wrapped_calls():
    clock = KernelClock()
    nap = clock.wrap(lambda seconds: time.sleep(seconds) or "done")
    assert nap(0.02) == "done"
    time.sleep(0.02)  # not wrapped: outside the kernels
    assert 0.015 < clock.seconds < 0.035
