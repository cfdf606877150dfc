"""Logit shaping (bias, token masks, penalties over a history) on every backend, against the
float64 oracle, by chi-square, and its bad input, counts, caller's arrays and compiles."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.backends import _shaping
from agnostic_sampling.stats import reference_probs

ROWS, V, T = 4, 50, 12  # V not a multiple of 32: the packed masks have a partial last word
RNG = np.random.default_rng(20261201)
LOGITS = (RNG.standard_normal((ROWS, V)) * 2).astype(np.float32)
HISTORY = RNG.integers(0, V, (ROWS, T))
HISTORY[1, 8:] = -1  # padding
HISTORY[2, :6] = 3  # one token many times
LENGTHS = np.array([T, T, 9, 0])
BIAS = (RNG.standard_normal((ROWS, V)) * 0.5).astype(np.float32)
BIAS[0, 5] = -np.inf  # a bias of -inf bans
BANNED = RNG.random((ROWS, V)) < 0.2
ALLOWED = RNG.random((ROWS, V)) < 0.7
PENALTIES = dict(history=HISTORY, history_lengths=LENGTHS, repetition_penalty=np.array([1.3, 0.8, 2.0, 1.5]),
                 frequency_penalty=np.array([0.2, -0.1, 0.5, 0.3]), presence_penalty=0.4)


def pack(mask: np.ndarray) -> np.ndarray:
    """A boolean mask (..., V) as uint32 words (..., ceil(V / 32)): bit j of word w is token 32w + j."""
    words = np.zeros((*mask.shape[:-1], -(-mask.shape[-1] // 32)), np.uint32)
    for token in range(mask.shape[-1]):
        words[..., token // 32] |= mask[..., token].astype(np.uint32) << np.uint32(token % 32)
    return words


# the sparse form: ids and values (ROWS, 5), -1 padding, a token given twice, a ban by -inf
BIAS_IDS = np.array([[5, 9, 9, -1, -1], [0, 49, 17, 3, 8], [-1, -1, -1, -1, -1], [12, 2, 30, -1, 7]])
BIAS_VALUES = np.array([[-np.inf, 1.5, 0.5, 0, 0], [2.0, -1.0, 0.3, 4.0, -2.5], [0, 0, 0, 0, 0],
                        [3.0, 1.0, -0.7, 9.0, 0.2]], np.float32)


def dense_bias(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros((ROWS, V), np.float32)
    for row in range(ROWS):
        for token, value in zip(ids[row], values[row], strict=True):
            if token != -1:
                out[row, token] += value
    return out


STEPS = {
    "bias": dict(logit_bias=BIAS),
    "sparse_bias": dict(logit_bias=(BIAS_IDS, BIAS_VALUES)),
    "bias_vector": dict(logit_bias=BIAS[0]),
    "allowed": dict(allowed=ALLOWED),
    "banned": dict(banned=BANNED),
    "packed": dict(allowed=pack(ALLOWED), banned=pack(BANNED)),
    "vocab_size": dict(vocab_size=np.array([50, 40, 33, 1])),
    "repetition": dict(history=HISTORY, history_lengths=LENGTHS, repetition_penalty=1.7),
    "frequency": dict(history=HISTORY, frequency_penalty=0.6),
    "presence": dict(history=HISTORY, history_lengths=LENGTHS,
                     presence_penalty=np.array([1.0, 0.0, -0.5, 2.0])),
    "penalties": PENALTIES,
    "ngrams": dict(history=HISTORY, history_lengths=LENGTHS, no_repeat_ngram_size=np.array([2, 1, 3, 2])),
    "bad_words": dict(history=HISTORY, bad_words=np.array([[HISTORY[0, -1], 7, -1], [HISTORY[1, 6], 9, -1],
                                                           [3, 3, 11], [21, -1, -1]])),
    "everything": dict(PENALTIES, logit_bias=BIAS, banned=pack(BANNED), vocab_size=45,
                       no_repeat_ngram_size=np.array([1, 2, 2, 3]),
                       bad_words=np.array([[3, 7], [HISTORY[0, -1], 9]])),
}
TRUNCATIONS = {
    "plain": {},
    "temperature": dict(temperature=0.7),
    "top_k": dict(top_k=5),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.05),
    "combined": dict(temperature=np.array([0.8, 1.2, 0.5, 1.0]), top_k=20, top_p=0.9, min_p=0.02),
}


@pytest.mark.parametrize("truncation", list(TRUNCATIONS))
@pytest.mark.parametrize("step", list(STEPS))
def test_matches_reference(backend, step, truncation):
    if backend.name == "jax" and truncation not in ("plain", "combined") and step not in ("everything",
                                                                                           "packed"):
        pytest.skip("every call structure is a compile on JAX; the plain and combined runs cover each step")
    params = {**STEPS[step], **TRUNCATIONS[truncation]}
    expected = reference_probs(LOGITS, **params)
    np.testing.assert_allclose(backend.probs(LOGITS, **params), expected, rtol=2e-5, atol=1e-6)


def test_penalties_by_hand(backend):
    x = np.array([2.0, -1.0, 0.5, -3.0, 1.0], np.float32)
    history = np.array([0, 1, 1, 3, -1, 2])
    z = backend.process_logits(x, history=history, history_lengths=5, repetition_penalty=2.0,
                               frequency_penalty=0.5, presence_penalty=0.25)
    # token 0: 2/2 - 0.5 - 0.25; token 1 (twice): -1*2 - 1.0 - 0.25; token 2 is past the length;
    # token 3: -3*2 - 0.5 - 0.25; token 4 absent
    shaped = np.array([0.25, -3.25, 0.5, -6.75, 1.0])
    np.testing.assert_allclose(z, shaped - shaped.max(), rtol=1e-6)


def test_sparse_and_dense_bias_agree(backend):
    sparse = backend.process_logits(LOGITS, logit_bias=(BIAS_IDS, BIAS_VALUES), top_p=0.9)
    dense = backend.process_logits(LOGITS, logit_bias=dense_bias(BIAS_IDS, BIAS_VALUES), top_p=0.9)
    np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-6)
    assert np.isneginf(sparse[0, 5])


def test_hugging_face_worked_examples(backend):
    # Hugging Face's own test cases for NoRepeatNGramLogitsProcessor and NoBadWordsLogitsProcessor
    ids = np.array([[1, 1, 2, 1], [0, 1, 0, 1]])
    uniform = np.zeros((2, 3), np.float32)
    for n, expected in [(2, [[0, 1, 1], [1, 0, 0]]), (3, [[0, 0, 0], [1, 0, 0]])]:
        banned = backend.process_logits(uniform, history=ids, no_repeat_ngram_size=n) == -np.inf
        assert banned.astype(int).tolist() == expected
    ids = np.array([[0, 1, 3, 1], [0, 1, 0, 1]])
    words = np.array([[1, -1, -1, -1], [1, 0, -1, -1], [0, 1, 2, -1], [1, 3, 1, 3]])  # theirs, less EOS
    banned = backend.process_logits(np.zeros((2, 5), np.float32), history=ids, bad_words=words) == -np.inf
    assert banned.astype(int).tolist() == [[1, 1, 0, 1, 0], [1, 1, 1, 0, 0]]


def test_a_one_id_bad_word_needs_no_history(backend):
    out = backend.process_logits(LOGITS, bad_words=np.array([[4, -1], [6, 2]]))  # (6, 2): needs 6 first
    assert np.isneginf(out[:, 4]).all() and np.isfinite(out[:, 2]).all()


def test_boolean_and_packed_masks_agree(backend):
    boolean = backend.process_logits(LOGITS, allowed=ALLOWED, banned=BANNED)
    packed = backend.process_logits(LOGITS, allowed=pack(ALLOWED), banned=pack(BANNED))
    np.testing.assert_array_equal(boolean, packed)
    assert np.array_equal(np.isfinite(boolean), ALLOWED & ~BANNED)


def test_unpack_bits_matches_a_loop():
    words = RNG.integers(0, 2**32, (3, 4), dtype=np.uint64).astype(np.uint32)
    bits = _shaping.unpack_bits(words, 100, np)
    expected = [[bool((int(words[r, t // 32]) >> (t % 32)) & 1) for t in range(100)] for r in range(3)]
    np.testing.assert_array_equal(bits, expected)


def test_vocab_size_masks_the_padded_tail(backend):
    padded = np.concatenate([LOGITS, np.full((ROWS, 14), 10.0, np.float32)], axis=1)  # V = 64
    p = backend.probs(padded, vocab_size=V)
    assert (p[:, V:] == 0).all()
    np.testing.assert_allclose(p[:, :V], reference_probs(LOGITS), rtol=2e-5, atol=1e-7)
    # the grammar-engine case: a packed mask whose tail bits are set, and vocab_size still masks
    allowed = np.ones((ROWS, 64), bool)
    p = backend.probs(padded, allowed=pack(allowed), vocab_size=V)
    assert (p[:, V:] == 0).all()


def test_fully_masked_row_fails_closed(backend):
    banned = np.zeros((ROWS, V), bool)
    banned[2] = True
    if not backend.jitted:
        for fn in (backend.sample, backend.probs):
            args = (backend.key(0), LOGITS) if fn == backend.sample else (LOGITS,)
            with pytest.raises(ValueError, match=r"row 2 has no finite logit after logit_bias"):
                fn(*args, banned=banned)
        with pytest.raises(ValueError, match="row 2"):
            backend.sample(backend.key(0), LOGITS, allowed=pack(~banned))
        return
    ids = backend.sample(backend.key(0), LOGITS, banned=banned)
    assert ids[2] == -1 and (ids[[0, 1, 3]] >= 0).all()
    p = backend.probs(LOGITS, banned=banned)
    assert (p[2] == 0).all() and np.allclose(p[[0, 1, 3]].sum(-1), 1)


def test_counts_match_a_loop():
    history = RNG.integers(-1, V, (6, 40))
    lengths = RNG.integers(0, 41, 6)
    valid = (history >= 0) & (np.arange(40) < lengths[:, None])
    expected = np.zeros((6, V), np.int64)
    for row in range(6):
        for token, c in Counter(history[row, : lengths[row]].tolist()).items():
            if token >= 0:
                expected[row, token] = c

    def dense(token: np.ndarray, count: np.ndarray) -> np.ndarray:
        out = np.zeros((6, V + 1), np.int64)
        for row in range(6):
            for t, c in zip(token[row], count[row], strict=True):
                assert t == V or out[row, t] == 0  # each distinct token once
                out[row, t] = c
        return out[:, :V]

    np.testing.assert_array_equal(dense(*_shaping.token_counts(history, valid, V, np)), expected)
    jnp = pytest.importorskip("jax.numpy")
    on_jax = _shaping.token_counts(jnp.asarray(history), jnp.asarray(valid), V, jnp)
    np.testing.assert_array_equal(dense(*(np.asarray(a) for a in on_jax)), expected)


def test_callers_arrays_are_not_modified(eager_backend):
    inputs = dict(PENALTIES, logit_bias=BIAS, allowed=ALLOWED, banned=pack(BANNED))
    before = {name: np.copy(value) for name, value in inputs.items()}
    logits = LOGITS.copy()
    for kw in (inputs, PENALTIES):  # with a bias (a new array) and without (penalties write in place)
        eager_backend.sample(eager_backend.key(0), logits, **kw)
        eager_backend.process_logits(logits, **kw)
    np.testing.assert_array_equal(logits, LOGITS)
    for name, value in inputs.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.mark.parametrize(("kw", "error", "match"), [
    (dict(repetition_penalty=1.2), ValueError, "needs history"),
    (dict(history=HISTORY, repetition_penalty=0.0), ValueError, "repetition_penalty must be a finite"),
    (dict(history=HISTORY, repetition_penalty=np.array([1, 1, np.nan, 1])), ValueError, "at row 2"),
    (dict(history=HISTORY, frequency_penalty=np.nan), ValueError, "frequency_penalty must be a finite"),
    (dict(history=HISTORY, presence_penalty=np.inf), ValueError, "presence_penalty"),
    (dict(history=np.full((ROWS, T), V)), ValueError, r"history ids must be in \[0, 50\) or -1"),
    (dict(history=np.full((ROWS, T), -2)), ValueError, "history ids"),
    (dict(history=HISTORY.astype(float)), TypeError, "history must hold integer"),
    (dict(history=HISTORY, history_lengths=np.array([0, 1, 13, 2])), ValueError, r"in \[0, 12\]"),
    (dict(history_lengths=3), ValueError, "history_lengths needs history"),
    (dict(history=HISTORY[:3]), ValueError, "do not broadcast"),
    (dict(logit_bias=np.zeros(V + 1)), ValueError, "last dimension 51, expected 50"),
    (dict(no_repeat_ngram_size=2), ValueError, "no_repeat_ngram_size needs history"),
    (dict(history=HISTORY, no_repeat_ngram_size=17), ValueError, r"in \[0, 16\]"),
    (dict(history=HISTORY, no_repeat_ngram_size=np.array([1, -1, 2, 2])), ValueError, "at row 1"),
    (dict(history=HISTORY, no_repeat_ngram_size=2.0), TypeError, "no_repeat_ngram_size must be an integer"),
    (dict(bad_words=np.array([[1.0, 2.0]])), TypeError, "bad_words must be an integer array"),
    (dict(bad_words=np.array([1, 2])), ValueError, r"shape \(..., W, M\)"),
    (dict(bad_words=np.array([[1, V]])), ValueError, r"bad_words ids must be in \[0, 50\)"),
    (dict(bad_words=np.array([[-1, 3]])), ValueError, "right-padded"),
    (dict(logit_bias=(BIAS_IDS, BIAS_VALUES[:, :3])), ValueError, "ids and values must have the same shape"),
    (dict(logit_bias=(BIAS_IDS + V, BIAS_VALUES)), ValueError, r"ids must be in \[0, 50\) or -1"),
    (dict(logit_bias=(BIAS_IDS, np.full((ROWS, 5), np.nan))), ValueError, "finite or -inf"),
    (dict(logit_bias=(BIAS_IDS.astype(float), BIAS_VALUES)), TypeError, "ids must be integers"),
    (dict(logit_bias=(BIAS_IDS, BIAS_VALUES, BIAS_VALUES)), ValueError, "a pair"),
    (dict(logit_bias=[BIAS_IDS, BIAS_VALUES]), TypeError, "tuple"),
    (dict(allowed=np.ones((ROWS, V), np.int32)), TypeError, "boolean array .* or a packed bitmask of uint32"),
    (dict(banned=np.zeros((ROWS, 1), np.uint32)), ValueError, "last dimension 1, expected 2"),
    (dict(banned=np.zeros((ROWS, V - 1), bool)), ValueError, "expected 50"),
    (dict(vocab_size=0), ValueError, "vocab_size must be >= 1"),
    (dict(vocab_size=2.5), TypeError, "vocab_size must be an integer"),
])
def test_bad_input(eager_backend, kw, error, match):
    with pytest.raises(error, match=match):
        eager_backend.probs(LOGITS, **kw)
    with pytest.raises(error, match=match):
        reference_probs(LOGITS, **kw)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_posinf_bias_is_reported_on_its_row(eager_backend, value):
    bias = np.zeros((ROWS, V), np.float32)
    bias[1, 7] = value
    with pytest.raises(ValueError, match=r"row 1 contains .*after logit_bias"):
        eager_backend.sample(eager_backend.key(0), LOGITS, logit_bias=bias)


def test_verification_refuses_shaping_for_now():
    with pytest.raises(ValueError, match="verify_draft does not take logit shaping yet"):
        smp.verify_draft(0, np.zeros((1, 2, V), np.float32), np.zeros((1, 1), np.int64),
                         params=smp.SamplingParams(banned=np.zeros(V, bool)))


# --------------------------------------------------------------------------------------------
# Under jit: one compile for every value, and the documented values for bad input


def test_new_values_trace_once():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    traces = []

    @jax.jit
    def draw(key, logits, params):
        traces.append(1)
        return smp.sample(key, logits, params=params), smp.probs(logits, params=params)

    logits = jnp.asarray(LOGITS)
    for i in range(4):
        rng = np.random.default_rng(i)
        params = smp.SamplingParams(
            temperature=jnp.float32(0.7 + 0.1 * i), top_p=jnp.float32(0.9),
            logit_bias=jnp.asarray(rng.standard_normal((ROWS, V)), jnp.float32),
            banned=jnp.asarray(pack(rng.random((ROWS, V)) < 0.3)), vocab_size=jnp.int32(40 + i),
            history=jnp.asarray(rng.integers(-1, V, (ROWS, T)), jnp.int32),
            history_lengths=jnp.asarray(rng.integers(0, T + 1, ROWS), jnp.int32),
            repetition_penalty=jnp.float32(1 + i / 4), frequency_penalty=jnp.float32(i / 10),
            presence_penalty=jnp.float32(-i / 10))
        ids, p = draw(jax.random.key(i), logits, params)
        concrete = {name: np.asarray(value) for name, value in vars(params).items() if value is not None}
        np.testing.assert_allclose(p, reference_probs(LOGITS, **concrete), rtol=2e-5, atol=1e-6)
        assert (np.asarray(p)[np.arange(ROWS), np.asarray(ids)] > 0).all()
    assert len(traces) == 1


def test_traced_bad_values_follow_the_documented_policy():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    jitted = jax.jit(lambda x, p: smp.probs(x, params=p))
    bad = smp.SamplingParams(
        history=jnp.asarray(np.where(HISTORY > 40, V + 7, HISTORY)),  # out of range: padding
        history_lengths=jnp.asarray([T + 5, -3, 4, 2]),  # clipped to [0, T]
        repetition_penalty=jnp.asarray([0.0, np.nan, -1.0, 1.5], jnp.float32),  # <= 0 or NaN: 1
        frequency_penalty=jnp.asarray([np.nan, 0.5, 0.5, 0.5], jnp.float32))  # NaN: 0
    good = dict(history=np.where(HISTORY > 40, -1, HISTORY), history_lengths=np.array([T, 0, 4, 2]),
                repetition_penalty=np.array([1.0, 1.0, 1.0, 1.5]),
                frequency_penalty=np.array([0.0, 0.5, 0.5, 0.5]))
    np.testing.assert_allclose(jitted(jnp.asarray(LOGITS), bad), reference_probs(LOGITS, **good),
                               rtol=2e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Chi-square: the draws follow the oracle on both backends


def test_draws_follow_reference(backend, seed):
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    n = 65_536  # detects TV 0.02 at power 0.99 per row at the default level (1e-6 per assertion)
    params = dict(STEPS["everything"], temperature=np.array([0.8, 1.0, 1.3, 0.6]),
                  top_p=np.array([0.9, 1, 0.95, 1]), top_k=np.array([0, 10, 0, 0]))
    expected = reference_probs(LOGITS, **params)
    # the per-row inputs (ROWS, ...) broadcast over the n copies of the batch
    ids = backend.sample(backend.key(seed), np.broadcast_to(LOGITS, (n, ROWS, V)), **params)
    assert ids.shape == (n, ROWS)
    assert_samples_match(ids, expected, seed=seed)


def test_absent_inputs_leave_the_step_out():
    assert not _shaping.present(smp.SamplingParams(temperature=0.5, top_p=0.9))
    assert not _shaping.present(smp.SamplingParams(history=HISTORY))  # a history alone shapes nothing
    assert _shaping.present(smp.SamplingParams(vocab_size=3))
    # and history without penalties gives the unshaped distribution
    np.testing.assert_array_equal(smp.probs(LOGITS, history=HISTORY), smp.probs(LOGITS))


@pytest.mark.parametrize("step", ["bias", "banned", "penalties", "ngrams", "everything"])
def test_processed_logprobs_are_the_log_of_the_shaped_probs(backend, step):
    kw = dict(STEPS[step], top_p=0.9, temperature=0.8)
    probs = reference_probs(LOGITS, **kw)
    ids = np.argmax(probs, axis=-1)
    if backend.name == "numpy":
        got = smp.logprobs(LOGITS, ids, **kw)
    else:
        import jax.numpy as jnp

        got = smp.logprobs(jnp.asarray(LOGITS), jnp.asarray(ids), **kw)
    np.testing.assert_allclose(np.asarray(got.token), np.log(probs[np.arange(ROWS), ids]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.kept_count), (probs > 0).sum(axis=-1))


def test_raw_logprobs_refuse_shaping():
    with pytest.raises(ValueError, match="applies to kind='processed' only"):
        smp.logprobs(LOGITS, np.zeros(ROWS, int), kind="raw", banned=BANNED)
