"""DRY, llama.cpp's sequence-repetition penalty, on every backend: llama.cpp's own worked
examples, the float64 oracle on histories full of repeats, chi-square, the exponent clamp, bad
input eagerly and under jit, one compile for every value, and the caller's arrays."""

from __future__ import annotations

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.backends import _dry
from agnostic_sampling.stats import reference_probs

ROWS, V, T = 6, 12, 40
RNG = np.random.default_rng(20261206)
LOGITS = (RNG.standard_normal((ROWS, V)) * 1.5).astype(np.float32)
# a small alphabet and pasted copies, so that long repeats are common
HISTORY = RNG.integers(0, 5, (ROWS, T))
HISTORY[0, 20:32] = HISTORY[0, 4:16]
HISTORY[1, 25:] = HISTORY[1, 10:25]
HISTORY[2, 30:] = -1  # padding past the length
HISTORY[3, 12] = 9  # a breaker inside a repeat
HISTORY[3, 28:] = HISTORY[3, 6:18]
LENGTHS = np.array([T, T, 30, T, 17, 0])
DRY = smp.Dry(multiplier=np.array([0.8, 2.0, 1.0, 0.5, 0.0, 1.0]),
              base=np.array([1.75, 1.1, 1.0, 2.5, 1.75, 1.75]),
              allowed_length=np.array([2, 1, 3, 2, 2, 2]), last_n=np.array([-1, 12, 25, -1, -1, -1]),
              breakers=np.array([[9, 4], [9, -1], [-1, -1], [9, -1], [-1, -1], [-1, -1]]))


def _llama_cpp(backend, probs, history, multiplier, base, allowed, last_n, breakers=None):
    logits = np.log(np.asarray(probs, np.float32))
    dry = smp.Dry(multiplier, base, allowed, last_n, None if breakers is None else np.asarray(breakers))
    return backend.probs(logits, history=np.asarray(history), dry=dry)


def test_llama_cpp_worked_examples(backend):
    # llama.cpp's tests/test-sampling.cpp, test_dry: (probs, last tokens, expected, multiplier,
    # base, allowed length, last_n, breakers)
    quarter, fifth = [0.25] * 4, [0.2] * 5
    cases = [
        (quarter, [0, 1], quarter, 1.0, 1.1, 2, 4, None),
        (quarter, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, None),
        (fifth, [0, 1, 3, 4, 0, 1], fifth, 1.0, 1.1, 2, 6, [3]),
        (fifth, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1, 2, 5, None),
        (fifth, [0, 1, 2, 3, 4, 0, 1], fifth, 1.0, 1.1, 4, 7, None),
    ]
    for probs, history, expected, *settings in cases:
        np.testing.assert_allclose(_llama_cpp(backend, probs, history, *settings), expected, atol=1e-6)


def test_the_longest_match_of_a_token_counts():
    # "a b c c b c y a b c" (llama.cpp's comment): "a b c" repeats from the start (next: c, 3
    # tokens matched), "b c" at 4-5 (next: y, 2), "c" at 3 (next: b, 1)
    a, b, c, y = 0, 1, 2, 3
    history = np.array([[a, b, c, c, b, c, y, a, b, c]])
    n = _dry.match_lengths(history, np.array([10]), np.array([0]), np.array([10]), np)
    assert n[0].tolist() == [0, 0, 3, 1, 0, 2, 0, 0, 0, 0]
    z = smp.process_logits(np.zeros((1, 4), np.float32), history=history,
                           dry=smp.Dry(multiplier=1.0, base=2.0, allowed_length=1))
    # c: 3 matched -> 2 ** 2; y: 2 -> 2 ** 1; b: 1 -> 2 ** 0; a follows nothing repeated
    np.testing.assert_allclose(z[0], [0.0, -1.0, -4.0, -2.0])


def test_last_n_cuts_a_match_at_the_window_start(backend):
    # the last 6 of "1 2 3 4 1 2 3 4" are "3 4 1 2 3 4": the earlier "3 4" matches 2 tokens there
    # (4 with the whole history), and 1 would follow it
    history = np.array([1, 2, 3, 4, 1, 2, 3, 4])
    x = np.zeros(5, np.float32)
    for last_n, matched in [(6, 2), (-1, 4), (8, 4)]:
        dry = smp.Dry(1.0, base=2.0, allowed_length=1, last_n=last_n)
        z = backend.process_logits(x, history=history, dry=dry)
        np.testing.assert_allclose(z[1], -(2.0 ** (matched - 1)), err_msg=f"last_n={last_n}")
        assert (np.delete(z, 1) == 0).all()  # only 1 ever followed a 4


@pytest.mark.parametrize("truncation", [{}, dict(temperature=0.7, top_p=0.9, min_p=0.02)])
def test_matches_reference(backend, truncation):
    params = dict(history=HISTORY, history_lengths=LENGTHS, dry=DRY, **truncation)
    np.testing.assert_allclose(backend.probs(LOGITS, **params), reference_probs(LOGITS, **params),
                               rtol=2e-5, atol=1e-6)


def test_random_histories_match_reference(eager_backend):
    rng = np.random.default_rng(7)
    for trial in range(20):
        width = int(rng.integers(1, 60))
        history = rng.integers(-1 if trial % 3 == 0 else 0, 4, (5, width))  # 4 ids: repeats everywhere
        lengths = rng.integers(0, width + 1, 5)
        dry = smp.Dry(multiplier=rng.uniform(0, 2, 5), base=rng.choice([1.0, 1.3, 1.75, 3.0], 5),
                      allowed_length=rng.integers(1, 5, 5), last_n=rng.choice([-1, 0, 3, 8, 30], 5),
                      breakers=rng.integers(-1, 4, (5, 2)))
        x = (rng.standard_normal((5, V)) * 2).astype(np.float32)
        kw = dict(history=history, history_lengths=lengths, dry=dry)
        np.testing.assert_allclose(eager_backend.process_logits(x, **kw),
                                   np.log(reference_probs(x, **kw)) - np.log(reference_probs(x, **kw)).max(
                                       -1, keepdims=True), rtol=1e-5, atol=1e-4, err_msg=f"trial {trial}")


def test_long_repeats_stop_at_the_exponent_clamp(backend):
    # 300 copies of one token: every earlier position matches up to its start; with base 1.75 the
    # exponent is clamped at floor(88.72 / ln 1.75) = 158, past which the penalty does not grow
    history = np.zeros((1, 300), np.int64)
    x = np.zeros((1, 4), np.float32)
    dry = smp.Dry(multiplier=1e-30, base=1.75, allowed_length=2)
    z = backend.process_logits(x, history=history, dry=dry)
    assert _dry.clamp_of(1.75) == 158
    np.testing.assert_allclose(z[0, 0], -1e-30 * 1.75 ** 158, rtol=1e-4)
    assert (z[0, 1:] == 0).all()


def test_draws_follow_reference(backend, seed):
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    n = 65_536  # detects TV 0.02 at power 0.99 per row at the default level (1e-6 per assertion)
    params = dict(history=HISTORY, history_lengths=LENGTHS, dry=DRY, temperature=0.9, top_k=8)
    expected = reference_probs(LOGITS, **params)
    ids = backend.sample(backend.key(seed), np.broadcast_to(LOGITS, (n, ROWS, V)), **params)
    assert_samples_match(ids, expected, seed=seed)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_every_dtype_matches_reference(eager_backend, dtype):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        x = LOGITS.astype(ml_dtypes.bfloat16)
    else:
        x = LOGITS.astype(dtype)
    params = dict(history=HISTORY, history_lengths=LENGTHS, dry=DRY)
    p = eager_backend.probs(x, **params)
    np.testing.assert_allclose(p, reference_probs(x, **params), rtol=1e-4, atol=1e-6)


def test_in_a_chain_and_with_the_other_shaping(eager_backend):
    chain = smp.presets.llama_cpp(top_k=8, top_p=0.9, temperature=0.8)
    params = dict(history=HISTORY, history_lengths=LENGTHS, dry=DRY, repetition_penalty=1.3,
                  no_repeat_ngram_size=3)
    np.testing.assert_allclose(smp.probs(eager_backend.array(LOGITS), params=chain, **params),
                               reference_probs(LOGITS, params=chain, **params), rtol=2e-5, atol=1e-6)


def test_callers_arrays_are_not_modified(eager_backend):
    logits, history = LOGITS.copy(), HISTORY.copy()
    breakers = DRY.breakers.copy()
    eager_backend.sample(eager_backend.key(0), logits, history=history, history_lengths=LENGTHS, dry=DRY)
    eager_backend.process_logits(logits, history=history, history_lengths=LENGTHS, dry=DRY)
    np.testing.assert_array_equal(logits, LOGITS)
    np.testing.assert_array_equal(history, HISTORY)
    np.testing.assert_array_equal(DRY.breakers, breakers)


@pytest.mark.parametrize(("kw", "error", "match"), [
    (dict(dry=smp.Dry(0.8)), ValueError, "dry needs history"),
    (dict(history=HISTORY, dry=(0.8, 1.75)), TypeError, r"dry must be a smp.Dry"),
    (dict(history=HISTORY, dry=smp.Dry(-1.0)), ValueError, r"dry.multiplier must be a finite number >= 0"),
    (dict(history=HISTORY, dry=smp.Dry(np.array([1, 1, np.nan, 1, 1, 1]))), ValueError, "at row 2"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, base=0.9)), ValueError, "dry.base must be a finite number >= 1"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, base=np.inf)), ValueError, "dry.base"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, allowed_length=0)), ValueError, "dry.allowed_length must be"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, allowed_length=2.5)), TypeError, "must be an integer"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, last_n=-2)), ValueError, r"dry.last_n must be an integer >= -1"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, breakers=np.array([V]))), ValueError, r"in \[0, 12\) or -1"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, breakers=np.array([1.0]))), TypeError, "dry.breakers must be"),
    (dict(history=HISTORY, dry=smp.Dry(0.8, breakers=np.zeros((4, 1), int))), ValueError, "do not broadcast"),
    (dict(history=HISTORY, dry=smp.Dry(np.ones(4))), ValueError, "does not broadcast"),
    (dict(history=HISTORY, dry=smp.Dry(1j)), TypeError, "dry.multiplier must be a real number"),
])
def test_bad_input(eager_backend, kw, error, match):
    with pytest.raises(error, match=match):
        eager_backend.probs(LOGITS, **kw)
    with pytest.raises(error, match=match):
        reference_probs(LOGITS, **kw)


def test_new_values_trace_once():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    traces = []

    @jax.jit
    def shaped(logits, params):
        traces.append(1)
        return smp.probs(logits, params=params)

    for i in range(3):
        rng = np.random.default_rng(i)
        history = rng.integers(0, 4, (ROWS, T))
        dry = smp.Dry(*(jnp.asarray(v) for v in (np.float32(0.5 + i), np.float32(1.2 + i / 2),
                                                 np.int32(1 + i), np.int32([-1, 5, 10, -1, 3, 0][i]))),
                      jnp.asarray([[i, -1]] * ROWS, jnp.int32))
        params = smp.SamplingParams(history=jnp.asarray(history, jnp.int32), dry=dry)
        concrete = smp.Dry(*(np.asarray(v) for v in dry))
        np.testing.assert_allclose(shaped(jnp.asarray(LOGITS), params),
                                   reference_probs(LOGITS, history=history, dry=concrete),
                                   rtol=2e-5, atol=1e-6)
    assert len(traces) == 1


def test_traced_bad_values_follow_the_documented_policy():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    jitted = jax.jit(lambda x, p: smp.probs(x, params=p))
    bad = smp.Dry(multiplier=jnp.asarray([np.nan, np.inf, 1.0, 1.0, 1.0, 1.0], jnp.float32),
                  base=jnp.asarray([1.75, 1.75, 0.5, np.nan, 1.75, 1.75], jnp.float32),
                  allowed_length=jnp.asarray([2, 2, 2, 2, 0, 2]),
                  last_n=jnp.asarray([-1, -1, -1, -1, -1, -7]))
    good = smp.Dry(multiplier=np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0]), base=1.75,
                   allowed_length=np.array([2, 2, 2, 2, 1, 2]))
    got = jitted(jnp.asarray(LOGITS), smp.SamplingParams(history=jnp.asarray(HISTORY), dry=bad))
    np.testing.assert_allclose(got, reference_probs(LOGITS, history=HISTORY, dry=good), rtol=2e-5, atol=1e-6)
