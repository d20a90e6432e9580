"""The benchmark's own arithmetic: the bandwidth floor, the bytes a decode step reads, the time inside the kernels, and the
interleaved passes that make a ratio of two systems hold on a machine whose speed drifts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench import add_ratios, decode_floor, interleave, parse  # noqa: E402
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


def test_every_bundle_part_has_a_source_override():
    from replyrank.bundle import PARTS

    args = parse([f"--{part}-source=elsewhere/{part}" for part in PARTS])
    assert {part: getattr(args, f"{part}_source") for part in PARTS} == {part: f"elsewhere/{part}" for part in PARTS}


def test_kernel_clock_counts_only_the_wrapped_calls():
    now = [0.0]

    def kernel(seconds: float) -> str:
        now[0] += seconds
        return "done"

    def failing_kernel() -> None:
        now[0] += 0.25
        raise RuntimeError("the runtime failed")

    clock = KernelClock(clock=lambda: now[0])
    assert clock.wrap(kernel)(0.02) == "done"
    now[0] += 0.5  # not wrapped: outside the kernels
    with pytest.raises(RuntimeError):
        clock.wrap(failing_kernel)()  # a call that fails still spent its time inside
    assert clock.seconds == pytest.approx(0.27)


class DriftingMachine:
    """Fake systems on a machine that slows down call after call: a job of `base` ms takes base x (1 + drift x calls so far)."""

    def __init__(self, bases: dict[str, float], drift: float) -> None:
        self.bases, self.drift, self.calls = bases, drift, []

    def child(self, system: str) -> "FakeChild":
        return FakeChild(self, system)


class FakeChild:
    def __init__(self, machine: DriftingMachine, system: str) -> None:
        self.machine, self.system = machine, system

    def ask(self, request: dict, what: str) -> dict:
        machine = self.machine
        total = machine.bases[self.system] * (1 + machine.drift * len(machine.calls))
        machine.calls.append((self.system, request["job"]))
        return {"total_ms": total, "generate_ms": total, "new_tokens_min": 4, "new_tokens_max": 4, "texts": ["a reply"]}


def run_passes(machine: DriftingMachine, passes: int, runs: int) -> dict:
    results = {"systems": {name: {"system": name} for name in machine.bases}}
    interleave({name: machine.child(name) for name in machine.bases}, argparse.Namespace(passes=passes, runs=runs, t=4), results)
    add_ratios(results)
    return results


def test_systems_take_turns_run_by_run_and_the_first_rotates_each_pass():
    machine = DriftingMachine({"replyrank": 100.0, "peer": 150.0}, drift=0.0)
    results = run_passes(machine, passes=2, runs=3)
    # the same seed for both systems at each turn, so they sample the same job
    assert machine.calls == [("replyrank", 0), ("peer", 0), ("replyrank", 1), ("peer", 1), ("replyrank", 2), ("peer", 2),
                             ("peer", 3), ("replyrank", 3), ("peer", 4), ("replyrank", 4), ("peer", 5), ("replyrank", 5)]
    assert [one["order"] for one in results["passes"]] == [["replyrank", "peer"], ["peer", "replyrank"]]
    assert results["systems"]["peer"]["job"]["total_ms"]["n"] == 6 and results["systems"]["peer"]["job"]["forced_length_ok"]
    ratio = results["systems"]["peer"]["ratio_to_replyrank"]
    assert ratio["per_pass"] == pytest.approx([1.5, 1.5]) and ratio["median"] == pytest.approx(1.5)


def test_a_drifting_machine_moves_each_pass_little_and_the_median_of_passes_less():
    # the machine gets 10% slower with every job: its 20 runs of one system after the 20 of the other would read 1.5 as 3.0
    machine = DriftingMachine({"replyrank": 100.0, "peer": 150.0}, drift=0.1)
    ratio = run_passes(machine, passes=4, runs=5)["systems"]["peer"]["ratio_to_replyrank"]
    assert len(ratio["per_pass"]) == 4
    assert all(abs(r / 1.5 - 1) < 0.1 for r in ratio["per_pass"])
    assert abs(ratio["median"] / 1.5 - 1) < 0.03
    assert ratio["min"] <= ratio["iqr"][0] <= ratio["median"] <= ratio["iqr"][1] <= ratio["max"]
