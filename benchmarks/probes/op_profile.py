"""Kernel time per operator type of a bundle generator's decode step, from ONNX Runtime's profiler.

The step runs as `Generator.decode` runs it on an in-place graph: one cache buffer per layer bound as
both past and present, with room beyond the past length; a graph with an attention bias takes the N
rows as one sequence after the past (`replyrank.generate.Candidates`; the past then stands for the
prompt and the rows' tokens so far), any other graph as N batch rows. Zero cache, token id 100: the
kernels' cost does not depend on the values.

    python benchmarks/probes/op_profile.py [--bundle DIR] [--rows 8] [--past 110] [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from replyrank.bundle import Bundle

from replyrank.locations import default_bundle_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--past", type=int, default=110)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    bundle = Bundle.read(args.bundle or default_bundle_dir())
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(bundle.folder(bundle.generator) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = {arg.name for arg in session.get_inputs()}
    one_sequence = "attention_bias" in names
    batch, length = (1, args.rows) if one_sequence else (args.rows, 1)
    binding, buffers = session.io_binding(), []
    for arg in session.get_inputs():
        if arg.name.startswith("past_key_values."):
            buffer = np.zeros((batch, arg.shape[1], args.past + length + 1, arg.shape[3]), np.float32)
            buffers.append(buffer)
            binding.bind_cpu_input(arg.name, buffer)
            present = "present" + arg.name[len("past_key_values") :]
            binding.bind_output(present, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
    total = args.past + length
    feed = {
        "input_ids": np.full((batch, length), 100, np.int64),
        "attention_mask": np.ones((batch, total), np.int64),
        "position_ids": np.full((batch, length), args.past, np.int64),
        "attention_bias": np.zeros((batch, 1, length, total), np.float32),
        "logits_to_keep": np.array([length], np.int64),
        "top_k": np.array([41], np.int64),  # the default sampling's top-k 40 and room for EOS
    }
    for name, value in feed.items():
        if name in names:
            binding.bind_cpu_input(name, value)
    binding.bind_output("logits")
    for _ in range(args.steps):
        session.run_with_iobinding(binding)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    spent = sum(per_op.values())
    layout = "as one sequence" if one_sequence else "as batch rows"
    print(f"{args.rows} rows {layout}, past {args.past}: {spent / args.steps / 1e3:.2f} ms of kernels a step")
    for op, microseconds in per_op.most_common():
        print(f"  {op:34s} {microseconds / args.steps / 1e3:6.2f} ms  {100 * microseconds / spent:5.1f}%")


if __name__ == "__main__":
    main()
