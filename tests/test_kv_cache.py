"""`KVCache`: a decode's buffers hold the prompt's cache in every row, drop finished rows, and are reused by the next
decode as its spare when they fit, within the spare's byte limit."""

from __future__ import annotations

from collections import deque

import numpy as np
import onnxruntime as ort
import pytest

import replyrank
from replyrank.kv_cache import KVCache

COMMENT = "has anyone tried the pasta place near campus"


@pytest.fixture(scope="module")
def prompt_cache(llama_bundle):
    """The fused Llama graph's session (its attention writes into the past buffer) and a prompt's batch-1 cache."""
    generator = replyrank.load(llama_bundle).generator
    prompt = generator.encode_prompt(COMMENT, replyrank.GenerationOptions()).ids
    _, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    return generator.session, cache, len(prompt)


@pytest.mark.parametrize("in_place", [True, False])
def test_every_row_starts_with_the_prompts_cache(prompt_cache, in_place) -> None:
    session, cache, length = prompt_cache
    kv = KVCache(session, cache, 3, length + 8, in_place)
    for name, value in cache.items():
        prompt = value.numpy()
        buffer = kv.cache[name].numpy()
        assert buffer.shape == (3, prompt.shape[1], length + 8 if in_place else prompt.shape[2], prompt.shape[3])
        assert np.array_equal(buffer[:, :, : prompt.shape[2]], np.repeat(prompt, 3, axis=0))
    assert (kv.binding is not None) == in_place


@pytest.mark.parametrize("in_place", [True, False])
def test_dropped_rows_leave_the_others_as_they_were(prompt_cache, in_place) -> None:
    session, cache, length = prompt_cache
    kv = KVCache(session, cache, 5, length + 8, in_place)
    rng = np.random.default_rng(0)
    written = {name: rng.standard_normal(value.shape(), dtype=np.float32) for name, value in kv.cache.items()}
    if in_place:  # what the steps wrote into the buffers
        for name, buffer in kv.buffers.items():
            buffer[:] = written[name]
    else:  # what the last step returned
        kv.cache = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in written.items()}
    kv.drop_rows([0, 2, 3])
    kv.drop_rows([1, 2])
    for name, value in kv.cache.items():
        assert np.array_equal(value.numpy(), written[name][[2, 3]])


def test_a_decode_starts_on_the_last_ones_buffers_when_they_fit(prompt_cache) -> None:
    session, cache, length = prompt_cache
    spares: deque = deque(maxlen=1)
    first = KVCache(session, cache, 4, length + 20, True, spares)
    first.release()
    assert len(spares) == 1
    second = KVCache(session, cache, 3, length + 10, True, spares)  # fewer rows, fewer positions: on the spare
    assert not spares and all(np.shares_memory(second.buffers[n], first.buffers[n]) for n in cache)
    prompt = next(iter(cache.values())).numpy()
    assert np.array_equal(next(iter(second.cache.values())).numpy()[:, :, : prompt.shape[2]], np.repeat(prompt, 3, axis=0))
    second.release()
    third = KVCache(session, cache, 5, length + 10, True, spares)  # more rows than the spare holds: fresh buffers
    assert not spares and not any(np.shares_memory(third.buffers[n], first.buffers[n]) for n in cache)


def test_only_in_place_buffers_within_the_byte_limit_are_kept(prompt_cache) -> None:
    session, cache, length = prompt_cache
    spares: deque = deque(maxlen=1)
    size = sum(value.numpy().nbytes // value.shape()[2] * (length + 20) * 4 for value in cache.values())  # 4 rows of length + 20 positions
    KVCache(session, cache, 4, length + 20, True, spares, spare_bytes=size - 1).release()
    KVCache(session, cache, 4, length + 20, False, spares, spare_bytes=size).release()
    assert not spares
    KVCache(session, cache, 4, length + 20, True, spares, spare_bytes=size).release()
    assert len(spares) == 1
