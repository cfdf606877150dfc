"""Defects found by fuzzing and by real clients (issue "Hardening"), one regression test each.

Layouts: every view of the logits that NumPy can hand over (a broadcast row, a ``[:, -1]`` slice
of a model's output, Fortran order, a transpose) gives the draws of a contiguous copy, at the cost
of a contiguous copy: no pass copies the whole batch per chunk of rows.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.backends import numpy as nb


def _broadcast(c: np.ndarray) -> np.ndarray:
    return np.broadcast_to(c[:1], c.shape)


def _sliced(c: np.ndarray) -> np.ndarray:
    out = np.zeros((c.shape[0], 3, c.shape[1]), c.dtype)
    out[:, -1] = c
    return out[:, -1]


def _fortran(c: np.ndarray) -> np.ndarray:
    return np.asfortranarray(c)


def _transposed(c: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(c.T).T


def _transposed_3d(c: np.ndarray) -> np.ndarray:  # (2, B/2, V) read as (B/2, 2, V)
    return np.ascontiguousarray(c.reshape(2, -1, c.shape[1]).transpose(1, 0, 2)).transpose(1, 0, 2)


def _every_other_token(c: np.ndarray) -> np.ndarray:
    out = np.zeros((c.shape[0], 2 * c.shape[1]), c.dtype)
    out[:, ::2] = c
    return out[:, ::2]


LAYOUTS = {"broadcast": _broadcast, "sliced": _sliced, "fortran": _fortran, "transposed": _transposed,
           "transposed_3d": _transposed_3d, "every_other_token": _every_other_token}
VIEWS = ("broadcast", "sliced")  # layouts whose rows are contiguous: never copied at all


def _logits(rows: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, vocab)) * rng.uniform(0.3, 3, (rows, 1))).astype(np.float32)


PARAMS = [
    {},
    {"top_p": 0.9},
    {"top_p": 0.5, "temperature": 1.5},
    {"top_k": 40, "temperature": 0.7},
    {"min_p": 0.05},
    {"temperature": np.array([0.0, 1.0] * 32, np.float32), "top_p": 0.95},
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(p) or "dense")
def test_every_layout_draws_what_a_contiguous_copy_draws(layout, params):
    x = LAYOUTS[layout](_logits(64, 3000))
    if x.ndim == 3:
        params = {k: np.reshape(v, x.shape[:-1]) if np.ndim(v) else v for k, v in params.items()}
    contiguous = np.ascontiguousarray(x)
    assert not np.shares_memory(x, contiguous)
    for seed in (0, 1):
        np.testing.assert_array_equal(smp.sample(seed, x, **params), smp.sample(seed, contiguous, **params))
    np.testing.assert_array_equal(smp.process_logits(x, **params), smp.process_logits(contiguous, **params))
    np.testing.assert_array_equal(smp.greedy(x), smp.greedy(contiguous))


class _TakeSources:
    """Records the sources of every ``np.take`` call that are not C-contiguous: NumPy copies
    such a source whole on every call, which made chunked passes quadratic in the batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.strided: list[tuple[int, ...]] = []
        original = np.take

        def take(a: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
                self.strided.append(a.shape)
            return original(a, *args, **kwargs)

        monkeypatch.setattr(np, "take", take)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_pass_copies_the_whole_batch_per_chunk(layout, monkeypatch):
    rows, vocab = 64, 16384  # 8 rows per chunk of the row-wise passes
    x = LAYOUTS[layout](_logits(rows, vocab, seed=3))
    chunked = []  # the row-wise chunked passes must run for this test to mean anything
    original = nb._subtract_rows

    def subtract_rows(source: np.ndarray, some: np.ndarray, *args: Any, **kwargs: Any) -> None:
        chunked.append(some.size)
        original(source, some, *args, **kwargs)

    monkeypatch.setattr(nb, "_subtract_rows", subtract_rows)
    take = _TakeSources(monkeypatch)
    ids, peak = _peak_memory(lambda: smp.sample(0, x))  # dense rows whose mass bounds need a pass
    assert max(chunked) > 1 and len(chunked) > 2
    assert take.strided == []
    contiguous = np.ascontiguousarray(x)
    contiguous_ids, contiguous_peak = _peak_memory(lambda: smp.sample(0, contiguous))
    # A view is never copied; other layouts are copied once, to C order.
    allowed = contiguous_peak + (0.05 if layout in VIEWS else 1.05) * x.nbytes
    assert peak < allowed, (peak / x.nbytes, contiguous_peak / x.nbytes)
    np.testing.assert_array_equal(ids, contiguous_ids)


def _peak_memory(call: Any) -> tuple[Any, int]:
    """``call()`` and the peak of the memory that NumPy and Python allocated during it."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", ["contiguous", *LAYOUTS])
def test_probs_rows_sum_to_one_in_every_layout(layout):
    c = _logits(4, 128256, seed=4)
    x = c if layout == "contiguous" else LAYOUTS[layout](c)
    for params in ({}, {"temperature": 0.5}, {"top_p": 0.99}):
        sums = smp.probs(x, **params).astype(np.float64).sum(axis=-1)
        assert np.abs(sums - 1).max() < 1e-6, (params, np.abs(sums - 1).max())
