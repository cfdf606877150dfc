"""The pipeline's semantics (the README's "Semantics" section) on every backend, against
closed forms and the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from agnostic_sampling.stats import reference_probs

# The seed tutorial's worked example.
WORDS = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
SEED_LOGITS = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kept(p: np.ndarray) -> list[int]:
    return np.flatnonzero(p > 0).tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.1, 5.0])
def test_seed_example_temperatures(backend, temperature):
    p = backend.probs(SEED_LOGITS, temperature=temperature)
    expected = softmax(SEED_LOGITS.astype(np.float64) / temperature)
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-7)
    assert p.dtype == np.float32


def test_seed_example_truncations(backend):
    assert kept(backend.probs(SEED_LOGITS, top_k=3)) == [0, 3, 7]
    # forward 0.572 + toward 0.358 = 0.930 >= 0.9: the crossing token "toward" is kept
    assert kept(backend.probs(SEED_LOGITS, top_p=0.9)) == [3, 7]
    # min-p 0.1 keeps tokens with probability >= 0.0572: closer (0.061), forward, toward
    assert kept(backend.probs(SEED_LOGITS, min_p=0.1)) == [0, 3, 7]
    p = backend.probs(SEED_LOGITS, top_k=3)
    np.testing.assert_allclose(p[[0, 3, 7]], softmax(SEED_LOGITS[[0, 3, 7]].astype(np.float64)), rtol=1e-5)


def test_top_k_keeps_ties_at_kth_value(backend):
    logits = np.array([1.0, 3.0, 2.0, 2.0, 2.0, 0.0], np.float32)
    assert kept(backend.probs(logits, top_k=2)) == [1, 2, 3, 4]
    assert kept(backend.probs(logits, top_k=1)) == [1]
    assert kept(backend.probs(logits, top_k=5)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k", [0, 6, 7, 1000])
def test_top_k_disabled_or_larger_than_vocabulary(backend, k):
    logits = np.array([1.0, 3.0, 2.0, -1.0, 2.5, 0.0], np.float32)
    np.testing.assert_allclose(backend.probs(logits, top_k=k), softmax(logits), rtol=1e-6)


def test_top_p_boundary_keeps_crossing_token(backend):
    # probabilities 0.5, 0.3, 0.2 exactly representable in log space up to rounding
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    assert kept(backend.probs(logits, top_p=0.5)) == [0]  # mass before token 1 is 0.5, not < 0.5
    assert kept(backend.probs(logits, top_p=0.6)) == [0, 1]  # 0.5 < 0.6: token 1 crosses, kept
    assert kept(backend.probs(logits, top_p=0.81)) == [0, 1, 2]


def test_top_p_keeps_ties_with_last_member(backend):
    logits = np.log(np.array([0.4, 0.2, 0.2, 0.2], np.float32))
    assert kept(backend.probs(logits, top_p=0.5)) == [0, 1, 2, 3]


def test_top_p_zero_keeps_top_tokens_and_one_keeps_all(backend):
    logits = np.array([1.0, 3.0, 3.0, 0.5], np.float32)
    assert kept(backend.probs(logits, top_p=0.0)) == [1, 2]
    np.testing.assert_allclose(backend.probs(logits, top_p=1.0), softmax(logits), rtol=1e-6)


def test_min_p_at_threshold(backend):
    # q = [0.5, 0.25, 0.125, 0.125]: min_p 0.25 keeps q >= 0.125 (all); 0.3 keeps q >= 0.15
    logits = np.log(np.array([4.0, 2.0, 1.0, 1.0], np.float32))
    assert kept(backend.probs(logits, min_p=0.25)) == [0, 1, 2, 3]
    assert kept(backend.probs(logits, min_p=0.3)) == [0, 1]
    assert kept(backend.probs(logits, min_p=1.0)) == [0]


def test_min_keep_overrides_every_truncation(backend):
    logits = np.array([5.0, 1.0, 0.9, 0.8, -3.0], np.float32)
    assert kept(backend.probs(logits, top_k=1, min_keep=3)) == [0, 1, 2]
    assert kept(backend.probs(logits, top_p=0.1, min_keep=2)) == [0, 1]
    assert kept(backend.probs(logits, min_p=0.9, min_keep=4)) == [0, 1, 2, 3]


def test_temperature_zero_is_first_argmax(backend):
    logits = np.array([[1.0, 4.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    p = backend.probs(logits, temperature=0.0)
    np.testing.assert_array_equal(p, [[0, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(backend.sample(backend.key(0), logits, temperature=0.0), [1, 0])
    np.testing.assert_array_equal(backend.greedy(logits), [1, 0])


def test_tiny_temperature_does_not_overflow(backend):
    logits = np.array([100.0, 99.0, -50.0], np.float32)
    p = backend.probs(logits, temperature=1e-30)
    np.testing.assert_array_equal(p, [1, 0, 0])


@pytest.mark.parametrize("vocab", [7, 1000, 32000])
def test_mixed_per_row_parameters_match_reference(backend, vocab):
    rng = np.random.default_rng(vocab)
    rows = 12
    logits = (rng.standard_normal((rows, vocab)) * 2).astype(np.float32)
    logits[:, rng.integers(0, vocab, 3)] += 6  # a few spikes
    params = dict(
        temperature=np.array([0, 1, 0.7, 1.3, 0.5, 1, 1, 0.8, 2.0, 1, 0.9, 0], np.float32),
        top_k=np.array([0, 0, 5, 0, 0, 1, 3, 50, 0, 0, 20, 4]),
        top_p=np.array([1, 1, 1, 0.9, 0.5, 1, 0.7, 0.95, 1, 0, 0.8, 0.3], np.float32),
        min_p=np.array([0, 0, 0, 0, 0.05, 0, 0, 0, 0.2, 0, 0.01, 0], np.float32),
        min_keep=np.array([1, 1, 1, 1, 1, 1, 2, 1, 1, 3, 1, 1]),
    )
    got = backend.probs(logits, **params)
    expected = reference_probs(logits, **params)
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-7)


def test_leading_batch_dimensions(backend):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 50)).astype(np.float32)
    top_k = np.array([[1, 2, 3], [4, 5, 0]])
    p = backend.probs(logits, top_k=top_k)
    assert p.shape == (2, 3, 50)
    np.testing.assert_array_equal((p > 0).sum(-1), [[1, 2, 3], [4, 5, 50]])
    ids = backend.sample(backend.key(0), logits, top_k=1)
    assert ids.shape == (2, 3)
    np.testing.assert_array_equal(ids, logits.argmax(-1))


def test_one_dimensional_input_gives_scalar(backend):
    ids = backend.sample(backend.key(0), SEED_LOGITS)
    assert ids.shape == ()
    assert backend.greedy(SEED_LOGITS).shape == ()


def test_softmax_of_process_logits_is_probs(backend):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((6, 300)) * 3).astype(np.float32)
    kw = dict(temperature=0.7, top_k=np.array([0, 10, 40, 0, 5, 300]), top_p=0.9, min_p=0.02)
    z = backend.process_logits(logits, **kw)
    p = backend.probs(logits, **kw)
    np.testing.assert_allclose(softmax(z.astype(np.float64)), p, rtol=1e-5, atol=1e-8)
    assert np.all(np.isneginf(z) | (z <= 0))


def test_no_sample_outside_kept_set(backend):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((64, 2000)) * 2).astype(np.float32)
    kw = dict(temperature=0.9, top_k=np.arange(64) % 7, top_p=np.linspace(0, 1, 64), min_p=0.01)
    allowed = backend.probs(logits, **kw) > 0
    for seed in range(20):
        ids = backend.sample(backend.key(seed), logits, **kw)
        assert allowed[np.arange(64), ids].all()


def test_large_vocabulary_kept_sets_match_reference(backend):
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((4, 131072)) * 2).astype(np.float32)
    logits[:, :5] += 12
    kw = dict(temperature=0.8, top_k=np.array([50, 0, 0, 2000]), top_p=np.array([0.9, 0.5, 1, 0.99]),
              min_p=np.array([0, 0, 0.001, 0]))
    got = backend.probs(logits, **kw)
    expected = reference_probs(logits, **kw)
    np.testing.assert_array_equal(got > 0, expected > 0)


def test_same_seed_same_tokens_and_rows_independent(backend):
    logits = np.tile(np.zeros(1000, np.float32), (200, 1))
    a = backend.sample(backend.key(7), logits)
    b = backend.sample(backend.key(7), logits)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) > 150  # identical rows, one key: independent draws


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes(backend, dtype):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        np_dtype = ml_dtypes.bfloat16
    else:
        np_dtype = np.dtype(dtype)
    if dtype == "float64" and backend.name == "jax":
        pytest.skip("JAX computes in float32")
    logits = SEED_LOGITS.astype(np_dtype)
    p = backend.probs(logits, top_k=3)
    assert p.dtype == (np.float64 if dtype == "float64" else np.float32)
    assert kept(p) == [0, 3, 7]
    expected = softmax(logits.astype(np.float64)[[0, 3, 7]])
    np.testing.assert_allclose(p[[0, 3, 7]], expected, rtol=1e-5)
    assert backend.sample(backend.key(0), logits, top_k=1) == 3
    assert backend.greedy(logits) == 3


def test_caller_arrays_not_modified(backend):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 600)).astype(np.float32)
    top_p = np.array([0.5, 0.9, 1.0, 0.1], np.float32)
    logits_copy, top_p_copy = logits.copy(), top_p.copy()
    backend.sample(backend.key(0), logits, temperature=0.5, top_k=20, top_p=top_p)
    backend.probs(logits, top_p=top_p)
    backend.process_logits(logits, top_p=top_p)
    np.testing.assert_array_equal(logits, logits_copy)
    np.testing.assert_array_equal(top_p, top_p_copy)


def test_neg_inf_logits_are_never_kept(backend):
    logits = np.array([[-np.inf, 1.0, -np.inf, 0.5], [2.0, -np.inf, -np.inf, -np.inf]], np.float32)
    p = backend.probs(logits, top_k=np.array([3, 2]))
    np.testing.assert_array_equal(p > 0, [[0, 1, 0, 1], [1, 0, 0, 0]])
    for seed in range(10):
        ids = backend.sample(backend.key(seed), logits)
        assert ids[0] in (1, 3) and ids[1] == 0
