"""The NumPy backend's fast paths: candidate growth, mass bounds, the head/tail draw, edge variates.

Most tests shrink the block size (``small_blocks``) so that every path the backend takes at a
vocabulary of 10^5 (growth to the whole row, a short last block, top-p decided by mass bounds or
by the exact mass, draws from the tail) runs on a vocabulary of a few hundred tokens.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.backends import _numpy_chain
from agnostic_sampling.backends import _numpy_draw
from agnostic_sampling.backends import _numpy_logprobs
from agnostic_sampling.backends import _numpy_mass
from agnostic_sampling.backends import _numpy_nucleus
from agnostic_sampling.backends import _numpy_pipeline as pipeline
from agnostic_sampling.backends import _numpy_rows
from agnostic_sampling.backends import numpy as nb
from agnostic_sampling.stats import assert_samples_match
from agnostic_sampling.stats import reference_probs

# The NumPy backend's modules.
PARTS = [nb, pipeline, _numpy_rows, _numpy_draw, _numpy_logprobs, _numpy_chain, _numpy_nucleus, _numpy_mass]


def patch_backend(monkeypatch: pytest.MonkeyPatch, name: str, value: Any) -> None:
    """Replace ``name`` in every NumPy backend module that holds it (each import binds its own)."""
    holders = [module for module in PARTS if hasattr(module, name)]
    assert holders, name
    for module in holders:
        monkeypatch.setattr(module, name, value)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_backend(monkeypatch, "BLOCK", 4)
    patch_backend(monkeypatch, "DENSE_HEAD", 2)
    patch_backend(monkeypatch, "MIN_CANDIDATES", 2)
    patch_backend(monkeypatch, "WIDE", 16)  # whole rows take the paths of wide candidate lists


class Spy:
    """Wraps a backend function and counts the rows it was called with."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, replacement: Any = None):
        self.rows = 0
        self.calls = 0
        original = next(getattr(module, name) for module in PARTS if hasattr(module, name))

        def wrapper(x: np.ndarray, rows: np.ndarray, *args: Any) -> Any:
            self.calls += 1
            self.rows += rows.size
            return (replacement or original)(x, rows, *args)

        patch_backend(monkeypatch, name, wrapper)


def spiky_logits(rng: np.random.Generator, rows: int, vocab: int) -> np.ndarray:
    """Rows from flat to peaked: a normal body of random scale plus a few spikes of random height."""
    body = rng.standard_normal((rows, vocab)) * rng.uniform(0.2, 3, (rows, 1))
    spikes = rng.integers(0, vocab, (rows, 4))
    np.put_along_axis(body, spikes, rng.uniform(0, 12, (rows, 4)), axis=1)
    return body.astype(np.float32)


def mixed_params(rows: int) -> dict[str, np.ndarray]:
    kinds = np.array([  # temperature, top_k, top_p, min_p, min_keep
        (1.0, 0, 0.9, 0.0, 1), (0.7, 0, 0.5, 0.0, 1), (1.3, 0, 0.99, 0.0, 1), (1.0, 5, 0.9, 0.0, 1),
        (0.8, 40, 0.95, 0.0, 1), (1.0, 0, 1.0, 0.02, 1), (1.0, 0, 0.7, 0.1, 1), (2.0, 0, 0.3, 0.0, 9),
        (1.0, 300, 1.0, 0.0, 1), (0.5, 0, 1.0, 0.0005, 1), (1.0, 0, 0.0, 0.0, 1), (0.0, 0, 0.9, 0.0, 1),
    ])
    table = kinds[np.arange(rows) % len(kinds)]
    return dict(temperature=table[:, 0].astype(np.float32), top_k=table[:, 1].astype(np.int64),
                top_p=table[:, 2], min_p=table[:, 3].astype(np.float32),
                min_keep=table[:, 4].astype(np.int64))


def assert_matches_reference(logits: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    got = smp.probs(logits, **params)
    expected = reference_probs(logits, **params)
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-7)
    z = smp.process_logits(logits, **params)
    np.testing.assert_array_equal(np.isneginf(z), expected == 0)
    return got


@pytest.mark.parametrize("vocab", [37, 64, 250, 1031])
def test_every_path_matches_reference_with_small_blocks(small_blocks, vocab, seed):
    rng = np.random.default_rng(seed)
    logits = spiky_logits(rng, 24, vocab)
    assert_matches_reference(logits, mixed_params(24))


def test_candidate_growth_up_to_the_whole_row(small_blocks, monkeypatch, seed):
    # A flat row needs most of its tokens for p = 0.95: the candidate list grows until it is complete.
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((3, 3000)) * 0.1).astype(np.float32)
    spy = Spy(monkeypatch, "_truncate_rows")
    by_blocks = Spy(monkeypatch, "_count_mass_before")
    p = assert_matches_reference(logits, dict(top_p=0.95))
    assert spy.calls >= 3  # first attempt, at least one growth, then the whole row
    assert by_blocks.calls > 0  # the whole row's nucleus is found from block sums
    assert ((p > 0).sum(axis=-1) > 2000).all()


def test_large_top_k_and_low_min_p_grow_the_candidates(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    logits = spiky_logits(rng, 4, 65536)
    spy = Spy(monkeypatch, "_truncate_rows")
    params = dict(top_k=np.array([5000, 0, 20000, 3]), min_p=np.array([0, 1e-3, 0, 0], np.float32),
                  temperature=np.float32(1.5))
    p = assert_matches_reference(logits, params)
    assert spy.calls >= 1
    assert (p[0] > 0).sum() == 5000 and (p[3] > 0).sum() == 3


def flat_logits(rows: int, vocab: int, seed: int) -> np.ndarray:
    """A N(0, 2^2) body with a spike 8 above it per 6400 tokens: 0.9-nuclei of ~20% of the row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, vocab)) * 2
    x[:, rng.integers(0, vocab, vocab // 6400)] += 8
    return x


class NucleusSpy:
    """Records which rows `wide_nucleus` proved (its ``found``), call after call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.found: list[np.ndarray] = []

        def wrapper(*args: Any) -> Any:
            cut, found, block_weight = _numpy_nucleus.wide_nucleus(*args)
            self.found.append(found)
            return cut, found, block_weight

        monkeypatch.setattr(pipeline, "wide_nucleus", wrapper)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_wide_nuclei_are_cut_from_a_sampled_band(monkeypatch, dtype, seed):
    # Nuclei of thousands of tokens, past every candidate list: cut from the band, no sort.
    logits = flat_logits(6, 32768, seed).astype(dtype)
    params = dict(top_p=np.array([0.9, 0.8, 0.99, 0.9, 0.6, 0.95]),
                  temperature=np.array([1, 1, 1, 0.9, 2, 1.3], np.float32))
    spy = NucleusSpy(monkeypatch)
    p = assert_matches_reference(logits, params)
    assert spy.found and all(found.size == 6 and found.all() for found in spy.found)
    assert ((p > 0).sum(axis=-1) > 500).all()
    sorts = Spy(monkeypatch, "_truncate_rows")
    ids = smp.sample(seed, logits, **params)  # the draw keeps to the band's cut
    assert (p[np.arange(6), ids] > 0).all()
    assert sorts.calls == 1  # the first attempt only; no whole-row sort


def test_a_misleading_sample_falls_back_to_the_sort(monkeypatch):
    # In the first two rows the sampled tokens (every 8th) are far above the rest: the estimate
    # misses the band, and those rows are sorted as before, with the same kept sets.
    logits = flat_logits(3, 32768, 3)
    logits[:2, ::8] += 3.0
    spy = NucleusSpy(monkeypatch)
    sorts = Spy(monkeypatch, "_truncate_rows")
    p = assert_matches_reference(logits, dict(top_p=0.9))
    assert spy.found and all(found[-1] and not found[:-1].any() for found in spy.found)
    assert sorts.rows > 3  # the first attempts, then the whole-row sort of the missed rows
    for key in (0, smp.Seed(0)):  # both draws, from the sorted and the cut rows' kept sets
        ids = smp.sample(key, logits, top_p=0.9)
        assert (p[np.arange(3), ids] > 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # the compute precisions (float16: float32)
def test_a_wide_nucleus_draws_from_its_kept_set(monkeypatch, dtype):
    pytest.importorskip("scipy")  # the chi-square check: the suite's alpha, power 0.99 at tv 0.07
    # One row of 8192 (a sample of every other token): a nucleus of ~1300 tokens.
    logits = np.random.default_rng(8).standard_normal(8192).astype(dtype)
    params = dict(top_p=0.5)
    draws = 20000
    spy = NucleusSpy(monkeypatch)
    ids = smp.sample(8, np.broadcast_to(logits, (draws, logits.size)), **params)
    assert sum(found.sum() for found in spy.found) == draws
    expected = reference_probs(logits, **params)
    assert (expected > 0).sum() > 500
    assert_samples_match(ids, expected, tv=0.07, power=0.99, seed=8)


def test_a_wide_nucleus_holds_no_copy_of_its_rows(monkeypatch):
    # The cut works on a chunk of rows at a time and the draw recomputes the one block it picks:
    # the batch's tempered logits are never held (they were: a peak above 1x the logits).
    x = flat_logits(8, 131072, 0).astype(np.float32)
    spy = NucleusSpy(monkeypatch)
    for key in (0, smp.Seed(np.arange(8), 1)):
        tracemalloc.start()
        try:
            ids = smp.sample(key, x, top_p=0.9)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 0.5 * x.nbytes, peak / x.nbytes
        assert (reference_probs(x, top_p=0.9)[np.arange(8), ids] > 0).all()
    assert spy.found and all(found.all() for found in spy.found)


def test_the_fine_mass_bounds_take_one_row_of_memory(monkeypatch):
    # One row whose nucleus the block bounds leave open and the fine bounds settle: its bit
    # patterns are written over its tempered copy, so the peak is that one copy, not two.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 128256)) * 2).astype(np.float32)
    x[0, rng.choice(128256, 16, replace=False)] = 19 - np.cumsum(rng.exponential(1.0, 16))
    fine = Spy(monkeypatch, "_outside_mass_fine")
    exact = Spy(monkeypatch, "_outside_mass_exact")
    tracemalloc.start()
    try:
        ids = smp.sample(0, x, top_p=0.9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fine.calls == 1 and exact.calls == 0
    assert peak < 1.25 * x.nbytes, peak / x.nbytes
    assert reference_probs(x, top_p=0.9)[0, ids[0]] > 0


def test_top_k_ties_across_block_boundaries():
    vocab = 4 * pipeline.BLOCK + 3  # the last block is short
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(vocab) - 3).astype(np.float32)
    tied = [3, pipeline.BLOCK + 1, 2 * pipeline.BLOCK + 255, vocab - 1]  # four blocks, the short one included
    logits[tied] = 5.0
    logits[3 * pipeline.BLOCK + 7] = 7.0
    assert np.flatnonzero(smp.probs(logits, top_k=1)).tolist() == [3 * pipeline.BLOCK + 7]
    for k in (2, 3, 5):
        assert np.flatnonzero(smp.probs(logits, top_k=k)).tolist() == sorted(tied + [3 * pipeline.BLOCK + 7])
    # the same ties at the top-p boundary and the min-p threshold
    assert sorted(np.flatnonzero(smp.probs(logits, top_p=0.0, temperature=0.5))) == [3 * pipeline.BLOCK + 7]
    kept = np.flatnonzero(smp.probs(logits, min_p=float(np.exp(-2.0)) * 0.999))
    assert kept.tolist() == sorted(tied + [3 * pipeline.BLOCK + 7])


@pytest.mark.parametrize("vocab", [5, 1000, 5000])
def test_rows_of_equal_logits_keep_everything(vocab):
    logits = np.zeros((2, vocab), np.float32)
    for params in (dict(top_k=3), dict(top_p=0.5), dict(min_p=1.0), dict(top_p=0.0, min_keep=2), {}):
        np.testing.assert_allclose(smp.probs(logits, **params), np.full((2, vocab), 1 / vocab), rtol=1e-5)
    ids = smp.sample(0, np.zeros((1000, vocab), np.float32), top_k=1)
    assert len(np.unique(ids)) > min(vocab, 1000) * 0.5  # tied tokens are all drawn


def test_top_p_decided_by_bounds_then_exact_mass(monkeypatch, seed):
    # Worthless block bounds force every nucleus row through the tighter bounds; worthless tighter
    # bounds force the exact mass. Every route must give the reference's kept sets.
    rng = np.random.default_rng(seed)
    logits = spiky_logits(rng, 12, 40000)
    params = dict(top_p=np.linspace(0.05, 0.99, 12), temperature=np.float32(0.9))
    expected = reference_probs(logits, **params) > 0

    def no_information(*args: Any) -> tuple[np.ndarray, np.ndarray]:
        rows = args[0].shape[0]
        return np.zeros(rows), np.full(rows, np.inf)

    patch_backend(monkeypatch, "_outside_mass", no_information)
    fine = Spy(monkeypatch, "_outside_mass_fine")
    exact = Spy(monkeypatch, "_outside_mass_exact")
    np.testing.assert_array_equal(smp.probs(logits, **params) > 0, expected)
    assert fine.rows > 0

    loose = Spy(monkeypatch, "_outside_mass_fine",
                replacement=lambda x, rows, *_: (np.zeros(rows.size), np.full(rows.size, np.inf)))
    np.testing.assert_array_equal(smp.probs(logits, **params) > 0, expected)
    assert loose.rows > 0 and exact.rows >= loose.rows


@pytest.mark.parametrize("temperature", [1e-3, 0.6, 1.0, 4.0])
def test_mass_bounds_contain_the_exact_mass(temperature, seed):
    rng = np.random.default_rng(seed)
    x = spiky_logits(rng, 6, 4 * pipeline.BLOCK * 8 + 5)
    x[0, :100] = -np.inf
    x[1] *= 40  # exponents far below float32's range
    rows = np.arange(6)
    row_max = x.max(axis=-1)
    t = np.full(6, temperature, np.float32)
    block_max = pipeline._block_maxima(x)
    head = pipeline._head(x, rows, block_max, row_max, t, 8, bounds=True)
    exact = pipeline._outside_mass_exact(x, rows, row_max, t, head.index, head.logit)
    fine_low, fine_high = pipeline._outside_mass_fine(x, rows, row_max, t, head.index, head.logit)
    tiny = 1e-30  # float32 exponentials underflow where the bounds, in float64, do not
    assert (head.low <= exact * (1 + 1e-6) + tiny).all() and (exact <= head.high * (1 + 1e-6)).all()
    assert (fine_low <= exact * (1 + 1e-6) + tiny).all() and (exact <= fine_high * (1 + 1e-6)).all()
    assert (fine_high <= 1.07 * exact + 1e-30).all()  # the tighter bounds are within 6.2%
    # the head is exactly the tokens above the threshold: its mass and the rest make the total
    total = np.exp(_numpy_rows._tempered(x, row_max, t)).sum(axis=-1, dtype=np.float64)
    inside = np.exp(head.logit.astype(np.float64)).sum(axis=-1)
    np.testing.assert_allclose(inside + exact, total, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_dense_draws_from_head_and_tail_match_probs(small_blocks, monkeypatch, temperature):
    pytest.importorskip("scipy")  # the chi-square check
    # About half the mass outside the head, so both parts and the tail's exact path are exercised.
    rng = np.random.default_rng(11)
    row = (rng.standard_normal(60) * 0.8).astype(np.float32)
    row[[3, 30, 50]] += 3.0
    row[7] = -np.inf
    draws = 40000
    tail = Spy(monkeypatch, "_draw_by_blocks")
    ids = smp.sample(5, np.tile(row, (draws, 1)), temperature=temperature)
    expected = smp.probs(row, temperature=temperature).astype(np.float64)
    assert tail.rows > 10000  # the rows that drew from the tail
    assert_samples_match(ids, expected / expected.sum(), tv=0.03, seed=5)


def test_candidate_draws_match_probs(small_blocks):
    pytest.importorskip("scipy")  # the chi-square check
    rng = np.random.default_rng(12)
    row = spiky_logits(rng, 1, 200)[0]
    params = dict(top_p=0.9, temperature=0.8, min_keep=3)
    ids = smp.sample(6, np.tile(row, (40000, 1)), **params)
    expected = smp.probs(row, **params).astype(np.float64)
    assert_samples_match(ids, expected / expected.sum(), tv=0.03, seed=6)


class ConstantUniform:
    """A stand-in for numpy.random.Generator whose every variate is ``value``."""

    def __init__(self, value: float):
        self.value = value

    def random(self, shape: Any) -> np.ndarray:
        return np.full(shape, self.value)


@pytest.mark.parametrize("u", [0.0, 1e-300, 0.5, 1 - 2**-53])
@pytest.mark.parametrize("blocks", ["small", "default"])
def test_extreme_variates_never_leave_the_kept_set(u, blocks, monkeypatch):
    if blocks == "small":
        patch_backend(monkeypatch, "BLOCK", 4)
        patch_backend(monkeypatch, "DENSE_HEAD", 2)
    rng = np.random.default_rng(13)
    logits = spiky_logits(rng, 6, 3000)
    logits[:, :10] = -np.inf
    logits[:, -10:] = -np.inf
    logits[5, 2000:2990] = -200.0  # weights that underflow in float32
    params = smp.SamplingParams(temperature=np.array([1, 0.5, 1, 1, 2, 1], np.float32),
                                top_k=np.array([0, 0, 7, 0, 0, 0]), top_p=np.array([1, 1, 1, 0.8, 1, 1]),
                                min_p=np.array([0, 0, 0, 0, 0.01, 0], np.float32))
    allowed = smp.probs(logits, params=params) > 0
    ids, status = nb.sample(ConstantUniform(u), logits, params)
    assert not status.any()
    assert allowed[np.arange(6), ids].all()
    weights = smp.probs(logits, params=params)
    if u == 0.0:  # the first kept token in the backend's order has positive weight
        assert (weights[np.arange(6), ids] > 0).all()
