"""The key/value cache a decode runs on, in one class (`KVCache`): its buffers from the prompt's cache to the
last step, bound to the graph, rows dropped as candidates finish, and kept as the next decode's spare.

As optimum's decoder loop names it, a graph takes its past as `past_key_values.{i}.key/value`
(batch, kv heads, positions, head dim) and returns `present.{i}.*`. Graphs whose attention writes the
new keys and values into its past buffer where it has room (GroupQueryAttention, manifest
`"kv_cache": "in-place"`) get one buffer a layer with room for the whole decode, bound as both past
and present, so a step copies nothing. Other graphs return a grown copy every step, which becomes
the next step's past.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnxruntime as ort

PAST_PREFIX = "past_key_values."
# The most cache buffer memory a generator keeps from one decode for the next: eight candidates of a
# hundred-token prompt on a SmolLM2-135M graph fit; the buffers of larger decodes are freed.
SPARE_BYTES = 64 << 20


def present_name(past: str) -> str:
    """The output that holds the new cache of the past input `past` (`past_key_values.0.key` -> `present.0.key`)."""
    return "present." + past[len(PAST_PREFIX) :]


def bind_in_place(session: ort.InferenceSession, cache: dict[str, ort.OrtValue]) -> ort.IOBinding:
    """A binding with each of `cache`'s buffers bound as both the past and the present of its layer (in-place graphs)."""
    binding = session.io_binding()
    for past, value in cache.items():
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present_name(past), value)
    return binding


class KVCache:
    """The cache of one decode's batch rows, grown from the prompt's batch-1 cache.

    `buffers`: the arrays that hold the memory (past input name -> (rows, kv heads, positions, head dim));
    `cache`: the OrtValues the next step reads (the running rows of `buffers` for in-place graphs, the last
    step's presents otherwise); `binding`: in-place graphs' binding of `cache`, reused step after step.

    `spares`: a slot that a generator's decodes share (a deque of one place, whose pop and append are atomic,
    so threads need no lock). In-place decodes start on the buffers the last one left there when they have
    enough rows and positions (a longer buffer only means positions the attention never reads), and `release`
    leaves theirs when they hold at most `spare_bytes`: fresh buffers cost page faults on every reply, while
    what stays allocated between replies stays bounded.
    """

    def __init__(
        self, session: ort.InferenceSession, prompt: dict[str, ort.OrtValue], rows: int, length: int, in_place: bool,
        spares: deque[dict[str, np.ndarray]] | None = None, spare_bytes: int = SPARE_BYTES,
    ):
        """The prompt's cache repeated for `rows` rows; in-place graphs: in buffers with room for `length` positions."""
        self.session, self.in_place = session, in_place
        self.spares, self.spare_bytes = spares, spare_bytes
        # one array a layer: a single block for all layers fills faster (huge pages) but holds more memory at peak
        spare = self.take_spare(rows, length) if in_place else None
        self.buffers: dict[str, np.ndarray] = {}
        for name, value in prompt.items():
            cached = value.numpy()
            if in_place:
                buffer = spare[name][:rows] if spare else np.zeros((rows, cached.shape[1], length, cached.shape[3]), dtype=cached.dtype)
                buffer[:, :, : cached.shape[2]] = cached
            else:
                buffer = np.repeat(cached, rows, axis=0)
            self.buffers[name] = buffer
        self.cache = {name: ort.OrtValue.ortvalue_from_numpy(buffer) for name, buffer in self.buffers.items()}
        self.binding = bind_in_place(session, self.cache) if in_place else None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(rows, kv heads, positions, head dim) of the buffers: the rows and positions the memory has room for."""
        return next(iter(self.buffers.values())).shape

    def take_spare(self, rows: int, length: int) -> dict[str, np.ndarray] | None:
        """The spare buffers, if they hold `rows` x `length`; either way the slot is empty after this."""
        try:
            spare = self.spares.pop() if self.spares is not None else None
        except IndexError:
            return None
        first = next(iter(spare.values())) if spare else None
        return spare if first is not None and first.shape[0] >= rows and first.shape[2] >= length else None

    def drop_rows(self, keep: list[int]) -> None:
        """Only the batch rows `keep` (ascending, positions in the current cache) run on.

        In-place graphs: the kept rows move up inside the buffers, and the cache is their first
        len(keep) rows, so nothing is allocated. Other graphs: a copy of the kept rows.
        """
        if not self.in_place:
            self.cache = {name: ort.OrtValue.ortvalue_from_numpy(value.numpy()[keep]) for name, value in self.cache.items()}
            return
        first = next((to for to, row in enumerate(keep) if to != row), len(keep))  # rows before it stay where they are
        for buffer in self.buffers.values():
            for to in range(first, len(keep)):
                buffer[to] = buffer[keep[to]]
        self.cache = {name: ort.OrtValue.ortvalue_from_numpy(buffer[: len(keep)]) for name, buffer in self.buffers.items()}
        self.binding = bind_in_place(self.session, self.cache)

    def release(self) -> None:
        """The decode is over: leave the buffers in the spare slot for the next one, if in place and small enough."""
        if not self.in_place or self.spares is None:
            return
        owners = {name: buffer if buffer.base is None else buffer.base for name, buffer in self.buffers.items()}
        if sum(owner.nbytes for owner in owners.values()) <= self.spare_bytes:
            self.spares.append(owners)
