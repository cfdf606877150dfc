"""The truncation steps after min-p (typical-p, epsilon, eta, top-n-sigma, XTC) on every backend:
against the float64 oracle, the peers' own worked examples, chi-square on every dtype, bad input,
the traced policy, one compile for every value, log-probabilities and the decode loop."""

from __future__ import annotations

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.backends import _strategies
from agnostic_sampling.stats import reference_logprobs
from agnostic_sampling.stats import reference_probs

ROWS, V = 4, 40
LOGITS = (np.random.default_rng(20261206).standard_normal((ROWS, V)) * 2).astype(np.float32)
LOGITS[3, ::3] = -np.inf  # a row with masked tokens

STEPS = {
    "typical_p": dict(typical_p=np.array([0.5, 0.9, 0.2, 0.0])),
    "epsilon": dict(epsilon=np.array([0.02, 0.05, 0.0, 0.3])),
    "eta": dict(eta=np.array([0.02, 0.1, 0.0, 0.5])),
    "top_n_sigma": dict(top_n_sigma=np.array([1.0, 0.5, np.inf, 0.0])),
    "xtc": dict(xtc_threshold=np.array([0.1, 0.05, 0.3, 0.0]),
                xtc_probability=np.array([0.5, 1.0, 0.7, 1.0])),
    "min_keep": dict(typical_p=0.3, epsilon=0.1, eta=0.05, top_n_sigma=0.3, min_keep=np.array([1, 3, 5, 2])),
    "after_others": dict(temperature=np.array([0.7, 1.3, 1.0, 0.0]), top_k=20, top_p=0.95, min_p=0.01,
                         typical_p=0.8, top_n_sigma=2.0, xtc_threshold=0.1, xtc_probability=0.5),
    "everything": dict(typical_p=0.9, epsilon=0.01, eta=0.01, top_n_sigma=1.5, xtc_threshold=0.1,
                       xtc_probability=0.25),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_matches_reference(backend, step):
    params = STEPS[step]
    expected = reference_probs(LOGITS, **params)
    got = backend.probs(LOGITS, **params)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    # process_logits is the log of the same distribution, each row's maximum at 0
    z = backend.process_logits(LOGITS, **params)
    np.testing.assert_array_equal(z.max(axis=-1), np.zeros(ROWS))
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(-1, keepdims=True), expected, rtol=2e-5, atol=1e-6)


def test_each_step_truncates_something():
    # the test cases are not vacuous: every step changes the distribution of some row
    plain = reference_probs(LOGITS)
    for step, params in STEPS.items():
        assert not np.allclose(reference_probs(LOGITS, **params), plain), step


def hf(values: list[list[float]]) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.array(values, np.float32))


def kept(backend, logits: np.ndarray, **params) -> np.ndarray:
    """The kept set, by logit (a kept probability may underflow float32: exp(-100) on JAX)."""
    return backend.process_logits(logits, **params) > -np.inf


RAMP = np.tile(np.arange(10, dtype=np.float32) - 5, (2, 1)) * np.array([[1.0], [100.0]], np.float32)


def test_hugging_face_worked_examples(backend):
    # transformers' tests/generation/test_logits_process.py: the kept sets of its examples
    typical = kept(backend, hf([[0.97, 0.01, 0.01, 0.01], [0.4, 0.2, 0.2, 0.2]]), typical_p=0.5)
    assert typical.tolist() == [[True, False, False, False], [False, True, True, True]]
    assert kept(backend, RAMP, typical_p=0.7, min_keep=2).sum(-1).tolist() == [2, 2]
    uniform = np.zeros((2, 5), np.float32)
    assert kept(backend, uniform, typical_p=0.5, min_keep=3).all()
    epsilon = kept(backend, hf([[0.87, 0.099, 0.001, 0.03], [0.4, 0.299, 0.101, 0.2]]), epsilon=0.1)
    assert epsilon.tolist() == [[True, False, False, False], [True, True, True, True]]
    assert kept(backend, RAMP, epsilon=5e-2, min_keep=2).sum(-1).tolist() == [3, 2]
    eta = kept(backend, hf([[0.0, 0.1, 0.8, 0.1], [0.01, 0.04, 0.9, 0.05]]), eta=0.0625)
    assert eta.tolist() == [[False, True, True, True], [False, False, True, False]]
    assert kept(backend, RAMP, eta=0.1, min_keep=2).sum(-1).tolist() == [2, 2]


def test_llama_cpp_worked_examples(backend):
    # llama.cpp's tests/test-sampling.cpp: probabilities in, the kept probabilities out
    p = hf([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(backend.probs(p, top_n_sigma=1.0), [[0, 0, 0.428571, 0.571429]], atol=1e-6)
    assert kept(backend, p, top_n_sigma=3.0).all()
    assert kept(backend, hf([[0.4, 0.2, 0.2, 0.2]]), typical_p=0.5).tolist() == [[False, True, True, True]]
    # XTC, applied (probability 1): every token at or above the threshold but the least probable goes
    xtc = hf([[0.4, 0.3, 0.2, 0.1]])
    for threshold, expected in [(0.09, [0, 0, 0, 1]), (0.19, [0, 0, 1, 1]), (0.29, [0, 1, 1, 1]),
                                (0.39, [1, 1, 1, 1])]:
        got = kept(backend, xtc, xtc_threshold=threshold, xtc_probability=1.0)
        assert got.astype(int).tolist() == [expected], threshold


def test_top_n_sigma_ignores_the_temperature(backend):
    for temperature in (0.5, 2.0):
        np.testing.assert_array_equal(kept(backend, LOGITS, top_n_sigma=1.0, temperature=temperature),
                                      kept(backend, LOGITS, top_n_sigma=1.0))


def test_xtc_is_a_mixture_and_keeps_ties(backend):
    x = hf([[0.3, 0.3, 0.25, 0.15]])
    # A = {0.3, 0.3, 0.25}: the 0.3s go with probability 0.4; their mass moves to the rest
    np.testing.assert_allclose(backend.probs(x, xtc_threshold=0.2, xtc_probability=0.4),
                               [[0.18, 0.18, 0.25 + 0.4 * 0.25 * 1.5, 0.15 + 0.4 * 0.15 * 1.5]], atol=1e-6)
    # two tokens tied as the least probable of A both stay; fewer than min_keep left: no XTC
    tied = hf([[0.4, 0.25, 0.25, 0.1]])
    assert kept(backend, tied, xtc_threshold=0.2, xtc_probability=1.0).tolist() == [[False, True, True, True]]
    assert kept(backend, tied, xtc_threshold=0.2, xtc_probability=1.0, min_keep=4).all()


def test_greedy_rows_stay_greedy(backend):
    params = dict(STEPS["everything"], temperature=0.0)
    expected = np.eye(V)[np.argmax(LOGITS, axis=-1)]
    np.testing.assert_array_equal(backend.probs(LOGITS, **params), expected)
    ids = backend.sample(backend.key(0), LOGITS, **params)
    np.testing.assert_array_equal(ids, np.argmax(LOGITS, axis=-1))


# --------------------------------------------------------------------------------------------
# Chi-square: the draws follow the oracle, every dtype

DTYPES = ["float32", "float16", "bfloat16"]
MIXED = {
    "typical_p": np.array([0.6, 1.0, 1.0, 1.0, 1.0, 0.9]),
    "epsilon": np.array([0.0, 0.03, 0.0, 0.0, 0.0, 0.01]),
    "eta": np.array([0.0, 0.0, 0.05, 0.0, 0.0, 0.0]),
    "top_n_sigma": np.array([np.inf, np.inf, np.inf, 1.0, np.inf, 2.0]),
    "xtc_threshold": np.array([1.0, 1.0, 1.0, 1.0, 0.08, 0.1]),
    "xtc_probability": np.array([0.0, 0.0, 0.0, 0.0, 0.6, 0.5]),
    "temperature": np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.8]),
}
MIXED_LOGITS = np.random.default_rng(11).standard_normal((6, 32)).astype(np.float32) * 1.5


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.astype(pytest.importorskip("ml_dtypes").bfloat16)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_draws_follow_reference(backend, dtype, seed):
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    if backend.jitted and dtype != "float32":
        pytest.skip("under jit float32 only (each dtype is a compile; the eager runs cover them)")
    logits = cast(MIXED_LOGITS, dtype)
    n = 65_536  # detects TV 0.02 at power 0.99 per row at the default level (1e-6 per assertion)
    ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (n, *logits.shape)), **MIXED)
    assert ids.shape == (n, len(MIXED_LOGITS))
    assert_samples_match(ids, reference_probs(logits, **MIXED), seed=seed)


def test_seeds_draw_inside_the_kept_set(backend):
    # one uniform per row from a Seed, on both backends; never a token outside the kept set
    logits = np.broadcast_to(MIXED_LOGITS, (256, *MIXED_LOGITS.shape))
    support = reference_probs(MIXED_LOGITS, **MIXED) > 0
    ids = backend.sample(smp.Seed(np.arange(256 * 6).reshape(256, 6), 0), logits, **MIXED)
    assert support[np.arange(6), ids].all()


# --------------------------------------------------------------------------------------------
# Log-probabilities


@pytest.mark.parametrize("kind", ["processed", "raw"])
def test_logprobs_match_reference(eager_backend, kind):
    backend = eager_backend
    params = STEPS["after_others"]
    ids = np.array([int(np.argmax(LOGITS[0])), 3, 7, 0])
    got = smp.logprobs(backend.array(LOGITS), backend.array(ids), kind=kind, top_n=5, **params)
    expected = reference_logprobs(LOGITS, ids, kind=kind, top_n=5, **params)
    for name in ("token", "top_logprobs", "kept_log_mass"):
        np.testing.assert_allclose(np.asarray(getattr(got, name)), getattr(expected, name), rtol=1e-5,
                                   atol=1e-5, err_msg=name)
    for name in ("rank", "top_ids", "kept_count"):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), getattr(expected, name), err_msg=name)
    if kind == "processed":
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(np.asarray(got.token),
                                       np.log(reference_probs(LOGITS, **params)[np.arange(ROWS), ids]),
                                       rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input, eagerly and under jit


@pytest.mark.parametrize(("kw", "match"), [
    (dict(typical_p=1.5), "typical_p must be in \\[0, 1\\], got 1.5"),
    (dict(typical_p=np.array([0.5, np.nan, 0.5, 0.5])), "typical_p must be in \\[0, 1\\], got nan at row 1"),
    (dict(epsilon=-0.1), "epsilon must be in \\[0, 1\\]"),
    (dict(eta=2.0), "eta must be in \\[0, 1\\]"),
    (dict(top_n_sigma=-1.0), "top_n_sigma must be >= 0"),
    (dict(top_n_sigma=np.nan), "top_n_sigma must be >= 0"),
    (dict(xtc_threshold=0.1), "XTC needs both xtc_threshold and xtc_probability: got xtc_threshold"),
    (dict(xtc_probability=0.5), "got xtc_probability without xtc_threshold"),
    (dict(xtc_threshold=0.1, xtc_probability=1.1), "xtc_probability must be in \\[0, 1\\]"),
    (dict(epsilon=np.zeros(3)), "epsilon has shape \\(3,\\), which does not broadcast"),
])
def test_bad_input(eager_backend, kw, match):
    with pytest.raises(ValueError, match=match):
        smp.probs(eager_backend.array(LOGITS), **kw)


def test_complex_values_are_a_type_error(eager_backend):
    with pytest.raises(TypeError, match="typical_p must be real"):
        smp.sample(eager_backend.key(0), eager_backend.array(LOGITS), typical_p=0.5 + 1j)


def test_traced_bad_values_follow_the_documented_policy():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    jitted = jax.jit(lambda x, p: smp.probs(x, params=p))
    bad = smp.SamplingParams(typical_p=jnp.array([np.nan, 1.5, -1.0, 0.5]),  # NaN: off; clipped
                             epsilon=jnp.array([np.nan, 2.0, -1.0, 0.05]),
                             top_n_sigma=jnp.array([-1.0, np.nan, 1.0, np.inf]))
    good = dict(typical_p=np.array([1.0, 1.0, 0.0, 0.5]), epsilon=np.array([0.0, 1.0, 0.0, 0.05]),
                top_n_sigma=np.array([np.inf, np.inf, 1.0, np.inf]))
    np.testing.assert_allclose(jitted(jnp.asarray(LOGITS), bad), reference_probs(LOGITS, **good),
                               rtol=2e-5, atol=1e-6)


def test_new_values_trace_once():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    traces = []

    @jax.jit
    def draw(key, logits, params):
        traces.append(1)
        return smp.sample(key, logits, params=params), smp.probs(logits, params=params)

    for i in range(4):
        params = smp.SamplingParams(typical_p=0.5 + i / 10, epsilon=jnp.float32(i / 100), eta=i / 50,
                                    top_n_sigma=jnp.asarray([1.0 + i, 2.0, np.inf, 0.5]),
                                    xtc_threshold=0.1, xtc_probability=i / 4, min_keep=1 + i)
        ids, p = draw(jax.random.key(i), jnp.asarray(LOGITS), params)
        concrete = {name: np.asarray(value) for name, value in vars(params).items() if value is not None}
        np.testing.assert_allclose(p, reference_probs(LOGITS, **concrete), rtol=2e-5, atol=1e-6)
        assert (np.asarray(p)[np.arange(ROWS), np.asarray(ids)] > 0).all()
    assert len(traces) == 1


def test_absent_steps_are_left_out():
    assert not _strategies.present(smp.SamplingParams(temperature=0.5, top_p=0.9))
    assert _strategies.present(smp.SamplingParams(typical_p=1.0))  # given, even at its off value
    assert not _strategies.present(_strategies.without(smp.SamplingParams(eta=0.1, top_k=3)))


def test_callers_arrays_are_not_modified(eager_backend):
    logits = eager_backend.array(LOGITS.copy())
    before = np.asarray(logits).copy()
    smp.sample(eager_backend.key(0), logits, **STEPS["everything"])
    smp.logprobs(logits, np.zeros(ROWS, int), top_n=3, **STEPS["everything"])
    np.testing.assert_array_equal(np.asarray(logits), before)


# --------------------------------------------------------------------------------------------
# Inside the decode loop


def test_generate_takes_the_steps(backend):
    if backend.jitted:
        pytest.skip("generate compiles its own loop on JAX")
    table = backend.array(LOGITS[0] * np.ones((V, 1), np.float32) + np.eye(V, dtype=np.float32))

    def model(tokens):
        return table[tokens]

    prompt = backend.array(np.array([[1], [2]]))
    out = smp.generate(backend.key(0), model, prompt, max_new_tokens=6, typical_p=0.5, epsilon=0.01)
    ids = np.asarray(out.ids)[:, 1:]
    tokens = np.asarray(out.ids)
    for t in range(6):
        support = reference_probs(np.asarray(table)[tokens[:, t]], typical_p=0.5, epsilon=0.01) > 0
        assert support[np.arange(2), ids[:, t]].all()
