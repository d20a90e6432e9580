"""The one place that opens a part's model files: ONNX Runtime sessions and tokenizers.

Three sessions (generator, discriminator, upvote model) share the machine's cores. Each gets
the same explicit intra-op thread count and a single inter-op thread, so together they never
start more worker threads than the user asked for (fastembed's `common/onnx_model.py` and
faster-whisper's VAD session set their options the same explicit way).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from .environment import available_cores
from .errors import BundleError


def default_threads() -> int:
    """The usable cores: ONNX Runtime's default, made explicit so sessions can share it."""
    return available_cores()


# How long an idle worker spins before it sleeps. A decode step is a few hundred small operators,
# and on a machine of few cores waking a sleeping worker for each costs more than the operators
# themselves, so workers spin a little. A short spin keeps much of the gain and loses nothing when
# another process contends for the cores: the gaps inside a run are shorter than it, the gaps
# between runs (sampling in Python) and a contended core's are longer (benchmarks/probes/session_options.py
# measures the choices).
SPIN_US = 5


def create_session(model_path: str | Path, threads: int | None = None, spin: bool = True) -> ort.InferenceSession:
    """Open `model_path` on the CPU with all graph optimizations and `threads` intra-op threads.

    `spin`: workers spin up to SPIN_US between the operators of a run instead of going to sleep,
    and stop as the run returns (`session.force_spinning_stop`), so they never burn a core while
    another session runs; False: they always sleep.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # Shapes change every decode step and every batch; the arena would keep the largest
    # of each forever, so memory would grow with the variety of inputs seen.
    options.enable_cpu_mem_arena = False
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's load errors (InvalidProtobuf, Fail, ...) share no base class but Exception
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BundleError(f"{model_path} is not a loadable ONNX model ({reason}); re-export the bundle") from error


def load_tokenizer(path: Path) -> Tokenizer:
    """A part's `tokenizer.json`; one that `tokenizers` cannot read is a BundleError, like a broken graph."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise BundleError(f"{path} is not a readable tokenizer ({error}); re-export the bundle") from error


# tokenizers reads a tokenizer.json holding the GIL the whole time, while ONNX Runtime builds a session
# without it, all but its first steps (reading the graph, then Python between two calls). So `open_part`
# starts the tokenizer once the build is past them, and the two overlap (benchmarks/startup.py measures
# the opening); a build slower to start than this just waits for the tokenizer, as in sequence.
TOKENIZER_DELAY_S = 0.02


def open_part(folder: Path, threads: int | None = None) -> tuple[ort.InferenceSession, Tokenizer]:
    """A part folder's session (`model.onnx`) and tokenizer (`tokenizer.json`), read side by side."""

    def read_tokenizer() -> Tokenizer:
        time.sleep(TOKENIZER_DELAY_S)
        return load_tokenizer(folder / "tokenizer.json")

    with ThreadPoolExecutor(1) as pool:
        tokenizer = pool.submit(read_tokenizer)
        session = create_session(folder / "model.onnx", threads)
        return session, tokenizer.result()
